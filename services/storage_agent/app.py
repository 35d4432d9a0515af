"""The storage agent's FastAPI app: video catalog and frame extraction for the roots it is given."""

from __future__ import annotations

import contextlib
import logging

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from shared.auth import BearerAuth
from shared.errors import error_response
from shared.service import make_app
from services.storage_agent.api import status, videos
from services.storage_agent.api.deps import StorageAgent
from services.storage_agent.catalog import Catalog
from services.storage_agent.config import StorageSettings
from services.storage_agent.frames import Busy, Extractor
from services.storage_agent.metrics import install_storage_metrics
from services.storage_agent.paths import StorageRoots
from services.storage_agent.probecache import ProbeCache
from services.storage_agent.segments import cpu_cores
from services.storage_agent.thumbnail import Thumbnailer

log = logging.getLogger(__name__)


def create_app(settings: StorageSettings) -> FastAPI:
    """An app serving ``settings.roots``; every route but ``/health`` needs the cluster token."""
    auth = BearerAuth(settings.resolved_token())
    roots = StorageRoots(settings.roots)
    if not roots.real:
        log.warning("no storage roots configured (--roots FOLDER): the catalog will be empty")
    agent = StorageAgent(
        node_id=settings.node_id,
        roots=roots,
        catalog=Catalog(roots, probe_timeout_s=settings.probe_timeout_s,
                        probe_concurrency=settings.probe_concurrency, cache=ProbeCache(settings.state_dir)),
        extractor=Extractor(max_concurrent=settings.max_concurrent_extractions,
                            wait_s=settings.extraction_wait_s, stall_timeout_s=settings.stall_timeout_s,
                            max_queued=settings.max_queued_extractions,
                            decode_processes=settings.resolved_decode_processes(cpu_cores()),
                            min_segment_s=settings.min_segment_s,
                            segment_buffer_bytes=settings.segment_buffer_mib << 20,
                            probe_timeout_s=settings.probe_timeout_s),
        thumbnailer=Thumbnailer(concurrency=settings.probe_concurrency, timeout_s=settings.probe_timeout_s),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        try:
            yield
        finally:
            # Streams still open at shutdown must not leave ffmpeg behind.
            await agent.extractor.close_all()
            agent.catalog.cache.close()

    app = make_app(title="COSMA QC storage agent", role="storage", node_id=settings.node_id, lifespan=lifespan)
    app.state.agent = agent

    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message,
                              headers={"Retry-After": str(exc.retry_after_s)})

    install_storage_metrics(app.state.metrics, agent)
    for router in (videos.router, status.router):
        app.include_router(router, dependencies=[Depends(auth)])
    return app
