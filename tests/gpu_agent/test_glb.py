"""GLB export on demand and the PLY download, on a real agent over loopback."""

from __future__ import annotations

import concurrent.futures
import io
import json
from pathlib import Path
import os
import struct

import httpx
import numpy as np
import pytest
import trimesh
from conftest import TOKEN, serve_app
from results_media import write_done_job

from services.gpu_agent.app import create_app
from services.gpu_agent.config import GpuAgentSettings
from services.gpu_agent.glb import GlbOptions, GlbSource, build_glb

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def agent(tmp_path):
    workdir = tmp_path / "frames"
    write_done_job(workdir, 1, points=5000, frames=12)
    (workdir / "job_2").mkdir(parents=True)
    write_done_job(workdir, 2)
    (workdir / "job_2" / "reconstruction.ply").unlink()
    with serve_app(create_app(GpuAgentSettings(workdir=workdir, token=TOKEN))) as url:
        yield url, workdir


def gltf_json(data: bytes) -> dict:
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    chunk_length, chunk_type = struct.unpack_from("<I4s", data, 12)
    assert chunk_type == b"JSON"
    return json.loads(data[20 : 20 + chunk_length])


def load_scene(data: bytes) -> trimesh.Scene:
    return trimesh.load(io.BytesIO(data), file_type="glb", force="scene")


def test_glb_is_valid_gltf_with_points_and_frustums(agent):
    url, workdir = agent
    resp = httpx.get(f"{url}/jobs/1/reconstruction.glb", headers=AUTH, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "model/gltf-binary"
    assert gltf_json(resp.content)["asset"]["version"] == "2.0"
    scene = load_scene(resp.content)
    clouds = [g for g in scene.geometry.values() if isinstance(g, trimesh.PointCloud)]
    paths = [g for g in scene.geometry.values() if isinstance(g, trimesh.path.Path3D)]
    assert sum(len(c.vertices) for c in clouds) == 5000
    # glTF LINES: 4 edges to the apex and 4 around the image, 2 vertices each, per camera.
    assert paths and len(paths[0].vertices) == 12 * 8 * 2
    assert gltf_json(resp.content)["meshes"][1]["primitives"][0]["mode"] == 1  # LINES
    assert (workdir / "job_1" / "reconstruction.glb").is_file()


def test_safe_variant_caps_points_and_drops_frustums(agent):
    url, workdir = agent
    resp = httpx.get(f"{url}/jobs/1/reconstruction.glb", params={"frustums": "false", "max_points": 1000},
                     headers=AUTH, timeout=60)
    assert resp.status_code == 200, resp.text
    scene = load_scene(resp.content)
    assert [type(g) for g in scene.geometry.values()] == [trimesh.PointCloud]
    assert len(next(iter(scene.geometry.values())).vertices) == 1000
    assert (workdir / "job_1" / GlbOptions(False, 1000).file_name()).is_file()
    safe = httpx.get(f"{url}/jobs/1/reconstruction.glb", params={"safe": "true"}, headers=AUTH, timeout=60)
    assert safe.status_code == 200


def test_cached_glb_is_reused_and_rebuilt_when_the_inputs_change(agent):
    url, workdir = agent
    glb_path = workdir / "job_1" / "reconstruction.glb"
    first = httpx.get(f"{url}/jobs/1/reconstruction.glb", headers=AUTH, timeout=60)
    built_ns = glb_path.stat().st_mtime_ns
    again = httpx.get(f"{url}/jobs/1/reconstruction.glb", headers=AUTH, timeout=60)
    assert again.content == first.content and glb_path.stat().st_mtime_ns == built_ns

    write_done_job(workdir, 1, points=300, frames=12)  # a new reconstruction, newer than the GLB
    os.utime(workdir / "job_1" / "reconstruction.ply", ns=(built_ns + 10**9, built_ns + 10**9))
    rebuilt = httpx.get(f"{url}/jobs/1/reconstruction.glb", headers=AUTH, timeout=60)
    clouds = [g for g in load_scene(rebuilt.content).geometry.values() if isinstance(g, trimesh.PointCloud)]
    assert len(clouds[0].vertices) == 300


def test_concurrent_requests_build_once(tmp_path):
    workdir = tmp_path / "frames"
    write_done_job(workdir, 1, points=200_000, frames=50)
    app = create_app(GpuAgentSettings(workdir=workdir, token=TOKEN))
    with serve_app(app) as url:
        def fetch(_):
            return httpx.get(f"{url}/jobs/1/reconstruction.glb", headers=AUTH, timeout=120)

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(fetch, range(6)))
        assert all(r.status_code == 200 for r in responses)
        assert len({r.content for r in responses}) == 1
        assert app.state.glb.builds == 1


def test_missing_reconstruction_and_unknown_job_are_404(agent):
    url, _ = agent
    resp = httpx.get(f"{url}/jobs/2/reconstruction.glb", headers=AUTH)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "no_reconstruction"
    assert httpx.get(f"{url}/jobs/99/reconstruction.glb", headers=AUTH).status_code == 404
    assert httpx.get(f"{url}/jobs/2/reconstruction.ply", headers=AUTH).status_code == 404
    assert httpx.get(f"{url}/jobs/1/reconstruction.glb").status_code == 401


def test_ply_download_supports_range_requests(agent):
    url, workdir = agent
    whole = (workdir / "job_1" / "reconstruction.ply").read_bytes()
    full = httpx.get(f"{url}/jobs/1/reconstruction.ply", headers=AUTH)
    assert full.status_code == 200 and full.content == whole
    assert full.headers.get("accept-ranges") == "bytes"
    part = httpx.get(f"{url}/jobs/1/reconstruction.ply", headers=AUTH | {"Range": "bytes=100-1099"})
    assert part.status_code == 206
    assert part.content == whole[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(whole)}"
    tail = httpx.get(f"{url}/jobs/1/files/reconstruction.ply", headers=AUTH | {"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == whole[-10:]


def test_build_glb_without_cameras_has_points_only(tmp_path):
    job_dir = write_done_job(tmp_path, 3, points=50)
    (job_dir / "cameras.json").unlink()
    scene = load_scene(build_glb(GlbSource.of_job(job_dir), GlbOptions()).read_bytes())
    assert [len(g.vertices) for g in scene.geometry.values()] == [50]
    assert np.isfinite(scene.bounds).all()


def khronos_validate(path: Path) -> dict:
    """The Khronos glTF validator's report (tests/tools, from the npm registry, set up by make setup)."""
    import os
    import shutil
    import subprocess

    tools = Path(__file__).resolve().parents[1] / "tools"
    node = shutil.which("node")
    if node is None or not (tools / "node_modules" / "gltf-validator").is_dir():
        reason = "the Khronos glTF validator is not installed (node and `npm install --prefix tests/tools`)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    out = subprocess.run([node, str(tools / "validate_gltf.mjs"), str(path)], capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("query", [{}, {"safe": "true"}, {"frustums": "false", "max_points": "100"}])
def test_every_glb_variant_passes_the_khronos_validator(agent, tmp_path, query):
    url, _ = agent
    resp = httpx.get(f"{url}/jobs/1/reconstruction.glb", params=query, headers=AUTH, timeout=60)
    assert resp.status_code == 200, resp.text
    (tmp_path / "out.glb").write_bytes(resp.content)
    report = khronos_validate(tmp_path / "out.glb")
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"][:5]
    assert report["info"]["version"] == "2.0"
