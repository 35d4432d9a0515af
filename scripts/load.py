"""Load on the core's API while jobs run: C concurrent clients for S seconds, from this process.

The cluster is scripts/chaos.py's (a core, a storage agent, two gpu agents running colmap on
the CPU, all real processes on loopback), without faults. While a feeder keeps two real jobs
open (so the scheduler polls, places and applies reports all along), each client loops over a
weighted mix of requests and records every latency:

* ``list`` ``GET /api/v1/jobs?limit=50`` (30%), ``list_state`` the same filtered by state (10%),
* ``get`` ``GET /api/v1/jobs/{id}`` (25%), ``events`` ``GET /api/v1/jobs/{id}/events`` (15%),
* ``create`` ``POST /api/v1/jobs`` (10%), ``cancel`` ``POST /api/v1/jobs/{id}/cancel`` of a job
  that client created (10%).

An error is a transport error, a timeout, or an HTTP status >= 400, except a 409 on a cancel
(the job finished first: counted apart as ``cancel_conflicts``).

    .venv/bin/python scripts/load.py [--clients 50] [--seconds 60] [--db sqlite|postgresql]

Prints one JSON object: errors, requests, requests/s, p50/p95/p99 (ms) overall and per kind,
the core's CPU time (and per request: what a request costs the server, whatever else loads
the machine), this process's CPU time, jobs done during the run, the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chaos  # scripts/chaos.py: the cluster and its helpers

MIX = {"list": 30, "list_state": 10, "get": 25, "events": 15, "create": 10, "cancel": 10}
FEEDER_OPEN_JOBS = 2


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values_s: list[float]) -> dict[str, float]:
    if len(values_s) < 2:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    q = statistics.quantiles([v * 1000 for v in values_s], n=100)
    return {"p50_ms": round(q[49], 1), "p95_ms": round(q[94], 1), "p99_ms": round(q[98], 1)}


class Load:
    def __init__(self, cluster: chaos.Cluster, videos: list[str], *, seed: int, fps: float, width: int):
        self.cluster, self.videos, self.fps, self.width = cluster, videos, fps, width
        self.rng = random.Random(seed)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.error_samples: list[str] = []
        self.cancel_conflicts = 0
        self.known_ids: list[int] = []

    def job_body(self) -> dict:
        return {"videos": [{"storage": self.cluster.storage.node, "path": self.rng.choice(self.videos)}],
                "fps": self.fps, "width": self.width, "backend": "colmap"}

    async def one(self, client: httpx.AsyncClient, kind: str, mine: list[int]) -> None:
        if kind == "cancel" and not mine:
            kind = "create"
        if kind in ("get", "events") and not self.known_ids:
            kind = "list"
        job_id = self.rng.choice(self.known_ids) if self.known_ids else None
        started = time.perf_counter()
        try:
            if kind == "list":
                resp = await client.get("/api/v1/jobs", params={"limit": 50})
            elif kind == "list_state":
                resp = await client.get("/api/v1/jobs", params={"limit": 50, "state": self.rng.choice(
                    ["queued", "done", "cancelled", "reconstructing"])})
            elif kind == "get":
                resp = await client.get(f"/api/v1/jobs/{job_id}")
            elif kind == "events":
                resp = await client.get(f"/api/v1/jobs/{job_id}/events")
            elif kind == "create":
                resp = await client.post("/api/v1/jobs", json=self.job_body())
            else:
                resp = await client.post(f"/api/v1/jobs/{mine.pop(self.rng.randrange(len(mine)))}/cancel")
        except httpx.HTTPError as exc:
            self.latencies[kind].append(time.perf_counter() - started)
            self.error(kind, f"{type(exc).__name__}: {exc}")
            return
        self.latencies[kind].append(time.perf_counter() - started)
        if kind == "cancel" and resp.status_code == 409:
            self.cancel_conflicts += 1
        elif resp.status_code >= 400:
            self.error(kind, f"HTTP {resp.status_code}: {resp.text[:200]}")
        elif kind == "create":
            job_id = resp.json()["id"]
            mine.append(job_id)
            self.known_ids.append(job_id)

    def error(self, kind: str, what: str) -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(f"{kind}: {what}")

    async def client(self, until: float) -> None:
        kinds, weights = list(MIX), list(MIX.values())
        mine: list[int] = []
        async with httpx.AsyncClient(base_url=self.cluster.core.url, headers=self.cluster.auth, timeout=30) as client:
            while time.monotonic() < until:
                await self.one(client, self.rng.choices(kinds, weights)[0], mine)

    async def feeder(self, until: float, done: list[int]) -> None:
        """Keep FEEDER_OPEN_JOBS real jobs open (never cancelled) so the agents work all along."""
        open_: list[int] = []
        async with httpx.AsyncClient(base_url=self.cluster.core.url, headers=self.cluster.auth, timeout=30) as client:
            while time.monotonic() < until:
                with_state = await asyncio.gather(*(client.get(f"/api/v1/jobs/{i}") for i in open_))
                for resp in with_state:
                    job = resp.json()
                    if job["state"] in chaos.FINAL:
                        open_.remove(job["id"])
                        if job["state"] == "done":
                            done.append(job["id"])
                while len(open_) < FEEDER_OPEN_JOBS:  # ahead of the clients' jobs, which wait to be cancelled
                    resp = await client.post("/api/v1/jobs", json={**self.job_body(), "priority": 10})
                    resp.raise_for_status()
                    open_.append(resp.json()["id"])
                    self.known_ids.append(open_[-1])
                await asyncio.sleep(1.0)

    async def run(self, clients: int, seconds: float) -> dict:
        until = time.monotonic() + seconds
        fed_done: list[int] = []
        started = time.perf_counter()
        await asyncio.gather(self.feeder(until, fed_done), *(self.client(until) for _ in range(clients)))
        elapsed = time.perf_counter() - started
        every = [v for values in self.latencies.values() for v in values]
        return {
            "clients": clients, "seconds": round(elapsed, 1), "requests": len(every),
            "errors": sum(self.errors.values()), "errors_by_kind": dict(self.errors),
            "error_samples": self.error_samples, "cancel_conflicts": self.cancel_conflicts,
            "req_per_s": round(len(every) / elapsed, 1), **percentiles(every),
            "by_kind": {kind: {"requests": len(values), **percentiles(values)}
                        for kind, values in sorted(self.latencies.items())},
            "feeder_jobs_done": len(fed_done),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent API clients (default: 50)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load (default: 60)")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix (default: 1)")
    args, base = chaos.run_folder(parser, "cosma-load-")
    fps, width = chaos.JOB_FPS, chaos.JOB_WIDTH
    videos, _ = chaos.render_videos(base / "videos", 2, seconds=2.0, fps=fps, width=width, height=180)
    pg = None
    if args.db == "postgresql":
        sys.path.insert(0, str(chaos.REPO / "tests" / "core"))
        from pgcluster import ThrowawayPostgres, find_bindir

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("no PostgreSQL server binaries (initdb, pg_ctl) found; install postgresql or set COSMA_PG_BIN")
        pg = ThrowawayPostgres(bindir).start()
    try:
        settings = chaos.ClusterSettings(proxied=False, lease_s=30.0,
                                         database_url=pg.create_database() if pg else None)
        cluster = chaos.Cluster(base, base / "videos", settings)
        try:
            cluster.start()
            load = Load(cluster, videos, seed=args.seed, fps=fps, width=width)
            core_cpu, own_cpu = cpu_seconds(cluster.core.proc.pid), time.process_time()
            result = asyncio.run(load.run(args.clients, args.seconds))
            result["core_cpu_s"] = round(cpu_seconds(cluster.core.proc.pid) - core_cpu, 1)
            result["core_cpu_ms_per_request"] = round(result["core_cpu_s"] * 1000 / max(1, result["requests"]), 2)
            result["jobs_done_during_run"] = cluster.get("/api/v1/jobs", state="done", limit=1)["count"]
            result["client_cpu_s"] = round(time.process_time() - own_cpu, 1)
            result["db"] = args.db
            result["load_average_1m"] = round(os.getloadavg()[0], 2)
            result["core_alive"] = cluster.core.proc.poll() is None
        finally:
            cluster.stop()
    finally:
        if pg:
            pg.stop()
    print(json.dumps(result, indent=1))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
