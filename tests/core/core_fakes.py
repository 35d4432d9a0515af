"""Scripted FAKE agents and a core harness for the core's tests.

The fakes speak the gpu and storage agents' HTTP APIs from memory, so a test can decide
what each agent reports and see what the core sent it. They are not the real agents (those
have their own tests, and tests/integration runs all three for real); here the core's own
decisions are under test, on real uvicorn servers over loopback.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask

from conftest import TOKEN, serve_app
from shared.auth import BearerAuth
from shared.errors import Conflict, NotFound
from shared.gpu import AgentStatus, BackendInfo, GpuInfo
from shared.jobs import AgentJob, JobSpec, JobState
from shared.service import make_app
from shared.videos import VideoInfo, VideoList

from services.core.app import create_app
from services.core.config import CoreSettings
from services.core.store import utcnow

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Served:
    """A fake served by real uvicorn on loopback; ``stop()`` makes it unreachable."""

    def __init__(self) -> None:
        self.url = ""
        self._stack: contextlib.ExitStack | None = None

    def build_app(self) -> FastAPI:
        raise NotImplementedError

    def start(self) -> "_Served":
        self._stack = contextlib.ExitStack()
        self.url = self._stack.enter_context(serve_app(self.build_app()))
        return self

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


class FakeGpuAgent(_Served):
    """FAKE gpu agent: holds job specs in memory; the test scripts what it reports."""

    def __init__(self, name: str, *, gpus_free_mib: list[int] | None = None,
                 backends: tuple[str, ...] = ("colmap",)):
        super().__init__()
        self.name = name
        self.gpus_free_mib = list(gpus_free_mib or [])
        self.backends = backends
        self.jobs: dict[int, AgentJob] = {}
        self.puts: list[JobSpec] = []
        self.deletes: list[int] = []
        self.purges: list[int] = []
        self.files: dict[str, bytes] = {}
        #: When True, every request is answered 503, like an agent that has lost its footing.
        self.silent = False
        #: Requests received, answered or not.
        self.requests = 0
        #: (status, message) to answer every PUT with instead of accepting it.
        self.refuse_put: tuple[int, str] | None = None

    def status(self) -> AgentStatus:
        gpus = [GpuInfo(index=i, name="FAKE GPU", uuid=f"GPU-{self.name}-{i}", memory_total_mib=24576,
                        memory_used_mib=24576 - free, memory_free_mib=free)
                for i, free in enumerate(self.gpus_free_mib)]
        backends = [BackendInfo(name=b, available=b in self.backends, device="gpu" if b == "lingbot" else "cpu",
                                reason=None if b in self.backends else "not installed")
                    for b in ("colmap", "lingbot")]
        return AgentStatus(node_id=self.name, gpus=gpus, backends=backends, cpu_load_1m=0.1, cpu_count=4,
                           disk_free_mib=100_000, jobs=list(self.jobs.values()))

    def report(self, job_id: int, state: JobState, stage: str, progress: float, **fields) -> None:
        """Make the agent report the job like this from now on."""
        job = self.jobs[job_id]
        self.jobs[job_id] = job.model_copy(update={"state": state, "stage": stage, "progress": progress,
                                                   "updated_at": utcnow(), **fields})

    def build_app(self) -> FastAPI:
        app = make_app(title=f"FAKE gpu agent {self.name}", role="gpu", node_id=self.name)
        auth = Depends(BearerAuth(TOKEN))

        @app.middleware("http")
        async def _silence(request: Request, call_next):
            self.requests += 1
            if self.silent:
                return JSONResponse({"error": {"code": "down", "message": "fake outage"}}, status_code=503)
            return await call_next(request)

        @app.get("/status", dependencies=[auth])
        def get_status() -> AgentStatus:
            return self.status()

        @app.put("/jobs/{job_id}", dependencies=[auth])
        def put_job(job_id: int, spec: JobSpec) -> JSONResponse:
            self.puts.append(spec)
            if self.refuse_put:
                code, message = self.refuse_put
                return JSONResponse({"error": {"code": "invalid", "message": message}}, status_code=code)
            held = self.jobs.get(job_id)
            if held is not None and held.attempt > spec.attempt:
                raise Conflict(f"holding attempt {held.attempt}")
            if held is not None and held.attempt == spec.attempt:
                return JSONResponse(held.model_dump(mode="json"), status_code=200)
            now = utcnow()
            job = AgentJob(job_id=job_id, attempt=spec.attempt, spec=spec, state=JobState.assigned,
                           stage="accepted", progress=0.0, created_at=now, updated_at=now)
            self.jobs[job_id] = job
            return JSONResponse(job.model_dump(mode="json"), status_code=201)

        @app.get("/jobs/{job_id}", dependencies=[auth])
        def get_job(job_id: int) -> AgentJob:
            if job_id not in self.jobs:
                raise NotFound(f"no job {job_id}")
            return self.jobs[job_id]

        @app.delete("/jobs/{job_id}", dependencies=[auth])
        def delete_job(job_id: int, purge: bool = False) -> AgentJob:
            self.deletes.append(job_id)
            if job_id not in self.jobs:
                raise NotFound(f"no job {job_id}")
            self.report(job_id, JobState.cancelled, "cancelled", 0.0)
            if purge:
                self.purges.append(job_id)
                return self.jobs.pop(job_id)
            return self.jobs[job_id]

        @app.get("/jobs/{job_id}/files/{name}", dependencies=[auth])
        def get_file(job_id: int, name: str) -> Response:
            if job_id not in self.jobs or name not in self.files:
                raise NotFound(f"no file {name}")
            # Served from disk by Starlette's FileResponse, as the real agent does (Range included).
            folder = Path(tempfile.mkdtemp(prefix="fake-gpu-file-"))
            (folder / name).write_bytes(self.files[name])
            return FileResponse(folder / name, media_type="application/octet-stream",
                                background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

        return app


class FakeStorageAgent(_Served):
    """FAKE storage agent: a catalog from a list (and ``GET /recordings`` if given one)."""

    def __init__(self, videos: list[VideoInfo] | None = None, recordings: list[dict] | None = None):
        super().__init__()
        self.videos = videos if videos is not None else [video("GX010042.MP4", duration_s=10.0)]
        self.recordings = recordings
        #: An HTTP status to answer ``GET /videos`` with instead of the catalog.
        self.fail_with: int | None = None

    def build_app(self) -> FastAPI:
        app = make_app(title="FAKE storage agent", role="storage", node_id="fake-storage")

        @app.get("/videos", dependencies=[Depends(BearerAuth(TOKEN))])
        def list_videos():
            if self.fail_with:
                return JSONResponse({"error": {"code": "broken", "message": "fake catalog failure"}},
                                    status_code=self.fail_with)
            return VideoList(videos=self.videos)

        @app.get("/recordings", dependencies=[Depends(BearerAuth(TOKEN))])
        def list_recordings():
            if self.recordings is None:
                raise NotFound("no such route")
            return {"recordings": self.recordings}

        return app


def video(path: str, *, duration_s: float | None = 10.0, error: str | None = None) -> VideoInfo:
    return VideoInfo(path=path, root=0, size_bytes=1000, mtime=0.0, duration_s=duration_s,
                     fps=30.0, width=1920, height=1080, codec="h264", error=error)


class FakeClock:
    """Scheduler time the test moves by hand, so leases expire without sleeping."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def core_settings(tmp_path, **overrides) -> CoreSettings:
    values = dict(token=TOKEN, data_dir=tmp_path / "core", node_id="core-test", scheduler_enabled=False,
                  poll_timeout_s=2.0, request_timeout_s=5.0)
    return CoreSettings(**{**values, **overrides})


@contextlib.asynccontextmanager
async def running_core(settings: CoreSettings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The core app with its lifespan entered, and a client calling it in this event loop."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://core") as client:
            yield app, client


async def add_node(client: httpx.AsyncClient, name: str, role: str, url: str) -> None:
    resp = await client.post("/api/v1/nodes", json={"name": name, "role": role, "url": url}, headers=AUTH)
    assert resp.status_code == 201, resp.text


async def submit(client: httpx.AsyncClient, path: str = "GX010042.MP4", storage: str = "st", **params) -> dict:
    body = {"videos": [{"storage": storage, "path": path}], **params}
    resp = await client.post("/api/v1/jobs", json=body, headers=AUTH)
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.fixture
def fakes():
    """Start fakes with ``fakes(fake)``; all are stopped at the end of the test."""
    started = []

    def start(fake):
        started.append(fake.start())
        return fake

    yield start
    for fake in started:
        fake.stop()


async def job_of(client: httpx.AsyncClient, job_id: int) -> dict:
    resp = await client.get(f"/api/v1/jobs/{job_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()
