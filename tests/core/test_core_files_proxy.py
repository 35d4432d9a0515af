"""The core's artifact proxy (``/api/v1/jobs/{id}/files/{name}``) with a FAKE gpu agent
(tests/core/core_fakes.py): agent files come from the dashboard's own origin, so they are
served sandboxed and never sniffed into something executable."""

from __future__ import annotations

import pytest

from core_fakes import (FakeGpuAgent, FakeStorageAgent, add_node, anyio_backend,  # noqa: F401
                        core_settings, running_core, submit, video)
from shared.jobs import JobState

pytestmark = pytest.mark.anyio


async def test_agent_files_are_served_sandboxed(tmp_path):
    storage = FakeStorageAgent([video("GX010042.MP4")]).start()
    gpu = FakeGpuAgent("g1").start()
    hostile = b"<html><script>fetch('/api/v1/jobs/1/cancel', {method: 'POST'})</script></html>"
    gpu.files = {"report.html": hostile}
    try:
        async with running_core(core_settings(tmp_path)) as (app, client):
            await add_node(client, "g1", "gpu", gpu.url)
            await add_node(client, "st", "storage", storage.url)
            job_id = (await submit(client))["id"]
            await app.state.scheduler.tick()
            gpu.report(job_id, JobState.done, "done", 1.0, files=["report.html"])
            await app.state.scheduler.tick()
            resp = await client.get(f"/api/v1/jobs/{job_id}/files/report.html")
            assert resp.status_code == 200 and resp.content == hostile
            assert resp.headers["content-security-policy"] == "sandbox"
            assert resp.headers["x-content-type-options"] == "nosniff"
            part = await client.get(f"/api/v1/jobs/{job_id}/files/report.html", headers={"Range": "bytes=6-13"})
            assert part.status_code == 206 and part.content == hostile[6:14]  # a download resumes
            assert part.headers["content-range"] == f"bytes 6-13/{len(hostile)}"
            assert part.headers["content-security-policy"] == "sandbox"
    finally:
        gpu.stop()
        storage.stop()
