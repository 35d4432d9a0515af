"""Viser viewers per job: real runner processes on loopback ports, started and stopped by the agent."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket

import httpx
import numpy as np
import pytest
from conftest import TOKEN, processes_matching, serve_app, wait_until
from results_media import write_done_job

from services.gpu_agent.app import create_app
from services.gpu_agent.config import GpuAgentSettings

AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM = "/usr/bin/chromium"


def free_port_block(size: int = 8) -> int:
    """A base port such that base+1 … base+size were free a moment ago."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size < 65535 and all(port_free(base + i) for i in range(1, size + 1)):
            return base
    raise RuntimeError("no block of free ports")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def agent_with_jobs(tmp_path, *job_ids, **settings):
    workdir = tmp_path / "frames"
    for job_id in job_ids:
        write_done_job(workdir, job_id, points=20_000, frames=10)
    base = free_port_block()
    config = GpuAgentSettings(workdir=workdir, token=TOKEN, viewer_host="127.0.0.1", viewer_base_port=base,
                              **settings)
    with serve_app(create_app(config)) as url:
        yield url, base, workdir


def runners(workdir) -> list[int]:
    return processes_matching(f"viewer_runner --dir {workdir}")


def test_viewer_starts_serves_viser_and_stops_freeing_its_port(tmp_path):
    with agent_with_jobs(tmp_path, 3) as (url, base, workdir):
        resp = httpx.post(f"{url}/jobs/3/viewer", headers=AUTH, timeout=90)
        assert resp.status_code == 201, resp.text
        info = resp.json()
        assert info["port"] == base + 3 and info["job_id"] == 3
        page = httpx.get(f"http://127.0.0.1:{info['port']}/", timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower() and "viser" in page.text.lower()
        assert not port_free(base + 3)
        status = httpx.get(f"{url}/status", headers=AUTH).json()
        assert [v["port"] for v in status["viewers"]] == [base + 3]
        again = httpx.post(f"{url}/jobs/3/viewer", headers=AUTH, timeout=90)
        assert again.status_code == 200 and again.json()["pid"] == info["pid"]

        stopped = httpx.delete(f"{url}/jobs/3/viewer", headers=AUTH, timeout=30)
        assert stopped.status_code == 200
        assert port_free(base + 3)
        assert runners(workdir) == []
        assert httpx.get(f"{url}/status", headers=AUTH).json()["viewers"] == []
        assert httpx.delete(f"{url}/jobs/3/viewer", headers=AUTH).status_code == 404


def test_a_taken_port_is_a_409_saying_so(tmp_path):
    with agent_with_jobs(tmp_path, 2) as (url, base, workdir):
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", base + 2))
            squatter.listen()
            resp = httpx.post(f"{url}/jobs/2/viewer", headers=AUTH, timeout=90)
        assert resp.status_code == 409, resp.text
        assert resp.json()["error"]["code"] == "viewer_port_taken"
        assert f"port {base + 2} is taken" in resp.json()["error"]["message"]
        assert httpx.get(f"{url}/status", headers=AUTH).json()["viewers"] == []
        assert runners(workdir) == []


def test_viewers_past_the_cap_are_refused_and_deleting_a_job_stops_its_viewer(tmp_path):
    with agent_with_jobs(tmp_path, 1, 2, viewer_max=1) as (url, base, workdir):
        assert httpx.post(f"{url}/jobs/1/viewer", headers=AUTH, timeout=90).status_code == 201
        refused = httpx.post(f"{url}/jobs/2/viewer", headers=AUTH, timeout=90)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "too_many_viewers"
        deleted = httpx.delete(f"{url}/jobs/1", params={"purge": "true"}, headers=AUTH, timeout=30)
        assert deleted.status_code == 200
        assert httpx.get(f"{url}/status", headers=AUTH).json()["viewers"] == []
        assert port_free(base + 1) and runners(workdir) == []
        assert httpx.post(f"{url}/jobs/99/viewer", headers=AUTH).status_code == 404


def test_idle_viewer_stops_itself_and_agent_shutdown_stops_the_rest(tmp_path):
    with agent_with_jobs(tmp_path, 4, 5, viewer_idle_timeout_s=1.5) as (url, base, workdir):
        assert httpx.post(f"{url}/jobs/4/viewer", headers=AUTH, timeout=90).status_code == 201
        wait_until(lambda: httpx.get(f"{url}/status", headers=AUTH).json()["viewers"] == [],
                   timeout_s=30, what="the idle viewer to stop")
        assert port_free(base + 4)
    with agent_with_jobs(tmp_path, 5) as (url, base, workdir):
        assert httpx.post(f"{url}/jobs/5/viewer", headers=AUTH, timeout=90).status_code == 201
        assert len(runners(workdir)) == 1
    assert runners(workdir) == []
    assert port_free(base + 5)


def test_chromium_draws_the_viewer_canvas(tmp_path):
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (Debian's chromium package): the browser check cannot run")
    playwright = pytest.importorskip("playwright.sync_api", reason="pip package playwright is not installed")
    with agent_with_jobs(tmp_path, 6) as (url, _, workdir):
        verdict = {"status": "warn", "reasons": [{"code": "blurry_frames", "message": "12% of frames are blurry"}]}
        (workdir / "job_6" / "qc.json").write_text(json.dumps({"verdict": verdict}))
        port = httpx.post(f"{url}/jobs/6/viewer", headers=AUTH, timeout=90).json()["port"]
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
                page.wait_for_function(  # software WebGL is slow: allow for it
                    "() => [...document.querySelectorAll('canvas')].some(c => c.width > 0 && c.height > 0)",
                    timeout=120_000)
                page.get_by_text("QC verdict").wait_for(timeout=60_000)
                assert "12% of frames are blurry" in page.content()
            finally:
                browser.close()


def test_frustum_thumbnails_are_small_rgb_pictures_of_the_frame(tmp_path):
    from PIL import Image

    from services.gpu_agent.viewer_runner import THUMBNAIL_WIDTH, thumbnail

    frame = np.zeros((360, 640, 3), np.uint8)
    frame[:, :320] = (255, 0, 0)  # left half red
    Image.fromarray(frame).save(tmp_path / "frame_000001.jpg", quality=95)
    small = thumbnail(tmp_path / "frame_000001.jpg")
    assert small.shape == (90, THUMBNAIL_WIDTH, 3) and small.dtype == np.uint8
    assert small[45, 10, 0] > 200 and small[45, 10, 2] < 50 and small[45, -10, 0] < 50
    assert thumbnail(tmp_path / "missing.jpg") is None
