"""Recordings for the QC tests: the synthetic seabed survey, clean and with known flaws.

The flawed copy is the clean video re-encoded by ffmpeg with three stretches, in job frame
numbers (from 1, one frame per video frame at the video's own rate):

* ``BLURRED``: Gaussian blur, σ 2 px at 320 px wide;
* ``BLACK``: the whole picture painted black;
* ``FROZEN``: each frame replaced by the frame just before the stretch.

Imported by the test modules (not a conftest, so its name cannot clash with other folders').
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from conftest import require_ffmpeg
from services.demo.synth import render_survey
from shared.cameras import CAMERAS_NAME, CameraFrame, Cameras, FrameSource, write_cameras
from shared.frames import FRAMES_INDEX_NAME, FrameIndex, IndexedFrame, IndexedVideo
from shared.plyio import write_ply

FPS = 10
SECONDS = 6.0
FRAMES = 60
WIDTH, HEIGHT = 320, 180
BLURRED = (9, 18)
BLACK = (26, 30)
FROZEN = (41, 47)


def render_clean(out_dir: Path, name: str = "GX010001.MP4", *, seconds: float = SECONDS) -> Path:
    """The clean survey video and its ``<stem>.poses.json`` (ground-truth cameras) beside it."""
    require_ffmpeg()
    render_survey(out_dir, name=name, seconds=seconds, fps=FPS, width=WIDTH, height=HEIGHT, seed=0)
    return out_dir / name


def add_flaws(source: Path, target: Path) -> Path:
    """``source`` re-encoded with the blurred, black and frozen stretches."""
    # ffmpeg counts frames from 0, the job from 1.
    b0, b1 = (n - 1 for n in BLURRED)
    k0, k1 = (n - 1 for n in BLACK)
    f0, f1 = (n - 1 for n in FROZEN)
    graph = (f"[0:v]gblur=sigma=2:enable='between(n,{b0},{b1})',"
             f"drawbox=color=black:t=fill:enable='between(n,{k0},{k1})',split[a][b];"
             f"[a][b]freezeframes=first={f0}:last={f1}:replace={f0 - 1}")  # fmt: skip
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(source),
         "-filter_complex", graph, "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
         "-pix_fmt", "yuv420p", "-g", str(FPS), str(target)],
        check=True, timeout=120,
    )  # fmt: skip
    return target


def extract_frames(video: Path, job_dir: Path) -> list[IndexedFrame]:
    """Every frame of ``video`` as ``job_dir/frame_%06d.jpg`` plus ``frames.json``, as ingest leaves them."""
    job_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(video),
         "-q:v", "3", "-start_number", "1", str(job_dir / "frame_%06d.jpg")],
        check=True, timeout=120,
    )  # fmt: skip
    names = sorted(p.name for p in job_dir.glob("frame_*.jpg"))
    frames = [IndexedFrame(name=n, index=i + 1, video=0, t_s=i / FPS) for i, n in enumerate(names)]
    index = FrameIndex(videos=[IndexedVideo(index=0, path=video.name)], frames=frames)
    (job_dir / FRAMES_INDEX_NAME).write_text(index.model_dump_json())
    return frames


def write_reconstruction(
    job_dir: Path, poses: Path, frames: list[IndexedFrame], *, unregistered=(), jump_at: int | None = None
) -> None:
    """``cameras.json`` and ``reconstruction.ply`` from the ground truth: what a perfect backend
    would write. ``unregistered`` frames get no pose; from ``jump_at`` on, the path is shifted."""
    truth = json.loads(poses.read_text())["frames"]
    cameras = []
    for frame in frames:
        c2w = np.array(truth[frame.index - 1]["c2w"])
        if jump_at is not None and frame.index >= jump_at:
            c2w[:3, 3] += [3.0, 0.0, 0.0]
        registered = frame.index not in unregistered
        cameras.append(CameraFrame(
            name=frame.name, index=frame.index, source=FrameSource(video=frame.video, t_s=frame.t_s),
            registered=registered, c2w=c2w.tolist() if registered else None,
        ))  # fmt: skip
    write_cameras(job_dir / CAMERAS_NAME, Cameras(backend="colmap", version="ground truth (test)",
                                                  parameters={"mean_reprojection_error_px": 0.5},
                                                  frames=cameras))  # fmt: skip
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-3, 3, (500, 3)).astype(np.float32)
    xyz[:, 2] *= 0.05
    write_ply(job_dir / "reconstruction.ply", xyz, rng.integers(0, 256, (500, 3), dtype=np.uint8))
    keypoints = {f.name: 2000 for f in frames}
    (job_dir / "colmap_stats.json").write_text(json.dumps(
        {"mean_reprojection_error_px": 0.5, "mean_track_length": 6.0, "mean_observations_per_frame": 900.0,
         "keypoints": keypoints}))  # fmt: skip
