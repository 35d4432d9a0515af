"""A synthetic survey video with known camera poses, rendered with numpy and encoded by ffmpeg.

The scene is a seabed height field (smooth relief, sand ripples, stones) with a procedural
albedo rich in detail at every scale, lit once so its appearance does not change with the
viewpoint. A pinhole camera flies a smooth curved path over it, looking forward-down. Each
pixel's ray is intersected with the height field by fixed-point iteration on the ray
parameter, which converges because the relief is gentle compared with the viewing angle.

The demo uses the video as a stand-in for GoPro footage; the tests use the ground truth to
check that a reconstruction recovers the camera path.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from shared.cameras import C2W_CONVENTION

#: Texels per side of the square terrain maps, and their size in metres: 12.3 m of seabed,
#: a texel a little finer than a nadir pixel at 640 px wide, so the image stays sharp.
MAP_TEXELS = 2048
TEXEL_M = 0.006
#: Horizontal focal length as a fraction of the width (about 71° horizontal field of view).
FOCAL_PER_WIDTH = 0.7
#: Fixed-point iterations of the ray/height-field intersection: cheap nearest-texel ones to
#: get close, then bilinear ones to converge (99% of rays end within a millimetre).
RAY_ITERATIONS_NEAREST = 4
RAY_ITERATIONS_BILINEAR = 2


@dataclass(frozen=True)
class SampleVideo:
    video: Path
    poses: Path
    frames: int


def render_survey(
    out_dir: Path,
    *,
    name: str = "GX010001.MP4",
    seconds: float = 6.0,
    fps: float = 10.0,
    width: int = 640,
    height: int = 360,
    seed: int = 0,
    start_s: float = 0.0,
) -> SampleVideo:
    """Render ``seconds * fps`` frames into ``out_dir/name`` and ``<stem>.poses.json`` beside it.

    ``start_s`` is where on the flight path the video starts: chapters of one recording
    (GX010001, GX020001, …) continue one flight over the same seabed (same ``seed``).
    """
    if width < 32 or height < 32 or width % 2 or height % 2:
        raise ValueError(f"width and height must be even and at least 32, got {width}x{height}")
    if fps <= 0 or seconds <= 0 or start_s < 0:
        raise ValueError("seconds and fps must be positive, start_s not negative")
    count = max(1, round(seconds * fps))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video = out_dir / name
    poses = out_dir / f"{Path(name).stem}.poses.json"

    terrain = terrain_for_seed(seed)
    focal = FOCAL_PER_WIDTH * width
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    c2ws = [camera_pose(start_s + i / fps) for i in range(count)]

    _encode(video, (terrain.render(K, c2w, width, height) for c2w in c2ws), width, height, fps)
    document = {
        "fps": fps,
        "width": width,
        "height": height,
        "K": K.tolist(),
        "convention": C2W_CONVENTION,
        "frames": [{"index": i, "t_s": i / fps, "c2w": c2w.tolist()} for i, c2w in enumerate(c2ws)],
    }
    tmp = poses.with_name(f".{poses.name}.tmp")
    tmp.write_text(json.dumps(document, indent=1))
    os.replace(tmp, poses)
    return SampleVideo(video=video, poses=poses, frames=count)


@functools.lru_cache(maxsize=1)
def terrain_for_seed(seed: int) -> Terrain:
    """The seabed of ``seed`` (kept for the next call: generating it takes a few seconds)."""
    return Terrain.generate(np.random.default_rng(seed))


def camera_pose(t_s: float) -> np.ndarray:
    """Camera-to-world pose (OpenCV axes, world z up) at time ``t_s`` on the survey path.

    The path circles the origin at about 0.9 m/s, 2.5 m above the mean seabed, so any
    duration stays over the terrain maps; altitude, tilt, heading and roll wobble a little.
    """
    radius = 2.5 + 0.25 * np.sin(0.6 * t_s)
    angle = -2.2 + 0.35 * t_s
    centre = np.array([radius * np.cos(angle), radius * np.sin(angle), 2.5 + 0.3 * np.sin(0.7 * t_s)])
    heading = angle + np.pi / 2 + np.radians(8) * np.sin(0.9 * t_s)
    tilt = np.radians(20 + 5 * np.sin(0.5 * t_s))  # from straight down towards the heading
    roll = np.radians(3) * np.sin(1.3 * t_s)

    ahead = np.array([np.cos(heading), np.sin(heading), 0.0])
    forward = np.sin(tilt) * ahead + np.cos(tilt) * np.array([0.0, 0.0, -1.0])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    # Roll about the optical axis.
    right, down = np.cos(roll) * right + np.sin(roll) * down, -np.sin(roll) * right + np.cos(roll) * down
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, centre
    return c2w


@dataclass
class Terrain:
    """Height (metres) and lit colour (0..1) maps over a square centred on the origin."""

    height: np.ndarray  # (n * n,) float32, row = y, column = x
    colour: np.ndarray  # (n * n, 3) float32
    n: int

    @classmethod
    def generate(cls, rng: np.random.Generator, n: int = MAP_TEXELS) -> Terrain:
        relief, patches = _noise_pair(rng, n, beta=4.0, low=0.5 / n, high=0.004)
        bumps, tint = _noise_pair(rng, n, beta=2.5, low=0.003, high=0.05)
        # Grain between ~10 and ~35 texels a period: blobs of a few pixels, the scale SIFT's
        # first octave detects best (finer detail only blurs away in the video codec).
        grain_a, grain_b = _noise_pair(rng, n, beta=1.0, low=0.03, high=0.1)
        spots_a, spots_b = _noise_pair(rng, n, beta=0.0, low=0.015, high=0.04)
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)

        # Sand ripples: 8 cm crests, bent by a mid-scale warp so they do not repeat exactly.
        ripples = np.sin(2 * np.pi * TEXEL_M / 0.08 * (0.8 * xx + 0.6 * yy) + 1.5 * bumps + 3 * relief)
        # Fine relief stays gentle: the slope must stay under ~1 for the ray iteration to converge.
        height = 0.18 * relief + 0.008 * bumps + 0.003 * ripples + 0.0005 * grain_a

        # Sand with weed patches, tinted at mid scale and grainy at the finest scale.
        sand = np.array([0.72, 0.66, 0.50], np.float32)
        weed = np.array([0.25, 0.36, 0.18], np.float32)
        weediness = (np.clip((patches - 0.3) * 1.5, 0, 1) * (0.6 + 0.4 * np.clip(grain_b, -1, 1)))[..., None]
        albedo = sand * (1 - weediness) + weed * weediness
        albedo *= (1 + 0.15 * tint + 0.4 * grain_a)[..., None]
        albedo[..., 0] *= 1 + 0.08 * grain_b
        albedo[..., 2] *= 1 - 0.08 * tint
        # Scattered dark and pale patches: shells, holes, bits of weed.
        dark = np.clip((spots_a - 1.2) * 2.5, 0, 1)[..., None]
        pale = np.clip((spots_b - 1.4) * 2.5, 0, 1)[..., None]
        albedo = albedo * (1 - 0.75 * dark) + pale * np.array([0.5, 0.45, 0.35], np.float32)
        _add_stones(rng, n, height, albedo, 1 + 0.4 * grain_b)

        # Baked Lambertian light from a fixed sun: the same shading seen from every viewpoint.
        gy, gx = np.gradient(height, TEXEL_M)
        normal_z = 1 / np.sqrt(1 + gx**2 + gy**2)
        sun = np.array([0.45, 0.3, 0.84])
        sun /= np.linalg.norm(sun)
        light = np.clip((-gx * sun[0] - gy * sun[1] + sun[2]) * normal_z, 0, 1)
        water = np.array([0.75, 0.95, 1.0], np.float32)  # red fades first under water
        colour = np.clip(albedo * (0.3 + 0.8 * light)[..., None] * water, 0, 1)
        return cls(height.astype(np.float32).ravel(), colour.astype(np.float32).reshape(-1, 3), n)

    def render(self, K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> np.ndarray:
        """An RGB uint8 image ``(height, width, 3)`` seen by camera ``K`` at pose ``c2w``."""
        u, v = np.meshgrid(np.arange(width, dtype=np.float32) + 0.5, np.arange(height, dtype=np.float32) + 0.5)
        rays_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
        rays = rays_cam.reshape(-1, 3) @ c2w[:3, :3].T.astype(np.float32)
        dx, dy, down = rays[:, 0], rays[:, 1], -rays[:, 2]
        ox, oy, oz = (float(c) for c in c2w[:3, 3])
        if (down <= 1e-3).any():
            raise ValueError("some rays do not point down at the seabed; tilt the camera down")
        # Ray/terrain intersection: t = (z_cam - h(xy(t))) / -dz, iterated from the plane z=0.
        t = oz / down
        for _ in range(RAY_ITERATIONS_NEAREST):
            idx = self._lookup(ox + t * dx, oy + t * dy, nearest=True)
            t = (oz - np.take(self.height, idx)) / down
        for _ in range(RAY_ITERATIONS_BILINEAR):
            idx, fu, fv = self._lookup(ox + t * dx, oy + t * dy)
            t = (oz - _bilinear(self.height, self.n, idx, fu, fv)) / down
        idx, fu, fv = self._lookup(ox + t * dx, oy + t * dy)
        rgb = _bilinear(self.colour, self.n, idx, fu[:, None], fv[:, None])
        return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(height, width, 3)

    def _lookup(self, x: np.ndarray, y: np.ndarray, nearest: bool = False):
        """Flat index of the texel at (or, with weights, the texel block around) ``x, y``."""
        half = self.n * TEXEL_M / 2
        # Texel centres sit at half-texel offsets; clamping holds rays off the map on its edge.
        col = np.clip((x + half) * (1 / TEXEL_M) - 0.5, 0, self.n - 1.001)
        row = np.clip((y + half) * (1 / TEXEL_M) - 0.5, 0, self.n - 1.001)
        if nearest:
            return (row + 0.5).astype(np.int32) * self.n + (col + 0.5).astype(np.int32)
        c0, r0 = col.astype(np.int32), row.astype(np.int32)
        return r0 * self.n + c0, col - c0, row - r0


def _bilinear(flat: np.ndarray, n: int, idx, fu, fv) -> np.ndarray:
    # np.take is several times faster than fancy indexing for these gathers.
    top = np.take(flat, idx, axis=0) * (1 - fu) + np.take(flat, idx + 1, axis=0) * fu
    bottom = np.take(flat, idx + n, axis=0) * (1 - fu) + np.take(flat, idx + n + 1, axis=0) * fu
    return top * (1 - fv) + bottom * fv


def _noise_pair(rng: np.random.Generator, n: int, *, beta: float, low: float, high: float):
    """Two independent periodic fractal noise maps, 1/f^beta power between ``low`` and
    ``high`` cycles per texel, each scaled to zero mean and unit standard deviation."""
    f = np.fft.fftfreq(n).astype(np.float32)
    radial = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    radial[0, 0] = 1.0
    amplitude = radial ** (-beta / 2) * np.exp(-((radial / high) ** 2)) * (1 - np.exp(-((radial / low) ** 2)))
    amplitude[0, 0] = 0.0
    white = rng.standard_normal((n, n), np.float32) + 1j * rng.standard_normal((n, n), np.float32)
    field = np.fft.ifft2(white * amplitude)
    pair = []
    for part in (field.real, field.imag):
        part = part.astype(np.float32)
        pair.append((part - part.mean()) / part.std())
    return pair


def _add_stones(rng: np.random.Generator, n: int, height: np.ndarray, albedo: np.ndarray, texture: np.ndarray) -> None:
    """Scatter rounded stones and pebbles: bumps in the height map and patches of colour,
    each stone's colour modulated by ``texture`` so large ones are not featureless."""
    radii = np.concatenate([rng.uniform(4, 10, 2500), rng.uniform(10, 30, 300)])  # texels
    for radius in radii:
        r = int(np.ceil(radius * 1.3))
        cy, cx = rng.integers(r, n - r, 2)
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
        angle, squash = rng.uniform(0, np.pi), rng.uniform(0.55, 1.0)
        a = (xx * np.cos(angle) + yy * np.sin(angle)) / radius
        b = (-xx * np.sin(angle) + yy * np.cos(angle)) / (radius * squash)
        inside = np.clip(1 - (a * a + b * b), 0, 1)
        # (1 - d²)^1.5 keeps the rim slope finite, so ray iteration converges over stones.
        bump = inside**1.5 * radius * TEXEL_M * rng.uniform(0.25, 0.45)
        window = (slice(cy - r, cy + r + 1), slice(cx - r, cx + r + 1))
        height[window] = np.maximum(height[window], height[window].min() + bump)
        grey = rng.uniform(0.15, 0.8)
        stone = np.array([grey * rng.uniform(0.9, 1.25), grey * rng.uniform(0.85, 1.1), grey * rng.uniform(0.7, 1.0)])
        mask = (inside > 0)[..., None]
        albedo[window] = np.where(mask, stone * texture[window][..., None], albedo[window])


def _encode(path: Path, frames, width: int, height: int, fps: float) -> None:
    """Pipe RGB frames to ffmpeg (H.264, a keyframe every second so seeks are cheap)."""
    rate = Fraction(fps).limit_denominator(1001)
    tmp = path.with_name(f".{path.name}.part")
    argv = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(rate), "-i", "-",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
        "-g", str(max(1, round(fps))), "-movflags", "+faststart", "-f", "mp4", str(tmp),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        try:
            for frame in frames:
                proc.stdin.write(frame.tobytes())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg stopped reading: its stderr below says why
        # -loglevel error keeps stderr small, so reading it only now cannot dead-lock.
        stderr = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            raise RuntimeError(f"ffmpeg failed to encode {path.name} (exit {proc.returncode}): {stderr[-500:]}")
        os.replace(tmp, path)
    except BaseException:
        proc.kill()
        proc.wait()
        tmp.unlink(missing_ok=True)
        raise
