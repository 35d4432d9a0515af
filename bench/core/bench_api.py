"""API load benchmark: the core in its own process, load from this one, over loopback.

Seeds the database with ``--stored`` jobs (through the store, before the core starts),
starts ``cosma-qc core`` as a subprocess (scheduler off: only the API is measured), serves
a FAKE storage agent catalog from this process (job creation looks videos up there), then
sends ``--requests`` of each kind with ``--concurrency`` clients:

* list: ``GET /api/v1/jobs?limit=50`` (newest first, with the total count), filtered by state
  and text (``list_filtered``), by text alone (``list_search``: a video path), and a later page
  by cursor;
* create: ``POST /api/v1/jobs`` (one catalog lookup on the storage agent, then an insert).

    .venv/bin/python bench/core/bench_api.py [--db sqlite|postgresql] [--stored 10000] [--warm-up N]
        [--kinds api|pages] [--only KIND ...]

With ``--kinds pages`` the dashboard's pages are measured instead (overview, Jobs, a search,
a later page, one job page), with the same figures.

Prints one JSON line per kind: p50/p95/p99 latency (ms), requests per second, and the core
process's CPU time per request (``server_cpu_ms``, from /proc: what a request costs the
server, whatever else loads the machine); beside it what a request cost this load generator
(``client_cpu_ms``) and, with PostgreSQL, the database's processes (``db_cpu_ms``): all three
share the machine's cores. A baseline runs the same script from its checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path += [str(ROOT / "tests"), str(ROOT / "tests" / "core")]  # after ROOT: tests/shared is not shared/

from conftest import serve_app  # noqa: E402
from core_fakes import FakeStorageAgent, video  # noqa: E402
from pgcluster import ThrowawayPostgres, find_bindir  # noqa: E402
from services.core.store import Job, JobVideo, NodeRole, Store, make_engine  # noqa: E402
from shared.jobs import JobState  # noqa: E402

TOKEN = "test-token-0123456789"  # the fakes' token
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def seed(url: str, stored: int, storage_url: str) -> None:
    store = Store(make_engine(url))
    store.migrate()
    store.add_node(name="st", role=NodeRole.storage, url=storage_url)
    now = datetime.now(timezone.utc)
    states = [JobState.done, JobState.failed, JobState.queued, JobState.cancelled]
    with store.session() as session:
        for i in range(stored):
            session.add(Job(id=i + 1, backend="colmap", fps=2, width=640, frames_estimate=20, state=states[i % 4],
                            created_at=now, updated_at=now, message=f"seeded job {i}"))
        session.flush()
        for i in range(stored):
            session.add(JobVideo(job_id=i + 1, position=0, storage="st", path=f"100GOPRO/GX01{i % 9999:04d}.MP4"))
        session.commit()
    if url.startswith("postgresql"):  # the seeded ids came from us, not the sequence
        with store.engine.begin() as conn:
            conn.exec_driver_sql("SELECT setval('jobs_id_seq', (SELECT max(id) FROM jobs))")
        # What autovacuum does to a table that grew by 10,000 rows within its next naptime: done
        # now rather than minutes into a run (it turns the count's scan into an index-only scan).
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    store.engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (state first, then ppid, …)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, *, exited_children: bool = False) -> float:
    """User + system CPU time of a process so far (Linux /proc), with that of its children
    it has waited for if asked."""
    fields = _stat(pid)
    return sum(int(f) for f in fields[11:15 if exited_children else 13]) / os.sysconf("SC_CLK_TCK")


def db_cpu_seconds(cluster) -> float:
    """CPU time so far of a throwaway PostgreSQL: its postmaster and every child (the backends
    serving the core's connections; they live as long as the pool keeps them)."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    total = cpu_seconds(postmaster, exited_children=True)  # backends a pool closed included...
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(_stat(int(stat.parent.name))[1]) == postmaster:
                total += cpu_seconds(int(stat.parent.name))  # ... and the living ones
        except (OSError, ValueError):  # gone meanwhile
            continue
    return total


#: Dashboard pages (``--kinds pages``): overview, the first Jobs page, a search, a later page, one job.
PAGES = {"page_overview": "/", "page_jobs": "/jobs", "page_jobs_search": "/jobs?q=GX010042",
         "page_jobs_later": "/jobs?state=done&cursor=5000", "page_job": "/jobs/5000"}
API_KINDS = ("list", "list_filtered", "list_search", "list_cursor", "create")


async def load(base: str, kind: str, requests: int, concurrency: int) -> dict:
    latencies: list[float] = []
    counter = iter(range(requests))

    async def one(client: httpx.AsyncClient, i: int) -> None:
        started = time.perf_counter()
        if kind == "create":
            resp = await client.post("/api/v1/jobs", headers=AUTH, json={
                "videos": [{"storage": "st", "path": "100GOPRO/GX010042.MP4"}]})
        elif kind == "list":
            resp = await client.get("/api/v1/jobs", params={"limit": 50})
        elif kind == "list_filtered":
            resp = await client.get("/api/v1/jobs", params={"limit": 50, "state": "failed", "q": "job 12"})
        elif kind == "list_search":  # text only: ~100 of the 10,000 jobs have a video path with it
            resp = await client.get("/api/v1/jobs", params={"limit": 50, "q": "gx0100"})
        elif kind in PAGES:  # the dashboard's server-rendered pages
            resp = await client.get(PAGES[kind])
        else:  # list_cursor
            resp = await client.get("/api/v1/jobs", params={"limit": 50, "cursor": 5000})
        latencies.append(time.perf_counter() - started)
        if resp.status_code >= 400:
            raise RuntimeError(f"{kind}: HTTP {resp.status_code}: {resp.text[:200]}")

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            for i in counter:
                await one(client, i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    q = statistics.quantiles([x * 1000 for x in latencies], n=100)
    return {"kind": kind, "requests": requests, "concurrency": concurrency, "p50_ms": round(q[49], 2),
            "p95_ms": round(q[94], 2), "p99_ms": round(q[98], 2), "req_per_s": round(requests / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--stored", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warm-up", type=int, default=0, metavar="N",
                        help="first send N unreported requests of each kind (a warm server)")
    parser.add_argument("--kinds", choices=["api", "pages"], default="api",
                        help="the REST API (default) or the dashboard's pages")
    parser.add_argument("--only", choices=[*API_KINDS, *PAGES], action="append", metavar="KIND",
                        help="measure only this kind (repeatable): " + ", ".join([*API_KINDS, *PAGES]))
    args = parser.parse_args()
    kinds = tuple(args.only) if args.only else API_KINDS if args.kinds == "api" else tuple(PAGES)

    cluster = ThrowawayPostgres(find_bindir()).start() if args.db == "postgresql" else None
    tmp = Path(tempfile.mkdtemp(prefix="cosma-bench-api-"))
    try:
        url = cluster.create_database() if cluster else f"sqlite:///{tmp / 'core.db'}"
        storage = FakeStorageAgent([video("100GOPRO/GX010042.MP4")])
        with serve_app(storage.build_app()) as storage_url:
            seed(url, args.stored, storage_url)
            port = free_port()
            env = {**os.environ, "COSMA_TOKEN": TOKEN, "COSMA_CORE_DATABASE_URL": url}
            core = subprocess.Popen([sys.executable, "-m", "services.cli", "core", "--port", str(port),
                                     "--no-scheduler-enabled", "--log-level", "warning"], env=env, cwd=ROOT)
            base = f"http://127.0.0.1:{port}"
            try:
                for _ in range(200):
                    try:
                        if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                for kind in kinds if args.warm_up else ():
                    asyncio.run(load(base, kind, args.warm_up, args.concurrency))  # unreported
                for kind in kinds:
                    cpu_before, client_before = cpu_seconds(core.pid), time.process_time()
                    db_before = db_cpu_seconds(cluster) if cluster else 0.0
                    result = asyncio.run(load(base, kind, args.requests, args.concurrency))
                    per_request = 1000 / args.requests
                    result["server_cpu_ms"] = round((cpu_seconds(core.pid) - cpu_before) * per_request, 2)
                    # Where the rest of the two cores went: this load generator, and PostgreSQL.
                    result["client_cpu_ms"] = round((time.process_time() - client_before) * per_request, 2)
                    if cluster:
                        result["db_cpu_ms"] = round((db_cpu_seconds(cluster) - db_before) * per_request, 2)
                    print(json.dumps({"db": args.db, "stored": args.stored, **result}), flush=True)
            finally:
                core.terminate()
                core.wait(timeout=30)
    finally:
        if cluster:
            cluster.stop()


if __name__ == "__main__":
    main()
