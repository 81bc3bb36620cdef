# For production scripts, the blocking behavior is usually desired
if __name__ == "__main__":
    Runtime(
        namespace="MyProject",
        name="DataProcessor",
        nodes=[SampleNode]
    ).start()  # Blocks and runs forever
