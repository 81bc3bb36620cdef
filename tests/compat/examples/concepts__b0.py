from exo_celery import BaseNode
from pydantic import BaseModel

class DataSplitterNode(BaseNode):
    class Inputs(BaseModel):
        data: str  # JSON string of data array

    class Outputs(BaseModel):
        chunk: str  # JSON string of data chunk

    class Secrets(BaseModel):
        pass

    async def execute(self) -> list[Outputs]:
        data = json.loads(self.inputs.data)
        chunk_size = 100

        outputs = []
        for i in range(0, len(data), chunk_size):
            chunk = data[i:i + chunk_size]
            outputs.append(self.Outputs(
                chunk=json.dumps(chunk)
            ))

        return outputs  # This creates fanout - multiple outputs
