"""The scheduler's promises at cluster scale, against FAKE gpu agents on loopback.

Placement by VRAM, node loss and fencing, a core restart mid-job, priorities, draining,
and two schedulers sharing one PostgreSQL database without placing a job twice.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from shared.vram import estimate_vram_mib
from core_db import db, pg_cluster, pytest_generate_tests  # noqa: F401

from core_fakes import (AUTH, fakes, job_of, FakeClock, FakeGpuAgent, FakeStorageAgent, add_node, anyio_backend,  # noqa: F401
                        core_settings, running_core, submit, video)
from shared.jobs import JobState

pytestmark = pytest.mark.anyio

LEASE_S = 30.0


@pytest.fixture
def storage(fakes):
    return fakes(FakeStorageAgent([video("GX010042.MP4", duration_s=60.0), video("GX010043.MP4", duration_s=60.0)]))


async def history(client, job_id: int) -> list[dict]:
    resp = await client.get(f"/api/v1/jobs/{job_id}/events")
    assert resp.status_code == 200, resp.text
    return resp.json()["events"]


async def test_a_job_that_fits_only_the_24gb_card_goes_there(tmp_path, fakes, storage):
    big = fakes(FakeGpuAgent("gpu-84", gpus_free_mib=[23500], backends=("lingbot",)))
    # The 3060 with another process holding 5 GB: under the smallest LingBot-Map tier (≈ 7.2 GB).
    small = fakes(FakeGpuAgent("gpu-87", gpus_free_mib=[6500], backends=("lingbot",)))
    async with running_core(core_settings(tmp_path)) as (app, client):
        await add_node(client, "gpu-84", "gpu", big.url)
        await add_node(client, "gpu-87", "gpu", small.url)
        await add_node(client, "st", "storage", storage.url)
        large = await submit(client, backend="lingbot", width=518)  # only the 3090 has room
        await app.state.scheduler.tick()
        job = await job_of(client, large["id"])
        assert (job["node"], job["gpu_index"], job["state"]) == ("gpu-84", 0, "assigned")
        assert small.puts == [] and [s.job_id for s in big.puts] == [large["id"]]


async def test_two_jobs_never_overcommit_one_gpu(tmp_path, fakes, storage):
    # Two jobs per GPU allowed, but its memory holds only one of them at a time.
    need = estimate_vram_mib("lingbot", None, 518)
    free = need * 3 // 2  # room for one job, not two
    gpu = fakes(FakeGpuAgent("g", gpus_free_mib=[free], backends=("lingbot",)))
    async with running_core(core_settings(tmp_path, jobs_per_gpu=2)) as (app, client):
        await add_node(client, "g", "gpu", gpu.url)
        await add_node(client, "st", "storage", storage.url)
        first = await submit(client, backend="lingbot", width=518)
        second = await submit(client, backend="lingbot", width=518)
        for _ in range(3):
            await app.state.scheduler.tick()
        assert (await job_of(client, first["id"]))["node"] == "g"
        waiting = await job_of(client, second["id"])
        assert waiting["state"] == "queued" and "no online gpu node has a free GPU" in waiting["message"]
        assert [s.job_id for s in gpu.puts] == [first["id"]]

        # Loaded on the GPU, the first job's memory is in the reported figure: still no room.
        gpu.report(first["id"], JobState.reconstructing, "reconstructing", 0.1)
        gpu.gpus_free_mib = [free - need]
        await app.state.scheduler.tick()
        assert (await job_of(client, second["id"]))["state"] == "queued"

        gpu.report(first["id"], JobState.done, "done", 1.0)
        gpu.gpus_free_mib = [free]
        await app.state.scheduler.tick()  # sees the first done, places the second
        assert (await job_of(client, second["id"]))["node"] == "g"


async def test_node_loss_requeues_the_job_it_completes_elsewhere_and_the_returning_node_is_fenced(
        tmp_path, fakes, storage):
    a = fakes(FakeGpuAgent("a"))
    b = fakes(FakeGpuAgent("b"))
    clock = FakeClock()
    async with running_core(core_settings(tmp_path, lease_s=LEASE_S)) as (app, client):
        scheduler = app.state.scheduler
        scheduler.clock = clock
        await add_node(client, "a", "gpu", a.url)
        await add_node(client, "st", "storage", storage.url)
        job_id = (await submit(client))["id"]
        await scheduler.tick()
        await add_node(client, "b", "gpu", b.url)
        a.report(job_id, JobState.extracting, "extracting", 0.5)
        await scheduler.tick()

        a.silent = True  # a drops off the network, still running attempt 1
        clock.advance(LEASE_S + 1)
        await scheduler.tick()
        job = await job_of(client, job_id)
        assert (job["state"], job["node"], job["attempt"]) == ("assigned", "b", 2)
        assert [(s.job_id, s.attempt) for s in b.puts] == [(job_id, 2)]

        b.report(job_id, JobState.reconstructing, "reconstructing", 0.5)
        await scheduler.tick()
        a.silent = False  # a comes back, still believing it runs attempt 1
        clock.advance(60)
        await scheduler.tick()
        assert a.deletes == [job_id] and a.jobs[job_id].state == JobState.cancelled
        assert [s.attempt for s in a.puts] == [1]  # nothing new was sent to a

        b.report(job_id, JobState.done, "done", 1.0, files=["reconstruction.ply"])
        await scheduler.tick()
        job = await job_of(client, job_id)
        assert (job["state"], job["node"], job["attempt"]) == ("done", "b", 2)
        steps = [(e["state"], e["node"], e["attempt"]) for e in await history(client, job_id)]
        assert steps == [("queued", None, 1), ("assigned", "a", 1), ("extracting", "a", 1),
                         ("queued", None, 2), ("assigned", "b", 2), ("reconstructing", "b", 2), ("done", "b", 2)]
        node_events = [e for e in (await client.get("/api/v1/events", params={"after": 0, "max_s": 0.01})).text
                       .split("\n\n") if "event: node" in e]
        assert any('"state":"offline"' in e for e in node_events)


async def test_every_attempt_s_reason_is_in_the_history_of_a_failed_job(tmp_path, fakes, storage):
    a, b = fakes(FakeGpuAgent("a")), fakes(FakeGpuAgent("b"))
    clock = FakeClock()
    async with running_core(core_settings(tmp_path, lease_s=LEASE_S, max_attempts=2)) as (app, client):
        app.state.scheduler.clock = clock
        await add_node(client, "a", "gpu", a.url)
        await add_node(client, "st", "storage", storage.url)
        job_id = (await submit(client))["id"]
        await app.state.scheduler.tick()
        await add_node(client, "b", "gpu", b.url)
        a.silent = True
        clock.advance(LEASE_S + 1)
        await app.state.scheduler.tick()
        b.silent = True
        clock.advance(LEASE_S + 1)
        await app.state.scheduler.tick()
        job = await job_of(client, job_id)
        assert job["state"] == "failed" and "gave up after 2 attempts" in job["error"]
        reasons = [e["message"] for e in await history(client, job_id) if e["state"] in ("queued", "failed")]
        assert any("a did not answer" in r for r in reasons) and any("b did not answer" in r for r in reasons)

        retried = await client.post(f"/api/v1/jobs/{job_id}/retry", headers=AUTH)
        assert retried.status_code == 200 and retried.json()["state"] == "queued"
        assert retried.json()["attempt"] == 3
        a.silent = b.silent = False
        clock.advance(120)
        await app.state.scheduler.tick()
        assert (await job_of(client, job_id))["state"] == "assigned"
        assert len(await history(client, job_id)) > len(reasons) + 2  # the old history is kept


async def test_a_core_restart_mid_job_reconciles_without_duplicate_work(tmp_path, fakes, storage):
    a, b = fakes(FakeGpuAgent("a")), fakes(FakeGpuAgent("b"))
    settings = core_settings(tmp_path, lease_s=LEASE_S)
    async with running_core(settings) as (app, client):
        await add_node(client, "a", "gpu", a.url)
        await add_node(client, "b", "gpu", b.url)
        await add_node(client, "st", "storage", storage.url)
        running = (await submit(client))["id"]
        unsent = (await submit(client))["id"]
        await app.state.scheduler.tick()
        a.report(running, JobState.extracting, "extracting", 0.3)
        await app.state.scheduler.tick()
        b.jobs.clear()  # b lost the push of the second job (e.g. it restarted)

    # The core is down far longer than a lease; the agents kept working.
    a.report(running, JobState.reconstructing, "reconstructing", 0.6)
    clock = FakeClock()
    clock.advance(10 * LEASE_S)
    async with running_core(settings) as (app, client):
        app.state.scheduler.clock = clock
        await app.state.scheduler.reconcile()
        job = await job_of(client, running)
        assert (job["state"], job["node"], job["attempt"], job["progress"]) == ("reconstructing", "a", 1, 0.6)
        other = await job_of(client, unsent)
        assert (other["state"], other["node"], other["attempt"]) == ("assigned", "b", 1)
        assert [(s.job_id, s.attempt) for s in a.puts] == [(running, 1)]  # not sent again
        assert [(s.job_id, s.attempt) for s in b.puts] == [(unsent, 1), (unsent, 1)]  # the lost push, again
        assert a.deletes == [] and b.deletes == []


async def test_the_loop_reconciles_before_its_first_tick(tmp_path):
    async with running_core(core_settings(tmp_path)) as (app, client):
        calls = []

        async def reconcile():
            calls.append("reconcile")

        async def tick():
            calls.append("tick")

        app.state.scheduler.reconcile, app.state.scheduler.tick = reconcile, tick
        app.state.scheduler.settings = app.state.scheduler.settings.model_copy(update={"tick_interval_s": 0.001})
        loop = asyncio.create_task(app.state.scheduler.run_forever())
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        assert calls[:3] == ["reconcile", "tick", "tick"]


async def test_higher_priority_first_then_fifo_and_draining_nodes_get_nothing(tmp_path, fakes, storage):
    a, b = fakes(FakeGpuAgent("a")), fakes(FakeGpuAgent("b"))
    async with running_core(core_settings(tmp_path)) as (app, client):
        await add_node(client, "a", "gpu", a.url)
        await add_node(client, "b", "gpu", b.url)
        await add_node(client, "st", "storage", storage.url)
        drained = await client.post("/api/v1/nodes/b/drain", headers=AUTH)
        assert drained.status_code == 200 and drained.json()["draining"] is True
        low = (await submit(client))["id"]
        high = (await submit(client, priority=5))["id"]
        also_high = (await submit(client, priority=5))["id"]
        await app.state.scheduler.tick()
        assert [s.job_id for s in a.puts] == [high] and b.puts == []
        nodes = {n["name"]: n for n in (await client.get("/api/v1/nodes")).json()["nodes"]}
        assert nodes["b"]["state"] == "draining" and nodes["a"]["state"] == "online"

        a.report(high, JobState.done, "done", 1.0)
        await app.state.scheduler.tick()
        assert [s.job_id for s in a.puts] == [high, also_high]
        assert (await client.post("/api/v1/nodes/b/undrain", headers=AUTH)).json()["state"] == "online"
        await app.state.scheduler.tick()
        assert [s.job_id for s in b.puts] == [low]


async def test_two_schedulers_on_one_postgresql_never_place_a_job_twice(tmp_path, fakes, storage, db):
    if db is None:
        pytest.skip("several core processes need PostgreSQL (SQLite ignores FOR UPDATE)")
    agents = [fakes(FakeGpuAgent(f"g{i}")) for i in range(4)]  # CPU backend: one job per node at a time
    jobs = 12
    async with running_core(core_settings(tmp_path, node_id="core-1")) as (app1, client):
        async with running_core(core_settings(tmp_path, node_id="core-2")) as (app2, _):
            for fake in agents:
                await add_node(client, fake.name, "gpu", fake.url)
            await add_node(client, "st", "storage", storage.url)
            ids = [(await submit(client))["id"] for _ in range(jobs)]
            for _ in range(jobs):  # each round: both tick at once, then the agents finish what they run
                await asyncio.gather(app1.state.scheduler.tick(), app2.state.scheduler.tick())
                for fake in agents:
                    running = [j for j in fake.jobs.values() if not j.state.final]
                    assert len(running) <= 1, f"{fake.name} was given {len(running)} jobs at once"
                    for job in running:
                        fake.report(job.job_id, JobState.done, "done", 1.0)
                await asyncio.gather(app1.state.scheduler.tick(), app2.state.scheduler.tick())
                if all([(await job_of(client, i))["state"] == "done" for i in ids]):
                    break
            assert all([(await job_of(client, i))["state"] == "done" for i in ids])
            # Every job went to exactly one node, as attempt 1. (A core that polls a job before
            # the other core's push arrives pushes the same spec again: idempotent, same node.)
            placements = {(s.job_id, fake.name, s.attempt) for fake in agents for s in fake.puts}
            assert sorted(job_id for job_id, _, _ in placements) == sorted(ids)
            assert {attempt for _, _, attempt in placements} == {1}
            assert all([(await job_of(client, i))["attempt"] == 1 for i in ids])
