"""The colmap backend, run as the gpu agent runs it: a real subprocess on real frames."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require_ffmpeg

from services.demo.synth import render_survey
from shared.cameras import read_cameras
from shared.frames import FRAMES_INDEX_NAME, FrameIndex, IndexedFrame, IndexedVideo
from shared.geometry import align_rmse, trajectory_length
from shared.plyio import read_ply

REPO = Path(__file__).resolve().parents[2]
FPS = 10.0
STAGES = ["features", "matching", "mapping", "writing"]


def run_runner(frames: Path, out: Path, timeout_s: float = 300, extra: tuple[str, ...] = ()
               ) -> tuple[subprocess.CompletedProcess, float]:  # fmt: skip
    argv = [sys.executable, "-m", "services.gpu_agent.backends.colmap_runner",
            "--frames", str(frames), "--out", str(out), "--threads", "2", *extra]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(argv, check=False, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    return proc, time.monotonic() - started


def last_stderr_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def extract_frames(video: Path, frames: Path, *extra: str) -> None:
    frames.mkdir(parents=True, exist_ok=True)
    argv = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(video), *extra, "-q:v", "3", "-start_number", "1",
            str(frames / "frame_%06d.jpg")]  # fmt: skip
    subprocess.run(argv, check=True)


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """32 frames of the synthetic survey, with a frames.json as the gpu agent writes it."""
    require_ffmpeg()
    root = tmp_path_factory.mktemp("survey")
    sample = render_survey(root, seconds=3.2, fps=FPS)
    frames = root / "job_1"
    extract_frames(sample.video, frames)
    names = sorted(p.name for p in frames.glob("frame_*.jpg"))
    index = FrameIndex(
        videos=[IndexedVideo(index=0, path=sample.video.name, native_width=640, native_height=360)],
        frames=[IndexedFrame(name=n, index=i + 1, video=0, t_s=i / FPS) for i, n in enumerate(names)],
    )
    (frames / FRAMES_INDEX_NAME).write_text(index.model_dump_json())
    return sample, frames


@pytest.mark.slow
def test_reconstructs_the_synthetic_survey(survey):
    sample, frames = survey
    proc, elapsed_s = run_runner(frames, frames, extra=("--max-features", "3000", "--max-image-size", "1024"))
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Progress: JSON lines only, the four stages in order, monotonic within each.
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    stages = [r["stage"] for r in records]
    assert sorted(set(stages), key=stages.index) == STAGES  # each stage once, in order
    assert stages == sorted(stages, key=STAGES.index)
    for stage in STAGES:
        values = [r["progress"] for r in records if r["stage"] == stage]
        assert values == sorted(values) and 0 <= values[0] and values[-1] == 1.0
    assert sum(r["stage"] == "mapping" for r in records) > 10  # per-frame mapping progress

    ply = read_ply(frames / "reconstruction.ply")
    assert len(ply["x"]) > 1000
    assert {"x", "y", "z", "red", "green", "blue", "frame"} <= set(ply)
    assert ply["frame"].min() >= 1 and ply["frame"].max() <= sample.frames

    cameras = read_cameras(frames / "cameras.json")
    assert cameras.backend == "colmap" and cameras.version.startswith("pycolmap")
    assert (cameras.parameters["max_num_features"], cameras.parameters["max_image_size"]) == (3000, 1024)
    assert [f.name for f in cameras.frames] == sorted(p.name for p in frames.glob("frame_*.jpg"))
    registered = cameras.registered
    ratio = len(registered) / len(cameras.frames)
    assert ratio >= 0.9

    poses = json.loads(sample.poses.read_text())
    truth_by_frame = {round(f["t_s"] * FPS): np.array(f["c2w"])[:3, 3] for f in poses["frames"]}
    estimated = np.array([f.centre() for f in registered])
    truth = np.array([truth_by_frame[round(f.source.t_s * FPS)] for f in registered])
    length = trajectory_length(np.array(list(truth_by_frame.values())))
    rmse = align_rmse(estimated, truth)
    print(f"colmap runner: {elapsed_s:.1f} s, registered {ratio:.0%}, RMSE {rmse / length:.3%} of {length:.2f} m")
    assert rmse < 0.02 * length

    frame = registered[0]
    assert frame.index == 1 and frame.source.video == 0 and frame.source.t_s == 0.0
    focal = poses["K"][0][0]
    assert frame.intrinsics.fx == pytest.approx(focal, rel=0.05)
    assert (frame.native_intrinsics.width, frame.native_intrinsics.height) == (640, 360)
    assert not list(frames.glob(".*.tmp"))  # atomic writes left nothing behind


def test_empty_folder_fails_readably(tmp_path):
    (tmp_path / "frames").mkdir()
    proc, _ = run_runner(tmp_path / "frames", tmp_path / "out")
    assert proc.returncode == 2
    assert last_stderr_line(proc) == f"no frames (frame_NNNNNN.jpg) in {tmp_path / 'frames'}"
    assert proc.stdout == ""


def test_missing_folder_fails_readably(tmp_path):
    proc, _ = run_runner(tmp_path / "nowhere", tmp_path / "out")
    assert proc.returncode == 2
    assert "does not exist" in last_stderr_line(proc)


def test_garbage_frames_fail_readably(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        (frames / f"frame_{i:06d}.jpg").write_bytes(rng.bytes(5000))
    proc, _ = run_runner(frames, tmp_path / "out")
    assert proc.returncode == 2
    assert last_stderr_line(proc) == f"none of the 5 frames in {frames} is a readable JPEG image"


def test_featureless_frames_fail_readably(tmp_path):
    require_ffmpeg()
    frames = tmp_path / "frames"
    frames.mkdir()
    argv = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=320x180:r=5:d=1",
            "-q:v", "3", "-start_number", "1", str(frames / "frame_%06d.jpg")]  # fmt: skip
    subprocess.run(argv, check=True)
    proc, _ = run_runner(frames, tmp_path / "out")
    assert proc.returncode == 2
    assert "SIFT found features in only 0 of 5 frames" in last_stderr_line(proc)
    assert "textureless" in last_stderr_line(proc)


def test_unrelated_frames_fail_readably(tmp_path):
    """Noise has features but nothing in common between frames: nothing registers."""
    require_ffmpeg()
    frames = tmp_path / "frames"
    frames.mkdir()
    argv = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "nullsrc=s=320x180:r=5:d=1.6",
            "-vf", "geq=lum='random(1)*255':cb=128:cr=128", "-q:v", "3", "-start_number", "1",
            str(frames / "frame_%06d.jpg")]  # fmt: skip
    subprocess.run(argv, check=True)
    proc, _ = run_runner(frames, tmp_path / "out")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "pycolmap registered only" in last_stderr_line(proc)
    assert "try a higher fps" in last_stderr_line(proc)


def test_out_of_range_sift_parameters_are_refused(tmp_path):
    proc, _ = run_runner(tmp_path, tmp_path, timeout_s=60, extra=("--max-features", "10"))
    assert proc.returncode == 2 and "--max-features must be within" in proc.stderr


def test_runner_argv_for_colmap_follows_when_asked(tmp_path):
    from services.gpu_agent.backends import runner_argv

    batch = runner_argv("colmap", tmp_path / "f", tmp_path / "o", threads=2, colmap_max_features=1000)
    assert batch == [sys.executable, "-m", "services.gpu_agent.backends.colmap_runner", "--frames", str(tmp_path / "f"),
                     "--out", str(tmp_path / "o"), "--max-features", "1000", "--threads", "2"]  # fmt: skip
    follow = runner_argv("colmap", tmp_path / "f", tmp_path / "o", threads=2, colmap_max_features=1000, follow=True)
    assert follow == [*batch, "--follow"]
    # The follower's behaviour (work before the sentinel, batch-equal outputs) is in test_streaming.py.
