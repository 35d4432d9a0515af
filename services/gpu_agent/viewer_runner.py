"""A viser viewer of one job or stitch, run as its own process by the gpu agent::

    python -m services.gpu_agent.viewer_runner --dir DIR --ply NAME --cameras NAME --port P
        [--qc NAME] [--stitch-report NAME] [--host H] [--max-points N] [--idle-timeout-s S] [--title TEXT]

Shows the point cloud of ``DIR/NAME`` (a fixed random subset of at most ``--max-points``), the
camera trajectory and frustums (a job's ``cameras.json``; a stitch's cameras file holds every
job's, each drawn in its own colour), and as text the QC verdict (``--qc``) or the stitch's
per-job fit (``--stitch-report``); the up direction is the normal of the cloud's best-fit
plane, turned towards the cameras, so the seabed is level.

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
    parser.add_argument("--dir", type=Path, required=True, help="folder of the PLY and cameras")
    parser.add_argument("--ply", required=True)
    parser.add_argument("--cameras", required=True)
    parser.add_argument("--qc", default=None, help="QC report (qc.json) to show")
    parser.add_argument("--stitch-report", default=None, help="stitch report (stitch_K.json) to show")
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
        text = qc_lines(args.dir / args.qc) if args.qc else []
        text += stitch_lines(args.dir / args.stitch_report) if args.stitch_report else []
        populate(server, args.dir, ply=args.ply, cameras=args.cameras, max_points=args.max_points,
                 title=args.title, text=text, thumbnails=args.stitch_report is None)
    except Exception as exc:  # noqa: BLE001 - a malformed PLY or cameras.json: say so and exit
        server.stop()
        print(f"cannot show {args.ply}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
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


def populate(server, folder: Path, *, ply: str, cameras: str, max_points: int, title: str | None,
             text: list[str], thumbnails: bool = True) -> None:
    """The cloud, each camera group's trajectory and frustums (one colour a group), and ``text``.

    ``thumbnails``: draw the frame in each frustum (a job's frames are in its folder; a stitch's
    are on their own jobs' agents).
    """
    from services.gpu_agent.glb import frustum_depth, read_camera_groups, read_points, subsample

    xyz = np.zeros((0, 3), np.float32)
    rgb = np.zeros((0, 3), np.uint8)
    if (folder / ply).is_file():
        xyz, rgb = read_points(folder / ply)
    total = len(xyz)
    keep = subsample(total, max_points)
    xyz, rgb = xyz[keep], rgb[keep]

    groups = read_camera_groups(folder / cameras) if (folder / cameras).is_file() else []
    count = sum(len(group.frames) for group in groups)
    all_centres = np.array([f.c2w for g in groups for f in g.frames], np.float64).reshape(-1, 4, 4)[:, :3, 3]
    extent = float(np.ptp(xyz, axis=0).max()) if len(xyz) else 1.0

    if len(xyz):
        server.scene.add_point_cloud("/points", points=xyz, colors=rgb, point_size=max(extent, 1e-6) / 800)
    depth = frustum_depth(all_centres, xyz) if len(all_centres) else 1.0
    step = max(1, count // MAX_FRUSTUMS)
    for group in groups:
        colour = tuple(group.rgba[:3])
        name = group.name.replace(" ", "_")
        poses = np.array([f.c2w for f in group.frames], dtype=np.float64).reshape(-1, 4, 4)
        if len(poses) >= 2:
            segments = np.stack([poses[:-1, :3, 3], poses[1:, :3, 3]], axis=1)
            server.scene.add_line_segments(f"/trajectory/{name}", points=segments, colors=colour,
                                           thickness=2.0, thickness_units="screen")
        for frame, c2w in list(zip(group.frames, poses))[::step]:
            k = frame.intrinsics
            fov = 2 * np.arctan2(k.height / 2, k.fy) if k else np.radians(45)
            aspect = k.width / k.height if k else 4 / 3
            image = thumbnail(folder / frame.name) if thumbnails else None
            server.scene.add_camera_frustum(f"/cameras/{name}/{frame.name}", fov=float(fov), aspect=float(aspect),
                                            scale=depth, wxyz=_wxyz(c2w[:3, :3]), position=c2w[:3, 3],
                                            color=colour, thickness=1.5, thickness_units="screen",
                                            image=image, format="jpeg", jpeg_quality=70)
    up = up_direction(xyz, all_centres)
    if up is not None:
        server.scene.set_up_direction(up)

    lines = [f"**{title or folder.name}**", f"{len(xyz)} of {total} points shown, {count} cameras"]
    if len(groups) > 1:
        lines += [f"- {group.name}: {len(group.frames)} cameras, {colour_name(group.rgba)}" for group in groups]
    server.gui.add_markdown("\n\n".join(lines + text))


def colour_name(rgba) -> str:
    from services.gpu_agent.glb import JOB_COLOUR_NAMES, JOB_RGBA

    return JOB_COLOUR_NAMES[JOB_RGBA.index(tuple(rgba))] if tuple(rgba) in JOB_RGBA else str(tuple(rgba[:3]))


def stitch_lines(path: Path) -> list[str]:
    """Each job's fit into the stitch: scale, cross matches, camera residual."""
    from shared.stitches import StitchReport

    try:
        report = StitchReport.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        return [f"Stitch report unreadable ({exc})"]
    lines = [f"Stitch of jobs {', '.join(str(job.job_id) for job in report.jobs)} "
             f"(job {report.jobs[0].job_id}'s frame)" if report.jobs else "Stitch of no jobs"]
    for job in report.jobs:
        relative = f" ({job.rmse_relative:.2%} of its path)" if job.rmse_relative is not None else ""
        lines.append(f"- job {job.job_id}: scale {job.scale:.4g}, {job.cross_matches} cross matches, "
                     f"{job.shared_frames} frames shared, residual {job.rmse:.3g}{relative}")
    return lines


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
