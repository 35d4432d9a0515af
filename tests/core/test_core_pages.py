"""The dashboard's pages render (without a browser), with hostile names escaped."""

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
        empty = await client.get("/jobs")
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

        overview = await client.get("/")
        assert overview.status_code == 200 and overview.headers["content-type"].startswith("text/html")
        assert "g1" in overview.text and "<img" not in overview.text
        assert "script-src 'self';" in overview.headers["content-security-policy"]

        for url in ("/jobs", f"/jobs/{job.id}", f"/jobs/rows?id={job.id}"):
            page = (await client.get(url)).text
            assert "<script>" not in page and "<img" not in page, url
            assert "&lt;img src=x onerror=alert(1)&gt; broke" in page, url
            assert "25%" in page, url
        page = (await client.get(f"/jobs/{job.id}")).text
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&#34;.ply" in page
        assert f"/api/v1/jobs/{job.id}/files/%3Cscript%3Ealert%28%27x%27%29%3C%2Fscript%3E%26%22.ply" in page

        api_job = (await client.get(f"/api/v1/jobs/{job.id}")).json()
        assert api_job["files"] == [f"/api/v1/jobs/{job.id}/files/%3Cscript%3Ealert%28%27x%27%29%3C%2Fscript%3E%26%22.ply"]
