"""The whole path of a job through three real service processes on loopback.

Real ffmpeg on the storage agent, real HTTP, real SQLite, real pycolmap on the CPU.
"""

from __future__ import annotations

import json
import socket

import httpx
import numpy as np
import pytest

from conftest import TOKEN, require_ffmpeg, wait_until
from services.demo.run import Cluster
from services.demo.synth import render_survey
from shared.geometry import align_rmse, trajectory_length
from shared.plyio import read_ply

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_ffmpeg()
    base = tmp_path_factory.mktemp("cluster")
    videos = base / "videos"
    sample = render_survey(videos, seconds=4.0, fps=10.0)
    (videos / "survey").mkdir()
    (videos / "survey" / "GX019999.MP4").write_bytes(sample.video.read_bytes()[:20_000])  # truncated
    (videos / "empty.MP4").write_bytes(b"")
    c = Cluster(base, "127.0.0.1", TOKEN)
    try:
        storage = c.start("storage-agent", ["--root", str(videos), "--node-id", "st"], free_port())
        gpu = c.start("gpu-agent", ["--workdir", str(base / "frames"), "--node-id", "g1"], free_port())
        core = c.start("core", ["--data-dir", str(base / "core"), "--tick-interval-s", "0.5"], free_port())
        for name, role, url in [("st", "storage", storage), ("g1", "gpu", gpu)]:
            resp = httpx.post(f"{core}/api/v1/nodes", json={"name": name, "role": role, "url": url}, headers=AUTH)
            assert resp.status_code == 201, resp.text
        yield {"core": core, "gpu": gpu, "storage": storage, "sample": sample, "base": base}
    finally:
        c.stop()


def submit(core: str, path: str, **params) -> dict:
    body = {"videos": [{"storage": "st", "path": path}], "fps": 10, "width": 640, **params}
    resp = httpx.post(f"{core}/api/v1/jobs", json=body, headers=AUTH, timeout=60)
    assert resp.status_code == 201, resp.text
    return resp.json()


def wait_final(core: str, job_id: int, timeout_s: float) -> dict:
    def final():
        job = httpx.get(f"{core}/api/v1/jobs/{job_id}").json()
        return job if job["state"] in ("done", "failed", "cancelled") else None

    return wait_until(final, timeout_s=timeout_s, interval_s=0.5, what=f"job {job_id} to end")


@pytest.mark.slow
def test_one_video_becomes_a_point_cloud_matching_the_ground_truth(cluster):
    core = cluster["core"]
    job = submit(core, cluster["sample"].video.name)
    states_seen = set()

    def ended():
        current = httpx.get(f"{core}/api/v1/jobs/{job['id']}").json()
        states_seen.add(current["state"])
        return current if current["state"] in ("done", "failed", "cancelled") else None

    done = wait_until(ended, timeout_s=400, interval_s=0.5, what="the job to end")
    assert done["state"] == "done", done
    assert done["node"] == "g1" and done["progress"] == 1.0
    assert "reconstructing" in states_seen

    links = {link.rsplit("/", 1)[-1]: link for link in done["files"]}
    ply = httpx.get(f"{core}{links['reconstruction.ply']}")
    assert ply.status_code == 200
    ply_path = cluster["base"] / "downloaded.ply"
    ply_path.write_bytes(ply.content)
    cloud = read_ply(ply_path)
    assert len(cloud["x"]) > 1000

    cameras = httpx.get(f"{core}{links['cameras.json']}").json()
    frames = cameras["frames"]
    registered = [f for f in frames if f["registered"]]
    assert len(frames) == 40
    assert len(registered) >= 0.9 * len(frames)

    truth = json.loads(cluster["sample"].poses.read_text())
    by_time = {round(f["t_s"], 3): np.array(f["c2w"])[:3, 3] for f in truth["frames"]}
    est = np.array([np.array(f["c2w"])[:3, 3] for f in registered])
    ref = np.array([by_time[round(f["source"]["t_s"], 3)] for f in registered])
    rmse = align_rmse(est, ref)
    assert rmse < 0.02 * trajectory_length(ref), (rmse, trajectory_length(ref))


@pytest.mark.parametrize("path,reason", [
    ("survey/GX019999.MP4", "GX019999.MP4"),
    ("empty.MP4", "empty.MP4"),
])
def test_a_corrupt_video_fails_its_job_with_a_readable_reason(cluster, path, reason):
    core = cluster["core"]
    resp = httpx.post(f"{core}/api/v1/jobs", json={"videos": [{"storage": "st", "path": path}], "fps": 2},
                      headers=AUTH, timeout=60)
    if resp.status_code == 422:  # refused at submit time: the catalog already knows it is unreadable
        assert reason in resp.json()["error"]["message"]
    else:
        assert resp.status_code == 201, resp.text
        job = wait_final(core, resp.json()["id"], timeout_s=120)
        assert job["state"] == "failed"
        assert reason in job["error"] and "Traceback" not in job["error"]
    for service in ("core", "gpu", "storage"):
        assert httpx.get(f"{cluster[service]}/health").status_code == 200
