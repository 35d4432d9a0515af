"""``GET /status``."""

from __future__ import annotations

import anyio
from fastapi import APIRouter

from services.storage_agent.api.deps import AgentDep
from services.storage_agent.status import StorageStatus, collect_status

router = APIRouter(tags=["status"])


@router.get("/status")
async def get_status(agent: AgentDep) -> StorageStatus:
    """Disk free per root, CPU load, running frame extractions with their progress, and the queue."""
    extractions = agent.extractor.statuses()  # here, on the loop that changes them
    return await anyio.to_thread.run_sync(collect_status, agent.node_id, agent.roots, agent.extractor, extractions)
