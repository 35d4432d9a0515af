"""The routes the dashboard adds to the API: the job's GLB through the core, its viewer, thumbnails."""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import quote

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from core_fakes import AUTH, FakeGpuAgent, FakeStorageAgent, anyio_backend, core_settings, running_core  # noqa: F401
from services.core.store import utcnow

pytestmark = pytest.mark.anyio

GLB = b"glTF\x02\x00\x00\x00" + bytes(64)
JPEG = b"\xff\xd8\xff\xe0" + bytes(32)


class GlbGpuAgent(FakeGpuAgent):
    """FAKE gpu agent that also builds GLBs (job 1 only) and starts viewers on a given port."""

    def __init__(self, name: str):
        super().__init__(name)
        self.glb_requests: list[dict] = []
        self.viewers: dict[int, dict] = {}

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
            self.viewers[job_id] = info
            return JSONResponse(info, status_code=201)

        @app.delete("/jobs/{job_id}/viewer")
        def stop_viewer(job_id: int) -> JSONResponse:
            if job_id not in self.viewers:
                return JSONResponse({"error": {"code": "not_found", "message": f"no viewer of job {job_id} runs"}},
                                    status_code=404)
            return JSONResponse(self.viewers.pop(job_id))

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
            assert (await client.delete("/api/v1/jobs/1/viewer")).status_code == 401
            stopped = await client.delete("/api/v1/jobs/1/viewer", headers=AUTH)
            assert stopped.status_code == 200 and stopped.json()["port"] == 8108 and gpu.viewers == {}
            again = await client.delete("/api/v1/jobs/1/viewer", headers=AUTH)
            assert again.status_code == 404 and "no viewer of job 1 runs" in again.json()["error"]["message"]

            gpu.stop()
            down = await client.get("/api/v1/jobs/1/reconstruction.glb")
            assert down.status_code == 503 and "unreachable" in down.json()["error"]["message"]
    finally:
        gpu.stop()


class ThumbStorageAgent(FakeStorageAgent):
    """FAKE storage agent that also makes thumbnails (of any path but ``bad.MP4``)."""

    def __init__(self):
        super().__init__()
        self.thumbs: list[tuple[str, dict]] = []

    def build_app(self) -> FastAPI:
        app = super().build_app()

        @app.get("/videos/{path:path}/thumbnail")
        def get_thumbnail(path: str, request: Request) -> Response:
            self.thumbs.append((path, dict(request.query_params)))
            if path == "bad.MP4":
                return JSONResponse({"error": {"code": "invalid", "message": "t is past the end"}}, status_code=422)
            return Response(JPEG, media_type="image/jpeg")

        return app


async def test_thumbnails_come_from_the_storage_node_through_the_core(tmp_path):
    storage = ThumbStorageAgent().start()
    try:
        async with running_core(core_settings(tmp_path)) as (_app, client):
            for name, role in (("st", "storage"), ("g1", "gpu")):
                await client.post("/api/v1/nodes", json={"name": name, "role": role, "url": storage.url}, headers=AUTH)
            hostile = "100 GOPRO/<img src=x>#?.MP4"
            thumb = await client.get(f"/api/v1/videos/st/{quote(hostile, safe='/')}/thumbnail?t=2.5&width=160")
            assert thumb.status_code == 200 and thumb.content == JPEG
            assert thumb.headers["content-type"] == "image/jpeg"
            assert storage.thumbs == [(hostile, {"width": "160", "t": "2.5"})]

            refused = await client.get("/api/v1/videos/st/bad.MP4/thumbnail")
            assert refused.status_code == 422 and "past the end" in refused.json()["error"]["message"]
            assert (await client.get("/api/v1/videos/g1/a.MP4/thumbnail")).status_code == 404
            assert (await client.get("/api/v1/videos/nobody/a.MP4/thumbnail")).status_code == 404
            assert (await client.get("/api/v1/videos/st/a.MP4/thumbnail?width=5000")).status_code == 422
    finally:
        storage.stop()
