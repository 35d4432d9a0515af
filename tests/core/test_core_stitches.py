"""``/api/v1/stitches``: placement on the node holding most jobs, the agent's answer recorded,
and a finished stitch's files, GLB and viewer through the core.

Real gpu agents on loopback hold finished job folders without frames, so their stitch
fails at the fetch, quickly and with a reason: the core's part is placing, forwarding and
recording. The alignment itself is tested in tests/gpu_agent/test_stitch.py. A finished
stitch comes from a FAKE gpu agent (scripted answers), and from a real agent whose work root
holds a stitch's files written by the test (no pycolmap run here).
"""

from __future__ import annotations

import io
import sys
from datetime import datetime, timezone
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
import trimesh
from conftest import TOKEN, processes_matching, serve_app
from core_fakes import AUTH, FakeGpuAgent, add_node, anyio_backend, core_settings, fakes, running_core  # noqa: F401
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse, Response
from sqlmodel import select

from services.core.tables import Job, Stitch
from services.gpu_agent.app import create_app as create_gpu_app
from services.gpu_agent.config import GpuAgentSettings
from shared.jobs import JobState
from shared.plyio import write_ply
from shared.stitches import (StitchCameras, StitchInput, StitchJobCameras, StitchJobResult, StitchRecord,
                             StitchReport, StitchSpec, StitchState)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu_agent"))
from results_media import ring_cameras, write_done_job
from test_viewer import free_port_block, port_free

pytestmark = pytest.mark.anyio


def finish_jobs(store, nodes: dict[int, str]) -> None:
    for _ in nodes:
        store.create_job(videos=[("st", "GX010001.MP4")], backend="colmap", fps=5.0, width=640, max_frames=None)
    with store.session() as session:
        for job in session.exec(select(Job)).all():
            job.state, job.node = JobState.done, nodes[job.id]
            session.add(job)
        session.commit()


async def test_a_stitch_goes_to_the_node_with_most_jobs_and_its_outcome_is_recorded(tmp_path):
    for job_id, folder in ((1, "a"), (2, "b"), (3, "b")):
        write_done_job(tmp_path / folder, job_id, points=100)
    with serve_app(create_gpu_app(GpuAgentSettings(workdir=tmp_path / "a", token=TOKEN))) as url_a, \
         serve_app(create_gpu_app(GpuAgentSettings(workdir=tmp_path / "b", token=TOKEN))) as url_b:
        async with running_core(core_settings(tmp_path)) as (app, client):
            await add_node(client, "gpu-a", "gpu", url_a)
            await add_node(client, "gpu-b", "gpu", url_b)
            finish_jobs(app.state.store, {1: "gpu-a", 2: "gpu-b", 3: "gpu-b"})

            resp = await client.post("/api/v1/stitches", json={"jobs": [1, 2, 3]}, headers=AUTH)
            assert resp.status_code == 201, resp.text
            stitch = resp.json()
            assert stitch["node"] == "gpu-b" and stitch["job_ids"] == [1, 2, 3]
            async with httpx.AsyncClient() as agent_client:
                on_agent = await agent_client.get(f"{url_b}/stitches/{stitch['id']}", headers=AUTH)
            assert on_agent.status_code == 200
            assert on_agent.json()["stitch_id"] == stitch["id"]

            for _ in range(100):
                state = (await client.get(f"/api/v1/stitches/{stitch['id']}")).json()
                if state["state"] in ("done", "failed"):
                    break
                await anyio.sleep(0.1)
            assert state["state"] == "failed"
            assert "frame_000001.jpg unavailable" in state["error"]  # no frames in these folders
            listed = (await client.get("/api/v1/stitches")).json()
            assert [s["id"] for s in listed] == [stitch["id"]] and listed[0]["state"] == "failed"


async def test_unknown_or_unfinished_jobs_are_refused(tmp_path):
    async with running_core(core_settings(tmp_path)) as (app, client):
        await add_node(client, "gpu-a", "gpu", "http://127.0.0.1:9")
        finish_jobs(app.state.store, {1: "gpu-a"})
        app.state.store.create_job(videos=[("st", "GX010002.MP4")], backend="colmap", fps=5.0, width=640,
                                   max_frames=None)
        missing = await client.post("/api/v1/stitches", json={"jobs": [1, 42]}, headers=AUTH)
        assert missing.status_code == 404 and "42" in missing.json()["error"]["message"]
        queued = await client.post("/api/v1/stitches", json={"jobs": [1, 2]}, headers=AUTH)
        assert queued.status_code == 409 and queued.json()["error"]["code"] == "jobs_not_done"
        single = await client.post("/api/v1/stitches", json={"jobs": [1]}, headers=AUTH)
        assert single.status_code == 422
        assert (await client.post("/api/v1/stitches", json={"jobs": [1, 2]})).status_code == 401
        assert (await client.get("/api/v1/stitches/7")).status_code == 404


def stitch_report(stitch_id: int, job_ids=(1, 2), agent_url: str = "http://127.0.0.1:9") -> StitchReport:
    jobs = [StitchJobResult(agent_url=agent_url, job_id=j, matrix=np.eye(4).tolist(), scale=1.0, cross_matches=500,
                            shared_frames=10, rmse=0.01, rmse_relative=0.001) for j in job_ids]
    return StitchReport(stitch_id=stitch_id, created_at=datetime.now(timezone.utc), ply=f"stitch_{stitch_id}.ply",
                        cameras=f"stitch_{stitch_id}_cameras.json", jobs=jobs)


class StitchGpuAgent(FakeGpuAgent):
    """FAKE gpu agent that finishes every stitch at once and serves its files, GLB and viewer."""

    FILES = {"stitch_1.ply": b"ply\nformat binary_little_endian 1.0\n" + bytes(range(200)),
             "stitch_1.json": b'{"stitch_id": 1, "script": "<script>alert(1)</script>"}',
             "stitch_1_cameras.json": b'{"stitch_id": 1, "jobs": []}'}

    def __init__(self, name: str):
        super().__init__(name)
        self.glb_requests: list[bool] = []
        self.viewer = False

    def build_app(self) -> FastAPI:
        app = super().build_app()
        done = {"stitch_id": 1, "state": "done", "message": "done",
                "report": stitch_report(1).model_dump(mode="json")}

        @app.put("/stitches/{stitch_id}")
        @app.get("/stitches/{stitch_id}")
        def stitch(stitch_id: int) -> JSONResponse:
            return JSONResponse(done)

        @app.get("/stitches/{stitch_id}/files/{name}")
        def get_file(stitch_id: int, name: str, range: str | None = Header(None)) -> Response:
            body = self.FILES[name]
            if range:  # only "bytes=A-B" here
                first, last = map(int, range.removeprefix("bytes=").split("-"))
                return Response(body[first:last + 1], status_code=206, media_type="application/octet-stream",
                                headers={"content-range": f"bytes {first}-{last}/{len(body)}"})
            return Response(body, media_type="text/html" if name.endswith(".json") else "application/octet-stream")

        @app.get("/stitches/{stitch_id}/stitch.glb")
        def get_glb(stitch_id: int, safe: bool = False) -> Response:
            self.glb_requests.append(safe)
            return Response(b"glTF\x02\x00\x00\x00" + bytes(16), media_type="model/gltf-binary")

        @app.post("/stitches/{stitch_id}/viewer")
        @app.delete("/stitches/{stitch_id}/viewer")
        def viewer(stitch_id: int) -> JSONResponse:
            if self.viewer is None:
                return JSONResponse({"error": {"code": "no_viewer", "message": "no running viewer"}}, status_code=404)
            self.viewer = not self.viewer or None  # started, then stopped, then none
            return JSONResponse({"stitch_id": stitch_id, "port": 8600 + stitch_id, "pid": 4242,
                                 "idle_timeout_s": 600.0, "started_at": datetime.now(timezone.utc).isoformat()})

        return app


async def test_a_finished_stitch_is_downloadable_and_viewable_through_the_core(tmp_path, fakes):
    gpu = fakes(StitchGpuAgent("g1"))
    async with running_core(core_settings(tmp_path)) as (app, client):
        await add_node(client, "g1", "gpu", gpu.url)
        finish_jobs(app.state.store, {1: "g1", 2: "g1"})
        created = await client.post("/api/v1/stitches", json={"jobs": [1, 2]}, headers=AUTH)
        assert created.status_code == 201 and created.json()["state"] == "done", created.text
        assert created.json()["files"] == ["stitch_1.ply", "stitch_1.json", "stitch_1_cameras.json"]

        ply = await client.get("/api/v1/stitches/1/files/stitch_1.ply")
        assert ply.status_code == 200 and ply.content == StitchGpuAgent.FILES["stitch_1.ply"]
        part = await client.get("/api/v1/stitches/1/files/stitch_1.ply", headers={"Range": "bytes=4-13"})
        assert part.status_code == 206 and part.content == StitchGpuAgent.FILES["stitch_1.ply"][4:14]
        report = await client.get("/api/v1/stitches/1/files/stitch_1.json")
        assert report.headers["content-security-policy"] == "sandbox"  # the agent called it text/html
        assert report.headers["x-content-type-options"] == "nosniff"
        missing = await client.get("/api/v1/stitches/1/files/stitch_1.state.json")
        assert missing.status_code == 404 and "stitch_1.ply" in missing.json()["error"]["message"]
        assert (await client.get("/api/v1/stitches/7/files/stitch_7.ply")).status_code == 404

        glb = await client.get("/api/v1/stitches/1/stitch.glb", params={"safe": "true"})
        assert glb.status_code == 200 and glb.content.startswith(b"glTF")
        assert glb.headers["content-type"] == "model/gltf-binary" and gpu.glb_requests == [True]

        assert (await client.post("/api/v1/stitches/1/viewer")).status_code == 401
        started = await client.post("/api/v1/stitches/1/viewer", headers=AUTH)
        assert started.status_code == 200, started.text
        assert started.json() == {"stitch_id": 1, "port": 8601, "url": "http://127.0.0.1:8601/"}
        stopped = await client.delete("/api/v1/stitches/1/viewer", headers=AUTH)
        assert stopped.status_code == 200 and stopped.json()["port"] == 8601
        again = await client.delete("/api/v1/stitches/1/viewer", headers=AUTH)
        assert again.status_code == 404 and "no running viewer" in again.json()["error"]["message"]

        page = await client.get("/stitches")
        assert page.status_code == 200
        for href in ("/api/v1/stitches/1/files/stitch_1.ply", "/api/v1/stitches/1/stitch.glb",
                     "/api/v1/stitches/1/stitch.glb?safe=true", "/api/v1/stitches/1/files/stitch_1.json",
                     "/api/v1/stitches/1/files/stitch_1_cameras.json"):
            assert f'href="{href}"' in page.text, href
        assert 'data-action="stitch-viewer" data-stitch="1"' in page.text

        gpu.stop()
        down = await client.get("/api/v1/stitches/1/files/stitch_1.ply")
        assert down.status_code == 503 and "gpu node g1 is unreachable" in down.json()["error"]["message"]


def write_done_stitch(root: Path, stitch_id: int, *, points: int) -> None:
    """A finished stitch in a work root, as the agent leaves one (no alignment run)."""
    rng = np.random.default_rng(stitch_id)
    write_ply(root / f"stitch_{stitch_id}.ply", rng.uniform(-3, 3, (points, 3)).astype(np.float32),
              rng.integers(0, 256, (points, 3), dtype=np.uint8))
    cameras = StitchCameras(stitch_id=stitch_id, jobs=[StitchJobCameras(job_id=j, cameras=ring_cameras(6))
                                                       for j in (1, 2)])
    (root / f"stitch_{stitch_id}_cameras.json").write_text(cameras.model_dump_json())
    report = stitch_report(stitch_id)
    (root / f"stitch_{stitch_id}.json").write_text(report.model_dump_json())
    spec = StitchSpec(jobs=[StitchInput(agent_url="http://127.0.0.1:9", job_id=j) for j in (1, 2)])
    state = StitchState(stitch_id=stitch_id, state="done", message="done", report=report)
    (root / f"stitch_{stitch_id}.state.json").write_text(StitchRecord(spec=spec, state=state).model_dump_json())


async def test_a_stitch_on_a_real_agent_through_the_core(tmp_path):
    workdir = tmp_path / "a"
    write_done_job(workdir, 1, points=100)
    write_done_job(workdir, 2, points=100)
    write_done_stitch(workdir, 1, points=3000)
    base = free_port_block()
    settings = GpuAgentSettings(workdir=workdir, token=TOKEN, viewer_host="127.0.0.1", viewer_base_port=base,
                                stitch_viewer_base_port=base + 2)
    with serve_app(create_gpu_app(settings)) as url:
        async with running_core(core_settings(tmp_path)) as (app, client):
            await add_node(client, "gpu-a", "gpu", url)
            finish_jobs(app.state.store, {1: "gpu-a", 2: "gpu-a"})
            with app.state.store.session() as session:  # placed earlier; the agent holds it as done
                now = datetime.now(timezone.utc)
                session.add(Stitch(state=JobState.reconstructing, node="gpu-a", job_ids=[1, 2], created_at=now,
                                   updated_at=now))
                session.commit()
            read = await client.get("/api/v1/stitches/1")
            assert read.json()["state"] == "done" and "stitch_1_cameras.json" in read.json()["files"], read.text

            ply = await client.get("/api/v1/stitches/1/files/stitch_1.ply")
            assert ply.status_code == 200 and ply.content == (workdir / "stitch_1.ply").read_bytes()
            assert ply.headers["content-security-policy"] == "sandbox"
            glb = await client.get("/api/v1/stitches/1/stitch.glb", timeout=120)
            assert glb.status_code == 200, glb.text
            scene = trimesh.load(io.BytesIO(glb.content), file_type="glb", force="scene")
            assert [len(g.vertices) for g in scene.geometry.values() if isinstance(g, trimesh.PointCloud)] == [3000]

            started = await client.post("/api/v1/stitches/1/viewer", headers=AUTH, timeout=90)
            assert started.status_code == 200, started.text
            assert started.json()["url"] == f"http://127.0.0.1:{base + 3}/"
            async with httpx.AsyncClient() as browser:
                assert "viser" in (await browser.get(started.json()["url"], timeout=30)).text.lower()
            stopped = await client.delete("/api/v1/stitches/1/viewer", headers=AUTH, timeout=30)
            assert stopped.status_code == 200
            assert port_free(base + 3) and processes_matching(f"viewer_runner --dir {workdir}") == []
