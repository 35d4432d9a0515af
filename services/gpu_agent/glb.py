"""GLB export: a point cloud and its cameras as glTF 2.0, built on demand and cached.

A job's ``reconstruction.glb`` is built from ``reconstruction.ply`` and ``cameras.json``; a
stitch's ``stitch_K.glb`` from ``stitch_K.ply`` and ``stitch_K_cameras.json`` (each job's
cameras in the stitch's frame, one colour per job). Both are a :class:`GlbSource`: a PLY and
a cameras file in one folder. The GLB is built with trimesh and written beside them
(write-temp-then-``os.replace``); a cached file is reused while it is newer than both inputs.
Each variant (frustums or not, a point cap) has its own file, and concurrent requests for one
variant build it once: a per-file asyncio lock, the build itself in a worker thread so the
event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.cameras import CAMERAS_NAME, CameraFrame, Cameras
from shared.plyio import read_ply
from shared.stitches import StitchCameras

PLY_NAME = "reconstruction.ply"
#: Points of the "safe" variant: phones and software WebGL stay responsive.
SAFE_MAX_POINTS = 100_000
#: Frustum depth as a fraction of the median spacing between consecutive cameras, capped by
#: the cloud's extent so a hovering camera still gets a visible frustum.
FRUSTUM_DEPTH_PER_STEP = 1.5
FRUSTUM_DEPTH_PER_EXTENT = 0.03
#: Frustum colour (RGBA): orange stands out on seabed colours.
FRUSTUM_RGBA = (255, 120, 0, 255)
#: Colours of a stitch's jobs, in order (the first job, the reference, keeps the job colour).
JOB_RGBA = [FRUSTUM_RGBA, (0, 150, 255, 255), (60, 200, 80, 255), (230, 50, 200, 255),
            (255, 220, 0, 255), (0, 220, 220, 255), (170, 90, 255, 255), (255, 70, 70, 255)]
JOB_COLOUR_NAMES = ["orange", "blue", "green", "magenta", "yellow", "cyan", "purple", "red"]


class GlbInputsMissing(Exception):
    """Nothing to export (yet): the PLY is absent."""


@dataclass(frozen=True)
class GlbSource:
    """What a GLB is built from: a PLY and (maybe) a cameras file, in one folder."""

    folder: Path
    ply: str
    cameras: str | None
    stem: str  # of the GLB file names
    what: str  # for messages: "job_3", "stitch 2"

    @classmethod
    def of_job(cls, job_dir: Path) -> GlbSource:
        return cls(job_dir, PLY_NAME, CAMERAS_NAME, "reconstruction", job_dir.name)

    @classmethod
    def of_stitch(cls, root: Path, stitch_id: int) -> GlbSource:
        return cls(root, f"stitch_{stitch_id}.ply", f"stitch_{stitch_id}_cameras.json", f"stitch_{stitch_id}",
                   f"stitch {stitch_id}")

    def inputs(self) -> list[Path]:
        return [self.folder / self.ply] + ([self.folder / self.cameras] if self.cameras else [])

    def target(self, options: GlbOptions) -> Path:
        return self.folder / options.file_name(self.stem)


@dataclass(frozen=True)
class GlbOptions:
    frustums: bool = True
    max_points: int | None = None

    def file_name(self, stem: str = "reconstruction") -> str:
        """``<stem>.glb`` for the default variant, a suffixed name for the others."""
        parts = [stem]
        if not self.frustums:
            parts.append("nofrustums")
        if self.max_points is not None:
            parts.append(f"max{self.max_points}")
        return "_".join(parts) + ".glb"


@dataclass(frozen=True)
class CameraGroup:
    """Cameras drawn in one colour: a job's, or one job's within a stitch."""

    name: str
    frames: list[CameraFrame]
    rgba: tuple[int, int, int, int]


def read_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(xyz float32 (N, 3), rgb uint8 (N, 3))`` of a PLY; grey where it has no colours."""
    columns = read_ply(path)
    xyz = np.stack([columns["x"], columns["y"], columns["z"]], axis=1).astype(np.float32)
    if {"red", "green", "blue"} <= columns.keys():
        rgb = np.stack([columns["red"], columns["green"], columns["blue"]], axis=1).astype(np.uint8)
    else:
        rgb = np.full((len(xyz), 3), 200, np.uint8)
    return xyz, rgb


def read_camera_groups(path: Path) -> list[CameraGroup]:
    """A job's ``cameras.json`` as one group, a stitch's cameras file as one group per job."""
    data = json.loads(path.read_bytes())
    if isinstance(data, dict) and "jobs" in data and "frames" not in data:
        stitch = StitchCameras.model_validate(data)
        return [CameraGroup(f"job {job.job_id}", job.cameras.registered, JOB_RGBA[i % len(JOB_RGBA)])
                for i, job in enumerate(stitch.jobs)]
    return [CameraGroup("cameras", Cameras.model_validate(data).registered, FRUSTUM_RGBA)]


def is_fresh(target: Path, inputs: list[Path]) -> bool:
    """True when ``target`` exists and is at least as new as every input that exists."""
    try:
        built = target.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    return all(built >= path.stat().st_mtime_ns for path in inputs if path.exists())


def build_glb(source: GlbSource, options: GlbOptions) -> Path:
    """Build the GLB of ``options`` from the source's PLY (and cameras, if any); returns its path."""
    import trimesh  # heavy import, only where a GLB is built

    ply = source.folder / source.ply
    if not ply.is_file():
        raise GlbInputsMissing(f"{source.what} has no {source.ply} (yet): nothing to export")
    xyz, rgb = read_points(ply)
    keep = subsample(len(xyz), options.max_points)
    xyz, rgb = xyz[keep], rgb[keep]

    scene = trimesh.Scene()
    if len(xyz):
        colours = np.hstack([rgb, np.full((len(rgb), 1), 255, np.uint8)])
        scene.add_geometry(trimesh.PointCloud(xyz, colors=colours), geom_name="points", node_name="points")
    cameras_path = source.folder / source.cameras if source.cameras else None
    if options.frustums and cameras_path is not None and cameras_path.is_file():
        groups = read_camera_groups(cameras_path)
        centres = np.array([f.c2w for g in groups for f in g.frames], np.float64).reshape(-1, 4, 4)[:, :3, 3]
        depth = frustum_depth(centres, xyz)
        for group in groups:
            lines = frustum_segments(group.frames, depth)
            if not len(lines):
                continue
            # One Line entity per segment: load_path would merge them through scipy's graphs.
            entities = [trimesh.path.entities.Line([2 * i, 2 * i + 1]) for i in range(len(lines))]
            path = trimesh.path.Path3D(entities=entities, vertices=lines.reshape(-1, 3),
                                       colors=np.tile(group.rgba, (len(entities), 1)), process=False)
            name = "cameras" if group.name == "cameras" else "cameras_" + group.name.replace(" ", "_")
            scene.add_geometry(path, geom_name=name, node_name=name)
    if not scene.geometry:
        raise GlbInputsMissing(f"{source.what}: {source.ply} holds no points and there are no cameras")

    data = scene.export(file_type="glb")
    target = source.target(options)
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


def frustum_segments(frames: list[CameraFrame], depth: float) -> np.ndarray:
    """``(M, 2, 3)`` line segments: for each registered camera, a pyramid from its centre."""
    if not frames:
        return np.zeros((0, 2, 3))
    poses = np.array([frame.c2w for frame in frames], dtype=np.float64)
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
    """Builds each GLB variant of a job or stitch once, however many requests ask at the same time."""

    def __init__(self) -> None:
        self._locks: dict[Path, asyncio.Lock] = {}
        self.builds = 0  # how many GLBs this cache has built (tests read it)

    async def get(self, source: GlbSource, options: GlbOptions) -> Path:
        target = source.target(options)
        lock = self._locks.setdefault(target, asyncio.Lock())
        async with lock:
            if is_fresh(target, source.inputs()) and (source.folder / source.ply).exists():
                return target
            path = await asyncio.to_thread(build_glb, source, options)
            self.builds += 1
            return path
