"""Scheduler benchmark: one tick() with many queued jobs and many gpu agents.

The agents are an httpx MockTransport (in-process fakes answering /status, /health,
PUT/GET /jobs from memory): what is measured is the core's own work per tick (database
reads and writes, placement), not the network. Usage:

    .venv/bin/python bench/core/bench_scheduler.py [--jobs 10000] [--nodes 50] [--db URL] [--ticks 3] [--warm-up]
        [--startup-warm-up]

Prints one JSON line per tick: seconds (wall clock), cpu_s (CPU time of this process, all
threads: what the tick itself cost, less sensitive to other load on the machine), jobs placed,
placements per second.
Runs against this checkout, or an older one with PYTHONPATH=<checkout> (e.g. a baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from datetime import datetime, timezone

import anyio.to_thread
import httpx

from services.core.agents import AgentClient
from services.core.config import CoreSettings
from services.core.scheduler import Scheduler
from services.core.store import Job, JobVideo, Store, make_engine, NodeRole

TOKEN = "bench-token"


def fake_agents(nodes: int) -> httpx.MockTransport:
    now = datetime.now(timezone.utc).isoformat()
    held: dict[str, dict[int, dict]] = {}

    def status(name: str) -> dict:
        index = int(name[1:])
        gpus = [{"index": 0, "name": "FAKE", "uuid": f"GPU-{name}", "memory_total_mib": 24576,
                 "memory_used_mib": 1000, "memory_free_mib": 23576 if index % 2 else 11000}]
        backends = [{"name": "colmap", "available": True, "device": "cpu"},
                    {"name": "lingbot", "available": True, "device": "gpu"}]
        return {"node_id": name, "gpus": gpus, "backends": backends, "cpu_load_1m": 0.1, "cpu_count": 8,
                "disk_free_mib": 100000, "jobs": list(held.get(name, {}).values())}

    def handler(request: httpx.Request) -> httpx.Response:
        name = request.url.host
        path = request.url.path
        if path == "/status":
            return httpx.Response(200, json=status(name))
        if path == "/health":
            return httpx.Response(200, json={"status": "ok", "role": "storage", "version": "0", "node_id": name,
                                             "api_version": "1"})
        if path.startswith("/jobs/"):
            job_id = int(path.split("/")[2])
            if request.method == "PUT":
                spec = json.loads(request.content)
                job = {"job_id": job_id, "attempt": spec["attempt"], "spec": spec, "state": "assigned",
                       "stage": "accepted", "progress": 0.0, "created_at": now, "updated_at": now}
                held.setdefault(name, {})[job_id] = job
                return httpx.Response(201, json=job)
            job = held.get(name, {}).get(job_id)
            return httpx.Response(200, json=job) if job else httpx.Response(404, json={
                "error": {"code": "not_found", "message": "no job"}})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})

    return httpx.MockTransport(handler)


def seed(store: Store, jobs: int, nodes: int) -> None:
    for i in range(nodes):
        store.add_node(name=f"g{i}", role=NodeRole.gpu, url=f"http://g{i}")
    store.add_node(name="st", role=NodeRole.storage, url="http://st")
    now = datetime.now(timezone.utc)
    with store.session() as session:
        for i in range(jobs):
            backend = "lingbot" if i % 2 else "colmap"
            session.add(Job(id=i + 1, backend=backend, fps=2, width=518, frames_estimate=48,
                            created_at=now, updated_at=now, message="waiting for a node"))
        session.flush()
        for i in range(jobs):
            session.add(JobVideo(job_id=i + 1, position=0, storage="st", path=f"GX01{i:04d}.MP4"))
        session.commit()


async def warm_up() -> None:
    """Two ticks (placing, then steady) on a small throwaway database, unreported: imports done
    lazily on first use (anyio's thread backend, pydantic and SQL compilation caches) are then
    not counted in the first measured tick, as in a core that has been running a while."""
    store = Store(make_engine(f"sqlite:///{tempfile.mkdtemp(prefix='cosma-bench-warm-')}/core.db"))
    (store.migrate if hasattr(store, "migrate") else store.create_tables)()
    seed(store, 20, 4)
    agents = AgentClient(TOKEN, poll_timeout_s=5, request_timeout_s=5)
    agents._client = httpx.AsyncClient(transport=fake_agents(4))
    scheduler = Scheduler(store, agents, CoreSettings(token=TOKEN, scheduler_enabled=False, lease_s=3600))
    for _ in range(2):
        await scheduler.tick()
    await agents.aclose()
    store.engine.dispose()


async def run(args) -> None:
    if args.warm_up:
        await warm_up()
    url = args.db or f"sqlite:///{tempfile.mkdtemp(prefix='cosma-bench-')}/core.db"
    store = Store(make_engine(url))
    (store.migrate if hasattr(store, "migrate") else store.create_tables)()
    seed(store, args.jobs, args.nodes)
    settings = CoreSettings(token=TOKEN, scheduler_enabled=False, lease_s=3600)
    agents = AgentClient(TOKEN, poll_timeout_s=5, request_timeout_s=5)
    agents._client = httpx.AsyncClient(transport=fake_agents(args.nodes))
    scheduler = Scheduler(store, agents, settings)
    if args.startup_warm_up:  # what the core's lifespan runs before it serves (services/core/app.py)
        started, cpu_started = time.perf_counter(), time.process_time()
        await anyio.to_thread.run_sync(store.warm_up)
        print(json.dumps({"startup_warm_up_s": round(time.perf_counter() - started, 4),
                          "cpu_s": round(time.process_time() - cpu_started, 4)}), flush=True)
    for tick in range(args.ticks):
        queued_before = len(store.queued_jobs())
        started, cpu_started = time.perf_counter(), time.process_time()
        await scheduler.tick()
        seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        placed = queued_before - len(store.queued_jobs())
        print(json.dumps({"tick": tick + 1, "jobs": args.jobs, "nodes": args.nodes, "db": url.split(":")[0],
                          "seconds": round(seconds, 4), "cpu_s": round(cpu_s, 4), "placed": placed,
                          "placements_per_s": round(placed / seconds, 1)}), flush=True)
    await agents.aclose()
    store.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--ticks", type=int, default=3)
    parser.add_argument("--db", default=None, help="database URL (default: a new SQLite file)")
    parser.add_argument("--warm-up", action="store_true",
                        help="run two unreported ticks on a small database first (a warm process)")
    parser.add_argument("--startup-warm-up", action="store_true",
                        help="first run the core's start-up warm-up (Store.warm_up) on the measured database")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
