"""Jobs API additions (retry, delete, filters, cursor), nodes (announce, drain, forced remove),
the catalog across storage nodes, server-sent events over real HTTP, and the OpenAPI examples."""

from __future__ import annotations

import httpx
import pytest
from core_db import db, pg_cluster, pytest_generate_tests  # noqa: F401

from conftest import serve_app
from core_fakes import (AUTH, fakes, job_of, FakeGpuAgent, FakeStorageAgent, add_node, anyio_backend,  # noqa: F401
                        core_settings, running_core, submit, video)
from services.core.app import create_app
from shared.jobs import JobState

pytestmark = pytest.mark.anyio

GOPRO = [video(p) for p in ("100GOPRO/GX020042.MP4", "100GOPRO/GX010042.MP4", "100GOPRO/GX010043.MP4",
                            "old/GP010007.MP4", "old/GOPR0007.MP4", "notes/dive.mov")]


async def test_retry_delete_filters_and_cursor_paging(tmp_path, fakes):
    st = fakes(FakeStorageAgent(GOPRO))
    gpu = fakes(FakeGpuAgent("g1"))
    async with running_core(core_settings(tmp_path)) as (app, client):
        await add_node(client, "g1", "gpu", gpu.url)
        await add_node(client, "st", "storage", st.url)
        from_recording = await submit(client, videos=None, recording={"storage": "st", "id": "100GOPRO/GX0042"})
        assert [v["path"] for v in from_recording["videos"]] == ["100GOPRO/GX010042.MP4", "100GOPRO/GX020042.MP4"]
        assert from_recording["recording"] == "100GOPRO/GX0042"
        old = await submit(client, videos=None, recording={"storage": "st", "id": "old/GOPR0007"})
        assert [v["path"] for v in old["videos"]] == ["old/GOPR0007.MP4", "old/GP010007.MP4"]
        unknown = await client.post("/api/v1/jobs", headers=AUTH,
                                    json={"recording": {"storage": "st", "id": "100GOPRO/GX0099"}})
        assert unknown.status_code == 422 and "recording.id" in unknown.json()["error"]["message"]
        ids = [from_recording["id"], old["id"]] + [(await submit(client, "notes/dive.mov"))["id"] for _ in range(3)]
        await app.state.scheduler.tick()  # the first job goes to g1 (one CPU job per node)

        on_g1 = (await client.get("/api/v1/jobs", params={"node": "g1"})).json()
        assert [j["id"] for j in on_g1["jobs"]] == [ids[0]]
        dives = (await client.get("/api/v1/jobs", params={"q": "DIVE.MOV"})).json()
        assert dives["count"] == 3 and {j["id"] for j in dives["jobs"]} == set(ids[2:])
        pages, cursor = [], None
        while True:
            page = (await client.get("/api/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})})).json()
            pages.append([j["id"] for j in page["jobs"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sum(pages, []) == sorted(ids, reverse=True) and page["count"] == 5

        assert (await client.post(f"/api/v1/jobs/{ids[0]}/retry", headers=AUTH)).status_code == 409  # running
        gpu.report(ids[0], JobState.failed, "reconstructing", 0.3, error="too few features")
        await app.state.scheduler.tick()
        retried = (await client.post(f"/api/v1/jobs/{ids[0]}/retry", headers=AUTH)).json()
        assert (retried["state"], retried["attempt"], retried["error"], retried["node"]) == ("queued", 2, None, None)
        events = (await client.get(f"/api/v1/jobs/{ids[0]}/events")).json()["events"]
        assert [e["state"] for e in events] == ["queued", "assigned", "failed", "queued"]
        assert events[2]["message"] == "too few features"

        # The tick that saw the failure gave g1 the next job in line; delete that one.
        assert (await client.get(f"/api/v1/jobs/{ids[1]}")).json()["node"] == "g1"
        gpu.silent = True
        refused = await client.delete(f"/api/v1/jobs/{ids[1]}", headers=AUTH)
        assert refused.status_code == 502 and "g1" in refused.json()["error"]["message"]
        gpu.silent = False
        assert (await client.delete(f"/api/v1/jobs/{ids[1]}", headers=AUTH)).status_code == 204
        assert gpu.purges == [ids[1]]
        assert (await client.get(f"/api/v1/jobs/{ids[1]}")).status_code == 404
        assert (await client.get(f"/api/v1/jobs/{ids[1]}/events")).status_code == 404
        assert (await client.delete(f"/api/v1/jobs/{ids[0]}", headers=AUTH)).status_code == 204  # queued again
        assert (await client.get("/api/v1/jobs")).json()["count"] == 3


async def test_announce_drain_and_forced_removal(tmp_path, fakes):
    st = fakes(FakeStorageAgent(GOPRO))
    gpu = fakes(FakeGpuAgent("g1"))
    async with running_core(core_settings(tmp_path)) as (app, client):
        body = {"name": "g1", "role": "gpu", "url": gpu.url}
        first = await client.post("/api/v1/nodes/announce", json=body, headers=AUTH)
        assert first.status_code == 201 and first.json()["announced"] is True
        again = await client.post("/api/v1/nodes/announce", json={**body, "url": gpu.url + "/"}, headers=AUTH)
        assert again.status_code == 200 and again.json()["url"] == gpu.url
        wrong_role = await client.post("/api/v1/nodes/announce", json={**body, "role": "storage"}, headers=AUTH)
        assert wrong_role.status_code == 409
        assert (await client.post("/api/v1/nodes/announce", json={"name": "g1"}, headers=AUTH)).status_code == 422
        await add_node(client, "st", "storage", st.url)
        job_id = (await submit(client, "notes/dive.mov"))["id"]
        await app.state.scheduler.tick()

        assert (await client.post("/api/v1/nodes/nope/drain", headers=AUTH)).status_code == 404
        assert (await client.delete("/api/v1/nodes/g1", headers=AUTH)).status_code == 409
        assert (await client.delete("/api/v1/nodes/g1", params={"force": "true"}, headers=AUTH)).status_code == 204
        assert gpu.deletes == [job_id]  # stopped on the node
        await app.state.scheduler.tick()
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        assert (job["state"], job["attempt"]) == ("queued", 2) and "g1 was removed" in job["message"]
        assert (await client.delete("/api/v1/nodes/st", params={"force": "true"}, headers=AUTH)).status_code == 204
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        assert job["state"] == "failed" and "storage node st was removed" in job["error"]


async def test_videos_and_recordings_across_storage_nodes(tmp_path, fakes):
    plain = fakes(FakeStorageAgent(GOPRO))
    grouping = fakes(FakeStorageAgent([video("a.MP4"), video("b.MP4")],
                                      recordings=[{"id": "dive-1", "chapters": ["b.MP4", "a.MP4"]}]))
    async with running_core(core_settings(tmp_path)) as (app, client):
        await add_node(client, "z620", "storage", plain.url)
        await add_node(client, "nas", "storage", grouping.url)
        await add_node(client, "down", "storage", "http://127.0.0.1:9")

        videos = (await client.get("/api/v1/videos")).json()
        assert [e["storage"] for e in videos["errors"]] == ["down"]
        by_path = {(v["storage"], v["path"]): v for v in videos["videos"]}
        assert len(by_path) == 8
        assert (by_path[("z620", "100GOPRO/GX020042.MP4")]["recording"], by_path[("z620", "100GOPRO/GX020042.MP4")]["chapter"]) == (
            "100GOPRO/GX0042", 2)
        assert by_path[("z620", "old/GP010007.MP4")]["chapter"] == 2
        only = (await client.get("/api/v1/videos", params={"storage": "nas"})).json()
        assert {v["storage"] for v in only["videos"]} == {"nas"} and only["errors"] == []

        recordings = (await client.get("/api/v1/recordings")).json()
        found = {(r["storage"], r["id"]): r for r in recordings["recordings"]}
        assert found[("z620", "100GOPRO/GX0042")]["chapters"] == ["100GOPRO/GX010042.MP4", "100GOPRO/GX020042.MP4"]
        assert found[("z620", "100GOPRO/GX0042")]["duration_s"] == 20.0
        assert found[("z620", "old/GOPR0007")]["chapters"] == ["old/GOPR0007.MP4", "old/GP010007.MP4"]
        assert found[("z620", "notes/dive.mov")]["gopro"] is False
        assert found[("nas", "dive-1")]["chapters"] == ["b.MP4", "a.MP4"]  # the agent's own grouping
        assert len(found) == 5


def test_events_stream_job_and_node_changes_over_http(tmp_path, db):
    settings = core_settings(tmp_path)
    app = create_app(settings)
    with serve_app(app) as url:
        start = httpx.get(f"{url}/api/v1/events", params={"max_s": 0.01}, timeout=10)
        assert start.headers["content-type"].startswith("text/event-stream")
        httpx.post(f"{url}/api/v1/nodes", json={"name": "g1", "role": "gpu", "url": "http://127.0.0.1:9"},
                   headers=AUTH, timeout=10).raise_for_status()
        job = app.state.store.create_job(videos=[("st", "a.MP4")], backend="colmap", fps=2, width=640, max_frames=None)
        received = []
        with httpx.stream("GET", f"{url}/api/v1/events", params={"after": 0, "max_s": 5}, timeout=10) as stream:
            block = []
            for line in stream.iter_lines():
                if line:
                    block.append(line)
                    continue
                if any(b.startswith("id:") for b in block):
                    received.append(dict(b.split(": ", 1) for b in block))
                block = []
                if len(received) == 2:
                    break
        assert [r["event"] for r in received] == ["node", "job"]
        assert '"node":"g1"' in received[0]["data"] and f'"job_id":{job.id}' in received[1]["data"]
        resumed = httpx.get(f"{url}/api/v1/events", params={"max_s": 0.01},
                            headers={"Last-Event-ID": received[0]["id"]}, timeout=10).text
        assert f"id: {received[1]['id']}" in resumed and f"id: {received[0]['id']}\n" not in resumed


async def test_every_api_route_has_an_example(tmp_path):
    async with running_core(core_settings(tmp_path)) as (app, _):
        spec = app.openapi()
    schemas = spec["components"]["schemas"]

    def has_example(node) -> bool:
        if isinstance(node, dict):
            if "example" in node or "examples" in node:
                return True
            ref = node.get("$ref")
            if ref and "examples" in schemas.get(ref.rsplit("/", 1)[1], {}):
                return True
            return any(has_example(v) for v in node.values())
        if isinstance(node, list):
            return any(has_example(v) for v in node)
        return False

    missing = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            if not path.startswith("/api/v1"):
                continue
            ok_responses = {k: v for k, v in op["responses"].items() if k.startswith("2")}
            if not (has_example(op.get("requestBody")) or has_example(ok_responses)
                    or op["responses"].get("204") is not None):
                missing.append(f"{method.upper()} {path}")
            assert has_example(op["responses"].get("404", {})), f"{method} {path} has no error example"
    assert missing == []
