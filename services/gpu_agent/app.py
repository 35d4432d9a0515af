"""The gpu agent's FastAPI app."""

from __future__ import annotations

import contextlib

from fastapi import Depends, FastAPI

from shared.auth import BearerAuth
from shared.service import make_app

from services.gpu_agent.api.results import router as results_router
from services.gpu_agent.api.routes import router
from services.gpu_agent.config import GpuAgentSettings
from services.gpu_agent.jobs import JobManager
from services.gpu_agent.metrics import install_gpu_metrics
from services.gpu_agent.nvml import GpuProbe, NvmlProbe


def create_app(settings: GpuAgentSettings, *, probe: GpuProbe | None = None) -> FastAPI:
    token = settings.resolved_token()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        manager = JobManager(settings, token, app.state.probe)
        app.state.manager = manager
        await manager.start()
        try:
            yield
        finally:
            await manager.stop()

    app = make_app(title="COSMA QC gpu agent", role="gpu", node_id=settings.node_id, lifespan=lifespan)
    app.state.probe = probe or NvmlProbe()
    install_gpu_metrics(app)
    app.include_router(router, dependencies=[Depends(BearerAuth(token))])
    app.include_router(results_router, dependencies=[Depends(BearerAuth(token))])
    return app
