"""What every service's FastAPI app has: ``/health``, ``/metrics``, the API version header, typed errors."""

from __future__ import annotations

import gc
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared import API_VERSION, API_VERSION_HEADER, __version__
from shared.errors import error_response, install_error_handlers
from shared.logs import configure_logging
from shared.health import Health, Role
from shared.metrics import CollectorRegistry, install_metrics


def make_app(*, title: str, role: Role, node_id: str, lifespan: Any = None,
             metrics: CollectorRegistry | None = None) -> FastAPI:
    """A service's app; ``app.state.metrics`` is its Prometheus registry (``metrics`` or a new one)."""
    app = FastAPI(title=title, version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodyLimit)  # innermost of the three: a 413 is counted and versioned too
    install_metrics(app, role=role, node_id=node_id, version=__version__, registry=metrics)

    app.add_middleware(ApiVersionHeader)

    @app.get("/health", tags=["meta"])
    async def get_health() -> Health:
        """Liveness, version, node id and role; needs no token."""
        return Health(role=role, version=__version__, node_id=node_id, api_version=API_VERSION)

    return app


#: The largest request body any route takes (a job of 200 videos is ~1 MiB of JSON).
MAX_BODY_BYTES = 4 * 1024 * 1024


class BodyLimit:
    """Refuses a request body over ``max_bytes`` with 413 before the app reads it.

    FastAPI reads and parses a JSON body before a route's dependencies check the token, so
    without this anyone could make a service parse gigabytes (a 200 MB body took a core
    from 170 MB to 2.3 GB, then got its 401). Pure ASGI, like :class:`ApiVersionHeader`.
    """

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"the request body is over {self.max_bytes // 1024 // 1024} MiB, the most any route takes"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await error_response(413, "too_large", self._message())(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # a chunked body, no Content-Length to check first
                raise StarletteHTTPException(413, self._message())
            return message

        await self.app(scope, receive if length is not None else limited_receive, send)


class ApiVersionHeader:
    """Adds the API version header to every response. Pure ASGI: ``@app.middleware("http")``
    costs a task and two memory streams per request (≈ 10 % of a job list's CPU time)."""

    _HEADER = (API_VERSION_HEADER.lower().encode("latin-1"), API_VERSION.encode("latin-1"))

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_version(message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != self._HEADER[0]]
                message = {**message, "headers": [*headers, self._HEADER]}
            await send(message)

        await self.app(scope, receive, send_with_version)


def serve(app: FastAPI, host: str, port: int, log_level: str = "info", log_format: str = "text") -> None:
    log_config = configure_logging(log_level, log_format)
    freeze_startup_objects()
    uvicorn.run(app, host=host, port=port, log_level=log_level, log_config=log_config,
                timeout_graceful_shutdown=5)


def freeze_startup_objects() -> None:
    """Take every object alive now out of the cycle collector's sight (:func:`gc.freeze`).

    Called once a service's app is built, before it serves: the modules, the app and its
    routes (~170,000 objects in the core) live as long as the process, and each full
    collection walked all of them: 70-85 ms with every request in flight waiting on it
    (bench/RESULTS.md, "Round 4"). Garbage is collected first, so nothing dead is kept.
    Only for a service's own process: a test process that builds many apps would keep
    their cycles for ever.
    """
    gc.collect()
    gc.freeze()
