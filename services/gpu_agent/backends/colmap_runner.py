"""The ``colmap`` backend: sparse SfM of a frame folder with pycolmap, on the CPU.

Run as a subprocess by the gpu agent::

    python -m services.gpu_agent.backends.colmap_runner --frames DIR --out DIR [--threads N]

With ``--follow`` it starts before the last frame has landed: it extracts SIFT features of
each frame as it appears in ``--frames`` (in frame order, a frame file that exists being
complete) and matches each sequential pair as soon as both its frames have features; it
matches the rest and maps once the agent writes ``.ingest.done`` there. The outputs are
those of a run started after the last frame (same database, same pairs, same order).

Reads ``frame_%06d.jpg`` (and ``frames.json`` when present) from ``--frames``; writes
``reconstruction.ply`` and ``cameras.json`` atomically into ``--out``, with the colmap
database and sparse models under ``OUT/colmap/``. Progress goes to stdout as JSON lines
``{"stage", "progress", "message"}``; logs go to stderr. Exit 2 means the reconstruction
failed, and the last stderr line says why in words a person can act on.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pycolmap

from services.gpu_agent.backends import INGEST_DONE_NAME
from services.gpu_agent.backends.colmap_stats import write_colmap_stats
from shared.cameras import (
    CAMERAS_NAME,
    CameraFrame,
    Cameras,
    FrameSource,
    Intrinsics,
    write_cameras,
)
from shared.frames import FRAMES_INDEX_NAME, FrameIndex
from shared.plyio import write_ply

log = logging.getLogger("colmap_runner")

PLY_NAME = "reconstruction.ply"
FRAME_PATTERN = re.compile(r"frame_(\d{6,})\.jpg")
EXIT_FAILED = 2

#: SIFT features per frame: enough for robust poses, few enough that CPU matching of each
#: pair stays in milliseconds (its cost grows with the square of this number).
MAX_FEATURES = 4096
#: Frames are downscaled to this longest side before SIFT; survey frames are usually smaller.
MAX_IMAGE_SIZE = 2000
#: SIFT's first octave: 0 skips COLMAP's default 2x upsampling (-1), five times faster on
#: the CPU; 640-px survey frames still give thousands of features.
FIRST_OCTAVE = 0
#: Global bundle adjustment after the model grows by this factor (COLMAP: 1.1). Rarer
#: global passes halve mapping time; local BA and the final global BA keep poses accurate.
GLOBAL_BA_GROWTH = 1.4
#: Sequential pairs per frame. With quadratic overlap pycolmap 4 pairs frame i with i+1, i+2,
#: i+4, … i+2^(overlap-1) only: long baselines for accuracy, and a few far pairs that
#: catch a survey crossing its own path, at 10 pairs per frame.
SEQUENTIAL_OVERLAP = 10
#: Calls of extract_features and of match_image_pairs per run: progress granularity versus
#: per-call set-up (thread pools, SIFT and matcher state).
EXTRACT_CHUNKS = 20
MATCH_CHUNKS = 20
#: --follow: how often the frames folder is looked at, and the most frames per SIFT call.
FOLLOW_POLL_S = 0.2
FOLLOW_CHUNK = 32
#: Smallest model kept, in frames: a 3-frame model is still worth showing.
MIN_MODEL_SIZE = 3


class RunnerError(Exception):
    """A failure the operator can act on; its message is the last stderr line."""


@dataclass
class Frame:
    name: str
    index: int
    size: tuple[int, int] | None  # (width, height), None when the JPEG header is unreadable


class Progress:
    """JSON lines on the real stdout, progress monotonic within each stage."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.stage: str | None = None
        self.value = 0.0

    def __call__(self, stage: str, progress: float, message: str = "") -> None:
        if stage != self.stage:
            self.stage, self.value = stage, 0.0
        self.value = max(self.value, min(1.0, max(0.0, progress)))
        record = {"stage": stage, "progress": round(self.value, 4), "message": message}
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="colmap_runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=Path, required=True, help="folder of frame_%%06d.jpg")
    parser.add_argument("--out", type=Path, required=True, help="folder for the outputs")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads")
    parser.add_argument("--camera-model", default="SIMPLE_RADIAL", help="COLMAP camera model")
    parser.add_argument("--max-features", type=int, default=MAX_FEATURES, help="SIFT features per frame at most")
    parser.add_argument("--max-image-size", type=int, default=MAX_IMAGE_SIZE,
                        help="longest image side SIFT works at (frames are downscaled to it)")
    parser.add_argument("--verbose", action="store_true", help="keep COLMAP's INFO logs")
    parser.add_argument("--follow", action="store_true",
                        help=f"start before the last frame lands: SIFT on frames as they appear, "
                             f"matching and mapping once {INGEST_DONE_NAME} is written")
    args = parser.parse_args(argv)
    if not (64 <= args.max_features <= 65536) or not (256 <= args.max_image_size <= 8192):
        parser.error("--max-features must be within 64..65536 and --max-image-size within 256..8192")

    # COLMAP's C++ code may print to stdout; progress must own it, so stdout becomes a
    # private copy and fd 1 is pointed at stderr.
    progress = Progress(os.fdopen(os.dup(1), "w", buffering=1))
    sys.stdout.flush()
    os.dup2(2, 1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s colmap_runner %(message)s")
    pycolmap.logging.logtostderr = True
    pycolmap.logging.minloglevel = pycolmap.logging.INFO if args.verbose else pycolmap.logging.WARNING

    try:
        reconstruct(args.frames, args.out, threads=max(1, args.threads), camera_model=args.camera_model,
                    progress=progress, sift=SiftParams(args.max_features, args.max_image_size), follow=args.follow)
    except RunnerError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return EXIT_FAILED
    except Exception as exc:  # pycolmap raises plain ValueError/RuntimeError; disks fill up
        log.exception("unexpected failure")
        print(f"the colmap backend failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    return 0


@dataclass(frozen=True)
class SiftParams:
    max_features: int = MAX_FEATURES
    max_image_size: int = MAX_IMAGE_SIZE


def reconstruct(frames_dir: Path, out_dir: Path, *, threads: int, camera_model: str, progress: Progress,
                sift: SiftParams = SiftParams(), follow: bool = False) -> None:
    started = time.monotonic()
    if not follow:
        frames = list_frames(frames_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / "colmap"
    # A database from an interrupted run may hold half an image; starting afresh is simplest.
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "sparse").mkdir(parents=True)
    database = scratch / "database.db"
    pycolmap.set_random_seed(0)

    matched: set[tuple[int, int]] = set()
    if follow:
        frames = follow_extract(database, frames_dir, scratch, matched, threads=threads, camera_model=camera_model,
                                progress=progress, sift=sift)  # fmt: skip
    else:
        extract(database, frames_dir, frames, threads=threads, camera_model=camera_model, progress=progress,
                sift=sift)
    check_features(database, frames_dir, len(frames))
    index = load_frame_index(frames_dir)  # read after the last frame: it lists every video
    match(database, scratch, threads=threads, progress=progress, matched=matched)
    model = map_frames(database, frames_dir, scratch / "sparse", len(frames), threads=threads, progress=progress)

    progress("writing", 0.0, f"writing {PLY_NAME} and {CAMERAS_NAME}")
    write_outputs(model, frames, index, out_dir, camera_model=camera_model, threads=threads, sift=sift)
    write_colmap_stats(model, database, out_dir)  # for QC: keypoints live only in the database
    database.unlink(missing_ok=True)  # descriptors are big and no longer needed
    registered = model.num_reg_images()
    message = f"registered {registered} of {len(frames)} frames, {model.num_points3D()} points"
    log.info("%s in %.1f s", message, time.monotonic() - started)
    progress("writing", 1.0, message)


def list_frames(frames_dir: Path) -> list[Frame]:
    if not frames_dir.is_dir():
        raise RunnerError(f"frames folder {frames_dir} does not exist")
    frames = []
    for path in sorted(frames_dir.iterdir()):
        match_ = FRAME_PATTERN.fullmatch(path.name)
        if match_ and path.is_file():
            frames.append(Frame(path.name, int(match_.group(1)), jpeg_size(path)))
    if not frames:
        raise RunnerError(f"no frames (frame_NNNNNN.jpg) in {frames_dir}")
    unreadable = [frame.name for frame in frames if frame.size is None]
    if len(unreadable) == len(frames):
        raise RunnerError(f"none of the {len(frames)} frames in {frames_dir} is a readable JPEG image")
    if unreadable:
        log.warning("skipping %d unreadable frames: %s", len(unreadable), ", ".join(unreadable[:5]))
    return frames


def jpeg_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame header, or None if there is none."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return None
        while True:
            byte = f.read(1)
            if byte != b"\xff":
                return None
            code = f.read(1)
            while code == b"\xff":  # fill bytes before a marker
                code = f.read(1)
            if not code:
                return None
            marker = code[0]
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:
                continue  # markers without a length
            if marker in (0xD9, 0xDA):
                return None  # end of image or start of scan before any frame header
            length = int.from_bytes(f.read(2), "big")
            if length < 2:
                return None
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                header = f.read(5)
                if len(header) < 5:
                    return None
                height, width = int.from_bytes(header[1:3], "big"), int.from_bytes(header[3:5], "big")
                return (width, height) if width and height else None
            f.seek(length - 2, os.SEEK_CUR)


def load_frame_index(frames_dir: Path) -> FrameIndex | None:
    path = frames_dir / FRAMES_INDEX_NAME
    if not path.is_file():
        return None
    try:
        return FrameIndex.model_validate_json(path.read_bytes())
    except ValueError as exc:
        # Sources are nice to have; a bad index must not cost the reconstruction.
        log.warning("ignoring %s: %s", path, str(exc).splitlines()[0])
        return None


def _reader_options(camera_model: str) -> pycolmap.ImageReaderOptions:
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    return reader


def _sift_options(threads: int, sift: SiftParams) -> pycolmap.FeatureExtractionOptions:
    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = threads
    options.max_image_size = sift.max_image_size
    options.sift.max_num_features = sift.max_features
    options.sift.first_octave = FIRST_OCTAVE
    return options


def extract(database: Path, frames_dir: Path, frames: list[Frame], *, threads: int, camera_model: str,
            progress: Progress, sift: SiftParams) -> None:
    """SIFT on the CPU, one shared camera per frame size, in chunks to report progress."""
    readable = [frame for frame in frames if frame.size is not None]
    reader = _reader_options(camera_model)
    pycolmap.Database.open(database).close()  # import_images needs the file to exist
    # Importing first fixes each frame's camera: all frames of one size share one camera,
    # so the chunked extraction below does not create a camera per chunk.
    for size in sorted({frame.size for frame in readable}):
        names = [frame.name for frame in readable if frame.size == size]
        pycolmap.import_images(database, frames_dir, pycolmap.CameraMode.SINGLE, names, reader)

    options = _sift_options(threads, sift)
    chunk = max(4 * threads, math.ceil(len(readable) / EXTRACT_CHUNKS))
    progress("features", 0.0, f"SIFT on {len(readable)} frames")
    for start in range(0, len(readable), chunk):
        names = [frame.name for frame in readable[start : start + chunk]]
        pycolmap.extract_features(
            database, frames_dir, names, pycolmap.CameraMode.SINGLE, reader, options, pycolmap.Device.cpu
        )
        done = min(len(readable), start + chunk)
        progress("features", done / len(readable), f"SIFT on {done} of {len(readable)} frames")


class FollowedFolder:
    """The frames of a folder still being filled, handed out in frame order.

    Before ``.ingest.done`` exists only an unbroken run of frame numbers is handed out: a
    directory listing may show a frame whose predecessor it missed. After it, every frame.
    """

    def __init__(self, frames_dir: Path):
        self.frames_dir = frames_dir
        self.taken: list[Frame] = []
        self._names: set[str] = set()
        self.announced: int | None = None  # the frame count in .ingest.done

    def finished(self) -> bool:
        sentinel = self.frames_dir / INGEST_DONE_NAME
        if not sentinel.exists():
            return False
        try:
            self.announced = int(json.loads(sentinel.read_text())["frames"])
        except (OSError, ValueError, KeyError, TypeError):
            self.announced = None
        return True

    def new_frames(self, *, finished: bool) -> list[Frame]:
        if not self.frames_dir.is_dir():
            return []
        paths = sorted((int(m.group(1)), p) for p in self.frames_dir.iterdir()
                       if (m := FRAME_PATTERN.fullmatch(p.name)) and p.name not in self._names)  # fmt: skip
        last = self.taken[-1].index if self.taken else 0
        new = []
        for number, path in paths:
            if not finished and number != last + 1:
                break
            if not path.is_file():
                continue
            new.append(Frame(path.name, number, jpeg_size(path)))
            last = number
        self.taken += new
        self._names.update(frame.name for frame in new)
        return new


def follow_extract(database: Path, frames_dir: Path, scratch: Path, matched: set[tuple[int, int]], *, threads: int,
                   camera_model: str, progress: Progress, sift: SiftParams,
                   poll_s: float = FOLLOW_POLL_S) -> list[Frame]:  # fmt: skip
    """SIFT on each frame as it lands, until ``.ingest.done``; returns every frame, in order.

    Frames are imported in frame order, all of one size on one camera, as :func:`extract`
    does, so the database is the one a batch run builds. Sequential pairs whose frames both
    have features are matched on the way (added to ``matched``): frames land in name order,
    so the pairs among the first frames are those a batch run makes among them.
    """
    pycolmap.Database.open(database).close()
    folder = FollowedFolder(frames_dir)
    reader = _reader_options(camera_model)
    options = _sift_options(threads, sift)
    cameras: dict[tuple[int, int], int] = {}
    parent = os.getppid()
    progress("features", 0.0, f"waiting for frames in {frames_dir}")
    while True:
        finished = folder.finished()  # before listing: once it exists, every frame is there
        new = folder.new_frames(finished=finished)
        for start in range(0, len(new), FOLLOW_CHUNK):
            _import_and_extract(database, frames_dir, new[start : start + FOLLOW_CHUNK], cameras, reader, options)
            done = len(folder.taken) - len(new) + min(len(new), start + FOLLOW_CHUNK)
            progress("features", 0.0, f"SIFT on {done} frames so far, {len(matched)} pairs matched; more are landing")
        if new and not finished:
            names, pairs = sequential_pairs(database)
            ready = [pair for pair in pairs if pair not in matched]
            if ready:
                match_pairs(database, scratch, names, ready, threads=threads)
                matched.update(ready)
        if finished:
            break
        if not new:
            if os.getppid() != parent:
                raise RunnerError("the gpu agent that started this runner is gone before all frames landed; stopping")
            time.sleep(poll_s)
    frames = folder.taken
    if not frames:
        raise RunnerError(f"no frames (frame_NNNNNN.jpg) in {frames_dir}")
    if folder.announced is not None and folder.announced != len(frames):
        raise RunnerError(f"{INGEST_DONE_NAME} announces {folder.announced} frames but {frames_dir} holds "
                          f"{len(frames)}; the ingest and this runner disagree: run the job again")  # fmt: skip
    if all(frame.size is None for frame in frames):
        raise RunnerError(f"none of the {len(frames)} frames in {frames_dir} is a readable JPEG image")
    readable = sum(frame.size is not None for frame in frames)
    progress("features", 1.0, f"SIFT on {readable} of {readable} frames")
    return frames


def _import_and_extract(database: Path, frames_dir: Path, frames: list[Frame], cameras: dict[tuple[int, int], int],
                        reader: pycolmap.ImageReaderOptions, options: pycolmap.FeatureExtractionOptions) -> None:
    readable = [frame for frame in frames if frame.size is not None]
    if len(readable) < len(frames):
        log.warning("skipping unreadable frames: %s", ", ".join(f.name for f in frames if f.size is None))
    for size in dict.fromkeys(frame.size for frame in readable):  # sizes in frame order
        names = [frame.name for frame in readable if frame.size == size]
        reader.existing_camera_id = cameras.get(size, -1)
        pycolmap.import_images(database, frames_dir, pycolmap.CameraMode.SINGLE, names, reader)
        if size not in cameras:
            db = pycolmap.Database.open(database)
            try:
                cameras[size] = next(i.camera_id for i in db.read_all_images() if i.name == names[0])
            finally:
                db.close()
    reader.existing_camera_id = -1
    if readable:
        pycolmap.extract_features(database, frames_dir, [f.name for f in readable], pycolmap.CameraMode.SINGLE,
                                  reader, options, pycolmap.Device.cpu)  # fmt: skip


def check_features(database: Path, frames_dir: Path, total: int) -> None:
    """Fail readably when SIFT found too little to match."""
    db = pycolmap.Database.open(database)
    try:
        keypoints = [db.num_keypoints_for_image(image.image_id) for image in db.read_all_images()]
    finally:
        db.close()
    with_features = sum(1 for count in keypoints if count > 0)
    log.info("features: %d frames, %.0f keypoints per frame on average", with_features,
             sum(keypoints) / max(1, len(keypoints)))
    if with_features < 2:
        raise RunnerError(
            f"SIFT found features in only {with_features} of {total} frames in {frames_dir}: "
            "the frames may be unreadable, black or textureless"
        )


def sequential_pairs(database: Path) -> tuple[dict[int, str], list[tuple[int, int]]]:
    """Image names by id, and COLMAP's sequential pairs of the images in the database."""
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = SEQUENTIAL_OVERLAP
    pairing.quadratic_overlap = True
    pairing.loop_detection = False  # needs a vocabulary tree file
    db = pycolmap.Database.open(database)
    try:
        names = {image.image_id: image.name for image in db.read_all_images()}
        pairs = [tuple(pair) for pair in pycolmap.SequentialPairGenerator(pairing, db).all_pairs()]
    finally:
        db.close()
    return names, pairs


def match_pairs(database: Path, scratch: Path, names: dict[int, str], pairs: list[tuple[int, int]], *,
                threads: int) -> None:  # fmt: skip
    """Match and verify ``pairs`` (one pycolmap call, through an imported pair list)."""
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = 0
    imported = pycolmap.ImportedPairingOptions()
    imported.match_list_path = str(scratch / "pairs.txt")
    Path(imported.match_list_path).write_text("".join(f"{names[a]} {names[b]}\n" for a, b in pairs))
    pycolmap.match_image_pairs(database, matching, imported, verification, pycolmap.Device.cpu)


def match(database: Path, scratch: Path, *, threads: int, progress: Progress,
          matched: set[tuple[int, int]] = frozenset()) -> None:  # fmt: skip
    """Sequential matching: frames come from videos, so neighbours in time overlap most.

    COLMAP's sequential pairs are matched in chunks through an imported pair list, because
    ``match_sequential`` reports no progress and matching is the longest stage on the CPU.
    Pairs in ``matched`` (matched while frames landed) are not matched again.
    """
    names, every = sequential_pairs(database)
    pairs = [pair for pair in every if pair not in matched]
    earlier = len(every) - len(pairs)
    chunk = max(8 * threads, math.ceil(len(pairs) / MATCH_CHUNKS))
    progress("matching", 0.0, f"matching {len(pairs)} frame pairs" + (f" ({earlier} matched earlier)" if earlier else ""))
    for start in range(0, len(pairs), chunk):
        match_pairs(database, scratch, names, pairs[start : start + chunk], threads=threads)
        done = min(len(pairs), start + chunk)
        progress("matching", done / max(1, len(pairs)), f"matched {done} of {len(pairs)} frame pairs")
    if not pairs:
        progress("matching", 1.0, f"all {len(every)} frame pairs matched while frames landed")

    db = pycolmap.Database.open(database)
    try:
        _, inliers = db.read_two_view_geometry_num_inliers()
        log.info("matching: %d of %d frame pairs verified", sum(1 for n in inliers if n > 0), len(every))
    finally:
        db.close()


def map_frames(database: Path, frames_dir: Path, sparse_dir: Path, total: int, *, threads: int,
               progress: Progress) -> pycolmap.Reconstruction:
    """Incremental mapping; returns the model with the most registered frames."""
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads
    options.min_model_size = MIN_MODEL_SIZE
    options.random_seed = 0
    options.mapper.num_threads = threads
    options.ba_global_frames_ratio = GLOBAL_BA_GROWTH
    options.ba_global_points_ratio = GLOBAL_BA_GROWTH
    attempts = 0

    def next_image() -> None:
        # Called before each registration attempt: a fair, if optimistic, progress measure.
        nonlocal attempts
        attempts += 1
        progress("mapping", min(0.99, attempts / total), f"placing frame {min(attempts, total)} of {total}")

    progress("mapping", 0.0, "incremental mapping")
    models = pycolmap.incremental_mapping(database, frames_dir, sparse_dir, options, next_image_callback=next_image)
    best = max(models.values(), key=lambda model: model.num_reg_images(), default=None)
    registered = best.num_reg_images() if best is not None else 0
    if registered < MIN_MODEL_SIZE:
        raise RunnerError(
            f"pycolmap registered only {registered} of {total} frames: the footage may be too blurry, "
            "textureless or fast-moving; try a higher fps or sharper footage"
        )
    log.info("%d models; the largest has %d frames", len(models), registered)
    progress("mapping", 1.0, f"registered {registered} of {total} frames")
    return best


def write_outputs(model: pycolmap.Reconstruction, frames: list[Frame], index: FrameIndex | None, out_dir: Path,
                  *, camera_model: str, threads: int, sift: SiftParams) -> None:
    sources = {f.name: f for f in index.frames} if index else {}
    write_points(model, sources, out_dir / PLY_NAME)
    parameters = {
        "camera_model": camera_model,
        "max_num_features": sift.max_features,
        "max_image_size": sift.max_image_size,
        "first_octave": FIRST_OCTAVE,
        "global_ba_growth": GLOBAL_BA_GROWTH,
        "matching": "sequential",
        "sequential_overlap": SEQUENTIAL_OVERLAP,
        "threads": threads,
    }
    document = Cameras(backend="colmap", version=f"pycolmap {pycolmap.__version__}", parameters=parameters,
                       frames=camera_frames(model, frames, index))
    write_cameras(out_dir / CAMERAS_NAME, document)


def camera_frames(model: pycolmap.Reconstruction, frames: list[Frame], index: FrameIndex | None) -> list[CameraFrame]:
    """One entry per frame file, registered or not, in file order."""
    by_name = {image.name: image for image in model.images.values()}
    sources = {f.name: f for f in index.frames} if index else {}
    natives = {v.index: (v.native_width, v.native_height) for v in index.videos} if index else {}
    result = []
    for frame in frames:
        image = by_name.get(frame.name)
        registered = image is not None and image.has_pose
        indexed = sources.get(frame.name)
        intrinsics = _intrinsics(image.camera) if image is not None else None
        native = None
        if intrinsics is not None and indexed is not None:
            width, height = natives.get(indexed.video, (None, None))
            if width and height:
                native = intrinsics.scaled(width, height)
        c2w = None
        if registered:
            c2w = np.vstack([image.cam_from_world().inverse().matrix(), [0, 0, 0, 1]]).tolist()
        result.append(
            CameraFrame(
                name=frame.name,
                index=indexed.index if indexed else frame.index,
                source=FrameSource(video=indexed.video, t_s=indexed.t_s) if indexed else None,
                registered=registered,
                c2w=c2w,
                intrinsics=intrinsics,
                native_intrinsics=native,
            )
        )
    return result


def write_points(model: pycolmap.Reconstruction, sources: dict, path: Path) -> None:
    """The sparse cloud; each point's ``frame`` is the first frame (job numbering) that saw it."""
    frame_number = {image_id: _frame_number(image.name, sources) for image_id, image in model.images.items()}
    points = list(model.points3D.values())
    xyz = np.array([p.xyz for p in points], dtype=np.float32).reshape(-1, 3)
    rgb = np.array([p.color for p in points], dtype=np.uint8).reshape(-1, 3)
    first_seen = np.array([min(frame_number[e.image_id] for e in p.track.elements) for p in points], np.int32)
    write_ply(path, xyz, rgb, frame=first_seen)


def _frame_number(name: str, sources: dict) -> int:
    if name in sources:
        return sources[name].index
    match_ = FRAME_PATTERN.fullmatch(name)
    return int(match_.group(1)) if match_ else 0


def _intrinsics(camera: pycolmap.Camera) -> Intrinsics:
    names = [name.strip() for name in camera.params_info.split(",")]
    params = list(camera.params)
    extra = {names[i]: float(params[i]) for i in camera.extra_params_idxs()}
    return Intrinsics(
        fx=camera.focal_length_x,
        fy=camera.focal_length_y,
        cx=camera.principal_point_x,
        cy=camera.principal_point_y,
        width=camera.width,
        height=camera.height,
        model=camera.model.name,
        distortion=extra,
    )


if __name__ == "__main__":
    sys.exit(main())
