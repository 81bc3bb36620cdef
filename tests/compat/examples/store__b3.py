# Trigger graph with initial store values
result = await state_manager.trigger(
    "my-workflow",
    inputs={"user_id": "123"},
    store={
        "cursor": "0",
        "batch_id": "batch_001"
    }
)
