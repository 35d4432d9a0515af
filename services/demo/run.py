"""``cosma-qc demo``: a whole cluster on loopback, fed with a survey video made on the spot.

Renders a sample survey video (with its ground-truth camera poses), starts a storage agent,
a gpu agent and a core as real processes, registers the agents, submits one job, follows
it and reports where the point cloud is and how well the camera path matches the truth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from shared.auth import auth_headers, new_token

SERVICE_START_TIMEOUT_S = 60


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=None,
                        help="folder for videos, frames, database and logs (default: a new temporary folder)")
    parser.add_argument("--exit-when-done", action="store_true",
                        help="exit once the job ends: 0 if done, 1 otherwise (default: keep serving until Ctrl-C)")
    parser.add_argument("--host", default="127.0.0.1", help="address the services listen on (default: 127.0.0.1)")
    parser.add_argument("--core-port", type=int, default=3849, help="core port (default: 3849)")
    parser.add_argument("--gpu-port", type=int, default=8300, help="gpu agent port (default: 8300)")
    parser.add_argument("--storage-port", type=int, default=8310, help="storage agent port (default: 8310)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the sample video (default: 4.0)")
    parser.add_argument("--fps", type=float, default=10.0,
                        help="frame rate of the sample video and of extraction (default: 10.0)")


class Cluster:
    """Three service processes on loopback, stopped together."""

    def __init__(self, base: Path, host: str, token: str):
        self.base = base
        self.host = host
        self.token = token
        self.procs: list[tuple[str, subprocess.Popen]] = []
        (base / "logs").mkdir(parents=True, exist_ok=True)

    def start(self, name: str, args: list[str], port: int) -> str:
        env = {**os.environ, "COSMA_TOKEN": self.token}
        log = open(self.base / "logs" / f"{name}.log", "wb")
        argv = [sys.executable, "-m", "services.cli", name, "--host", self.host, "--port", str(port), *args]
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        url = f"http://{self.host}:{port}"
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited at start; see {log.name}:\n"
                                 + Path(log.name).read_text(errors="replace")[-2000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return url
            time.sleep(0.2)
        raise SystemExit(f"{name} did not answer on {url} within {SERVICE_START_TIMEOUT_S} s; see {log.name}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _post(url: str, token: str, body: dict) -> dict:
    resp = httpx.post(url, json=body, headers=auth_headers(token), timeout=60)
    if resp.status_code >= 400:
        raise SystemExit(f"POST {url} answered HTTP {resp.status_code}: {resp.text[:500]}")
    return resp.json()


def compare_with_truth(cameras_path: Path, poses_path: Path) -> str:
    """One line on how well the reconstructed camera path matches the rendered one."""
    import numpy as np

    from shared.geometry import align_rmse, trajectory_length

    cameras = json.loads(cameras_path.read_text())
    truth = json.loads(poses_path.read_text())
    by_time = {round(f["t_s"], 3): np.array(f["c2w"])[:3, 3] for f in truth["frames"]}
    est, ref = [], []
    for frame in cameras["frames"]:
        key = round(frame["source"]["t_s"], 3)
        if frame.get("registered") and frame.get("c2w") and key in by_time:
            est.append(np.array(frame["c2w"])[:3, 3])
            ref.append(by_time[key])
    if len(est) < 3:
        return f"only {len(est)} cameras could be matched to the ground truth"
    rmse = align_rmse(np.array(est), np.array(ref))
    length = trajectory_length(np.array(ref))
    return (f"{len(est)}/{len(cameras['frames'])} cameras registered; camera path vs ground truth: "
            f"RMSE {rmse:.3f} = {100 * rmse / length:.2f}% of the {length:.1f} m trajectory")


def cmd_demo(args: argparse.Namespace) -> int:
    from services.cli import wait_for_job
    from services.demo.synth import render_survey

    base = (args.dir or Path(tempfile.mkdtemp(prefix="cosma-qc-demo-"))).resolve()
    videos, workdir = base / "videos", base / "frames"
    videos.mkdir(parents=True, exist_ok=True)
    print(f"demo folder: {base}")
    print("rendering a sample survey video …", flush=True)
    sample = render_survey(videos, seconds=args.seconds, fps=args.fps)
    token = new_token()
    token_file = base / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)

    cluster = Cluster(base, args.host, token)
    try:
        storage = cluster.start("storage-agent", ["--root", str(videos), "--node-id", "storage-1"], args.storage_port)
        gpu = cluster.start("gpu-agent", ["--workdir", str(workdir), "--node-id", "gpu-1"], args.gpu_port)
        core = cluster.start("core", ["--data-dir", str(base / "core"), "--node-id", "core"], args.core_port)
        _post(f"{core}/api/v1/nodes", token, {"name": "storage-1", "role": "storage", "url": storage})
        _post(f"{core}/api/v1/nodes", token, {"name": "gpu-1", "role": "gpu", "url": gpu})
        rel = sample.video.relative_to(videos).as_posix()
        job = _post(f"{core}/api/v1/jobs", token, {
            "videos": [{"storage": "storage-1", "path": rel}], "fps": args.fps, "width": 640})
        print(f"dashboard: {core}/   (token in {token_file})", flush=True)
        rc = wait_for_job(core, job["id"])
        job_dir = workdir / f"job_{job['id']}"
        if rc == 0:
            print(f"point cloud: {job_dir / 'reconstruction.ply'}")
            print(compare_with_truth(job_dir / "cameras.json", sample.poses))
        else:
            print(f"the job did not finish; logs are in {base / 'logs'}")
        if args.exit_when_done:
            return rc
        print("serving until Ctrl-C …", flush=True)
        while all(proc.poll() is None for _, proc in cluster.procs):
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()
