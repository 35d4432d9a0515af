"""The core service: REST API, job list page and the scheduler loop, in one FastAPI app."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio.to_thread
from fastapi import FastAPI

from shared.auth import BearerAuth
from shared.service import make_app

from services.core.agents import AgentClient
from services.core.api import catalog, events, jobs, nodes, pages
from services.core.api import stitches as stitches_api
from services.core.config import CoreSettings
from services.core.metrics import install_core_metrics
from services.core.models import API_PREFIX
from services.core.scheduler import Scheduler
from services.core.store import Store, make_engine

log = logging.getLogger(__name__)


def create_app(settings: CoreSettings) -> FastAPI:
    """Build the core app: database engine and tables, agent client, scheduler, routes.

    The scheduler loop starts with the app's lifespan when ``settings.scheduler_enabled``;
    either way ``app.state.scheduler.tick()`` runs one round by hand.
    """
    token = settings.resolved_token()
    store = Store(make_engine(settings.resolved_database_url()), read_threads=settings.read_threads)
    store.migrate()
    agents = AgentClient(token, poll_timeout_s=settings.poll_timeout_s,
                         request_timeout_s=settings.request_timeout_s)
    scheduler = Scheduler(store, agents, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Before serving: the first tick would otherwise pay the first compilation of its SQL
        # and anyio's thread backend (a fresh core's first tick cost 2x a warm one: bench/RESULTS.md).
        try:
            await anyio.to_thread.run_sync(store.warm_up)
            await store.read(store.list_job_rows, limit=1)  # the reader thread and its connection
        except Exception:  # the first tick reports a database that does not answer
            log.warning("warming up the store failed; starting anyway", exc_info=True)
        task = None
        if settings.scheduler_enabled:
            task = asyncio.create_task(scheduler.run_forever(), name="core-scheduler")
        app.state.scheduler_task = task
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await agents.aclose()
            store.close()

    app = make_app(title="COSMA QC core", role="core", node_id=settings.node_id, lifespan=lifespan)
    app.state.settings = settings
    app.state.store = store
    app.state.agents = agents
    app.state.scheduler = scheduler
    install_core_metrics(app.state.metrics, store, scheduler.metrics)
    app.state.scheduler_task = None
    app.state.auth = BearerAuth(token)
    app.include_router(jobs.router, prefix=API_PREFIX)
    app.include_router(nodes.router, prefix=API_PREFIX)
    app.include_router(catalog.router, prefix=API_PREFIX)
    app.include_router(events.router, prefix=API_PREFIX)
    app.include_router(stitches_api.router, prefix=API_PREFIX)
    app.include_router(pages.router)
    return app
