"""Stitching: several finished jobs of one site merged into ``stitch_K.ply`` in the first job's frame.

Alignment is by image features, not by cloud geometry (nearly flat seabeds defeat
FPFH/ICP): a subset of each job's registered frames goes into one joint pycolmap model, and
each job's similarity into that model comes from its own cameras (``cameras.json``) that
the model registered (:func:`shared.geometry.umeyama`). So any backend's output stitches.

The agent fetches every job's ``cameras.json``, ``reconstruction.ply`` and the chosen frames
over HTTP (from itself too), then runs the alignment as a supervised subprocess::

    python -m services.gpu_agent.stitch --work DIR --out-ply PATH --out-json PATH [--threads N]

Too few matches between the jobs fail the stitch with the counts, and nothing is written.
Besides the cloud and the report, the subprocess writes ``stitch_K_cameras.json``: every job's
cameras carried into the stitch's frame, for the GLB and the viewer.

Each stitch's state (and the spec it was asked for) is kept in ``stitch_K.state.json``,
written atomically on every change and reloaded when the agent starts, so a failed stitch
is not forgotten. A stitch that was running when the agent stopped is reported failed
("interrupted by an agent restart; retry it"): its inputs are fetched again by a retry
(the same ``PUT``), which costs little next to the alignment it would have to redo anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np

from services.gpu_agent.ingest import atomic_write_bytes
from shared.cameras import CAMERAS_NAME, Cameras
from shared.errors import Conflict, NotFound
from shared.geometry import apply_similarity, trajectory_length, umeyama
from shared.plyio import read_ply, write_ply
from shared.procs import Supervised
from shared.stitches import (
    StitchCameras,
    StitchInput,
    StitchJobCameras,
    StitchJobResult,
    StitchRecord,
    StitchReport,
    StitchSpec,
    StitchState,
)

log = logging.getLogger(__name__)

PLY_NAME = "reconstruction.ply"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: A job joins the stitch when at least this many of its frames are registered in the joint
#: model with the first job's frames, and its frames share this many verified matches with
#: the first job's.
MIN_SHARED_FRAMES = 4
MIN_CROSS_MATCHES = 100
MAX_FEATURES = 4096
EXIT_FAILED = 2
FETCH_TIMEOUT_S = 120.0
#: The error of a stitch that was running when the agent stopped.
INTERRUPTED = "interrupted by an agent restart; retry it"
STATE_FILE_RE = re.compile(r"^stitch_(\d+)\.state\.json$")


class StitchFailed(Exception):
    """A stitch that cannot be made; the message says why in words a person can act on."""


# -- the agent side ------------------------------------------------------------------------


class StitchFiles(NamedTuple):
    """Where stitch K lives in the agent's work root."""

    ply: Path
    report: Path
    cameras: Path
    state: Path
    work: Path


def stitch_files(root: Path, stitch_id: int) -> StitchFiles:
    stem = f"stitch_{stitch_id}"
    return StitchFiles(root / f"{stem}.ply", root / f"{stem}.json", root / f"{stem}_cameras.json",
                       root / f"{stem}.state.json", root / f".{stem}.work")


class StitchManager:
    """Runs stitches of this agent, one task each, kept referenced until they end."""

    def __init__(self, root: Path, token: str, *, threads: int = 0):
        self.root = root
        self.token = token
        self.threads = threads or (os.cpu_count() or 1)
        self.stitches: dict[int, StitchState] = {}
        self._specs: dict[int, StitchSpec] = {}
        self._tasks: dict[int, asyncio.Task] = {}

    def files(self, stitch_id: int) -> StitchFiles:
        return stitch_files(self.root, stitch_id)

    def load(self) -> None:
        """Reload every persisted stitch; those that were running are failed, to be retried."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.iterdir()):
            match = STATE_FILE_RE.match(path.name)
            if not match:
                continue
            try:
                record = StitchRecord.model_validate_json(path.read_bytes())
            except (OSError, ValueError) as exc:
                log.warning("leaving %s alone: not a readable stitch state (%s)", path.name, exc)
                continue
            stitch_id = record.state.stitch_id
            self._specs[stitch_id] = record.spec
            self.stitches[stitch_id] = record.state
            if record.state.state == "running":
                log.warning("stitch %s was running when the agent stopped: failed, to be retried", stitch_id)
                shutil.rmtree(self.files(stitch_id).work, ignore_errors=True)
                self._set(stitch_id, StitchState(stitch_id=stitch_id, state="failed", message="failed",
                                                 error=INTERRUPTED))

    def _set(self, stitch_id: int, state: StitchState) -> StitchState:
        """Record the stitch's new state, in memory and in its state file."""
        self.stitches[stitch_id] = state
        record = StitchRecord(spec=self._specs[stitch_id], state=state)
        atomic_write_bytes(self.files(stitch_id).state, record.model_dump_json().encode())
        return state

    def get(self, stitch_id: int) -> StitchState:
        if stitch_id in self.stitches:
            return self.stitches[stitch_id]
        report_path = self.files(stitch_id).report
        if report_path.is_file():  # made before stitches kept a state file
            report = StitchReport.model_validate_json(report_path.read_bytes())
            return StitchState(stitch_id=stitch_id, state="done", message="done", report=report)
        raise NotFound(f"stitch {stitch_id} is not on this agent", code="no_stitch")

    def done(self, stitch_id: int) -> StitchReport:
        """The report of a finished stitch; 404 while it has none (running, failed or unknown)."""
        state = self.get(stitch_id)
        if state.state != "done" or state.report is None:
            raise NotFound(f"stitch {stitch_id} is {state.state}: it has no result (yet)", code="no_stitch_result")
        return state.report

    def put(self, stitch_id: int, spec: StitchSpec) -> tuple[StitchState, bool]:
        current = self.stitches.get(stitch_id)
        if current is not None:
            if self._specs[stitch_id] != spec:
                raise Conflict(f"stitch {stitch_id} already exists with other jobs", code="spec_mismatch")
            if current.state != "failed":
                return current, False
        self._specs[stitch_id] = spec
        state = self._set(stitch_id, StitchState(stitch_id=stitch_id, state="running",
                                                 message="fetching the jobs' outputs"))
        task = asyncio.create_task(self._run(stitch_id, spec), name=f"stitch-{stitch_id}")
        self._tasks[stitch_id] = task
        task.add_done_callback(lambda _t, sid=stitch_id: self._tasks.pop(sid, None))
        return state, True

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, stitch_id: int, spec: StitchSpec) -> None:
        files = self.files(stitch_id)
        work = files.work
        try:
            shutil.rmtree(work, ignore_errors=True)
            await self._fetch(spec, work)
            self._set(stitch_id, self.stitches[stitch_id].model_copy(update={"message": "aligning"}))
            argv = [sys.executable, "-m", "services.gpu_agent.stitch", "--work", str(work),
                    "--out-ply", str(files.ply), "--out-json", str(files.report), "--stitch-id", str(stitch_id),
                    "--threads", str(self.threads)]
            process = await Supervised.start(argv, cwd=PROJECT_ROOT)
            try:
                rc = await process.wait()
            except asyncio.CancelledError:
                await process.terminate()
                raise
            if rc != 0:
                raise StitchFailed(process.stderr_tail[-1] if rc == EXIT_FAILED and process.stderr_tail
                                   else process.describe_exit(rc))
            result = StitchReport.model_validate_json(files.report.read_bytes())
            self._set(stitch_id, StitchState(stitch_id=stitch_id, state="done", message="done", report=result))
        except Exception as exc:  # a stitch never stays "running" after its task ended
            if not isinstance(exc, (StitchFailed, httpx.HTTPError, OSError, ValueError)):
                log.exception("stitch %s: unexpected failure", stitch_id)
            message = str(exc) if isinstance(exc, StitchFailed) else f"{type(exc).__name__}: {exc}"
            log.warning("stitch %s failed: %s", stitch_id, message)
            self._set(stitch_id, StitchState(stitch_id=stitch_id, state="failed", message="failed", error=message))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    async def _fetch(self, spec: StitchSpec, work: Path) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        inputs = []
        async with httpx.AsyncClient(headers=headers, timeout=FETCH_TIMEOUT_S) as client:
            for i, job in enumerate(spec.jobs):
                folder = work / f"j{i}"
                folder.mkdir(parents=True)
                await _fetch_file(client, job, CAMERAS_NAME, work / f"j{i}.cameras.json")
                await _fetch_file(client, job, PLY_NAME, work / f"j{i}.ply")
                cameras = Cameras.model_validate_json((work / f"j{i}.cameras.json").read_bytes())
                for frame in pick_frames(cameras, spec.frames_per_job):
                    await _fetch_file(client, job, frame, folder / frame)
                inputs.append(job.model_dump())
        (work / "inputs.json").write_text(json.dumps(inputs))


async def _fetch_file(client: httpx.AsyncClient, job: StitchInput, name: str, target: Path) -> None:
    resp = await client.get(f"{job.agent_url.rstrip('/')}/jobs/{job.job_id}/files/{name}")
    if resp.status_code != 200:
        raise StitchFailed(f"job {job.job_id} on {job.agent_url}: {name} unavailable (HTTP {resp.status_code})")
    target.write_bytes(resp.content)


def pick_frames(cameras: Cameras, count: int) -> list[str]:
    """Names of ``count`` registered frames spread evenly over the job."""
    names = [frame.name for frame in cameras.registered]
    if len(names) <= count:
        return names
    return [names[int(i)] for i in np.linspace(0, len(names) - 1, count).round()]


# -- the subprocess: joint model, similarities, outputs ---------------------------------------


def align(work: Path, *, threads: int) -> list[dict]:
    """Joint pycolmap model of ``work/j*/``; returns per job its similarity into job 0's frame."""
    import pycolmap

    inputs = json.loads((work / "inputs.json").read_text())
    images = work / "images"
    images.mkdir(exist_ok=True)
    for i in range(len(inputs)):
        os.replace(work / f"j{i}", images / f"j{i}")
    database = work / "database.db"
    pycolmap.set_random_seed(0)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = threads
    extraction.sift.max_num_features = MAX_FEATURES
    extraction.sift.first_octave = 0
    pycolmap.extract_features(database, images, camera_mode=pycolmap.CameraMode.PER_FOLDER,
                              extraction_options=extraction, device=pycolmap.Device.cpu)
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = 0
    log.info("features extracted")
    pycolmap.match_exhaustive(database, matching_options=matching, verification_options=verification,
                              device=pycolmap.Device.cpu)

    db = pycolmap.Database.open(database)
    try:
        job_of = {image.image_id: int(image.name.split("/")[0][1:]) for image in db.read_all_images()}
        pair_ids, inliers = db.read_two_view_geometry_num_inliers()
    finally:
        db.close()
    cross = [0] * len(inputs)  # verified matches between job i's frames and job 0's
    for pair_id, count in zip(pair_ids, inliers):
        a, b = pycolmap.pair_id_to_image_pair(pair_id)
        jobs = {job_of[a], job_of[b]}
        if 0 in jobs and len(jobs) == 2:
            cross[max(jobs)] += count

    log.info("cross matches with the first job: %s", cross[1:])
    for i in range(1, len(inputs)):
        if cross[i] < MIN_CROSS_MATCHES:  # no need to map what cannot join
            raise StitchFailed(
                f"job {inputs[i]['job_id']} does not overlap job {inputs[0]['job_id']}: too few cross matches "
                f"({cross[i]} verified feature matches with its frames, need {MIN_CROSS_MATCHES})")

    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads
    options.random_seed = 0
    options.min_model_size = 3
    sparse = work / "sparse"
    sparse.mkdir(exist_ok=True)
    models = pycolmap.incremental_mapping(database, images, sparse, options)

    def registered(model, job: int) -> dict[str, np.ndarray]:
        centres = {}
        for image in model.images.values():
            folder, name = image.name.split("/", 1)
            if image.has_pose and folder == f"j{job}":
                centres[name] = image.cam_from_world().inverse().matrix()[:3, 3]
        return centres

    log.info("joint model: %d models", len(models))
    model = max(models.values(), key=lambda m: (len(registered(m, 0)), m.num_reg_images()), default=None)
    results = []
    reference = None
    for i, job in enumerate(inputs):
        cameras = Cameras.model_validate_json((work / f"j{i}.cameras.json").read_bytes())
        own = {frame.name: frame.centre() for frame in cameras.registered}
        in_model = registered(model, i) if model is not None else {}
        shared = sorted(set(in_model) & set(own))
        if i > 0 and (len(shared) < MIN_SHARED_FRAMES or cross[i] < MIN_CROSS_MATCHES):
            raise StitchFailed(
                f"job {job['job_id']} does not overlap job {inputs[0]['job_id']}: too few cross matches "
                f"({cross[i]} verified feature matches, need {MIN_CROSS_MATCHES}; {len(shared)} of its frames "
                f"placed with the first job's, need {MIN_SHARED_FRAMES})")
        if i == 0 and len(shared) < MIN_SHARED_FRAMES:
            raise StitchFailed(f"only {len(shared)} frames of job {job['job_id']} could be placed in the joint "
                               f"model (need {MIN_SHARED_FRAMES}): its frames may be too blurry or textureless")
        src = np.array([own[name] for name in shared])
        dst = np.array([in_model[name] for name in shared])
        s, r, t = umeyama(src, dst)
        residual = apply_similarity(src, s, r, t) - dst
        rmse_model = float(np.sqrt((residual**2).sum(axis=1).mean()))
        if i == 0:
            reference = (s, r, t)
        s0, r0, t0 = reference
        # job i → model → job 0: p0 = R0ᵀ (s_i R_i p + t_i − t0) / s0
        scale, rotation, translation = s / s0, r0.T @ r, r0.T @ (t - t0) / s0
        matrix = np.eye(4)
        matrix[:3, :3], matrix[:3, 3] = scale * rotation, translation
        path_m = trajectory_length(src) * scale
        results.append({
            "agent_url": job["agent_url"], "job_id": job["job_id"], "scale": float(scale),
            "matrix": matrix.tolist(), "cross_matches": int(cross[i]), "shared_frames": len(shared),
            "rmse": rmse_model / s0, "rmse_relative": (rmse_model / s0) / path_m if path_m > 0 else None,
        })
    return results


def carry_cameras(cameras: Cameras, matrix: np.ndarray) -> Cameras:
    """The cameras moved by the similarity ``matrix`` (scale·R | t): rigid poses, scaled positions."""
    scale = float(np.cbrt(np.linalg.det(matrix[:3, :3])))
    rotation = matrix[:3, :3] / scale
    frames = []
    for frame in cameras.frames:
        if frame.c2w is not None:
            c2w = np.asarray(frame.c2w, dtype=np.float64)
            moved = np.eye(4)
            moved[:3, :3], moved[:3, 3] = rotation @ c2w[:3, :3], matrix[:3, :3] @ c2w[:3, 3] + matrix[:3, 3]
            frame = frame.model_copy(update={"c2w": moved.tolist()})
        frames.append(frame)
    return cameras.model_copy(update={"frames": frames})


def run(work: Path, out_ply: Path, out_json: Path, *, stitch_id: int, threads: int) -> None:
    results = align(work, threads=threads)
    files = stitch_files(out_json.parent, stitch_id)
    moved = [StitchJobCameras(job_id=job["job_id"], cameras=carry_cameras(
        Cameras.model_validate_json((work / f"j{i}.cameras.json").read_bytes()), np.asarray(job["matrix"])))
        for i, job in enumerate(results)]
    atomic_write_bytes(files.cameras, StitchCameras(stitch_id=stitch_id, jobs=moved).model_dump_json().encode())
    xyz, rgb = [], []
    for i, job in enumerate(results):
        cols = read_ply(work / f"j{i}.ply")
        points = np.stack([cols["x"], cols["y"], cols["z"]], axis=1).astype(np.float64)
        matrix = np.asarray(job["matrix"])
        xyz.append(points @ matrix[:3, :3].T + matrix[:3, 3])
        rgb.append(np.stack([cols["red"], cols["green"], cols["blue"]], axis=1) if "red" in cols
                   else np.full((len(points), 3), 200, np.uint8))
    report = StitchReport(stitch_id=stitch_id, created_at=datetime.now(timezone.utc), ply=out_ply.name,
                          cameras=files.cameras.name, jobs=[StitchJobResult(**job) for job in results])
    write_ply(out_ply, np.concatenate(xyz).astype(np.float32), np.concatenate(rgb).astype(np.uint8))
    atomic_write_bytes(out_json, report.model_dump_json(indent=1).encode())  # last: it marks the stitch made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stitch", description="align fetched jobs into one cloud")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out-ply", type=Path, required=True)
    parser.add_argument("--out-json", type=Path, required=True)
    parser.add_argument("--stitch-id", type=int, required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s stitch %(message)s")
    try:
        import pycolmap

        pycolmap.logging.minloglevel = pycolmap.logging.WARNING
        run(args.work, args.out_ply, args.out_json, stitch_id=args.stitch_id, threads=max(1, args.threads))
    except StitchFailed as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return EXIT_FAILED
    except Exception as exc:
        log.exception("unexpected failure")
        print(f"the stitch failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
