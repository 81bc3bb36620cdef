from exo_celery import RetryPolicyModel, RetryStrategyEnum

# Define retry policy for scheduled executions
retry_policy = RetryPolicyModel(
    max_retries=3,
    strategy=RetryStrategyEnum.EXPONENTIAL,
    backoff_factor=2000,
    exponent=2
)

# Create graph with both triggers and retry policy
result = await state_manager.upsert_graph(
    graph_name="robust-pipeline",
    # Assuming `graph_nodes`, `secrets`, and `triggers` are defined as in previous examples
    graph_nodes=graph_nodes,
    secrets=secrets,
    triggers=triggers,
    retry_policy=retry_policy  # Handles failures in scheduled runs
)
