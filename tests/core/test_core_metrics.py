"""The core's /metrics: jobs by state from the store, and the scheduler's counters (FAKE agents)."""

from __future__ import annotations

import pytest

from core_db import db, pg_cluster, pytest_generate_tests  # noqa: F401
from core_fakes import (FakeClock, FakeGpuAgent, FakeStorageAgent, add_node, anyio_backend,  # noqa: F401
                        core_settings, running_core, submit, video)
from metrics_scrape import documented_names, missing_names, parse, value

pytestmark = pytest.mark.anyio

LEASE_S = 30.0


async def scrape(client) -> dict[str, list]:
    resp = await client.get("/metrics")  # no token: /metrics is public
    assert resp.status_code == 200, resp.text
    return parse(resp.text)


async def test_metrics_follow_placement_lease_expiry_and_poll_failures(tmp_path):
    storage = FakeStorageAgent([video("GX010042.MP4", duration_s=24.0)]).start()
    a, b = FakeGpuAgent("a").start(), FakeGpuAgent("b").start()
    try:
        clock = FakeClock()
        async with running_core(core_settings(tmp_path, lease_s=LEASE_S)) as (app, client):
            app.state.scheduler.clock = clock
            await add_node(client, "a", "gpu", a.url)
            await add_node(client, "b", "gpu", b.url)
            await add_node(client, "st", "storage", storage.url)
            b.silent = True  # b is down at placement, so the job lands on a
            await submit(client)
            await submit(client)  # waits: one colmap job per node, and b is down
            samples = await scrape(client)
            assert value(samples, "cosma_core_jobs", state="queued") == 2
            assert value(samples, "cosma_core_jobs", state="done") == 0

            await app.state.scheduler.tick()
            samples = await scrape(client)
            assert value(samples, "cosma_core_placements_total", node="a") == 1
            assert value(samples, "cosma_core_agent_poll_failures_total", node="b") >= 1
            assert value(samples, "cosma_core_jobs", state="assigned") == 1
            assert value(samples, "cosma_core_nodes", role="gpu", state="online") == 1

            a.stop()
            b.silent = False
            clock.advance(LEASE_S * 1.5)
            await app.state.scheduler.tick()
            samples = await scrape(client)
            assert value(samples, "cosma_core_lease_expiries_total", node="a") == 1
            assert value(samples, "cosma_core_agent_poll_failures_total", node="a") >= 1
            assert value(samples, "cosma_core_placements_total", node="b") == 1
            assert value(samples, "cosma_core_scheduler_tick_seconds_count") == 2
            assert value(samples, "cosma_http_requests_total", route="/api/v1/jobs", method="POST",
                         status="201") == 2
            assert missing_names(samples, documented_names("core") + documented_names("every service")) == []
    finally:
        for fake in (storage, a, b):
            fake.stop()
