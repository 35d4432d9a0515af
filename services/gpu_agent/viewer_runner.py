"""A viser viewer of one job, run as its own process by the gpu agent::

    python -m services.gpu_agent.viewer_runner --job-dir DIR --port P [--host H]
        [--max-points N] [--idle-timeout-s S] [--title TEXT]

Shows the point cloud (a fixed random subset of at most ``--max-points``), the camera
trajectory and frustums, and the QC verdict when ``qc.json`` exists; the up direction is the
normal of the cloud's best-fit plane, turned towards the cameras, so the seabed is level.

Once serving it prints one JSON line ``{"port": P}`` on stdout. viser silently moves to
another port when the asked one is taken; the runner then exits with code 3 and says so on
stderr instead of serving on a port nobody asked for. With no browser connected for
``--idle-timeout-s`` it exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np

EXIT_FAILED = 2
EXIT_PORT_TAKEN = 3
#: How often the idle clock is checked.
IDLE_POLL_S = 1.0
#: Frustums drawn at most: thousands of frustums make the browser crawl.
MAX_FRUSTUMS = 400

log = logging.getLogger("viewer_runner")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="viewer_runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--job-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--max-points", type=int, default=300_000)
    parser.add_argument("--idle-timeout-s", type=float, default=1800.0)
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s viewer_runner %(message)s")

    # viser logs to stdout; the ready line must own it.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)

    if not _port_free(args.host, args.port):
        print(f"port {args.port} is taken: another program listens there", file=sys.stderr, flush=True)
        return EXIT_PORT_TAKEN
    import viser  # heavy import, after the cheap checks

    server = viser.ViserServer(host=args.host, port=args.port, label=args.title, verbose=False)
    real_port = server.get_port()
    if real_port != args.port:  # lost a race for the port; viser moved on silently
        server.stop()
        print(f"port {args.port} is taken (viser would have moved to {real_port})", file=sys.stderr, flush=True)
        return EXIT_PORT_TAKEN
    try:
        populate(server, args.job_dir, max_points=args.max_points, title=args.title)
    except Exception as exc:  # noqa: BLE001 - a malformed PLY or cameras.json: say so and exit
        server.stop()
        print(f"cannot show {args.job_dir.name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    out.write(json.dumps({"port": real_port}) + "\n")
    out.flush()
    wait_while_used(server, args.idle_timeout_s)
    server.stop()
    return 0


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR ignores connections in TIME_WAIT (a viewer just stopped) but not a listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_while_used(server, idle_timeout_s: float) -> None:
    idle_since = time.monotonic()
    while True:
        time.sleep(IDLE_POLL_S)
        if server.get_clients():
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > idle_timeout_s:
            log.info("no browser for %.0f s: stopping", idle_timeout_s)
            return


#: Width of the frame picture drawn in each frustum: small, the browser gets up to MAX_FRUSTUMS.
THUMBNAIL_WIDTH = 160


def thumbnail(path: Path) -> np.ndarray | None:
    """The frame as a small RGB array for its frustum, or None when the frame is not there."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (THUMBNAIL_WIDTH, THUMBNAIL_WIDTH))  # JPEG: decode at a reduced scale
            image = image.convert("RGB")
            height = max(1, round(image.height * THUMBNAIL_WIDTH / image.width))
            return np.asarray(image.resize((THUMBNAIL_WIDTH, height)))
    except (OSError, ValueError):
        return None


def populate(server, job_dir: Path, *, max_points: int, title: str | None) -> None:
    from services.gpu_agent.glb import PLY_NAME, frustum_depth, subsample
    from shared.cameras import CAMERAS_NAME, read_cameras
    from shared.plyio import read_ply

    xyz = np.zeros((0, 3), np.float32)
    rgb = np.zeros((0, 3), np.uint8)
    if (job_dir / PLY_NAME).is_file():
        cols = read_ply(job_dir / PLY_NAME)
        xyz = np.stack([cols["x"], cols["y"], cols["z"]], axis=1).astype(np.float32)
        if {"red", "green", "blue"} <= cols.keys():
            rgb = np.stack([cols["red"], cols["green"], cols["blue"]], axis=1).astype(np.uint8)
        else:
            rgb = np.full((len(xyz), 3), 200, np.uint8)
    total = len(xyz)
    keep = subsample(total, max_points)
    xyz, rgb = xyz[keep], rgb[keep]

    cameras = read_cameras(job_dir / CAMERAS_NAME) if (job_dir / CAMERAS_NAME).is_file() else None
    frames = cameras.registered if cameras else []
    poses = np.array([f.c2w for f in frames], dtype=np.float64).reshape(-1, 4, 4)
    centres = poses[:, :3, 3]
    extent = float(np.ptp(xyz, axis=0).max()) if len(xyz) else 1.0

    if len(xyz):
        server.scene.add_point_cloud("/points", points=xyz, colors=rgb, point_size=max(extent, 1e-6) / 800)
    if len(centres) >= 2:
        segments = np.stack([centres[:-1], centres[1:]], axis=1)
        server.scene.add_line_segments("/trajectory", points=segments, colors=(255, 120, 0),
                                       thickness=2.0, thickness_units="screen")
    depth = frustum_depth(centres, xyz) if len(centres) else 1.0
    step = max(1, len(frames) // MAX_FRUSTUMS)
    for frame, c2w in list(zip(frames, poses))[::step]:
        k = frame.intrinsics
        fov = 2 * np.arctan2(k.height / 2, k.fy) if k else np.radians(45)
        aspect = k.width / k.height if k else 4 / 3
        wxyz = _wxyz(c2w[:3, :3])
        server.scene.add_camera_frustum(f"/cameras/{frame.name}", fov=float(fov), aspect=float(aspect),
                                        scale=depth, wxyz=wxyz, position=c2w[:3, 3], color=(255, 120, 0),
                                        thickness=1.5, thickness_units="screen",
                                        image=thumbnail(job_dir / frame.name), format="jpeg", jpeg_quality=70)
    up = up_direction(xyz, centres)
    if up is not None:
        server.scene.set_up_direction(up)

    lines = [f"**{title or job_dir.name}**",
             f"{len(xyz)} of {total} points shown, {len(frames)} cameras"]
    lines += qc_lines(job_dir / "qc.json")
    server.gui.add_markdown("\n\n".join(lines))


def up_direction(xyz: np.ndarray, centres: np.ndarray) -> np.ndarray | None:
    """Normal of the cloud's best-fit plane, pointing to the side the cameras are on."""
    if len(xyz) < 3:
        return None
    centred = xyz - xyz.mean(axis=0)
    normal = np.linalg.svd(centred[:: max(1, len(centred) // 20000)], full_matrices=False)[2][2]
    if len(centres) and np.dot(centres.mean(axis=0) - xyz.mean(axis=0), normal) < 0:
        normal = -normal
    return normal


def qc_lines(path: Path) -> list[str]:
    if not path.is_file():
        return ["QC: no report (yet)"]
    try:
        verdict = json.loads(path.read_text())["verdict"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"QC: report unreadable ({exc})"]
    lines = [f"QC verdict: **{str(verdict.get('status', '?')).upper()}**"]
    lines += [f"- {reason.get('message', reason.get('code', ''))}" for reason in verdict.get("reasons", [])]
    return lines


def _wxyz(rotation: np.ndarray) -> np.ndarray:
    import viser.transforms as tf

    return tf.SO3.from_matrix(rotation).wxyz


if __name__ == "__main__":
    sys.exit(main())
