"""Dependencies of the core's routes: the app's store and agent client, and the token check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.core.agents import AgentClient
from services.core.store import Store


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_agents(request: Request) -> AgentClient:
    return request.app.state.agents


async def require_token(request: Request) -> None:
    """Writes need the cluster token; reads are public."""
    await request.app.state.auth(request)


StoreDep = Annotated[Store, Depends(get_store)]
AgentsDep = Annotated[AgentClient, Depends(get_agents)]
TokenRequired = Depends(require_token)
