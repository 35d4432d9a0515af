"""``/api/v1/nodes``: register, list, remove; validation and conflicts."""

from __future__ import annotations

import pytest

from core_db import db, pg_cluster, pytest_generate_tests  # noqa: F401
from core_fakes import AUTH, anyio_backend, core_settings, running_core  # noqa: F401
from shared.jobs import AgentJob, JobSpec, JobState, VideoSource
from services.core.store import utcnow

pytestmark = pytest.mark.anyio


@pytest.fixture
async def core(tmp_path):
    async with running_core(core_settings(tmp_path)) as (app, client):
        yield app, client


async def test_add_list_get_and_remove_a_node(core):
    _, client = core
    resp = await client.post("/api/v1/nodes", headers=AUTH,
                             json={"name": "gpu-84", "role": "gpu", "url": " http://192.168.1.84:8300/ "})
    assert resp.status_code == 201, resp.text
    node = resp.json()
    assert (node["name"], node["role"], node["url"], node["state"]) == ("gpu-84", "gpu", "http://192.168.1.84:8300", "unknown")
    assert node["last_seen"] is None and node["status"] is None and node["active_jobs"] == 0

    listed = (await client.get("/api/v1/nodes")).json()["nodes"]
    assert listed == [node]
    assert (await client.get("/api/v1/nodes/gpu-84")).json() == node

    assert (await client.delete("/api/v1/nodes/gpu-84", headers=AUTH)).status_code == 204
    assert (await client.get("/api/v1/nodes")).json()["nodes"] == []
    gone = await client.delete("/api/v1/nodes/gpu-84", headers=AUTH)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


async def test_a_duplicate_name_is_a_409(core):
    _, client = core
    body = {"name": "z620", "role": "storage", "url": "http://192.168.1.168:8310"}
    assert (await client.post("/api/v1/nodes", json=body, headers=AUTH)).status_code == 201
    resp = await client.post("/api/v1/nodes", json={**body, "role": "gpu"}, headers=AUTH)
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "conflict" and "z620" in resp.json()["error"]["message"]


@pytest.mark.parametrize("body,where", [
    ({"name": "", "role": "gpu", "url": "http://h:1"}, "name"),
    ({"name": "a b", "role": "gpu", "url": "http://h:1"}, "name"),
    ({"name": "<b>", "role": "gpu", "url": "http://h:1"}, "name"),
    ({"name": "x" * 65, "role": "gpu", "url": "http://h:1"}, "name"),
    ({"name": "n", "role": "core", "url": "http://h:1"}, "role"),
    ({"name": "n", "role": "gpu", "url": "192.168.1.84:8300"}, "url"),
    ({"name": "n", "role": "gpu", "url": "ftp://h"}, "url"),
    ({"name": "n", "role": "gpu", "url": "http://h:1/?x=1"}, "url"),
    ({"name": "n", "role": "gpu", "url": "http://u:p@h:1"}, "url"),
    ({"name": "n", "role": "gpu", "url": "http://h:99999"}, "url"),
    ({"name": "n", "role": "gpu"}, "url"),
    ({"name": "n", "role": "gpu", "url": "http://h:1", "gpus": 2}, "gpus"),
])
async def test_bad_fields_get_a_typed_422(core, body, where):
    _, client = core
    resp = await client.post("/api/v1/nodes", json=body, headers=AUTH)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "invalid" and where in resp.json()["error"]["message"]


async def test_a_node_with_open_jobs_cannot_be_removed(core):
    app, client = core
    store = app.state.store
    for body in ({"name": "g1", "role": "gpu", "url": "http://h:1"},
                 {"name": "st", "role": "storage", "url": "http://h:2"}):
        assert (await client.post("/api/v1/nodes", json=body, headers=AUTH)).status_code == 201
    job = store.create_job(videos=[("st", "a.MP4")], backend="colmap", fps=2, width=640, max_frames=None)

    resp = await client.delete("/api/v1/nodes/st", headers=AUTH)  # a queued job reads from it
    assert resp.status_code == 409 and f"({job.id})" in resp.json()["error"]["message"]
    assert (await client.delete("/api/v1/nodes/g1", headers=AUTH)).status_code == 204  # nothing placed on it

    assert (await client.post("/api/v1/nodes", json={"name": "g1", "role": "gpu", "url": "http://h:1"},
                              headers=AUTH)).status_code == 201
    now = utcnow()
    store.assign(job.id, attempt=1, node="g1", lease_s=30, now=now)
    spec = JobSpec(job_id=job.id, videos=[VideoSource(storage_url="http://h:2", path="a.MP4")])
    store.apply_report(job.id, AgentJob(job_id=job.id, attempt=1, spec=spec, state=JobState.extracting,
                                        stage="extracting", progress=0.1, created_at=now, updated_at=now),
                       node="g1", lease_s=30, now=now)
    resp = await client.delete("/api/v1/nodes/g1", headers=AUTH)
    assert resp.status_code == 409 and "in use" in resp.json()["error"]["message"]
    assert {n["name"]: n["active_jobs"] for n in (await client.get("/api/v1/nodes")).json()["nodes"]} == {
        "g1": 1, "st": 1}

    store.cancel(job.id)
    assert (await client.delete("/api/v1/nodes/g1", headers=AUTH)).status_code == 204
    assert (await client.delete("/api/v1/nodes/st", headers=AUTH)).status_code == 204
