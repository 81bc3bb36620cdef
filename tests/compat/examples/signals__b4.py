# changed: `execute(self, inputs)` -> `execute(self)` reading `self.inputs`: the SDK calls `execute()` with no argument (so does exo_celery)
# changed: the page elides Outputs, `_check_job_status` and `_get_job_result`: the smallest ones following its names (a job whose id starts with "done" is completed)
# changed: ReQueueAfterSignal, timedelta, BaseNode, BaseModel are not imported on the page: the harness provides them
class PollingNode(BaseNode):
    class Inputs(BaseModel):
        job_id: str

    class Outputs(BaseModel):
        result: str

    async def _check_job_status(self, job_id: str) -> str:
        return "completed" if job_id.startswith("done") else "running"

    async def _get_job_result(self, job_id: str) -> str:
        return f"result of {job_id}"

    async def execute(self) -> Outputs:
        inputs = self.inputs
        # Check if the job is complete
        job_status = await self._check_job_status(inputs.job_id)

        if job_status == "completed":
            result = await self._get_job_result(inputs.job_id)
            return self.Outputs(result=result)
        else:
            # Job still running, poll again in 30 seconds
            raise ReQueueAfterSignal(timedelta(seconds=30))
