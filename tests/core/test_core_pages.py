"""``GET /``: the job list page, with hostile names escaped."""

from __future__ import annotations

import pytest

from core_db import db, pg_cluster, pytest_generate_tests  # noqa: F401
from core_fakes import AUTH, anyio_backend, core_settings, running_core  # noqa: F401
from shared.jobs import AgentJob, JobSpec, JobState, VideoSource
from services.core.store import utcnow

pytestmark = pytest.mark.anyio

HOSTILE = "<script>alert('x')</script>&\".ply"


async def test_the_page_lists_jobs_and_nodes_with_everything_escaped(tmp_path):
    async with running_core(core_settings(tmp_path)) as (app, client):
        empty = await client.get("/")
        assert empty.status_code == 200 and "No jobs yet" in empty.text

        store = app.state.store
        await client.post("/api/v1/nodes", json={"name": "g1", "role": "gpu", "url": "http://h:1"}, headers=AUTH)
        job = store.create_job(videos=[("st", "a.MP4")], backend="colmap", fps=2, width=640, max_frames=None)
        now = utcnow()
        store.assign(job.id, attempt=1, node="g1", lease_s=30, now=now)
        spec = JobSpec(job_id=job.id, videos=[VideoSource(storage_url="http://h:2", path="a.MP4")])
        report = AgentJob(job_id=job.id, attempt=1, spec=spec, state=JobState.failed, stage="reconstructing",
                          progress=0.25, error="<img src=x onerror=alert(1)> broke", files=[HOSTILE],
                          created_at=now, updated_at=now)
        store.apply_report(job.id, report, node="g1", lease_s=30, now=now)

        resp = await client.get("/")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
        page = resp.text
        assert "<script>" not in page and "<img" not in page
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;&quot;.ply" in page
        assert "&lt;img src=x onerror=alert(1)&gt; broke" in page
        assert f"/api/v1/jobs/{job.id}/files/%3Cscript%3Ealert%28%27x%27%29%3C%2Fscript%3E%26%22.ply" in page
        assert "http-equiv='refresh'" in page and "g1" in page and "25%" in page

        api_job = (await client.get(f"/api/v1/jobs/{job.id}")).json()
        assert api_job["files"] == [f"/api/v1/jobs/{job.id}/files/%3Cscript%3Ealert%28%27x%27%29%3C%2Fscript%3E%26%22.ply"]
