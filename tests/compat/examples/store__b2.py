from exo_celery import StoreConfigModel

store_config = StoreConfigModel(
    required_keys=["cursor", "batch_id"],
    default_values={
        "cursor": "0",
        "batch_size": "100"
    }
)

result = await state_manager.upsert_graph(
    graph_name="my-workflow",
    graph_nodes=graph_nodes,
    store_config=store_config
)
