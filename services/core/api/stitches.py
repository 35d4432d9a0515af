"""``/api/v1/stitches``: merge finished jobs into one cloud on the gpu node holding most of them."""

from __future__ import annotations

from fastapi import APIRouter

from services.core import stitches
from services.core.api.deps import AgentsDep, StitchId, StoreDep, TokenRequired
from services.core.models import ERROR_RESPONSES
from shared.stitches import StitchCreate, StitchPublic

router = APIRouter(prefix="/stitches", tags=["stitches"], responses=ERROR_RESPONSES)


@router.post("", status_code=201, dependencies=[TokenRequired])
async def create_stitch(body: StitchCreate, store: StoreDep, agents: AgentsDep) -> StitchPublic:
    """Stitch finished jobs (the first is the reference frame) on the node that holds most of them."""
    return await stitches.create(store, agents, body)


@router.get("")
def list_stitches(store: StoreDep) -> list[StitchPublic]:
    """Every stitch, oldest first."""
    return stitches.list_all(store)


@router.get("/{stitch_id}")
async def get_stitch(stitch_id: StitchId, store: StoreDep, agents: AgentsDep) -> StitchPublic:
    """One stitch; while it runs, its node is asked for its progress, and once done for its report."""
    return await stitches.get(store, agents, stitch_id)
