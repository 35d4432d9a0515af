"""The gpu agent against a real storage agent on loopback, with real ffmpeg.

Reconstruction itself is exercised end to end in tests/integration; here the job manager's
rules: ingest numbering and markers, fencing, idempotence, cancel, restart, bad input.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from conftest import TOKEN, make_test_video, processes_matching, serve_app, wait_until
from services.gpu_agent.app import create_app
from services.gpu_agent.config import GpuAgentSettings
from services.gpu_agent.ingest import pull_video
from services.gpu_agent.nvml import RecordedProbe
from services.storage_agent.app import create_app as create_storage_app
from services.storage_agent.config import StorageSettings
from shared.gpu import AgentStatus, GpuInfo
from shared.jobs import ExtractParams, JobSpec, VideoSource

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_test_video(root / "GX010001.MP4", seconds=2, fps=10)
    make_test_video(root / "GX020001.MP4", seconds=1, fps=10)
    (root / "broken.MP4").write_text("this is not a video\n")
    return root


@pytest.fixture(scope="module")
def storage_url(videos):
    with serve_app(create_storage_app(StorageSettings(roots=[videos], token=TOKEN))) as url:
        yield url


@pytest.fixture
def agent(tmp_path):
    settings = GpuAgentSettings(workdir=tmp_path / "frames", token=TOKEN, cancel_grace_s=2)
    with serve_app(create_app(settings)) as url:
        yield url, settings.workdir


def spec(job_id: int, storage_url: str, *paths: str, attempt: int = 1, **extract) -> dict:
    return JobSpec(
        job_id=job_id, attempt=attempt, videos=[VideoSource(storage_url=storage_url, path=p) for p in paths],
        extract=ExtractParams(**{"fps": 5, "width": 160, **extract}),
    ).model_dump(mode="json")


def get_job(url: str, job_id: int) -> dict:
    resp = httpx.get(f"{url}/jobs/{job_id}", headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_status_without_nvidia_driver_reports_no_gpu_and_cpu_backend(agent):
    url, _ = agent
    resp = httpx.get(f"{url}/status", headers=AUTH)
    assert resp.status_code == 200
    status = AgentStatus.model_validate(resp.json())
    assert status.gpus == []
    assert "NVML" in status.nvml_error
    backends = {b.name: b for b in status.backends}
    assert backends["colmap"].available
    assert not backends["lingbot"].available and backends["lingbot"].reason


def test_status_reports_recorded_gpu_readings(tmp_path):
    from shared.gpu import GpuProcess

    gpu = GpuInfo(index=0, name="NVIDIA GeForce RTX 3090", uuid="GPU-0", memory_total_mib=24576,
                  memory_used_mib=1024, memory_free_mib=23552, utilization_pct=7, temperature_c=41,
                  power_w=112.5, processes=[GpuProcess(pid=4242, used_memory_mib=900)])
    settings = GpuAgentSettings(workdir=tmp_path, token=TOKEN)
    with serve_app(create_app(settings, probe=RecordedProbe([gpu]))) as url:
        status = httpx.get(f"{url}/status", headers=AUTH).json()
    assert status["gpus"] == [gpu.model_dump()]
    assert status["nvml_error"] is None
    assert status["ram_total_mib"] > 0 and 0 < status["ram_available_mib"] <= status["ram_total_mib"]
    assert (status["jobs_running"], status["jobs_waiting"]) == (0, 0)


def test_nvml_bindings_import_without_a_deprecation_warning():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-W", "error::DeprecationWarning",
                          "-c", "import services.gpu_agent.nvml as m; m.NvmlProbe().read()"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("method,path", [
    ("GET", "/status"), ("GET", "/jobs"), ("GET", "/jobs/1"), ("PUT", "/jobs/1"),
    ("DELETE", "/jobs/1"), ("GET", "/jobs/1/files/cameras.json"),
])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])
def test_every_route_but_health_needs_the_token(agent, method, path, headers):
    url, _ = agent
    resp = httpx.request(method, f"{url}{path}", headers=headers, json={})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{url}/health").status_code == 200


def test_pull_video_numbers_frames_from_the_given_index(storage_url, tmp_path):
    seen = []
    frames = pull_video(
        VideoSource(storage_url=storage_url, path="GX010001.MP4"), ExtractParams(fps=5, width=160),
        tmp_path, video_index=1, first_frame=7, token=TOKEN, timeout_s=30,
        cancel=threading.Event(), on_frame=lambda f, p: seen.append(p),
    )
    assert [f.index for f in frames] == list(range(7, 7 + len(frames)))
    assert len(frames) == 10  # 2 s at 5 fps
    assert all(f.video == 1 for f in frames)
    assert [f.t_s for f in frames] == sorted(f.t_s for f in frames)
    assert sorted(p.name for p in tmp_path.glob("frame_*.jpg")) == [f.name for f in frames]
    assert all(p.read_bytes()[:2] == b"\xff\xd8" for p in seen)


def _wait_state(url, job_id, *states, timeout_s=60):
    return wait_until(lambda: (j := get_job(url, job_id))["state"] in states and j,
                      timeout_s=timeout_s, what=f"job {job_id} to reach {states}")


def test_ingest_numbers_frames_across_videos_and_marks_each_done(agent, storage_url):
    url, workdir = agent
    # fps 5 over 2 s + 1 s = 15 frames; too few and too flat for SfM, so the job ends failed
    # in reconstruction, after ingest is complete: what this test looks at.
    resp = httpx.put(f"{url}/jobs/3", json=spec(3, storage_url, "GX010001.MP4", "GX020001.MP4"), headers=AUTH)
    assert resp.status_code == 201, resp.text
    _wait_state(url, 3, "reconstructing", "done", "failed")
    job_dir = workdir / "job_3"
    names = sorted(p.name for p in job_dir.glob("frame_*.jpg"))
    assert names == [f"frame_{i:06d}.jpg" for i in range(1, 16)]
    assert (job_dir / ".video_0.done").exists() and (job_dir / ".video_1.done").exists()
    index = json.loads((job_dir / "frames.json").read_text())
    assert [f["video"] for f in index["frames"]] == [0] * 10 + [1] * 5
    state = json.loads((job_dir / "state.json").read_text())
    assert state["job_id"] == 3 and state["frames"] == 15


def test_repeated_put_is_harmless_and_an_older_attempt_is_refused(agent, storage_url):
    url, _ = agent
    body = spec(4, storage_url, "GX020001.MP4", attempt=2)
    assert httpx.put(f"{url}/jobs/4", json=body, headers=AUTH).status_code == 201
    again = httpx.put(f"{url}/jobs/4", json=body, headers=AUTH)
    assert again.status_code == 200 and again.json()["attempt"] == 2
    stale = httpx.put(f"{url}/jobs/4", json=spec(4, storage_url, "GX020001.MP4", attempt=1), headers=AUTH)
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "stale_attempt"
    mismatch = httpx.put(f"{url}/jobs/5", json=body, headers=AUTH)
    assert mismatch.status_code == 409


def test_bad_spec_is_a_422_with_a_message(agent):
    url, _ = agent
    bad = {"job_id": 6, "videos": [], "extract": {"fps": -1}}
    resp = httpx.put(f"{url}/jobs/6", json=bad, headers=AUTH)
    assert resp.status_code == 422
    assert "videos" in resp.json()["error"]["message"] and "fps" in resp.json()["error"]["message"]
    assert httpx.get(f"{url}/jobs/6", headers=AUTH).status_code == 404


def test_corrupt_video_fails_its_job_naming_the_file_and_the_agent_keeps_serving(agent, storage_url):
    url, _ = agent
    httpx.put(f"{url}/jobs/7", json=spec(7, storage_url, "broken.MP4"), headers=AUTH)
    job = _wait_state(url, 7, "failed")
    assert "broken.MP4" in job["error"]
    assert "Traceback" not in job["error"]
    assert httpx.get(f"{url}/status", headers=AUTH).status_code == 200


def test_files_are_served_by_name_only(agent, storage_url):
    url, _ = agent
    httpx.put(f"{url}/jobs/8", json=spec(8, storage_url, "GX020001.MP4"), headers=AUTH)
    _wait_state(url, 8, "reconstructing", "done", "failed")
    ok = httpx.get(f"{url}/jobs/8/files/frame_000001.jpg", headers=AUTH)
    assert ok.status_code == 200 and ok.content[:2] == b"\xff\xd8"
    for name in ["state.json.part", "..%2Fstate.json", ".video_0.done", "%2Fetc%2Fpasswd"]:
        assert httpx.get(f"{url}/jobs/8/files/{name}", headers=AUTH).status_code == 404


def test_restart_resumes_from_markers_and_reports_unknown_folders(tmp_path, storage_url):
    settings = GpuAgentSettings(workdir=tmp_path / "frames", token=TOKEN)
    (settings.workdir / "job_99").mkdir(parents=True)  # a folder with no state.json
    body = spec(9, storage_url, "GX010001.MP4", "GX020001.MP4")
    with serve_app(create_app(settings)) as url:
        httpx.put(f"{url}/jobs/9", json=body, headers=AUTH)
        _wait_state(url, 9, "reconstructing", "done", "failed")
    job_dir = settings.workdir / "job_9"
    # Pretend the agent died while pulling the second video: its marker and frames are gone,
    # a partial frame of it remains, and state.json still says extracting.
    (job_dir / ".video_1.done").unlink()
    state = json.loads((job_dir / "state.json").read_text())
    state.update(state="extracting", stage="extracting", error=None)
    (job_dir / "state.json").write_text(json.dumps(state))
    for i in range(12, 16):
        (job_dir / f"frame_{i:06d}.jpg").unlink()
    first_video = {p.name: p.stat().st_ino for p in job_dir.glob("frame_*.jpg") if int(p.stem[6:]) <= 10}

    with serve_app(create_app(settings)) as url:
        _wait_state(url, 9, "reconstructing", "done", "failed")
        status = httpx.get(f"{url}/status", headers=AUTH).json()
    assert status["unknown_folders"] == ["job_99"]
    assert (settings.workdir / "job_99").is_dir()
    assert sorted(p.name for p in job_dir.glob("frame_*.jpg")) == [f"frame_{i:06d}.jpg" for i in range(1, 16)]
    # frames of the completed first video were kept, not fetched again
    assert {n: (job_dir / n).stat().st_ino for n in first_video} == first_video


def test_cancel_stops_the_backend_process_group(agent, storage_url, videos):
    url, workdir = agent
    make_test_video(videos / "long.MP4", seconds=6, fps=10, size="640x360")
    httpx.put(f"{url}/jobs/11", json=spec(11, storage_url, "long.MP4", fps=10, width=640), headers=AUTH)
    _wait_state(url, 11, "reconstructing", timeout_s=90)
    needle = str(workdir / "job_11")
    wait_until(lambda: processes_matching(needle), timeout_s=30, what="the backend process")
    # Its log is reported and served while it runs (the dashboard shows its tail).
    assert "backend_log.txt" in get_job(url, 11)["files"]
    log = httpx.get(f"{url}/jobs/11/files/backend_log.txt", headers=AUTH)
    assert log.status_code == 200 and log.text.startswith("--- ") and "colmap_runner" in log.text
    resp = httpx.delete(f"{url}/jobs/11", headers=AUTH)
    assert resp.status_code == 200 and resp.json()["state"] == "cancelled"
    wait_until(lambda: not processes_matching(needle), timeout_s=15, what="the backend to be gone")
    purged = httpx.delete(f"{url}/jobs/11", params={"purge": "true"}, headers=AUTH)
    assert purged.status_code == 200
    assert not (workdir / "job_11").exists()
    assert httpx.get(f"{url}/jobs/11", headers=AUTH).status_code == 404


def test_a_busy_storage_agent_is_tried_again_not_failed(tmp_path, videos, monkeypatch):
    import services.gpu_agent.jobs as jobs_module

    monkeypatch.setattr(jobs_module, "INGEST_BACKOFF_S", 0.5)
    storage = StorageSettings(roots=[videos], token=TOKEN, max_concurrent_extractions=1, extraction_wait_s=0.1)
    settings = GpuAgentSettings(workdir=tmp_path / "frames", token=TOKEN)
    with serve_app(create_storage_app(storage)) as storage_url, serve_app(create_app(settings)) as url:
        # Hold the storage agent's only extraction slot with a long stream nobody reads:
        # ffmpeg blocks on its full pipe and keeps the slot.
        make_test_video(videos / "hold.MP4", seconds=20, fps=30, size="640x360")
        with httpx.stream("GET", f"{storage_url}/videos/hold.MP4/frames", params={"fps": 30, "quality": 2},
                          headers=AUTH) as held:
            assert held.status_code == 200
            httpx.put(f"{url}/jobs/12", json=spec(12, storage_url, "GX020001.MP4"), headers=AUTH)
            wait_until(lambda: "trying again" in get_job(url, 12)["message"], timeout_s=30,
                       what="the agent to report a retry")
        job = _wait_state(url, 12, "reconstructing", "done", "failed")
    assert job["videos_done"] == 1 and job["frames"] == 5, job


def test_auto_backend_without_a_gpu_runs_colmap_and_says_why(agent, storage_url):
    url, workdir = agent
    body = spec(13, storage_url, "GX020001.MP4")
    body["backend"] = "auto"
    httpx.put(f"{url}/jobs/13", json=body, headers=AUTH)
    job = _wait_state(url, 13, "reconstructing", "done", "failed")
    assert job["backend_used"] == "colmap"
    state = json.loads((workdir / "job_13" / "state.json").read_text())
    assert state["backend_used"] == "colmap"


def test_slots_pick_the_gpu_with_most_free_memory_and_never_overcommit():
    import asyncio

    from services.gpu_agent.slots import NoGpu, Slots

    gpus = [GpuInfo(index=0, name="RTX 3060", uuid="a", memory_total_mib=12288, memory_used_mib=0,
                    memory_free_mib=12000),
            GpuInfo(index=1, name="RTX 3090", uuid="b", memory_total_mib=24576, memory_used_mib=0,
                    memory_free_mib=24000)]

    async def scenario():
        slots = Slots(RecordedProbe(gpus), cpu_jobs=1, jobs_per_gpu=1)
        async with slots.gpu() as first:
            async with slots.gpu() as second:
                third = asyncio.create_task(slots.gpu().__aenter__())
                await asyncio.sleep(0.05)
                assert not third.done()  # both GPUs busy: waits
                assert (first, second) == (1, 0)
            assert await asyncio.wait_for(third, 2) == 0
        async with slots.gpu(prefer=0) as preferred:
            assert preferred == 0  # the core's choice wins when that GPU is free
        with pytest.raises(NoGpu):
            async with Slots(RecordedProbe([], "NVML unavailable"), cpu_jobs=1, jobs_per_gpu=1).gpu():
                pass

    asyncio.run(scenario())


def test_a_job_the_disk_cannot_hold_is_refused_with_507(tmp_path, storage_url):
    from services.gpu_agent.disk import estimate_job_mib

    body = JobSpec.model_validate(spec(14, storage_url, "GX010001.MP4", width=1920))
    assert estimate_job_mib(body, [60.0]) > estimate_job_mib(body, [2.0]) > 0
    settings = GpuAgentSettings(workdir=tmp_path / "frames", token=TOKEN, disk_reserve_mib=10**9)
    with serve_app(create_app(settings)) as url:
        resp = httpx.put(f"{url}/jobs/14", json=body.model_dump(mode="json"), headers=AUTH)
        assert resp.status_code == 507
        error = resp.json()["error"]
        assert error["code"] == "insufficient_storage" and "not enough disk" in error["message"]
        assert httpx.get(f"{url}/jobs/14", headers=AUTH).status_code == 404
    assert not (settings.workdir / "job_14").exists()


def test_disk_full_during_ingest_fails_the_job_with_that_reason(agent, storage_url, monkeypatch):
    import errno as errno_module

    import services.gpu_agent.ingest as ingest_module

    def full(path, data):
        raise OSError(errno_module.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ingest_module, "atomic_write_bytes", full)  # a real full disk needs root mounts
    url, _ = agent
    httpx.put(f"{url}/jobs/15", json=spec(15, storage_url, "GX020001.MP4"), headers=AUTH)
    job = _wait_state(url, 15, "failed")
    assert "disk" in job["error"] and "full" in job["error"]
    assert httpx.get(f"{url}/health").status_code == 200


def test_pull_video_in_keyframes_mode_takes_only_key_frames(storage_url, tmp_path):
    frames = pull_video(
        VideoSource(storage_url=storage_url, path="GX010001.MP4"),
        ExtractParams(fps=10, width=160, keyframes=True),
        tmp_path, video_index=0, first_frame=1, token=TOKEN, timeout_s=30,
        cancel=threading.Event(), on_frame=lambda f, p: None,
    )
    # 2 s at 10 fps with a key frame every 10 frames (make_test_video's -g): 2 key frames, not 20.
    assert len(frames) == 2
    assert [round(f.t_s, 1) for f in frames] == [0.0, 1.0]
