"""``GET /health``: liveness of every service."""

from typing import Literal

from shared.base import WireModel

Role = Literal["core", "gpu", "storage"]


class Health(WireModel):
    status: Literal["ok"] = "ok"
    role: Role
    version: str
    node_id: str
    api_version: str
