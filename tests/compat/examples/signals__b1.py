# changed: `execute(self, inputs)` -> `execute(self)` reading `self.inputs`: the SDK calls `execute()` with no argument (so does exo_celery)
# changed: BaseNode and BaseModel are not imported on the page: the harness provides them
from exo_celery import PruneSignal

class MyNode(BaseNode):
    class Inputs(BaseModel):
        data: str

    class Outputs(BaseModel):
        result: str

    async def execute(self) -> Outputs:
        if self.inputs.data == "invalid":
            # Prune the state with optional data
            raise PruneSignal({"reason": "invalid_data", "error": "Data validation failed"})

        return self.Outputs(result="processed")
