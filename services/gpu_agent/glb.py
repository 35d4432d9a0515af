"""``reconstruction.glb``: a job's point cloud and cameras as glTF 2.0, built on demand and cached.

The GLB is built with trimesh from ``reconstruction.ply`` and ``cameras.json`` and written
beside them (write-temp-then-``os.replace``). A cached file is reused while it is newer
than both inputs. Each variant (frustums or not, a point cap) has its own file, and
concurrent requests for one variant build it once: a per-file asyncio lock, the build itself
in a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.cameras import CAMERAS_NAME, Cameras, read_cameras
from shared.plyio import read_ply

PLY_NAME = "reconstruction.ply"
GLB_NAME = "reconstruction.glb"
#: Points of the "safe" variant: phones and software WebGL stay responsive.
SAFE_MAX_POINTS = 100_000
#: Frustum depth as a fraction of the median spacing between consecutive cameras, capped by
#: the cloud's extent so a hovering camera still gets a visible frustum.
FRUSTUM_DEPTH_PER_STEP = 1.5
FRUSTUM_DEPTH_PER_EXTENT = 0.03
#: Frustum colour (RGBA): orange stands out on seabed colours.
FRUSTUM_RGBA = (255, 120, 0, 255)


class GlbInputsMissing(Exception):
    """The job has no reconstruction (yet): ``reconstruction.ply`` is absent."""


@dataclass(frozen=True)
class GlbOptions:
    frustums: bool = True
    max_points: int | None = None

    def file_name(self) -> str:
        """``reconstruction.glb`` for the default variant, a suffixed name for the others."""
        if self.frustums and self.max_points is None:
            return GLB_NAME
        parts = ["reconstruction"]
        if not self.frustums:
            parts.append("nofrustums")
        if self.max_points is not None:
            parts.append(f"max{self.max_points}")
        return "_".join(parts) + ".glb"


def is_fresh(target: Path, inputs: list[Path]) -> bool:
    """True when ``target`` exists and is at least as new as every input that exists."""
    try:
        built = target.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    return all(built >= path.stat().st_mtime_ns for path in inputs if path.exists())


def build_glb(job_dir: Path, options: GlbOptions) -> Path:
    """Build the GLB of ``options`` from the job's PLY (and cameras, if any); returns its path."""
    import trimesh  # heavy import, only where a GLB is built

    ply = job_dir / PLY_NAME
    if not ply.is_file():
        raise GlbInputsMissing(f"{job_dir.name} has no {PLY_NAME} (yet): nothing to export")
    columns = read_ply(ply)
    xyz = np.stack([columns["x"], columns["y"], columns["z"]], axis=1).astype(np.float32)
    if {"red", "green", "blue"} <= columns.keys():
        rgb = np.stack([columns["red"], columns["green"], columns["blue"]], axis=1).astype(np.uint8)
    else:
        rgb = np.full((len(xyz), 3), 200, np.uint8)
    keep = subsample(len(xyz), options.max_points)
    xyz, rgb = xyz[keep], rgb[keep]

    scene = trimesh.Scene()
    if len(xyz):
        colours = np.hstack([rgb, np.full((len(rgb), 1), 255, np.uint8)])
        scene.add_geometry(trimesh.PointCloud(xyz, colors=colours), geom_name="points", node_name="points")
    cameras_path = job_dir / CAMERAS_NAME
    if options.frustums and cameras_path.is_file():
        lines = frustum_segments(read_cameras(cameras_path), xyz)
        if len(lines):
            # One Line entity per segment: load_path would merge them through scipy's graphs.
            entities = [trimesh.path.entities.Line([2 * i, 2 * i + 1]) for i in range(len(lines))]
            path = trimesh.path.Path3D(entities=entities, vertices=lines.reshape(-1, 3),
                                       colors=np.tile(FRUSTUM_RGBA, (len(entities), 1)), process=False)
            scene.add_geometry(path, geom_name="cameras", node_name="cameras")
    if not scene.geometry:
        raise GlbInputsMissing(f"{job_dir.name}: {PLY_NAME} holds no points and there are no cameras")

    data = scene.export(file_type="glb")
    target = job_dir / options.file_name()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def subsample(count: int, max_points: int | None) -> np.ndarray:
    """Indices of at most ``max_points`` of ``count`` points: a fixed random subset, in order."""
    if max_points is None or count <= max_points:
        return np.arange(count)
    rng = np.random.default_rng(0)  # the same request gives the same file
    return np.sort(rng.choice(count, size=max_points, replace=False))


def frustum_segments(cameras: Cameras, xyz: np.ndarray) -> np.ndarray:
    """``(M, 2, 3)`` line segments: for each registered camera, a pyramid from its centre."""
    frames = cameras.registered
    if not frames:
        return np.zeros((0, 2, 3))
    poses = np.array([frame.c2w for frame in frames], dtype=np.float64)
    depth = frustum_depth(poses[:, :3, 3], xyz)
    segments = []
    for frame, c2w in zip(frames, poses):
        corners_cam = _image_corners(frame) * depth  # (4, 3) in camera coordinates
        corners = corners_cam @ c2w[:3, :3].T + c2w[:3, 3]
        centre = c2w[:3, 3]
        for i in range(4):
            segments.append((centre, corners[i]))
            segments.append((corners[i], corners[(i + 1) % 4]))
    return np.asarray(segments)


def frustum_depth(centres: np.ndarray, xyz: np.ndarray) -> float:
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    steps = steps[steps > 0]
    extent = float(np.ptp(xyz, axis=0).max()) if len(xyz) else 0.0
    by_step = FRUSTUM_DEPTH_PER_STEP * float(np.median(steps)) if len(steps) else 0.0
    by_extent = FRUSTUM_DEPTH_PER_EXTENT * extent
    candidates = [d for d in (by_step, by_extent) if d > 0]
    return min(candidates) if candidates else 1.0


def _image_corners(frame) -> np.ndarray:
    """Rays through the image corners at unit depth (OpenCV camera axes)."""
    k = frame.intrinsics
    if k is None:  # a 4:3 image with a 60° horizontal field of view
        half_w, half_h = np.tan(np.radians(30)), np.tan(np.radians(30)) * 0.75
        return np.array([[-half_w, -half_h, 1], [half_w, -half_h, 1], [half_w, half_h, 1], [-half_w, half_h, 1]])
    xs = (np.array([0.0, k.width]) - k.cx) / k.fx
    ys = (np.array([0.0, k.height]) - k.cy) / k.fy
    return np.array([[xs[0], ys[0], 1], [xs[1], ys[0], 1], [xs[1], ys[1], 1], [xs[0], ys[1], 1]])


class GlbCache:
    """Builds each job's GLB variants once, however many requests ask at the same time."""

    def __init__(self) -> None:
        self._locks: dict[Path, asyncio.Lock] = {}
        self.builds = 0  # how many GLBs this cache has built (tests read it)

    async def get(self, job_dir: Path, options: GlbOptions) -> Path:
        target = job_dir / options.file_name()
        inputs = [job_dir / PLY_NAME, job_dir / CAMERAS_NAME]
        lock = self._locks.setdefault(target, asyncio.Lock())
        async with lock:
            if is_fresh(target, inputs) and (job_dir / PLY_NAME).exists():
                return target
            path = await asyncio.to_thread(build_glb, job_dir, options)
            self.builds += 1
            return path
