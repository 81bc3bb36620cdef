import threading

# Create the runtime
runtime = Runtime(
    namespace="MyProject",
    name="DataProcessor",
    nodes=[SampleNode]
)

# Run in a background thread
def run_runtime():
    runtime.start()

thread = threading.Thread(target=run_runtime, daemon=True)
thread.start()

# Your interactive session continues here
print("Runtime is running in the background!")
