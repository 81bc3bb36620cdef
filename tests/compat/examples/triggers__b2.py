from exo_celery import StateManager, GraphNodeModel, CronTrigger

async def create_scheduled_graph():
    state_manager = StateManager(
        namespace="DataPipeline",
        state_manager_uri=EXOSPHERE_STATE_MANAGER_URI,
        key=EXOSPHERE_API_KEY
    )

    # Define your graph nodes
    graph_nodes = [
        GraphNodeModel(
            node_name="DataExtractorNode",
            namespace="DataPipeline",
            identifier="extractor",
            inputs={"source": "initial"},
            next_nodes=["processor"]
        ),
        GraphNodeModel(
            node_name="DataProcessorNode",
            namespace="DataPipeline", 
            identifier="processor",
            inputs={"raw_data": "${{ extractor.outputs.data }}"},
            next_nodes=[]
        )
    ]

    # Define triggers for automatic execution
    triggers = [
        CronTrigger(expression="0 2 * * *"),    # Daily at 2:00 AM
        CronTrigger(expression="0 */4 * * *")   # Every 4 hours
    ]

    # Create the graph with triggers
    result = await state_manager.upsert_graph(
        graph_name="data-pipeline",
        graph_nodes=graph_nodes,
        secrets={"api_key": "your-api-key"},
        triggers=triggers
    )

    print(f"Graph created with {len(triggers)} triggers")
    return result

# Run the function
import asyncio
asyncio.run(create_scheduled_graph())
