"""What route handlers receive: the storage agent's parts, built once per app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from services.storage_agent.catalog import Catalog
from services.storage_agent.frames import Extractor
from services.storage_agent.paths import StorageRoots
from services.storage_agent.thumbnail import Thumbnailer


@dataclass(frozen=True)
class StorageAgent:
    node_id: str
    roots: StorageRoots
    catalog: Catalog
    extractor: Extractor
    thumbnailer: Thumbnailer


def get_agent(request: Request) -> StorageAgent:
    return request.app.state.agent


AgentDep = Annotated[StorageAgent, Depends(get_agent)]
