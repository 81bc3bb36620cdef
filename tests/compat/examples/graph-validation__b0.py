# changed: the block is a function body (`return` at top level): wrapped in `async def create_graph():`
# changed: `ValidationError` is not defined on the page: the harness binds it to exo_celery.GraphValidationError
async def create_graph():
    try:
        result = await state_manager.upsert_graph(
            graph_name="my-workflow",
            graph_nodes=graph_nodes,
            secrets=secrets
        )
        print("Graph created successfully!")
        return result

    except ValidationError as e:
        print(f"Validation failed: {e}")
        return None
