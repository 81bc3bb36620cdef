class MyNode(BaseNode):
    class Inputs(BaseModel):
        # ✅ Correct - string fields
        user_id: str
        config: str  # JSON string

    class Outputs(BaseModel):
        # ✅ Correct - string fields
        result: str
        metadata: str  # JSON string

    class Secrets(BaseModel):
        # ✅ Correct - string fields
        api_key: str
        database_url: str
