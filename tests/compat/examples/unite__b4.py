from exo_celery import GraphNodeModel, UnitesModel, UnitesStrategyEnum

graph_nodes = [
    GraphNodeModel(
        node_name="DataSplitterNode",
        identifier="data_splitter",
        next_nodes=["processor"]
    ),
    GraphNodeModel(
        node_name="DataProcessorNode",
        identifier="processor",
        inputs={"data": "${{ data_splitter.outputs.chunk }}"},
        next_nodes=["result_merger"]
    ),
    GraphNodeModel(
        node_name="ResultMergerNode",
        identifier="result_merger",
        inputs={"processed_data": "${{ processor.outputs.result }}"},
        unites=UnitesModel(
            identifier="data_splitter",
            strategy=UnitesStrategyEnum.ALL_SUCCESS
        ),
        next_nodes=[]
    )
]
