"""Dependencies of the core's routes: the app's store and agent client, and the token check."""

from __future__ import annotations

import hmac
from typing import Annotated
from urllib.parse import unquote, urlsplit

from fastapi import Depends, HTTPException, Path, Request

from services.core.agents import AgentClient
from services.core.store import Store


# Async (though they await nothing): FastAPI runs a plain ``def`` dependency in the thread
# pool, one hop per request for a dictionary lookup.
async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_agents(request: Request) -> AgentClient:
    return request.app.state.agents


#: Cookie in which the dashboard keeps the token for the browser's writes.
TOKEN_COOKIE = "cosma_token"


async def require_token(request: Request) -> None:
    """Writes need the cluster token (bearer header, or the dashboard's cookie); reads are public."""
    cookie = request.cookies.get(TOKEN_COOKIE)
    if cookie and "authorization" not in request.headers:
        check_dashboard_token(request, unquote(cookie))
        return
    await request.app.state.auth(request)


def check_dashboard_token(request: Request, given: str) -> None:
    """401 unless ``given`` is the cluster token, sent from the dashboard's own pages."""
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        # A page of another site posting with our cookie (SameSite=Strict is the first guard).
        raise HTTPException(401, "the token cookie is only accepted from the dashboard's own pages")
    state = request.app.state
    if getattr(state, "cookie_token", None) is None:
        state.cookie_token = state.settings.resolved_token().encode()
    if not hmac.compare_digest(given.strip().encode(), state.cookie_token):
        raise HTTPException(401, "wrong token in the dashboard cookie: enter the cluster token again",
                            headers={"WWW-Authenticate": "Bearer"})


StoreDep = Annotated[Store, Depends(get_store)]
AgentsDep = Annotated[AgentClient, Depends(get_agents)]
TokenRequired = Depends(require_token)

#: Ids in paths: bounded like the wire models, so an absurd number is a 422, not a database error.
JobId = Annotated[int, Path(ge=1, le=10_000_000)]
StitchId = Annotated[int, Path(ge=1, le=10_000_000)]
