"""A finished job's folder made without running a backend: its state, a PLY and cameras.json."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from shared.cameras import CameraFrame, Cameras, Intrinsics, write_cameras
from shared.jobs import AgentJob, JobSpec, JobState, VideoSource
from shared.plyio import write_ply


def write_done_job(workdir: Path, job_id: int, *, points: int = 5000, frames: int = 12,
                   storage_url: str = "http://127.0.0.1:9") -> Path:
    """``workdir/job_N`` as a done job with a random cloud and a ring of cameras; returns the folder."""
    job_dir = workdir / f"job_{job_id}"
    job_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    spec = JobSpec(job_id=job_id, videos=[VideoSource(storage_url=storage_url, path="GX010001.MP4")])
    job = AgentJob(job_id=job_id, attempt=1, spec=spec, state=JobState.done, stage="done", progress=1.0,
                   message="done", created_at=now, updated_at=now)
    (job_dir / "state.json").write_text(job.model_dump_json())
    rng = np.random.default_rng(job_id)
    xyz = rng.uniform([-3, -3, -0.2], [3, 3, 0.2], size=(points, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(points, 3), dtype=np.uint8)
    write_ply(job_dir / "reconstruction.ply", xyz, rgb, frame=np.ones(points, np.int32))
    write_cameras(job_dir / "cameras.json", ring_cameras(frames))
    return job_dir


def ring_cameras(count: int) -> Cameras:
    k = Intrinsics(fx=448, fy=448, cx=320, cy=180, width=640, height=360, model="PINHOLE")
    frames = []
    for i in range(count):
        angle = 2 * np.pi * i / count
        c2w = np.eye(4)
        c2w[:3, 3] = [2 * np.cos(angle), 2 * np.sin(angle), 2.5]
        c2w[:3, :3] = np.diag([1.0, -1.0, -1.0])  # looking straight down
        frames.append(CameraFrame(name=f"frame_{i + 1:06d}.jpg", index=i + 1, registered=True,
                                  c2w=c2w.tolist(), intrinsics=k))
    return Cameras(backend="colmap", version="test", frames=frames)
