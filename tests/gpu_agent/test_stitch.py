"""Stitching two jobs on two real agents: rendered surveys with known poses, a real pycolmap alignment.

Each job's cameras.json holds the ground-truth poses moved by its own similarity, as a
reconstruction's arbitrary frame would be; the stitch must find B's frame relative to A's.
pycolmap runs twice in this module (one stitch that works, one refused), in module fixtures
that every test reuses: the GLB, files, viewer and restart tests read their results.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest
import trimesh
from conftest import TOKEN, processes_matching, serve_app, wait_until
from PIL import Image
from test_glb import gltf_json, khronos_validate, load_scene
from test_viewer import free_port_block, port_free

from services.demo.synth import FOCAL_PER_WIDTH, camera_pose, terrain_for_seed
from services.gpu_agent.app import create_app
from services.gpu_agent.config import GpuAgentSettings
from shared.cameras import CameraFrame, Cameras, Intrinsics, write_cameras
from shared.geometry import apply_similarity, trajectory_length
from shared.jobs import AgentJob, JobSpec, JobState, VideoSource
from shared.plyio import read_ply, write_ply
from shared.stitches import StitchCameras, StitchInput, StitchRecord, StitchSpec, StitchState

AUTH = {"Authorization": f"Bearer {TOKEN}"}
WIDTH, HEIGHT, FPS, FRAMES = 640, 360, 5.0, 30


def rotation(axis, angle) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


#: Each job's own frame: p_job = s R p_world + t (a reconstruction is defined up to this).
FRAMES_OF = {
    1: (2.0, rotation([0.2, 1, 0.3], 0.7), np.array([1.0, -2.0, 0.5])),
    2: (0.4, rotation([1, -0.5, 0.2], -1.1), np.array([-3.0, 0.2, 4.0])),
    3: (1.0, np.eye(3), np.zeros(3)),
}


def write_job(workdir: Path, job_id: int, *, seed: int, start_s: float) -> np.ndarray:
    """A done job of ``FRAMES`` rendered frames; returns the true camera centres (world frame)."""
    job_dir = workdir / f"job_{job_id}"
    job_dir.mkdir(parents=True)
    terrain = terrain_for_seed(seed)
    focal = FOCAL_PER_WIDTH * WIDTH
    K = np.array([[focal, 0, WIDTH / 2], [0, focal, HEIGHT / 2], [0, 0, 1]])
    s, r, t = FRAMES_OF[job_id]
    intrinsics = Intrinsics(fx=focal, fy=focal, cx=WIDTH / 2, cy=HEIGHT / 2, width=WIDTH, height=HEIGHT)
    frames, centres = [], []
    for i in range(FRAMES):
        c2w = camera_pose(start_s + i / FPS)
        name = f"frame_{i + 1:06d}.jpg"
        Image.fromarray(terrain.render(K, c2w, WIDTH, HEIGHT)).save(job_dir / name, quality=92)
        own = np.eye(4)
        own[:3, :3], own[:3, 3] = r @ c2w[:3, :3], s * r @ c2w[:3, 3] + t
        frames.append(CameraFrame(name=name, index=i + 1, registered=True, c2w=own.tolist(), intrinsics=intrinsics))
        centres.append(c2w[:3, 3])
    write_cameras(job_dir / "cameras.json", Cameras(backend="colmap", version="test", frames=frames))
    centres = np.array(centres)
    seabed = np.repeat(centres - [0, 0, 2.5], 20, axis=0) + np.random.default_rng(job_id).normal(0, 0.5, (600, 3))
    write_ply(job_dir / "reconstruction.ply", apply_similarity(seabed, s, r, t).astype(np.float32),
              np.full((600, 3), 128, np.uint8))
    now = datetime.now(timezone.utc)
    spec = JobSpec(job_id=job_id, videos=[VideoSource(storage_url="http://127.0.0.1:9", path="GX010001.MP4")])
    job = AgentJob(job_id=job_id, attempt=1, spec=spec, state=JobState.done, stage="done", progress=1.0,
                   created_at=now, updated_at=now)
    (job_dir / "state.json").write_text(job.model_dump_json())
    return centres


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """Agent A holds jobs 1 and 3, agent B job 2; jobs 1 and 2 overlap (same seabed), 3 is elsewhere."""
    root = tmp_path_factory.mktemp("stitch")
    truth = {1: write_job(root / "a", 1, seed=0, start_s=0.0), 2: write_job(root / "b", 2, seed=0, start_s=3.1)}
    truth[3] = write_job(root / "a", 3, seed=1, start_s=0.0)
    base = free_port_block()
    settings_a = GpuAgentSettings(workdir=root / "a", token=TOKEN, backend_threads=2, viewer_host="127.0.0.1",
                                  viewer_base_port=base, stitch_viewer_base_port=base + 4, viewer_max=2)
    with serve_app(create_app(settings_a)) as url_a, \
         serve_app(create_app(GpuAgentSettings(workdir=root / "b", token=TOKEN))) as url_b:
        yield url_a, url_b, root, truth


@pytest.fixture(scope="module")
def stitched(sites) -> dict:
    """Stitch 1 on agent A: jobs 1 (A) and 2 (B), which overlap."""
    url_a, url_b, _, _ = sites
    return run_stitch(url_a, 1, [(url_a, 1), (url_b, 2)], repeat=True)


@pytest.fixture(scope="module")
def refused(sites) -> dict:
    """Stitch 2 on agent A: jobs 3 (A) and 2 (B), which do not overlap."""
    url_a, url_b, _, _ = sites
    return run_stitch(url_a, 2, [(url_a, 3), (url_b, 2)])


def run_stitch(url: str, stitch_id: int, jobs: list[tuple[str, int]], *, repeat: bool = False) -> dict:
    body = {"jobs": [{"agent_url": u, "job_id": j} for u, j in jobs], "frames_per_job": 12}
    resp = httpx.put(f"{url}/stitches/{stitch_id}", json=body, headers=AUTH)
    assert resp.status_code == 202, resp.text
    if repeat:  # only where the stitch surely still runs: a failed one is started again
        again = httpx.put(f"{url}/stitches/{stitch_id}", json=body, headers=AUTH)
        assert again.status_code == 200 and again.json()["state"] == "running"

    def finished():
        state = httpx.get(f"{url}/stitches/{stitch_id}", headers=AUTH).json()
        return state if state["state"] != "running" else None

    return StitchState.model_validate(wait_until(finished, timeout_s=300, interval_s=0.5, what="the stitch")).model_dump()


def test_overlapping_jobs_stitch_into_the_first_jobs_frame(sites, stitched):
    url_a, url_b, root, truth = sites
    state = stitched
    assert state["state"] == "done", state["error"]
    report = state["report"]
    assert [j["job_id"] for j in report["jobs"]] == [1, 2]
    b = report["jobs"][1]
    assert b["cross_matches"] >= 100 and b["shared_frames"] >= 4

    # B's cameras carried by the stitch's transform must land where A's frame puts them.
    s_a, r_a, t_a = FRAMES_OF[1]
    s_b, r_b, t_b = FRAMES_OF[2]
    b_own = apply_similarity(truth[2], s_b, r_b, t_b)
    matrix = np.asarray(b["matrix"])
    b_in_a = b_own @ matrix[:3, :3].T + matrix[:3, 3]
    expected = apply_similarity(truth[2], s_a, r_a, t_a)
    rmse = float(np.sqrt(((b_in_a - expected) ** 2).sum(axis=1).mean()))
    assert rmse < 0.01 * trajectory_length(expected), (rmse, trajectory_length(expected))
    assert b["scale"] == pytest.approx(s_a / s_b, rel=0.01)

    ply = read_ply(root / "a" / "stitch_1.ply")
    assert len(ply["x"]) == 1200
    assert (root / "a" / "stitch_1.json").is_file()
    assert not list((root / "a").glob(".stitch_*"))  # the scratch folder is gone
    assert processes_matching("services.gpu_agent.stitch") == []


def test_jobs_that_do_not_overlap_are_refused_and_nothing_is_written(sites, refused):
    url_a, url_b, root, _ = sites
    state = refused
    assert state["state"] == "failed"
    assert "too few cross matches" in state["error"]
    assert not (root / "a" / "stitch_2.ply").exists() and not (root / "a" / "stitch_2.json").exists()
    assert not (root / "a" / "stitch_2_cameras.json").exists()
    assert httpx.get(f"{url_a}/stitches/2/stitch.glb", headers=AUTH).status_code == 404
    assert httpx.get(f"{url_a}/stitches/2/files/stitch_2.ply", headers=AUTH).status_code == 404
    assert httpx.post(f"{url_a}/stitches/2/viewer", headers=AUTH).status_code == 404


def test_a_missing_job_fails_with_its_name_and_bad_specs_are_422(sites):
    url_a, url_b, _, _ = sites
    state = run_stitch(url_a, 3, [(url_a, 1), (url_b, 77)])
    assert state["state"] == "failed" and "job 77" in state["error"]
    resp = httpx.put(f"{url_a}/stitches/4", json={"jobs": [{"agent_url": url_a, "job_id": 1}]}, headers=AUTH)
    assert resp.status_code == 422
    assert httpx.get(f"{url_a}/stitches/99", headers=AUTH).status_code == 404


def test_each_jobs_cameras_are_carried_into_the_stitch_frame(sites, stitched):
    url_a, _, root, truth = sites
    assert stitched["report"]["cameras"] == "stitch_1_cameras.json"
    resp = httpx.get(f"{url_a}/stitches/1/files/stitch_1_cameras.json", headers=AUTH)
    assert resp.status_code == 200, resp.text
    carried = StitchCameras.model_validate_json(resp.content)
    assert [job.job_id for job in carried.jobs] == [1, 2]
    s_a, r_a, t_a = FRAMES_OF[1]
    for job, start_s in zip(carried.jobs, (0.0, 3.1)):
        frames = job.cameras.registered
        centres = np.array([frame.centre() for frame in frames])
        expected = apply_similarity(truth[job.job_id], s_a, r_a, t_a)
        rmse = float(np.sqrt(((centres - expected) ** 2).sum(axis=1).mean()))
        assert rmse < 0.01 * trajectory_length(expected), (job.job_id, rmse)
        rotation = np.asarray(frames[5].c2w)[:3, :3]
        assert np.allclose(rotation, r_a @ camera_pose(start_s + 5 / FPS)[:3, :3], atol=0.02)
        assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)  # still a rigid pose


def test_stitch_glb_holds_the_merged_cloud_and_every_jobs_cameras(sites, stitched, tmp_path):
    url_a, _, root, _ = sites
    resp = httpx.get(f"{url_a}/stitches/1/stitch.glb", headers=AUTH, timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "model/gltf-binary"
    assert gltf_json(resp.content)["asset"]["version"] == "2.0"
    scene = load_scene(resp.content)
    clouds = [g for g in scene.geometry.values() if isinstance(g, trimesh.PointCloud)]
    assert sum(len(c.vertices) for c in clouds) == 1200
    assert sorted(n for n, g in scene.geometry.items() if isinstance(g, trimesh.path.Path3D)) == [
        "cameras_job_1", "cameras_job_2"]
    assert (root / "a" / "stitch_1.glb").is_file()
    (tmp_path / "stitch.glb").write_bytes(resp.content)
    report = khronos_validate(tmp_path / "stitch.glb")
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"][:5]

    light = httpx.get(f"{url_a}/stitches/1/stitch.glb", params={"max_points": 500, "frustums": "false"},
                      headers=AUTH, timeout=120)
    assert light.status_code == 200
    assert [len(g.vertices) for g in load_scene(light.content).geometry.values()] == [500]
    assert (root / "a" / "stitch_1_nofrustums_max500.glb").is_file()


def test_stitch_files_are_served_and_the_ply_resumes(sites, stitched):
    url_a, _, root, _ = sites
    whole = (root / "a" / "stitch_1.ply").read_bytes()
    part = httpx.get(f"{url_a}/stitches/1/stitch.ply", headers=AUTH | {"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == whole[10:110]
    assert httpx.get(f"{url_a}/stitches/1/files/stitch_1.ply", headers=AUTH).content == whole
    report = httpx.get(f"{url_a}/stitches/1/files/stitch_1.json", headers=AUTH)
    assert report.status_code == 200 and report.json()["stitch_id"] == 1
    assert httpx.get(f"{url_a}/stitches/1/files/stitch_1.state.json", headers=AUTH).status_code == 404
    assert httpx.get(f"{url_a}/stitches/1/files/..%2Fjob_1%2Fstate.json", headers=AUTH).status_code == 404
    assert httpx.get(f"{url_a}/stitches/1/files/stitch_1.json").status_code == 401
    assert httpx.get(f"{url_a}/stitches/77/stitch.ply", headers=AUTH).status_code == 404


def test_stitch_viewer_has_its_own_port_and_shares_the_cap_with_jobs(sites, stitched):
    url_a, _, root, _ = sites
    job = httpx.post(f"{url_a}/jobs/1/viewer", headers=AUTH, timeout=90)
    assert job.status_code == 201, job.text
    try:
        started = httpx.post(f"{url_a}/stitches/1/viewer", headers=AUTH, timeout=90)
        assert started.status_code == 201, started.text
        info = started.json()
        assert info["stitch_id"] == 1 and info["job_id"] is None
        assert info["port"] == job.json()["port"] + 4  # stitch base = job base + 4 here; job 1 and stitch 1
        page = httpx.get(f"http://127.0.0.1:{info['port']}/", timeout=30)
        assert page.status_code == 200 and "viser" in page.text.lower()
        viewers = httpx.get(f"{url_a}/status", headers=AUTH).json()["viewers"]
        assert [(v["job_id"], v["stitch_id"]) for v in viewers] == [(1, None), (None, 1)]
        refused = httpx.post(f"{url_a}/jobs/3/viewer", headers=AUTH, timeout=90)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "too_many_viewers"
        assert httpx.post(f"{url_a}/stitches/1/viewer", headers=AUTH, timeout=90).json()["pid"] == info["pid"]
    finally:
        httpx.delete(f"{url_a}/jobs/1/viewer", headers=AUTH, timeout=30)
        stopped = httpx.delete(f"{url_a}/stitches/1/viewer", headers=AUTH, timeout=30)
    assert stopped.status_code == 200
    assert port_free(info["port"])
    assert httpx.get(f"{url_a}/status", headers=AUTH).json()["viewers"] == []
    assert processes_matching(f"viewer_runner --dir {root / 'a'}") == []
    assert httpx.delete(f"{url_a}/stitches/1/viewer", headers=AUTH).status_code == 404


def test_a_restarted_agent_keeps_done_and_failed_stitches(sites, stitched, refused):
    _, _, root, _ = sites
    with serve_app(create_app(GpuAgentSettings(workdir=root / "a", token=TOKEN))) as url:
        done = StitchState.model_validate(httpx.get(f"{url}/stitches/1", headers=AUTH).json()).model_dump()
        assert done["state"] == "done" and done["report"] == stitched["report"]
        failed = httpx.get(f"{url}/stitches/2", headers=AUTH).json()
        assert failed["state"] == "failed" and failed["error"] == refused["error"]
        assert httpx.get(f"{url}/stitches/1/stitch.glb", headers=AUTH, timeout=120).status_code == 200


def test_a_stitch_running_when_the_agent_stopped_is_reported_failed(tmp_path):
    spec = StitchSpec(jobs=[StitchInput(agent_url="http://127.0.0.1:9", job_id=j) for j in (1, 2)])
    running = StitchState(stitch_id=9, state="running", message="aligning")
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "stitch_9.state.json").write_text(StitchRecord(spec=spec, state=running).model_dump_json())
    (tmp_path / ".stitch_9.work").mkdir()
    (tmp_path / "stitch_5.state.json").write_text("{not json")  # left alone, not a crash
    with serve_app(create_app(GpuAgentSettings(workdir=tmp_path, token=TOKEN))) as url:
        state = httpx.get(f"{url}/stitches/9", headers=AUTH).json()
        assert state["state"] == "failed"
        assert state["error"] == "interrupted by an agent restart; retry it"
        assert httpx.get(f"{url}/stitches/5", headers=AUTH).status_code == 404
        # The same PUT retries it (its jobs are unreachable here, so it fails again, saying why).
        again = httpx.put(f"{url}/stitches/9", json=spec.model_dump(mode="json"), headers=AUTH)
        assert again.status_code == 202
        other = spec.model_copy(update={"frames_per_job": 8})
        assert httpx.put(f"{url}/stitches/9", json=other.model_dump(mode="json"), headers=AUTH).status_code == 409
    record = StitchRecord.model_validate_json((tmp_path / "stitch_9.state.json").read_bytes())
    assert record.spec == spec
    assert not (tmp_path / ".stitch_9.work").exists()
