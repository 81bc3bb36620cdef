from exo_celery import StateManager, GraphNodeModel, RetryPolicyModel, RetryStrategyEnum

# Define retry policy using model 
retry_policy = RetryPolicyModel(
    max_retries=5,
    strategy=RetryStrategyEnum.EXPONENTIAL_FULL_JITTER,
    backoff_factor=1000,
    exponent=2,
    max_delay=30000
)

async def create_graph_with_retry_policy():
    state_manager = StateManager(namespace="MyProject")

    graph_nodes = [
        GraphNodeModel(
            node_name="ResilientNode",
            namespace="MyProject", 
            identifier="resilient_node",
            inputs={"data": "initial"},
            next_nodes=[]
        )
    ]

    # Apply retry policy to the entire graph
    result = await state_manager.upsert_graph(
        graph_name="resilient-workflow",
        graph_nodes=graph_nodes,
        secrets={"api_key": "your-key"},
        retry_policy=retry_policy  
    )
