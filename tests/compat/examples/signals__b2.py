# changed: `execute(self, inputs)` -> `execute(self)` reading `self.inputs`: the SDK calls `execute()` with no argument (so does exo_celery)
# changed: `inputs.retry_count < 3` compares a str with an int (a TypeError in Python 3): `int(self.inputs.retry_count) < 3`
# changed: BaseNode and BaseModel are not imported on the page: the harness provides them
from exo_celery import ReQueueAfterSignal
from datetime import timedelta

class RetryNode(BaseNode):
    class Inputs(BaseModel):
        retry_count: str
        data: str

    class Outputs(BaseModel):
        result: str

    async def execute(self) -> Outputs:
        if int(self.inputs.retry_count) < 3:
            # Requeue after 5 minutes
            raise ReQueueAfterSignal(timedelta(minutes=5))

        return self.Outputs(result="completed")
