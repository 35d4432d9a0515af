"""A real browser (Debian's chromium, driven by Playwright) and a served core with FAKE agents,
for the dashboard's tests.

Playwright's own browser download is never used: ``/usr/bin/chromium`` comes from Debian
(``scripts/setup.sh`` installs it). Without it the tests skip, or fail under ``CI=true``.
The core runs for real on loopback with its scheduler loop; its gpu and storage agents are
the scripted fakes of ``core_fakes`` (no GPU here). Screenshots go to
``$COSMA_TEST_ARTIFACTS/dashboard`` (default: pytest's temporary folder).
"""

from __future__ import annotations

import mimetypes
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from fastapi import Depends, FastAPI, Request

from conftest import TOKEN, serve_app
from core_fakes import AUTH, FakeGpuAgent, FakeStorageAgent, core_settings, video
from shared.auth import BearerAuth
from shared.jobs import JobState
from shared.errors import NotFound
from shared.stitches import StitchSpec, StitchState
from shared.videos import RootStatus, StorageStatus

from services.core.app import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Software rendering on a small CI machine is slow: generous waits, few page loads.
TIMEOUT_MS = 20_000
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
HOSTILE = "<img src=x onerror=alert(1)>.MP4"


def require_browser() -> None:
    """Skip (fail under CI=true) when chromium or the playwright package is missing."""
    problem = None
    if not os.access(CHROMIUM, os.X_OK):
        problem = f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/setup.sh does)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is missing: pip install -e '.[test]'"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem)
        pytest.skip(problem)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One chromium per test module, with a fresh profile; each test opens its own page."""
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport=LAPTOP,
        )
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    base = os.environ.get("COSMA_TEST_ARTIFACTS")
    folder = Path(base) / "dashboard" if base else tmp_path_factory.mktemp("dashboard-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class DashboardGpuAgent(FakeGpuAgent):
    """FAKE gpu agent whose files carry the content type the real agent's ``FileResponse``
    guesses from the name (a plot must arrive as ``image/svg+xml`` for an ``<img>`` to show
    it), and which takes stitches: the test scripts their state in ``stitches``."""

    def __init__(self, name: str, **kwargs):
        super().__init__(name, **kwargs)
        self.stitch_specs: dict[int, StitchSpec] = {}
        self.stitches: dict[int, StitchState] = {}

    def build_app(self) -> FastAPI:
        app = super().build_app()

        @app.put("/stitches/{stitch_id}", dependencies=[Depends(BearerAuth(TOKEN))], status_code=202)
        def put_stitch(stitch_id: int, spec: StitchSpec) -> StitchState:
            self.stitch_specs[stitch_id] = spec
            return self.stitches.setdefault(stitch_id, StitchState(stitch_id=stitch_id, state="running",
                                                                   message="matching frames"))

        @app.get("/stitches/{stitch_id}", dependencies=[Depends(BearerAuth(TOKEN))])
        def get_stitch(stitch_id: int) -> StitchState:
            if stitch_id not in self.stitches:
                raise NotFound(f"no stitch {stitch_id}")
            return self.stitches[stitch_id]

        @app.middleware("http")
        async def _content_type(request: Request, call_next):
            response = await call_next(request)
            guessed = mimetypes.guess_type(request.url.path)[0]
            if "/files/" in request.url.path and response.status_code == 200 and guessed:
                response.headers["content-type"] = guessed
            return response

        return app


class DashboardStorageAgent(FakeStorageAgent):
    """FAKE storage agent that also reports its disks (``GET /status``)."""

    def build_app(self) -> FastAPI:
        app = super().build_app()

        @app.get("/status", dependencies=[Depends(BearerAuth(TOKEN))])
        def get_status() -> StorageStatus:
            root = RootStatus(index=0, path="/mnt/portablessd", disk_total_mib=1_000_000, disk_free_mib=250_000)
            return StorageStatus(node_id="st", roots=[root], cpu_load_1m=0.5, cpu_count=8,
                                 extractions_running=1, extractions_max=2)

        return app


@dataclass
class Cluster:
    url: str
    api: httpx.Client
    gpu: FakeGpuAgent
    storage: FakeStorageAgent

    def submit(self, path: str = "100GOPRO/GX010042.MP4") -> int:
        resp = self.api.post("/api/v1/jobs", json={"videos": [{"storage": "st", "path": path}]}, headers=AUTH)
        assert resp.status_code == 201, resp.text
        return resp.json()["id"]

    def job(self, job_id: int) -> dict:
        return self.api.get(f"/api/v1/jobs/{job_id}").json()

    def wait_job(self, job_id: int, predicate, what: str, timeout_s: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if predicate(job):
                return job
            time.sleep(0.1)
        pytest.fail(f"job {job_id}: timed out waiting for {what}; it is {self.job(job_id)}")

    def finished_job(self) -> int:
        """A job the FAKE gpu agent ran to the end."""
        job_id = self.submit()
        self.wait_placed(job_id)
        self.gpu.report(job_id, JobState.done, "done", 1.0, files=["reconstruction.ply", "cameras.json"])
        self.wait_job(job_id, lambda j: j["state"] == "done", "done")
        return job_id

    def wait_placed(self, job_id: int) -> None:
        """Until the core has placed the job and the FAKE gpu agent holds it."""
        self.wait_job(job_id, lambda j: j["state"] == "assigned" and job_id in self.gpu.jobs, "its placement")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A core on loopback with its scheduler ticking fast, one FAKE gpu agent and one FAKE
    storage agent (two GoPro chapters and a file with a hostile name)."""
    gpu = DashboardGpuAgent("gpu-1", gpus_free_mib=[20_000]).start()
    storage = DashboardStorageAgent(videos=[video("100GOPRO/GX010042.MP4"), video("100GOPRO/GX020042.MP4"),
                                       video(HOSTILE)]).start()
    settings = core_settings(tmp_path_factory.mktemp("core"), scheduler_enabled=True, tick_interval_s=0.2)
    try:
        with serve_app(create_app(settings)) as url, httpx.Client(base_url=url, timeout=20) as api:
            for name, role, node_url in (("gpu-1", "gpu", gpu.url), ("st", "storage", storage.url)):
                resp = api.post("/api/v1/nodes", json={"name": name, "role": role, "url": node_url}, headers=AUTH)
                assert resp.status_code == 201, resp.text
            yield Cluster(url, api, gpu, storage)
    finally:
        gpu.stop()
        storage.stop()
