"""The routes the dashboard adds to the API: the job's GLB through the core, its viewer."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from core_fakes import AUTH, FakeGpuAgent, anyio_backend, core_settings, running_core  # noqa: F401
from services.core.store import utcnow

pytestmark = pytest.mark.anyio

GLB = b"glTF\x02\x00\x00\x00" + bytes(64)


class GlbGpuAgent(FakeGpuAgent):
    """FAKE gpu agent that also builds GLBs (job 1 only) and starts viewers on a given port."""

    def __init__(self, name: str):
        super().__init__(name)
        self.glb_requests: list[dict] = []

    def build_app(self) -> FastAPI:
        app = super().build_app()

        @app.get("/jobs/{job_id}/reconstruction.glb")
        def get_glb(job_id: int, safe: bool = False) -> Response:
            self.glb_requests.append({"job_id": job_id, "safe": safe})
            if job_id != 1:
                return JSONResponse({"error": {"code": "no_reconstruction", "message": "no reconstruction.ply"}},
                                    status_code=404)
            return Response(GLB, media_type="model/gltf-binary",
                            headers={"content-disposition": 'attachment; filename="job_1_reconstruction.glb"'})

        @app.post("/jobs/{job_id}/viewer")
        def start_viewer(job_id: int) -> JSONResponse:
            info = {"job_id": job_id, "port": 8100 + job_id + 7, "pid": 4242, "idle_timeout_s": 600.0,
                    "started_at": datetime.now(timezone.utc).isoformat()}
            return JSONResponse(info, status_code=201)

        return app


async def test_the_glb_and_the_viewer_come_through_the_core(tmp_path):
    gpu = GlbGpuAgent("g1").start()
    try:
        async with running_core(core_settings(tmp_path)) as (app, client):
            store = app.state.store
            await client.post("/api/v1/nodes", json={"name": "g1", "role": "gpu", "url": gpu.url}, headers=AUTH)
            ids = [store.create_job(videos=[("st", f"{i}.MP4")], backend="colmap", fps=2, width=640,
                                    max_frames=None).id for i in (1, 2, 3)]
            for job_id in ids[:2]:
                store.assign(job_id, attempt=1, node="g1", lease_s=30, now=utcnow())

            glb = await client.get("/api/v1/jobs/1/reconstruction.glb?safe=true")
            assert glb.status_code == 200 and glb.content == GLB
            assert glb.headers["content-type"] == "model/gltf-binary"
            assert "job_1_reconstruction.glb" in glb.headers["content-disposition"]
            assert gpu.glb_requests == [{"job_id": 1, "safe": True}]

            missing = await client.get("/api/v1/jobs/2/reconstruction.glb")
            assert missing.status_code == 404 and "no reconstruction.ply" in missing.json()["error"]["message"]
            unplaced = await client.get("/api/v1/jobs/3/reconstruction.glb")
            assert unplaced.status_code == 404 and "not placed" in unplaced.json()["error"]["message"]

            assert (await client.post("/api/v1/jobs/1/viewer")).status_code == 401
            viewer = await client.post("/api/v1/jobs/1/viewer", headers=AUTH)
            assert viewer.status_code == 200
            assert viewer.json() == {"job_id": 1, "port": 8108, "url": "http://127.0.0.1:8108/"}

            gpu.stop()
            down = await client.get("/api/v1/jobs/1/reconstruction.glb")
            assert down.status_code == 503 and "unreachable" in down.json()["error"]["message"]
    finally:
        gpu.stop()
