"""The lingbot runner as a real subprocess against the TEST DOUBLE of ``lingbot_map``.

LingBot-Map needs a GPU and a 4.5 GB checkpoint, neither of which is here: the double in
``lingbot_double/`` mimics its API and returns predictions from a known synthetic scene
(cameras sliding along x, looking at the plane z = 5), so the outputs can be checked
against the truth. These tests need torch (the CPU build will do) and skip without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.gpu_agent.backends import (
    LINGBOT_RUNNER,
    RUNNER_STAGES,
    available_backends,
    runner_argv,
)
from shared.cameras import read_cameras
from shared.gpu import GpuInfo
from shared.plyio import read_ply

DOUBLE = Path(__file__).parent / "lingbot_double"
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="torch is not installed (pip install torch==2.13.0 for the CPU build)")
N_FRAMES = 20


def _scene():
    sys.path.insert(0, str(DOUBLE))
    try:
        from lingbot_map import _scene
    finally:
        sys.path.remove(str(DOUBLE))
    return _scene


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINGBOT_DOUBLE")}
    env["PYTHONPATH"] = str(DOUBLE)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    """A job folder: frames (640x360 JPEG), frames.json with 1920x1080 videos, a checkpoint."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from PIL import Image

    sys.path.insert(0, str(DOUBLE))
    try:
        from lingbot_map.models.gct_stream import GCTStream
    finally:
        sys.path.remove(str(DOUBLE))
    root = tmp_path_factory.mktemp("lingbot_job")
    rng = np.random.default_rng(0)
    frames = []
    for k in range(1, N_FRAMES + 1):
        name = f"frame_{k:06d}.jpg"
        Image.fromarray(rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)).save(root / name)
        frames.append({"name": name, "index": k, "video": 0 if k <= 10 else 1, "t_s": 0.5 * ((k - 1) % 10)})
    videos = [{"index": i, "path": f"GX0{i + 1}0042.MP4", "native_width": 1920, "native_height": 1080} for i in (0, 1)]
    (root / "frames.json").write_text(json.dumps({"videos": videos, "frames": frames}))
    torch.save({"model": GCTStream().state_dict()}, root / "lingbot-map.pt")
    return root


def run_runner(job: Path, out: Path, *extra: str, env=None, timeout=60) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(LINGBOT_RUNNER), "--frames", str(job), "--out", str(out),
            "--checkpoint", str(job / "lingbot-map.pt"), "--device", "cpu", *extra]  # fmt: skip
    return subprocess.run(argv, env=env or _env(), capture_output=True, text=True, timeout=timeout, cwd=out.parent,
                          check=False)


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def streamed(job, tmp_path_factory):
    """One streaming run (keyframe interval 3), imports recorded, the double's calls logged."""
    out = tmp_path_factory.mktemp("streamed") / "out"
    log = out.parent / "double.jsonl"
    imported = out.parent / "imported.json"
    # runpy keeps the interpreter alive after the runner to list what it imported.
    argv = ["lingbot_runner.py", "--frames", str(job), "--out", str(out), "--checkpoint", str(job / "lingbot-map.pt"),
            "--device", "cpu", "--tier", "medium", "--keyframe-interval", "3"]  # fmt: skip
    code = "\n".join([
        "import json, runpy, sys",
        f"sys.argv, rc = {argv!r}, None",
        "try:",
        f"    runpy.run_path({str(LINGBOT_RUNNER)!r}, run_name='__main__')",
        "except SystemExit as exc:",
        "    rc = exc.code",
        f"open({str(imported)!r}, 'w').write(json.dumps({{'rc': rc, 'modules': sorted(sys.modules)}}))",
    ])  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], env=_env(LINGBOT_DOUBLE_LOG=str(log)), capture_output=True,
                          text=True, timeout=60, cwd=out.parent, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads(imported.read_text())
    assert record["rc"] == 0, proc.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return {"out": out, "proc": proc, "modules": record["modules"], "calls": calls}


@needs_torch
def test_runner_imports_nothing_of_this_project(streamed):
    tops = {name.split(".")[0] for name in streamed["modules"]}
    assert not tops & {"shared", "services", "pydantic", "fastapi", "httpx"}
    assert {"torch", "numpy", "lingbot_map"} <= tops


@needs_torch
def test_outputs_are_valid_and_match_the_synthetic_scene(streamed):
    scene, out = _scene(), streamed["out"]
    cameras = read_cameras(out / "cameras.json")  # validated by shared.cameras' models
    assert cameras.backend == "lingbot" and cameras.version == "lingbot-map 0.0+double"
    assert [f.name for f in cameras.frames] == [f"frame_{k:06d}.jpg" for k in range(1, N_FRAMES + 1)]
    assert all(f.registered for f in cameras.frames)
    for frame in cameras.frames:
        np.testing.assert_allclose(frame.c2w, scene.gt_c2w(frame.index), atol=1e-5)
    first = cameras.frames[12]
    assert first.source.video == 1 and first.source.t_s == pytest.approx(1.0)
    f_model = scene.FOCAL_SCALE * 518
    assert first.intrinsics.width == 640 and first.intrinsics.fx == pytest.approx(f_model * 640 / 518, rel=1e-5)
    assert first.native_intrinsics.width == 1920 and first.native_intrinsics.fx == pytest.approx(f_model * 1920 / 518, rel=1e-5)
    assert cameras.parameters["tier"] == "medium" and cameras.parameters["keyframe_interval"] == 3

    cloud = read_ply(out / "reconstruction.ply")
    assert set(cloud) == {"x", "y", "z", "red", "green", "blue", "confidence", "frame"}
    assert len(cloud["x"]) > 1000
    np.testing.assert_allclose(cloud["z"], scene.PLANE_Z, atol=1e-4)  # every point on the plane
    assert (cloud["confidence"] > 1.5).all()  # the low-confidence rows were dropped
    assert set(np.unique(cloud["frame"])) == set(range(1, N_FRAMES + 1))

    stats = json.loads((out / "lingbot_stats.json").read_text())
    assert stats["frames"] == N_FRAMES and stats["points"] == len(cloud["x"]) and stats["fps"] > 0
    assert stats["pose_consistency"]["c2w"] < stats["pose_consistency"]["w2c"]
    per_frame = stats["per_frame"]["frame_000001.jpg"]
    assert per_frame["above_threshold"] == pytest.approx(1 - scene.TOP_LOW_CONF_ROWS, abs=0.01)


@needs_torch
def test_progress_is_json_lines_per_frame(streamed):
    lines = events(streamed["proc"].stdout)
    assert {e["stage"] for e in lines} == set(RUNNER_STAGES["lingbot"])
    assert [e["stage"] for e in lines] == sorted((e["stage"] for e in lines), key=RUNNER_STAGES["lingbot"].index)
    inference = [e["progress"] for e in lines if e["stage"] == "inference"]
    assert len(inference) == N_FRAMES and inference == sorted(inference) and inference[-1] == 1.0
    assert lines[-1]["stage"] == "writing" and lines[-1]["progress"] == 1.0
    assert "20 frames" in lines[-1]["message"]


@needs_torch
def test_streaming_loop_caches_scale_frames_then_keyframes(streamed):
    calls = streamed["calls"]
    assert calls[0] == {"event": "clean"} and sum(c["event"] == "clean" for c in calls) == 1
    forwards = [c for c in calls if c["event"] == "forward"]
    scale = 4  # the medium tier
    assert forwards[0]["frames"] == list(range(1, scale + 1)) and forwards[0]["block"] == scale
    assert not forwards[0]["skip_append"]
    streamed_frames = forwards[1:]
    assert [c["frames"] for c in streamed_frames] == [[k] for k in range(scale + 1, N_FRAMES + 1)]
    assert all(c["block"] == 1 and c["scale_frames"] == scale and c["window"] == 48 for c in streamed_frames)
    cached = [not c["skip_append"] for c in streamed_frames]
    assert cached == [(i % 3 == 0) for i in range(N_FRAMES - scale)]


@needs_torch
def test_windowed_mode_over_several_windows(tmp_path):
    torch = pytest.importorskip("torch")
    from PIL import Image

    sys.path.insert(0, str(DOUBLE))
    try:
        from lingbot_map.models.gct_stream import GCTStream
    finally:
        sys.path.remove(str(DOUBLE))
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(1, 41):
        Image.new("RGB", (320, 180), (k * 5, 80, 120)).save(frames / f"frame_{k:06d}.jpg")
    torch.save(GCTStream().state_dict(), frames / "lingbot-map.pt")  # a bare state dict loads too
    log = tmp_path / "log.jsonl"
    proc = run_runner(frames, tmp_path / "out", "--mode", "windowed", "--tier", "small", "--max-points", "20000",
                      env=_env(LINGBOT_DOUBLE_LOG=str(log)))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sum('"clean"' in line for line in log.read_text().splitlines()) == 3  # (0,24) (8,32) (16,40)
    scene = _scene()
    cameras = read_cameras(tmp_path / "out" / "cameras.json")
    for frame in cameras.frames:  # later windows came at scales 1/1.5 and 1/2, other origins
        np.testing.assert_allclose(frame.c2w, scene.gt_c2w(frame.index), atol=1e-4)
    cloud = read_ply(tmp_path / "out" / "reconstruction.ply")
    np.testing.assert_allclose(cloud["z"], scene.PLANE_Z, atol=1e-3)
    assert 1000 < len(cloud["z"]) <= 20_000  # capped by the voxel grid


@needs_torch
def test_out_of_memory_retries_one_tier_lower(job, tmp_path):
    proc = run_runner(job, tmp_path / "out", "--tier", "large", env=_env(LINGBOT_DOUBLE_OOM_WINDOW_ABOVE="48"))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "out" / "lingbot_stats.json").read_text())
    assert stats["parameters"]["tier"] == "medium" and stats["parameters"]["retried_tiers"] == ["large"]
    assert any("retrying at tier medium" in e["message"] for e in events(proc.stdout))
    assert read_cameras(tmp_path / "out" / "cameras.json").parameters["tier"] == "medium"


@needs_torch
def test_out_of_memory_at_every_tier_fails_with_a_reason(job, tmp_path):
    proc = run_runner(job, tmp_path / "out", "--tier", "medium", env=_env(LINGBOT_DOUBLE_OOM_WINDOW_ABOVE="0"))
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"not enough GPU memory for {N_FRAMES} frames at 518x294")
    assert "CUDA out of memory" not in proc.stderr  # so the agent shows this sentence
    assert not (tmp_path / "out" / "reconstruction.ply").exists()


@needs_torch
def test_sigterm_mid_run_exits_promptly_leaving_no_process(job, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, str(LINGBOT_RUNNER), "--frames", str(job), "--out", str(out),
            "--checkpoint", str(job / "lingbot-map.pt"), "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(argv, env=_env(LINGBOT_DOUBLE_FRAME_DELAY_S="0.3"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        for line in proc.stdout:
            if json.loads(line)["stage"] == "inference":
                break
        os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=60)  # a bound against a hang, not a speed claim: rc and the outputs tell
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rc == 143
    assert "stopped (SIGTERM)" in proc.stderr.read()
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nothing left in its process group
    assert not out.exists() or not any(out.iterdir())


@needs_torch
def test_follow_mode_loads_the_checkpoint_while_frames_land_then_matches_a_batch_run(job, streamed, tmp_path):
    """--follow: the checkpoint is loaded before any frame exists; once .ingest.done is written
    the run is the batch one (same args as ``streamed``: same cameras)."""
    frames, out = tmp_path / "frames", tmp_path / "out"
    frames.mkdir()
    argv = [sys.executable, str(LINGBOT_RUNNER), "--frames", str(frames), "--out", str(out),
            "--checkpoint", str(job / "lingbot-map.pt"), "--device", "cpu", "--tier", "medium",
            "--keyframe-interval", "3", "--follow"]  # fmt: skip
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        seen = []
        for line in proc.stdout:  # before any frame lands
            seen.append(json.loads(line))
            if "waiting for the rest" in seen[-1]["message"]:
                break
        assert [e["message"] for e in seen[:2]] == ["loading the checkpoint lingbot-map.pt", "checkpoint loaded"]
        assert "0 frames landed" in seen[-1]["message"]
        for name in ["frames.json", *(f"frame_{k:06d}.jpg" for k in range(1, N_FRAMES + 1))]:
            (frames / name).write_bytes((job / name).read_bytes())
        (frames / ".ingest.done").write_text(json.dumps({"frames": N_FRAMES}))
        rest, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr
    assert sum(e["stage"] == "loading" and e["progress"] == 0.0 for e in seen + events(rest)) == 1  # loaded once
    followed, batch = read_cameras(out / "cameras.json"), read_cameras(streamed["out"] / "cameras.json")
    assert [f.name for f in followed.frames] == [f.name for f in batch.frames]
    for a, b in zip(followed.frames, batch.frames):
        np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-6)


@needs_torch
def test_checkpoint_problems_are_reported(job, tmp_path):
    import torch

    proc = run_runner(job, tmp_path / "out", "--checkpoint", str(tmp_path / "none.pt"))
    assert proc.returncode == 2 and "checkpoint not found at" in proc.stderr.splitlines()[-1]
    torch.save({"model": {"unrelated.weight": torch.zeros(2)}}, tmp_path / "other.pt")
    proc = run_runner(job, tmp_path / "out", "--checkpoint", str(tmp_path / "other.pt"))
    assert proc.returncode == 2 and "the checkpoint lacks 4 weights" in proc.stderr.splitlines()[-1]


@needs_torch
def test_lingbot_check_prints_what_it_measured(job, tmp_path, capsys):
    from services.cli import main

    os.environ["PYTHONPATH"] = str(DOUBLE)  # the runner subprocess inherits it
    try:
        rc = main(["lingbot-check", "--python", sys.executable, "--checkpoint", str(job / "lingbot-map.pt"),
                   "--count", "12", "--width", "320", "--device", "cpu", "--out", str(tmp_path / "out")])  # fmt: skip
    finally:
        del os.environ["PYTHONPATH"]
    assert rc == 0
    text = capsys.readouterr().out
    assert "frames: 12 at 518x294" in text and "points: " in text and "frames/s" in text
    assert "camera-to-world, as the runner assumes" in text


# --- wiring (no torch needed) ---------------------------------------------------------


GPU = GpuInfo(index=0, name="RTX 3060", uuid="GPU-1", memory_total_mib=12288, memory_used_mib=0, memory_free_mib=12288)


def test_runner_argv_for_lingbot(tmp_path):
    argv = runner_argv("lingbot", tmp_path / "f", tmp_path / "o", threads=0, lingbot_python=Path("/opt/lb/bin/python"),
                       lingbot_checkpoint=Path("/models/lingbot-map.pt"), gpu_index=1)  # fmt: skip
    assert argv == ["/opt/lb/bin/python", str(LINGBOT_RUNNER), "--frames", str(tmp_path / "f"), "--out",
                    str(tmp_path / "o"), "--checkpoint", "/models/lingbot-map.pt", "--device", "cuda:1"]  # fmt: skip
    follow = runner_argv("lingbot", tmp_path / "f", tmp_path / "o", threads=0, lingbot_python=Path("/opt/lb/bin/python"),
                         lingbot_checkpoint=Path("/models/lingbot-map.pt"), gpu_index=1, follow=True)  # fmt: skip
    assert follow == [*argv, "--follow"]
    with pytest.raises(ValueError, match="not configured"):
        runner_argv("lingbot", tmp_path, tmp_path, threads=0)


def test_lingbot_availability_and_reasons(tmp_path):
    python, ckpt = tmp_path / "python", tmp_path / "lingbot-map.pt"

    def lingbot(gpus, **kw):
        return next(b for b in available_backends(gpus, **kw) if b.name == "lingbot")

    assert lingbot([]).reason == "lingbot: no GPU on this node"
    assert "not configured" in lingbot([GPU]).reason
    assert lingbot([GPU], lingbot_python=python, lingbot_checkpoint=ckpt).reason == f"lingbot: interpreter not found at {python}"
    python.write_text("")
    assert lingbot([GPU], lingbot_python=python, lingbot_checkpoint=ckpt).reason == f"lingbot: checkpoint not found at {ckpt}"
    ckpt.write_bytes(b"")
    info = lingbot([GPU], lingbot_python=python, lingbot_checkpoint=ckpt)
    assert info.available and info.reason is None and info.device == "gpu"
    assert not lingbot([], lingbot_python=python, lingbot_checkpoint=ckpt).available
