"""``/api/v1/nodes``: register (or let agents announce themselves), list, drain and remove agents."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from services.core.agents import AgentError
from services.core.api.deps import AgentsDep, StoreDep, TokenRequired
from services.core.models import ERROR_RESPONSES, NodeCreate, NodeName, NodePublic, NodesPublic
from services.core.store import NodeRole

log = logging.getLogger(__name__)

router = APIRouter(prefix="/nodes", tags=["nodes"], responses=ERROR_RESPONSES)


@router.post("", status_code=201, dependencies=[TokenRequired])
def create_node(body: NodeCreate, store: StoreDep) -> NodePublic:
    """Register a gpu or storage agent by name and base URL; it is polled from the next tick."""
    return NodePublic.of(store.add_node(name=body.name, role=NodeRole(body.role), url=body.url))


@router.post("/announce", dependencies=[TokenRequired], responses={201: {"description": "a new node"}})
def announce_node(body: NodeCreate, store: StoreDep, response: Response) -> NodePublic:
    """An agent announces itself: added (201), or its URL updated (200). Idempotent."""
    node, created = store.announce_node(name=body.name, role=NodeRole(body.role), url=body.url)
    response.status_code = 201 if created else 200
    return NodePublic.of(node, store.open_job_counts().get(node.name, 0))


@router.get("")
def list_nodes(store: StoreDep) -> NodesPublic:
    """Every node with its state (online, offline since when and why, draining), last status and open jobs."""
    counts = store.open_job_counts()
    return NodesPublic(nodes=[NodePublic.of(n, counts.get(n.name, 0)) for n in store.list_nodes()])


@router.get("/{name}")
def get_node(name: NodeName, store: StoreDep) -> NodePublic:
    """One node with its state and last status."""
    return NodePublic.of(store.get_node(name), store.open_job_counts().get(name, 0))


@router.post("/{name}/drain", dependencies=[TokenRequired])
def drain_node(name: NodeName, store: StoreDep) -> NodePublic:
    """Drain a node: it finishes the jobs it has and gets no new ones."""
    return NodePublic.of(store.set_draining(name, True), store.open_job_counts().get(name, 0))


@router.post("/{name}/undrain", dependencies=[TokenRequired])
def undrain_node(name: NodeName, store: StoreDep) -> NodePublic:
    """Let a drained node take new jobs again."""
    return NodePublic.of(store.set_draining(name, False), store.open_job_counts().get(name, 0))


@router.delete("/{name}", status_code=204, dependencies=[TokenRequired])
async def delete_node(
    name: NodeName, store: StoreDep, agents: AgentsDep,
    force: Annotated[bool, Query(description="remove it even while open jobs use it")] = False,
) -> Response:
    """Remove a node; refused (409) while open jobs use it, unless forced.

    Forced: jobs running on a gpu node are stopped there and requeued elsewhere; open jobs
    reading from a storage node fail.
    """
    node = await run_in_threadpool(store.get_node, name)
    affected = await run_in_threadpool(store.remove_node, name, force=force)
    if node.role == NodeRole.gpu:
        for job_id in affected:
            try:
                await agents.cancel_job(node.url, job_id)
            except AgentError as exc:
                log.warning("node %s removed; stopping its job %d there failed: %s", name, job_id, exc.message)
    return Response(status_code=204)
