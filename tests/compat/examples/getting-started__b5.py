import asyncio

# Create the runtime
runtime = Runtime(
    namespace="MyProject",
    name="DataProcessor",
    nodes=[SampleNode]
)

# In Jupyter notebooks or async contexts, use asyncio.create_task
# to run the runtime in the background
runtime_task = asyncio.create_task(runtime._start())

# Your interactive session can continue
print("Runtime is running in the background!")

# You can now do other async work while the runtime runs
# For example:
await asyncio.sleep(1)
print("Runtime is still running...")

# To stop the runtime later:
# runtime_task.cancel()
