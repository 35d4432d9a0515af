"""What every service's FastAPI app has: ``/health``, ``/metrics``, the API version header, typed errors."""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI, Request

from shared import API_VERSION, API_VERSION_HEADER, __version__
from shared.errors import install_error_handlers
from shared.logs import configure_logging
from shared.health import Health, Role
from shared.metrics import CollectorRegistry, install_metrics


def make_app(*, title: str, role: Role, node_id: str, lifespan: Any = None,
             metrics: CollectorRegistry | None = None) -> FastAPI:
    """A service's app; ``app.state.metrics`` is its Prometheus registry (``metrics`` or a new one)."""
    app = FastAPI(title=title, version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    install_metrics(app, role=role, node_id=node_id, version=__version__, registry=metrics)

    @app.middleware("http")
    async def _version_header(request: Request, call_next):
        response = await call_next(request)
        response.headers[API_VERSION_HEADER] = API_VERSION
        return response

    @app.get("/health", tags=["meta"])
    async def get_health() -> Health:
        """Liveness, version, node id and role; needs no token."""
        return Health(role=role, version=__version__, node_id=node_id, api_version=API_VERSION)

    return app


def serve(app: FastAPI, host: str, port: int, log_level: str = "info", log_format: str = "text") -> None:
    log_config = configure_logging(log_level, log_format)
    uvicorn.run(app, host=host, port=port, log_level=log_level, log_config=log_config,
                timeout_graceful_shutdown=5)
