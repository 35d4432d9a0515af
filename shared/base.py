"""Base class of every wire model: strict, so a typo in a field is an error, not data loss."""

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
