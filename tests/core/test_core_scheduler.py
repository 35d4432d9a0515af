"""The scheduler against FAKE gpu agents (scripted, in memory, on real uvicorn servers)."""

from __future__ import annotations

import asyncio

import pytest

from core_db import db, pg_cluster, pytest_generate_tests  # noqa: F401
from core_fakes import (AUTH, fakes, job_of, FakeClock, FakeGpuAgent, FakeStorageAgent, add_node, anyio_backend,  # noqa: F401
                        core_settings, running_core, submit, video)
from shared.jobs import JobState

pytestmark = pytest.mark.anyio

LEASE_S = 30.0


@pytest.fixture
def storage(fakes):
    return fakes(FakeStorageAgent([video("GX010042.MP4", duration_s=24.0), video("GX020042.MP4", duration_s=6.0)]))


async def test_lingbot_jobs_go_to_the_best_fitting_gpu_and_carry_their_spec(tmp_path, fakes, storage):
    big = fakes(FakeGpuAgent("big", gpus_free_mib=[22000], backends=("colmap", "lingbot")))
    small = fakes(FakeGpuAgent("small", gpus_free_mib=[11000], backends=("colmap", "lingbot")))
    tiny = fakes(FakeGpuAgent("tiny", gpus_free_mib=[5000], backends=("lingbot",)))
    cpu = fakes(FakeGpuAgent("cpu-only", backends=("colmap",)))
    async with running_core(core_settings(tmp_path)) as (app, client):
        for name, fake in (("big", big), ("small", small), ("tiny", tiny), ("cpu-only", cpu)):
            await add_node(client, name, "gpu", fake.url)
        await add_node(client, "st", "storage", storage.url + "/")
        first = await submit(client, backend="lingbot", fps=2, width=518,
                             videos=[{"storage": "st", "path": "GX010042.MP4"},
                                     {"storage": "st", "path": "GX020042.MP4"}])
        assert first["frames_estimate"] == 48 + 12
        second = await submit(client, backend="lingbot", width=518)
        waits = await submit(client, backend="lingbot", width=1920)

        await app.state.scheduler.tick()

        # ≈ 7.2 GB each (shared.vram): the 12 GB card is the best fit for the first, then it is
        # taken; the third fits only on GPUs already running a job, and the 5 GB card is too small.
        assert (await job_of(client, first["id"]))["node"] == "small"
        assert (await job_of(client, second["id"]))["node"] == "big"
        waiting = await job_of(client, waits["id"])
        assert waiting["state"] == "queued" and waiting["node"] is None and waiting["message"]
        assert tiny.puts == []
        assert cpu.puts == []

        spec = small.puts[0]
        assert spec.job_id == first["id"] and spec.attempt == 1 and spec.backend == "lingbot"
        assert [(v.storage_url, v.path) for v in spec.videos] == [
            (storage.url, "GX010042.MP4"), (storage.url, "GX020042.MP4")]
        assert (spec.extract.fps, spec.extract.width, spec.extract.max_frames) == (2.0, 518, None)
        placed = await job_of(client, first["id"])
        assert placed["state"] == "assigned" and placed["attempt"] == 1

        nodes = {n["name"]: n for n in (await client.get("/api/v1/nodes")).json()["nodes"]}
        assert nodes["small"]["state"] == "online" and nodes["small"]["active_jobs"] == 1
        assert nodes["small"]["status"]["gpus"][0]["memory_free_mib"] == 11000
        assert nodes["st"]["state"] == "online" and nodes["st"]["active_jobs"] == 3


async def test_cpu_jobs_run_one_per_node_in_fifo_order_round_robin(tmp_path, fakes, storage):
    a = fakes(FakeGpuAgent("a"))
    b = fakes(FakeGpuAgent("b"))
    no_colmap = fakes(FakeGpuAgent("c", backends=("lingbot",), gpus_free_mib=[20000]))
    async with running_core(core_settings(tmp_path)) as (app, client):
        for fake in (a, b, no_colmap):
            await add_node(client, fake.name, "gpu", fake.url)
        await add_node(client, "st", "storage", storage.url)
        ids = [(await submit(client))["id"] for _ in range(3)]

        await app.state.scheduler.tick()

        jobs = [await job_of(client, i) for i in ids]
        assert [j["node"] for j in jobs] == ["a", "b", None]
        assert "busy" in jobs[2]["message"]
        assert no_colmap.puts == []

        a.report(ids[0], JobState.done, "done", 1.0)
        await app.state.scheduler.tick()
        assert (await job_of(client, ids[0]))["state"] == "done"
        assert (await job_of(client, ids[2]))["node"] == "a"


async def test_polling_copies_progress_never_backwards_and_the_final_state(tmp_path, fakes, storage):
    gpu = fakes(FakeGpuAgent("g1"))
    gpu.files = {"reconstruction.ply": b"ply\nformat binary_little_endian 1.0\n", "cameras.json": b"{}"}
    async with running_core(core_settings(tmp_path)) as (app, client):
        await add_node(client, "g1", "gpu", gpu.url)
        await add_node(client, "st", "storage", storage.url)
        job_id = (await submit(client))["id"]
        tick = app.state.scheduler.tick
        await tick()

        gpu.report(job_id, JobState.extracting, "extracting", 0.5, message="video 1 of 1", frames=12)
        await tick()
        job = await job_of(client, job_id)
        assert (job["state"], job["stage"], job["progress"], job["message"]) == (
            "extracting", "extracting", 0.5, "video 1 of 1")
        assert job["started_at"] is not None

        gpu.report(job_id, JobState.extracting, "extracting", 0.3)  # a late, smaller number
        await tick()
        assert (await job_of(client, job_id))["progress"] == 0.5

        gpu.report(job_id, JobState.reconstructing, "reconstructing", 0.1)
        await tick()
        job = await job_of(client, job_id)
        assert (job["state"], job["progress"]) == ("reconstructing", 0.1)

        gpu.report(job_id, JobState.done, "done", 1.0, files=["reconstruction.ply", "cameras.json"])
        await tick()
        job = await job_of(client, job_id)
        assert job["state"] == "done" and job["progress"] == 1.0 and job["finished_at"] is not None
        assert job["files"] == [f"/api/v1/jobs/{job_id}/files/reconstruction.ply",
                                f"/api/v1/jobs/{job_id}/files/cameras.json"]

        ply = await client.get(job["files"][0])
        assert ply.status_code == 200 and ply.content == gpu.files["reconstruction.ply"]
        missing = await client.get(f"/api/v1/jobs/{job_id}/files/qc.json")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

        gpu.stop()  # artifacts live on the gpu node: without it, a clear 503
        gone = await client.get(job["files"][1])
        assert gone.status_code == 503 and "g1" in gone.json()["error"]["message"]


async def test_a_job_on_an_unreachable_agent_is_requeued_past_its_lease_and_placed_elsewhere(
        tmp_path, fakes, storage):
    a = fakes(FakeGpuAgent("a"))
    b = fakes(FakeGpuAgent("b"))
    clock = FakeClock()
    async with running_core(core_settings(tmp_path, lease_s=LEASE_S)) as (app, client):
        app.state.scheduler.clock = clock
        await add_node(client, "a", "gpu", a.url)
        await add_node(client, "b", "gpu", b.url)
        await add_node(client, "st", "storage", storage.url)
        b.silent = True  # b is down when the job is placed, so it lands on a
        job_id = (await submit(client))["id"]
        await app.state.scheduler.tick()
        assert (await job_of(client, job_id))["node"] == "a"
        a.report(job_id, JobState.extracting, "extracting", 0.4)
        await app.state.scheduler.tick()

        a.stop()
        b.silent = False
        clock.advance(LEASE_S / 2)  # silent, but within the lease: the job stays
        await app.state.scheduler.tick()
        job = await job_of(client, job_id)
        assert (job["node"], job["attempt"], job["state"]) == ("a", 1, "extracting")
        assert "no answer from a" in job["message"]

        clock.advance(LEASE_S)  # also past b's polling backoff
        await app.state.scheduler.tick()

        job = await job_of(client, job_id)
        assert (job["node"], job["attempt"], job["state"], job["progress"]) == ("b", 2, "assigned", 0.0)
        assert [(s.job_id, s.attempt) for s in b.puts] == [(job_id, 2)]
        node_a = (await client.get("/api/v1/nodes/a")).json()
        assert node_a["state"] == "offline" and node_a["last_error"]


async def test_after_max_attempts_the_job_fails_with_the_reason_and_stale_runs_are_fenced(
        tmp_path, fakes, storage):
    gpu = fakes(FakeGpuAgent("g1"))
    clock = FakeClock()
    async with running_core(core_settings(tmp_path, lease_s=LEASE_S, max_attempts=2)) as (app, client):
        app.state.scheduler.clock = clock
        tick = app.state.scheduler.tick
        await add_node(client, "g1", "gpu", gpu.url)
        await add_node(client, "st", "storage", storage.url)
        job_id = (await submit(client))["id"]
        await tick()
        gpu.report(job_id, JobState.extracting, "extracting", 0.2)

        gpu.silent = True
        clock.advance(LEASE_S + 1)
        await tick()
        job = await job_of(client, job_id)
        assert (job["state"], job["attempt"], job["node"]) == ("queued", 2, None)
        assert "g1 did not answer" in job["message"] and "attempt 2 of 2" in job["message"]

        # g1 returns still running attempt 1: it is told to drop it, then gets attempt 2.
        gpu.silent = False
        clock.advance(60)
        await tick()
        assert gpu.deletes == [job_id]
        assert [s.attempt for s in gpu.puts] == [1, 2]
        assert (await job_of(client, job_id))["state"] == "assigned"

        gpu.silent = True
        clock.advance(LEASE_S + 1)
        await tick()
        job = await job_of(client, job_id)
        assert job["state"] == "failed" and job["finished_at"] is not None
        assert "g1 did not answer for 30 s" in job["error"] and "gave up after 2 attempts" in job["error"]


async def test_a_spec_the_agent_refuses_fails_the_job_and_cancel_reaches_the_agent(tmp_path, fakes, storage):
    gpu = fakes(FakeGpuAgent("g1"))
    async with running_core(core_settings(tmp_path)) as (app, client):
        await add_node(client, "g1", "gpu", gpu.url)
        await add_node(client, "st", "storage", storage.url)
        gpu.refuse_put = (422, "extract.width: too small for this backend")
        refused = (await submit(client))["id"]
        await app.state.scheduler.tick()
        job = await job_of(client, refused)
        assert job["state"] == "failed" and "too small for this backend" in job["error"]

        gpu.refuse_put = None
        running = (await submit(client))["id"]
        await app.state.scheduler.tick()
        assert (await job_of(client, running))["node"] == "g1"
        resp = await client.post(f"/api/v1/jobs/{running}/cancel", headers=AUTH)
        assert resp.status_code == 200 and resp.json()["state"] == "cancelled"
        assert gpu.deletes == [running] and gpu.jobs[running].state == JobState.cancelled

        await app.state.scheduler.tick()  # the cancelled job is no longer polled or placed
        assert (await job_of(client, running))["state"] == "cancelled"


async def test_the_lifespan_runs_the_scheduler_loop_and_stops_it(tmp_path, fakes, storage):
    gpu = fakes(FakeGpuAgent("g1"))
    settings = core_settings(tmp_path, scheduler_enabled=True, tick_interval_s=0.05)
    async with running_core(settings) as (app, client):
        task = app.state.scheduler_task
        await add_node(client, "g1", "gpu", gpu.url)
        await add_node(client, "st", "storage", storage.url)
        job_id = (await submit(client))["id"]
        for _ in range(200):
            if (await job_of(client, job_id))["state"] == "assigned":
                break
            await asyncio.sleep(0.05)
        assert (await job_of(client, job_id))["node"] == "g1"
    assert task.done() and task.cancelled()


async def test_an_unreachable_node_is_polled_with_backoff(tmp_path, fakes):
    gpu = fakes(FakeGpuAgent("g1"))
    clock = FakeClock()
    async with running_core(core_settings(tmp_path)) as (app, client):
        app.state.scheduler.clock = clock
        await add_node(client, "g1", "gpu", gpu.url)
        gpu.silent = True
        await app.state.scheduler.tick()
        assert gpu.requests == 1
        clock.advance(1.5)  # past the first backoff (≤ one tick interval)
        await app.state.scheduler.tick()
        assert gpu.requests == 2
        await app.state.scheduler.tick()  # second failure: wait ≥ one more interval
        assert gpu.requests == 2
        node = (await client.get("/api/v1/nodes/g1")).json()
        assert node["state"] == "offline" and "503" in node["last_error"]

        gpu.silent = False
        clock.advance(60)
        await app.state.scheduler.tick()
        assert (await client.get("/api/v1/nodes/g1")).json()["state"] == "online"


async def test_the_loop_survives_failing_ticks(tmp_path):
    settings = core_settings(tmp_path, tick_interval_s=0.001)
    async with running_core(settings) as (app, client):
        scheduler = app.state.scheduler
        calls = []

        async def flaky_tick():
            calls.append(1)
            if len(calls) <= 2:
                raise RuntimeError("database is locked")

        scheduler.tick = flaky_tick
        loop = asyncio.create_task(scheduler.run_forever())
        for _ in range(500):
            if len(calls) >= 4:
                break
            await asyncio.sleep(0.01)
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
        assert len(calls) >= 4


async def test_a_push_the_agent_lost_is_sent_again(tmp_path, fakes, storage):
    gpu = fakes(FakeGpuAgent("g1"))
    async with running_core(core_settings(tmp_path)) as (app, client):
        await add_node(client, "g1", "gpu", gpu.url)
        await add_node(client, "st", "storage", storage.url)
        job_id = (await submit(client))["id"]
        await app.state.scheduler.tick()
        gpu.jobs.clear()  # e.g. the agent restarted before it saved the job
        await app.state.scheduler.tick()
        assert [(s.job_id, s.attempt) for s in gpu.puts] == [(job_id, 1), (job_id, 1)]
        assert job_id in gpu.jobs
        job = await job_of(client, job_id)
        assert (job["state"], job["node"], job["attempt"]) == ("assigned", "g1", 1)


async def test_a_tick_writes_its_node_polls_and_job_reports_in_one_transaction_each(tmp_path, fakes, storage):
    a = fakes(FakeGpuAgent("a"))
    b = fakes(FakeGpuAgent("b"))
    async with running_core(core_settings(tmp_path)) as (app, client):
        for fake in (a, b):
            await add_node(client, fake.name, "gpu", fake.url)
        await add_node(client, "st", "storage", storage.url)
        ids = [(await submit(client))["id"] for _ in range(2)]
        await app.state.scheduler.tick()
        assert [(await job_of(client, i))["node"] for i in ids] == ["a", "b"]

        store = app.state.scheduler.store
        calls: list[tuple[str, int]] = []

        def spy(name):
            real = getattr(store, name)

            def call(items, **kwargs):
                items = list(items)
                calls.append((name, len(items)))
                return real(items, **kwargs)
            return call

        def one_at_a_time(*args, **kwargs):
            raise AssertionError("a tick writes what it polled in one transaction")

        store.record_node_polls, store.apply_reports = spy("record_node_polls"), spy("apply_reports")
        store.record_node_poll = store.apply_report = one_at_a_time
        a.report(ids[0], JobState.extracting, "extracting", 0.5)
        b.report(ids[1], JobState.done, "done", 1.0)
        await app.state.scheduler.tick()

        assert calls == [("record_node_polls", 3), ("apply_reports", 2)]
        first, second = [await job_of(client, i) for i in ids]
        assert (first["state"], first["progress"]) == ("extracting", 0.5)
        assert second["state"] == "done" and second["finished_at"] is not None
