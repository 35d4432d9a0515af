"""Soak: the agents' memory across J sequential tiny jobs (does it stay flat?).

The cluster is scripts/chaos.py's (real processes on loopback: a core, a storage agent, one
gpu agent running colmap on the CPU), without faults. Jobs are submitted one at a time, each
after the previous one ended; after each, the resident memory (VmRSS) of the storage agent,
the gpu agent and the core processes is read from /proc.

    .venv/bin/python scripts/soak.py [--jobs 100]

Prints a line per 10 jobs, then one JSON object: per process the RSS (MiB) after the first
job, the median, after the last job, the least-squares slope in KiB per job over all jobs and
over the second half (past warm-up), and the jobs' outcomes. Exit status 1 if a job did not
end ``done``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chaos  # scripts/chaos.py: the cluster and its helpers


def slope_kib_per_job(values_mib: list[float]) -> float:
    """Least-squares slope of ``values_mib`` against the job number, in KiB per job."""
    n = len(values_mib)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, statistics.fmean(values_mib)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values_mib))
    var = sum((x - mean_x) ** 2 for x in range(n))
    return cov / var * 1024


def summary(values_mib: list[float]) -> dict:
    half = values_mib[len(values_mib) // 2:]
    return {"first_mib": round(values_mib[0], 1), "median_mib": round(statistics.median(values_mib), 1),
            "last_mib": round(values_mib[-1], 1), "max_mib": round(max(values_mib), 1),
            "slope_kib_per_job": round(slope_kib_per_job(values_mib), 1),
            "slope_second_half_kib_per_job": round(slope_kib_per_job(half), 1)}


def wait_final(cluster: chaos.Cluster, job_id: int, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = cluster.get(f"/api/v1/jobs/{job_id}")
        if job["state"] in chaos.FINAL:
            return job
        time.sleep(0.2)
    raise SystemExit(f"job {job_id} did not end within {timeout_s:.0f} s; see the logs in {cluster.base / 'logs'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100, help="sequential jobs (default: 100)")
    parser.add_argument("--job-timeout-s", type=float, default=300.0, help="longest wait for one job (default: 300)")
    args, base = chaos.run_folder(parser, "cosma-soak-")
    fps, width = chaos.JOB_FPS, chaos.JOB_WIDTH
    videos, _ = chaos.render_videos(base / "videos", 2, seconds=2.0, fps=fps, width=width, height=180)
    cluster = chaos.Cluster(base, base / "videos", chaos.ClusterSettings(gpu_agents=1, proxied=False, lease_s=60.0))
    watched = {"storage_agent": cluster.storage, "gpu_agent": cluster.gpus[0], "core": cluster.core}
    rss: dict[str, list[float]] = {name: [] for name in watched}
    outcomes: dict[str, int] = {}
    started = time.monotonic()
    print(f"soak in {base}; load average {os.getloadavg()[0]:.2f}", flush=True)
    try:
        cluster.start()
        for i in range(args.jobs):
            job = wait_final(cluster, cluster.submit(videos[i % len(videos)], fps=fps, width=width), args.job_timeout_s)
            outcomes[job["state"]] = outcomes.get(job["state"], 0) + 1
            for name, service in watched.items():
                rss[name].append(chaos.rss_mib(service.proc.pid))
            if (i + 1) % 10 == 0:
                print(f"{i + 1:4d} jobs, {time.monotonic() - started:5.0f} s: "
                      + ", ".join(f"{name} {values[-1]:.1f} MiB" for name, values in rss.items()), flush=True)
    finally:
        cluster.stop()
    result = {"jobs": args.jobs, "outcomes": outcomes, "seconds": round(time.monotonic() - started),
              "load_average_1m": round(os.getloadavg()[0], 2),
              **{name: summary(values) for name, values in rss.items()}}
    print(json.dumps(result, indent=1))
    return 0 if outcomes.get("done") == args.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
