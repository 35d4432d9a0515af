"""``/api/v1/nodes``: register, list and remove the agents the core drives."""

from __future__ import annotations

from fastapi import APIRouter, Response

from services.core.api.deps import StoreDep, TokenRequired
from services.core.models import NodeCreate, NodePublic, NodesPublic
from services.core.store import NodeRole

router = APIRouter(prefix="/nodes", tags=["nodes"])


@router.post("", status_code=201, dependencies=[TokenRequired])
def create_node(body: NodeCreate, store: StoreDep) -> NodePublic:
    """Register a gpu or storage agent by name and base URL; it is polled from the next tick."""
    return NodePublic.of(store.add_node(name=body.name, role=NodeRole(body.role), url=body.url))


@router.get("")
def list_nodes(store: StoreDep) -> NodesPublic:
    """Every node with its state, last status and count of open jobs."""
    counts = store.open_job_counts()
    return NodesPublic(nodes=[NodePublic.of(n, counts.get(n.name, 0)) for n in store.list_nodes()])


@router.get("/{name}")
def get_node(name: str, store: StoreDep) -> NodePublic:
    """One node with its state and last status."""
    return NodePublic.of(store.get_node(name), store.open_job_counts().get(name, 0))


@router.delete("/{name}", status_code=204, dependencies=[TokenRequired])
def delete_node(name: str, store: StoreDep) -> Response:
    """Remove a node; refused (409) while open jobs are placed on it or read from it."""
    store.remove_node(name)
    return Response(status_code=204)
