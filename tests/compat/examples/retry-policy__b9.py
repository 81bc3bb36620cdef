# High-concurrency scenario (recommended)
retry_policy = RetryPolicyModel(
    max_retries=3,
    strategy=RetryStrategyEnum.EXPONENTIAL_FULL_JITTER,
    backoff_factor=1000,
    exponent=2,
    max_delay=30000
)

# Predictable timing requirements
retry_policy = RetryPolicyModel(
    max_retries=5,
    strategy=RetryStrategyEnum.LINEAR,
    backoff_factor=2000,
    exponent=1  # Not used for LINEAR
)

# Rate limiting scenarios
retry_policy = RetryPolicyModel(
    max_retries=10,
    strategy=RetryStrategyEnum.FIXED,
    backoff_factor=5000,  # 5 second fixed delay
    max_delay=5000
)
