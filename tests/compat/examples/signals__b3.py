# changed: `execute(self, inputs)` -> `execute(self)` reading `self.inputs`: the SDK calls `execute()` with no argument (so does exo_celery)
# changed: the page elides Outputs and `_validate_user`: the smallest ones following its names (Outputs.validated is a bool, as the page returns True)
# changed: `data: dict` -> `data: str`: v1 inputs are strings (the SDK's own Runtime refuses a dict field)
# changed: PruneSignal, datetime, BaseNode, BaseModel are not imported on the page: the harness provides them
class ValidationNode(BaseNode):
    class Inputs(BaseModel):
        user_id: str
        data: str

    class Outputs(BaseModel):
        validated: bool

    def _validate_user(self, user_id: str) -> bool:
        return user_id != "banned"

    async def execute(self) -> Outputs:
        inputs = self.inputs
        if not self._validate_user(inputs.user_id):
            raise PruneSignal({
                "reason": "invalid_user",
                "user_id": inputs.user_id,
                "timestamp": datetime.now().isoformat()
            })

        return self.Outputs(validated=True)
