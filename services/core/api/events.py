"""``/api/v1/events``: job and node changes as server-sent events, for live pages.

The stream reads the ``events`` table (the same rows as the job history), so it shows the
changes of every core process sharing the database, and a client that reconnects with
``Last-Event-ID`` misses nothing.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, AsyncIterator

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from services.core.api.deps import StoreDep
from services.core.models import ERROR_RESPONSES, EventPublic
from services.core.store import Store

router = APIRouter(tags=["events"], responses=ERROR_RESPONSES)

#: Seconds between looks at the events table while a stream is open.
POLL_S = 0.5
#: Seconds between keep-alive comments, so proxies do not close an idle stream.
KEEPALIVE_S = 15.0

_SSE_EXAMPLE = ('id: 42\nevent: job\ndata: {"id": 42, "at": "2026-06-01T10:05:00Z", "kind": "job", "job_id": 7, '
                '"node": "gpu-84", "state": "extracting", "attempt": 1, "message": "video 1 of 2"}\n\n')


@router.get("/events", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {"example": _SSE_EXAMPLE}},
          "description": "one event per change: `id`, `event` (job or node), `data` (JSON)"}})
async def stream_events(
    request: Request, store: StoreDep,
    after: Annotated[int | None, Query(ge=0, description="start after this event id (default: from now)")] = None,
    max_s: Annotated[float | None, Query(gt=0, le=86_400, description="close the stream after this long")] = None,
    last_event_id: Annotated[int | None, Header(ge=0, include_in_schema=False)] = None,
) -> StreamingResponse:
    """Server-sent events of job and node changes; reconnect with Last-Event-ID to resume."""
    start = after if after is not None else last_event_id
    if start is None:
        start = await store.read(store.last_event_id)
    return StreamingResponse(_events(request, store, start, max_s), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _events(request: Request, store: Store, after: int, max_s: float | None) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_s if max_s else None
    quiet_since = loop.time()
    yield f"retry: {int(POLL_S * 2000)}\n\n"
    while deadline is None or loop.time() < deadline:
        if await request.is_disconnected():
            return
        for event in await store.read(store.events_after, after):
            after = event.id
            quiet_since = loop.time()
            yield f"id: {event.id}\nevent: {event.kind}\ndata: {EventPublic.of(event).model_dump_json()}\n\n"
        if loop.time() - quiet_since > KEEPALIVE_S:
            quiet_since = loop.time()
            yield ": keep-alive\n\n"
        await asyncio.sleep(POLL_S)
