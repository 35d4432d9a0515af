"""``/api/v1/jobs``: validation at submit time (fields, nodes, the storage catalog), reads, cancel, auth."""

from __future__ import annotations

import pytest

from core_db import db, pg_cluster, pytest_generate_tests  # noqa: F401
from core_fakes import (AUTH, FakeStorageAgent, add_node, anyio_backend, core_settings,  # noqa: F401
                        running_core, submit, video)

pytestmark = pytest.mark.anyio


@pytest.fixture
def storage():
    fake = FakeStorageAgent([
        video("GX010042.MP4", duration_s=10.0),
        video("GX020042.MP4", duration_s=None),
        video("survey/broken.MP4", duration_s=None, error="moov atom not found"),
    ]).start()
    yield fake
    fake.stop()


@pytest.fixture
async def core(tmp_path, storage):
    async with running_core(core_settings(tmp_path)) as (app, client):
        await add_node(client, "st", "storage", storage.url)
        await add_node(client, "g1", "gpu", "http://127.0.0.1:9")
        yield client


def body(**overrides) -> dict:
    return {"videos": [{"storage": "st", "path": "GX010042.MP4"}], **overrides}


async def test_a_valid_job_is_queued_with_its_parameters(core):
    resp = await core.post("/api/v1/jobs", json=body(fps=5, max_frames=40, backend="lingbot"), headers=AUTH)
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["state"] == "queued" and job["attempt"] == 1 and job["node"] is None
    assert (job["fps"], job["width"], job["max_frames"], job["backend"]) == (5.0, 640, 40, "lingbot")
    assert job["frames_estimate"] == 40  # 10 s × 5 fps = 50, capped at 40
    assert job["videos"] == [{"storage": "st", "path": "GX010042.MP4"}] and job["files"] == []
    assert (await core.get(f"/api/v1/jobs/{job['id']}")).json() == job


async def test_defaults_and_chapters_in_order(core):
    videos = [{"storage": "st", "path": "GX010042.MP4"}, {"storage": "st", "path": "GX020042.MP4"}]
    job = await submit(core, videos=videos)
    assert (job["fps"], job["width"], job["max_frames"], job["backend"]) == (2.0, 640, None, "colmap")
    assert job["videos"] == videos
    assert job["frames_estimate"] is None  # one chapter has no known duration and nothing caps it


@pytest.mark.parametrize("overrides,where", [
    ({"fps": 0}, "fps"),
    ({"fps": 500}, "fps"),
    ({"width": 8}, "width"),
    ({"max_frames": 0}, "max_frames"),
    ({"backend": "meshroom"}, "backend"),
    ({"videos": []}, "videos"),
    ({"videos": [{"storage": "st"}]}, "videos.0.path"),
    ({"videos": [{"storage": "st", "path": "a.MP4", "root": 1}]}, "videos.0.root"),
    ({"videos": [{"storage": "../st", "path": "a.MP4"}]}, "videos.0.storage"),
    ({"videos": [{"storage": "st", "path": "GX010042.MP4"}] * 2}, "listed twice"),
    ({"priority": 101}, "priority"),
    ({"priority": "high"}, "priority"),
    ({"recording": {"storage": "st", "id": "GX0042"}}, "either videos or recording"),
    ({"videos": None}, "either videos or recording"),
    ({"cpu_fallback": "maybe"}, "cpu_fallback"),
])
async def test_bad_fields_get_a_typed_422_naming_the_field(core, overrides, where):
    resp = await core.post("/api/v1/jobs", json=body(**overrides), headers=AUTH)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid" and where in error["message"]
    assert (await core.get("/api/v1/jobs")).json()["count"] == 0  # nothing half-written


@pytest.mark.parametrize("video,named", [
    ({"storage": "nas", "path": "GX010042.MP4"}, "unknown storage node 'nas'"),
    ({"storage": "g1", "path": "GX010042.MP4"}, "'g1' is a gpu node"),
    ({"storage": "st", "path": "GX099999.MP4"}, "'GX099999.MP4' is not in the catalog of storage node 'st'"),
    ({"storage": "st", "path": "survey/broken.MP4"}, "cannot be read: moov atom not found"),
])
async def test_videos_are_checked_against_their_storage_node(core, video, named):
    resp = await core.post("/api/v1/jobs", json={"videos": [video]}, headers=AUTH)
    assert resp.status_code == 422, resp.text
    assert named in resp.json()["error"]["message"]


async def test_an_unreachable_or_failing_storage_node_is_a_clear_5xx(core, storage):
    storage.fail_with = 500
    resp = await core.post("/api/v1/jobs", json=body(), headers=AUTH)
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "agent_error" and "storage node st" in resp.json()["error"]["message"]

    storage.stop()
    resp = await core.post("/api/v1/jobs", json=body(), headers=AUTH)
    assert resp.status_code == 503
    error = resp.json()["error"]
    assert error["code"] == "agent_unreachable" and "storage node st is unreachable" in error["message"]
    assert (await core.get("/api/v1/jobs")).json()["count"] == 0


async def test_listing_filters_by_state_and_pages_newest_first(core):
    ids = [(await submit(core))["id"] for _ in range(4)]
    await core.post(f"/api/v1/jobs/{ids[1]}/cancel", headers=AUTH)

    page = (await core.get("/api/v1/jobs", params={"limit": 2, "offset": 1})).json()
    assert page["count"] == 4 and [j["id"] for j in page["jobs"]] == [ids[2], ids[1]]
    queued = (await core.get("/api/v1/jobs", params={"state": "queued"})).json()
    assert [j["id"] for j in queued["jobs"]] == [ids[3], ids[2], ids[0]]
    both = (await core.get("/api/v1/jobs?state=queued&state=cancelled")).json()
    assert both["count"] == 4
    for params in ({"state": "sleeping"}, {"limit": 0}, {"offset": -1}):
        resp = await core.get("/api/v1/jobs", params=params)
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid"


async def test_cancel_a_queued_job_then_again(core):
    job_id = (await submit(core))["id"]
    resp = await core.post(f"/api/v1/jobs/{job_id}/cancel", headers=AUTH)
    assert resp.status_code == 200
    assert resp.json()["state"] == "cancelled" and resp.json()["finished_at"] is not None
    again = await core.post(f"/api/v1/jobs/{job_id}/cancel", headers=AUTH)
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]["message"]


async def test_unknown_jobs_are_typed_404s(core):
    for resp in (await core.get("/api/v1/jobs/999"),
                 await core.post("/api/v1/jobs/999/cancel", headers=AUTH),
                 await core.get("/api/v1/jobs/999/files/reconstruction.ply")):
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    assert (await core.get("/api/v1/jobs/0")).status_code == 422


async def test_every_write_needs_the_token(tmp_path):
    async with running_core(core_settings(tmp_path)) as (app, client):
        writes = [(method.upper(), path) for path, operations in app.openapi()["paths"].items()
                  for method in operations if method in ("post", "put", "patch", "delete")]
        assert len(writes) >= 4
        for method, path in writes:
            url = path.replace("{job_id}", "1").replace("{name}", "x")
            for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": "Basic abc"}):
                resp = await client.request(method, url, json={}, headers=headers)
                assert resp.status_code == 401, (method, url, headers)
                assert resp.json()["error"]["code"] == "unauthorized"
        assert (await client.get("/api/v1/jobs")).status_code == 200  # reads are public


async def test_the_list_is_the_json_of_the_job_models(tmp_path, storage):
    """The list is serialized straight from the store's rows (no models): the same JSON, byte for
    byte, as JobsPublic, and each job the same fields in the same order as GET /jobs/{id}."""
    from shared.jobs import AgentJob, JobSpec, JobState, VideoSource
    from services.core.models import JobPublic, JobsPublic
    from services.core.store import JOB_LIST_FIELDS, utcnow

    assert JOB_LIST_FIELDS == tuple(JobPublic.model_fields)
    async with running_core(core_settings(tmp_path)) as (app, client):
        await add_node(client, "st", "storage", storage.url)
        ids = [(await submit(client, path, fps=1.5, width=None, max_frames=7, priority=3))["id"]
               for path in ("GX010042.MP4", "GX020042.MP4")]
        store, now = app.state.store, utcnow()
        store.assign(ids[0], attempt=1, node="g1", lease_s=30, now=now, gpu_index=1, backend="colmap")
        spec = JobSpec(job_id=ids[0], attempt=1, videos=[VideoSource(storage_url="http://st", path="a.MP4")])
        store.apply_report(ids[0], AgentJob(job_id=ids[0], attempt=1, spec=spec, state=JobState.done, stage="done",
                                            progress=1.0, files=["reconstruction.ply", "a b#.json"], created_at=now,
                                            updated_at=now), node="g1", lease_s=30, now=now)
        resp = await client.get("/api/v1/jobs", params={"limit": 1})
        page = resp.json()
        assert resp.headers["content-type"] == "application/json" and page["next_cursor"] == ids[1]
        from shared import API_VERSION
        missing = await client.get("/api/v1/jobs/999")
        assert resp.headers["x-cosma-api"] == missing.headers["x-cosma-api"] == API_VERSION  # every answer says it
        assert resp.content == JobsPublic.model_validate(page).model_dump_json().encode()
        for params in ({"limit": 1}, {"cursor": ids[1]}):
            job = (await client.get("/api/v1/jobs", params=params)).json()["jobs"][0]
            one = (await client.get(f"/api/v1/jobs/{job['id']}")).json()
            assert list(job.items()) == list(one.items())
        done = one
        assert (done["state"], done["files"][1], done["gpu_index"], done["fps"], done["width"]) == (
            "done", f"/api/v1/jobs/{ids[0]}/files/a%20b%23.json", 1, 1.5, None)
        assert done["created_at"].endswith("Z") and done["finished_at"] is not None
