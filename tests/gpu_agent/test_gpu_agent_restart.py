"""A gpu agent process killed with SIGKILL mid-job, then restarted: the job completes once.

Real processes (the agent started through the CLI), a real storage agent, real ffmpeg and
real pycolmap on a rendered survey, so the outputs can be checked against ground truth.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from conftest import TOKEN, processes_matching, serve_app, wait_until
from services.demo.synth import render_survey
from services.storage_agent.app import create_app as create_storage_app
from services.storage_agent.config import StorageSettings
from shared.cameras import read_cameras
from shared.geometry import align_rmse, trajectory_length
from shared.jobs import ExtractParams, JobSpec, VideoSource
from shared.plyio import read_ply

AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    root = tmp_path_factory.mktemp("survey")
    first = render_survey(root, name="GX010001.MP4", seconds=2.0, fps=10.0)
    second = render_survey(root, name="GX020001.MP4", seconds=2.0, fps=10.0, start_s=2.0)
    return root, first, second


@pytest.fixture(scope="module")
def storage_url(survey):
    with serve_app(create_storage_app(StorageSettings(roots=[survey[0]], token=TOKEN))) as url:
        yield url


class AgentProcess:
    def __init__(self, workdir):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "gpu-agent", "--workdir", str(self.workdir),
             "--port", str(self.port), "--log-level", "warning"],
            env={**os.environ, "COSMA_TOKEN": TOKEN},
        )
        wait_until(lambda: self._healthy(), timeout_s=60, what="the gpu agent to start")

    def _healthy(self):
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def state_of(workdir, job_id):
    try:
        return json.loads((workdir / f"job_{job_id}" / "state.json").read_text())
    except (OSError, ValueError):
        return None


def check_complete(workdir, job_id, survey_poses):
    job_dir = workdir / f"job_{job_id}"
    names = sorted(p.name for p in job_dir.glob("frame_*.jpg"))
    assert names == [f"frame_{i:06d}.jpg" for i in range(1, 41)]  # no frame lost or repeated
    assert len(read_ply(job_dir / "reconstruction.ply")["x"]) > 1000
    cameras = read_cameras(job_dir / "cameras.json")
    registered = [f for f in cameras.frames if f.registered]
    assert len(registered) >= 36
    truth = {}
    for video, poses in enumerate(survey_poses):
        for frame in json.loads(poses.read_text())["frames"]:
            truth[(video, round(frame["t_s"], 3))] = np.array(frame["c2w"])[:3, 3]
    est = np.array([np.array(f.c2w)[:3, 3] for f in registered])
    ref = np.array([truth[(f.source.video, round(f.source.t_s, 3))] for f in registered])
    assert align_rmse(est, ref) < 0.02 * trajectory_length(ref)


@pytest.mark.parametrize("kill_in", ["extracting", "reconstructing"])
def test_agent_killed_mid_job_then_restarted_completes_the_job_once(tmp_path, survey, storage_url, kill_in):
    root, first, second = survey
    agent = AgentProcess(tmp_path / "frames")
    agent.start()
    try:
        spec = JobSpec(job_id=21, videos=[VideoSource(storage_url=storage_url, path=first.video.name),
                                          VideoSource(storage_url=storage_url, path=second.video.name)],
                       extract=ExtractParams(fps=10, width=640))
        assert httpx.put(f"{agent.url}/jobs/21", json=spec.model_dump(mode="json"), headers=AUTH).status_code == 201
        job_dir = agent.workdir / "job_21"
        if kill_in == "extracting":
            wait_until(lambda: (s := state_of(agent.workdir, 21)) and s["state"] == "extracting"
                       and any(job_dir.glob("frame_*.jpg")), timeout_s=60, interval_s=0.005,
                       what="ingest to start")
        else:  # the backend starts during the ingest when it streams: wait for the last frame too
            wait_until(lambda: processes_matching(str(job_dir))
                       and (state_of(agent.workdir, 21) or {}).get("state") == "reconstructing",
                       timeout_s=120, interval_s=0.05, what="the backend to start on every frame")
            time.sleep(2)  # let it get into feature extraction
        agent.kill()
        killed_state = state_of(agent.workdir, 21)["state"]
        assert killed_state == kill_in

        agent.start()
        done = wait_until(lambda: (j := httpx.get(f"{agent.url}/jobs/21", headers=AUTH).json())["state"]
                          in ("done", "failed") and j, timeout_s=400, interval_s=0.5, what="the job to end")
        assert done["state"] == "done", done
        # Exactly one backend ran to the end: no orphan of the killed agent is left running.
        assert processes_matching(str(job_dir)) == []
        check_complete(agent.workdir, 21, [first.poses, second.poses])
    finally:
        agent.stop()
