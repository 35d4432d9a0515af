"""``/api/v1/stitches``: placement on the node holding most jobs, the agent's answer recorded.

Real gpu agents on loopback hold finished job folders without frames, so their stitch
fails at the fetch, quickly and with a reason: the core's part is placing, forwarding and
recording. The alignment itself is tested in tests/gpu_agent/test_stitch.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import TOKEN, serve_app
from core_fakes import AUTH, add_node, anyio_backend, core_settings, running_core  # noqa: F401
from sqlmodel import select

from services.core.tables import Job
from services.gpu_agent.app import create_app as create_gpu_app
from services.gpu_agent.config import GpuAgentSettings
from shared.jobs import JobState

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu_agent"))
from results_media import write_done_job

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
