"""The job manager: owns every job of this agent, its state machine and its persistence.

A job's ``state.json`` is rewritten atomically on every change. On start the manager
reloads every ``job_N/state.json``, resumes unfinished jobs from their ``.video_i.done``
markers and reports folders it does not know instead of deleting them.

A job pulls its videos ``ingest_concurrency`` at a time (:class:`OrderedFrames` keeps the
numbering of a one-by-one pull). With ``stream_reconstruction`` on, its backend starts
with ``--follow`` as the ingest starts, when the job holds an ingest slot and a
reconstruction slot is free right now (it never waits for one while holding an ingest
slot), its backend is known (``auto`` decides from the catalog's durations) and QC frame
filtering is off; the agent writes ``.ingest.done`` when the last frame has landed.
Otherwise frames are pulled first, then reconstructed, as a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import json
import logging
import re
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from shared.errors import Conflict, NotFound
from shared.frames import FRAMES_INDEX_NAME, FrameIndex, IndexedFrame, IndexedVideo
from shared.jobs import AgentJob, JobSpec, JobState
from shared.logs import current_job
from shared.procs import Supervised
from shared.vram import estimate_vram_mib

from services.gpu_agent.backends import (
    INGEST_DONE_NAME, OUTPUT_FILES, RUNNER_STAGES, lingbot_unavailable, runner_argv,
)
from services.gpu_agent.config import GpuAgentSettings
from services.gpu_agent.disk import check_free_space, estimate_job_mib
from services.gpu_agent.nvml import GpuProbe
from services.gpu_agent.slots import Busy, NoGpu, Slots
from services.gpu_agent.ingest import (
    AnyOf, IngestCancelled, IngestError, OrderedFrames, atomic_write_bytes, fetch_video_info, pull_video,
    staging_dir,
)
from services.gpu_agent.qc import JobQc
from services.gpu_agent.qc.job import resolve_options

log = logging.getLogger(__name__)

STATE_NAME = "state.json"
#: The backend's stderr, appended across attempts; the dashboard shows its tail.
BACKEND_LOG_NAME = "backend_log.txt"
JOB_DIR_RE = re.compile(r"^job_(\d+)$")
#: First wait before pulling a video again after a transient error; doubles each time.
INGEST_BACKOFF_S = 2.0
#: How long a cancelled ingest waits for its pull threads to stop writing frames.
PULL_STOP_WAIT_S = 5.0


def _now() -> datetime:
    return datetime.now(timezone.utc)


class BackendFailed(Exception):
    pass


def reap_orphan_runner(pid: int, job_dir: Path) -> None:
    """Stop a backend left running by an agent that died (SIGKILL leaves its child alive),
    and remove the outputs it was half-way through writing (``.<name>.<pid>.tmp``).

    Only a process whose command line names this job's folder is touched: the pid may
    have been reused since.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmdline = ""
    if str(job_dir) in cmdline:
        log.warning("stopping the backend (pid %s) an earlier agent left running for %s", pid, job_dir.name)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    for partial in job_dir.glob(f".*.{pid}.tmp"):
        partial.unlink(missing_ok=True)


def job_dir_name(job_id: int) -> str:
    return f"job_{job_id}"


class JobManager:
    def __init__(self, settings: GpuAgentSettings, token: str, probe: GpuProbe):
        self.settings = settings
        self.probe = probe
        self.token = token
        self.root = settings.workdir
        self.jobs: dict[int, AgentJob] = {}
        self.unknown_folders: list[str] = []
        self.waiting: set[int] = set()  # jobs queued for an ingest or reconstruction slot
        self._tasks: dict[int, asyncio.Task] = {}
        self._cancel_events: dict[int, threading.Event] = {}
        self._ingest_slots = asyncio.Semaphore(settings.ingests)
        self.slots = Slots(probe, cpu_jobs=settings.cpu_jobs, jobs_per_gpu=settings.jobs_per_gpu)
        self._qc: dict[int, JobQc] = {}  # set up by _ingest, used until the QC report is written
        #: While a job streams: the ingest's and the backend's last words, shown together.
        self._notes: dict[int, dict[str, str]] = {}
        #: Read by /metrics (services/gpu_agent/metrics.py); a Counter because ingest threads add to it.
        self.frames_ingested = Counter("cosma_gpu_frames_ingested", "Frames written to job folders", registry=None)
        self.stage_seconds = Histogram(
            "cosma_gpu_stage_duration_seconds", "Time a job spent ingesting or reconstructing",
            ["stage"], registry=None, buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600))
        self.stage_fps = Gauge("cosma_gpu_stage_frames_per_second",
                               "Frames per second of the last finished ingest or reconstruction", ["stage"],
                               registry=None)
        for stage in ("extracting", "reconstructing"):  # exposed from the start, not only once observed
            self.stage_seconds.labels(stage)
            self.stage_fps.labels(stage)

    # -- lifecycle ---------------------------------------------------------------------

    def job_dir(self, job_id: int) -> Path:
        return self.root / job_dir_name(job_id)

    async def start(self) -> None:
        """Reload persisted jobs and resume those that were interrupted."""
        self.root.mkdir(parents=True, exist_ok=True)
        for child in sorted(self.root.iterdir()):
            match = JOB_DIR_RE.match(child.name)
            state_file = child / STATE_NAME
            if not child.is_dir() or not match:
                continue
            try:
                job = AgentJob.model_validate_json(state_file.read_text())
            except (OSError, ValueError) as exc:
                log.warning("leaving %s alone: no readable %s (%s)", child, STATE_NAME, exc)
                self.unknown_folders.append(child.name)
                continue
            self.jobs[job.job_id] = job
            if job.runner_pid is not None:
                reap_orphan_runner(job.runner_pid, child)
                self._update(job.job_id, runner_pid=None)
            if not job.state.final:
                log.info("resuming job %s (attempt %s) from %s", job.job_id, job.attempt, job.state.value)
                self._launch(job.job_id)

    async def stop(self) -> None:
        """Stop running work without marking it cancelled: it resumes on the next start."""
        for event in self._cancel_events.values():
            event.set()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- commands ----------------------------------------------------------------------

    def get(self, job_id: int) -> AgentJob:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFound(f"job {job_id} is not on this agent") from None

    async def put(self, job_id: int, spec: JobSpec) -> tuple[AgentJob, bool]:
        """Start or resume a job. Returns the job and whether it was created or restarted."""
        if spec.job_id != job_id:
            raise Conflict(f"the path says job {job_id} but the body says job {spec.job_id}", code="id_mismatch")
        current = self.jobs.get(job_id)
        if current is not None:
            if spec.attempt < current.attempt:
                raise Conflict(
                    f"job {job_id} attempt {spec.attempt} is stale: this agent holds attempt {current.attempt}; drop it",
                    code="stale_attempt",
                )
            if spec.attempt == current.attempt:
                if current.spec != spec:
                    raise Conflict(f"job {job_id} attempt {spec.attempt} already exists with another spec",
                                   code="spec_mismatch")
                return current, False
            await self._halt(job_id)
        infos = await asyncio.gather(*(asyncio.to_thread(fetch_video_info, v, token=self.token, timeout_s=10)
                                       for v in spec.videos))
        need_mib = estimate_job_mib(spec, [info.duration_s if info else None for info in infos])
        self.root.mkdir(parents=True, exist_ok=True)
        check_free_space(self.root, need_mib, self.settings.disk_reserve_mib, job_id)
        now = _now()
        job = AgentJob(job_id=job_id, attempt=spec.attempt, spec=spec, state=JobState.assigned,
                       stage="assigned", progress=0.0, message="accepted", created_at=now, updated_at=now)
        self.job_dir(job_id).mkdir(parents=True, exist_ok=True)
        self._save(job)
        self._launch(job_id)
        return job, True

    async def cancel(self, job_id: int, *, purge: bool = False) -> AgentJob | None:
        job = self.get(job_id)
        await self._halt(job_id)
        if not job.state.final:
            job = self._update(job_id, state=JobState.cancelled, stage="cancelled", message="cancelled on request")
        if purge:
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
            del self.jobs[job_id]
            return None
        return job

    async def _halt(self, job_id: int) -> None:
        event = self._cancel_events.get(job_id)
        if event is not None:
            event.set()
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- state -------------------------------------------------------------------------

    def _save(self, job: AgentJob) -> None:
        self.jobs[job.job_id] = job
        atomic_write_bytes(self.job_dir(job.job_id) / STATE_NAME, job.model_dump_json(indent=1).encode())

    def _update(self, job_id: int, **changes) -> AgentJob:
        job = self.jobs[job_id]
        if "stage" in changes and changes["stage"] != job.stage:
            changes.setdefault("progress", 0.0)
        elif "progress" in changes:
            changes["progress"] = max(job.progress, min(1.0, changes["progress"]))
        job = job.model_copy(update={**changes, "updated_at": _now()})
        self._save(job)
        return job

    def _launch(self, job_id: int) -> None:
        self._cancel_events[job_id] = threading.Event()
        task = asyncio.create_task(self._run(job_id), name=f"job-{job_id}")
        self._tasks[job_id] = task

        def _forget(t: asyncio.Task, job_id=job_id) -> None:
            if self._tasks.get(job_id) is t:
                del self._tasks[job_id]
                self._cancel_events.pop(job_id, None)

        task.add_done_callback(_forget)

    # -- the work ----------------------------------------------------------------------

    async def _run(self, job_id: int) -> None:
        current_job.set(job_id)  # this task's log records carry the job id
        try:
            async with contextlib.AsyncExitStack() as stack:
                self.waiting.add(job_id)
                await self._ingest_slots.acquire()
                held = [True]

                def release_ingest_slot() -> None:
                    if held:
                        held.pop()
                        self._ingest_slots.release()

                stack.callback(release_ingest_slot)
                self.waiting.discard(job_id)
                streaming = await self._streaming_slot(job_id, stack)
                if streaming is not None:
                    await self._stream(job_id, *streaming, release_ingest_slot)
                else:
                    with self._timed("extracting", job_id):
                        await self._ingest(job_id)
                    release_ingest_slot()
                    await self._batch(job_id)
            files = sorted(p.name for p in self.job_dir(job_id).iterdir()
                           if p.is_file() and not p.name.startswith((".", "frame_")) and p.name != STATE_NAME)
            self._update(job_id, state=JobState.done, stage="done", progress=1.0, message="finished",
                         files=files)
        except asyncio.CancelledError:
            raise
        except IngestCancelled:
            pass
        except (IngestError, BackendFailed, NoGpu) as exc:
            self._update(job_id, state=JobState.failed, stage="failed", error=str(exc), message="failed")
        except Exception as exc:  # noqa: BLE001 - a job's bug must not take the agent down
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                # Room for state.json: drop the frames of the video being pulled (a retry pulls
                # it again anyway), or the failure is not recorded and a restart resumes the job.
                with contextlib.suppress(OSError, ValueError):
                    self._load_index(self.job_dir(job_id), self.jobs[job_id].spec)
                try:
                    self._update(job_id, state=JobState.failed, stage="failed", message="failed",
                                 error=f"the disk under {self.root} is full; free space and retry the job")
                except OSError as again:
                    log.error("job %s failed on a full disk, and that could not be recorded: %s", job_id, again)
                return
            log.exception("job %s crashed", job_id)
            self._update(job_id, state=JobState.failed, stage="failed", message="failed",
                         error=f"internal error in the gpu agent ({type(exc).__name__}: {exc}); see its log")
        finally:
            self.waiting.discard(job_id)
            self._notes.pop(job_id, None)

    async def _batch(self, job_id: int) -> None:
        """Every frame is in: wait for a reconstruction slot, then run the backend."""
        backend = await asyncio.to_thread(self._choose_backend, job_id)
        slot = self.slots.gpu(prefer=self.jobs[job_id].spec.gpu_index) if backend == "lingbot" else self.slots.cpu()
        self.waiting.add(job_id)
        self._update(job_id, message=f"frames ready; waiting for a free {'GPU' if backend == 'lingbot' else 'CPU'} slot")
        async with slot as gpu_index:
            self.waiting.discard(job_id)
            try:
                with self._timed("reconstructing", job_id):
                    await self._reconstruct(job_id, backend, gpu_index)
            except BackendFailed as exc:
                await self._write_qc(job_id, error=str(exc))  # the operator still sees the frames' QC
                raise
            await self._write_qc(job_id)

    async def _streaming_slot(self, job_id: int, stack: contextlib.AsyncExitStack) -> tuple[str, int | None] | None:
        """(backend, GPU index) with a reconstruction slot entered on ``stack`` when the job
        streams; None (and the reason in the job's message) when it runs as a batch."""
        if not self.settings.stream_reconstruction:
            return None
        spec = self.jobs[job_id].spec
        if resolve_options(spec, self.settings)[1].enabled:
            self._update(job_id, message="QC frame filtering is on: it judges a frame by later ones, so every frame "
                                         "is pulled before the reconstruction starts (no streaming)")  # fmt: skip
            return None
        backend = spec.backend
        if backend == "auto":
            expected = await self._expected_frames(spec)
            if expected is None:
                self._update(job_id, message="auto: the catalog does not say how long the videos are, so the backend "
                                             "is chosen once every frame is in (no streaming)")  # fmt: skip
                return None
            backend = await asyncio.to_thread(self._choose_backend, job_id, expected)
        try:
            slot = self.slots.gpu(prefer=spec.gpu_index, wait=False) if backend == "lingbot" else self.slots.cpu(wait=False)
            gpu_index = await stack.enter_async_context(slot)
        except Busy as exc:
            self._update(job_id, message=f"{exc}: pulling every frame first, then reconstructing (no streaming)")
            return None
        return backend, gpu_index

    async def _expected_frames(self, spec: JobSpec) -> int | None:
        """Frames the job will have, from the catalog's durations; None when one is unknown."""
        infos = await asyncio.gather(*(asyncio.to_thread(fetch_video_info, v, token=self.token, timeout_s=10)
                                       for v in spec.videos))
        total = 0
        for info in infos:
            if info is None or not info.duration_s:
                if spec.extract.max_frames is None:
                    return None
                total += spec.extract.max_frames
                continue
            count = max(1, int(info.duration_s * spec.extract.fps))
            total += min(count, spec.extract.max_frames or count)
        return total

    async def _stream(self, job_id: int, backend: str, gpu_index: int | None, release_ingest_slot) -> None:
        """Ingest with the backend following the frames; the backend ends the job's work."""
        job_dir = self.job_dir(job_id)
        (job_dir / INGEST_DONE_NAME).unlink(missing_ok=True)
        # Frames of a video an earlier run left half-pulled go before the follower can see them.
        await asyncio.to_thread(self._load_index, job_dir, self.jobs[job_id].spec)
        for name in OUTPUT_FILES:
            (job_dir / name).unlink(missing_ok=True)
        self._notes[job_id] = {"ingest": "", "backend": ""}
        self._update(job_id, backend_used=backend, streaming=True, reconstruct_progress=0.0)
        argv = self._runner_argv(job_id, backend, job_dir, gpu_index, follow=True)
        stop = threading.Event()
        started = time.monotonic()
        proc = await self._start_runner(job_id, backend, argv)
        runner = asyncio.create_task(self._read_runner(job_id, proc), name=f"job-{job_id}-runner")
        ingest = asyncio.create_task(self._ingest(job_id, stop=stop), name=f"job-{job_id}-ingest")
        try:
            await asyncio.wait({runner, ingest}, return_when=asyncio.FIRST_COMPLETED)
            if not ingest.done():
                # The backend died first. The ingest goes on: the QC report covers every frame and a
                # retry of the job starts from complete videos. Then the job fails with the backend's reason.
                rc = runner.result()
                why = proc.describe_exit(rc) if rc else f"the {backend} backend exited before the last frame landed"
                self._update(job_id, runner_pid=None)
                self._note(job_id, "backend", f"{backend} failed; pulling the rest for the QC report and a retry")
                await ingest  # its own error, if any, comes first
                raise BackendFailed(f"reconstruction failed while frames were landing: {why}")
            ingest.result()  # an ingest error ends the job here; the backend is stopped below
            self._observe("extracting", job_id, time.monotonic() - started)
            release_ingest_slot()
            # Judges the frames (no filter here) and clears stale QC files, before the backend writes its own.
            await asyncio.to_thread(self._qc[job_id].frames_for_backend)
            atomic_write_bytes(job_dir / INGEST_DONE_NAME, json.dumps({"frames": self.jobs[job_id].frames}).encode())
            notes = self._notes.pop(job_id, {})
            self._update(job_id, state=JobState.reconstructing, stage="reconstructing",
                         progress=self.jobs[job_id].reconstruct_progress or 0.0,
                         message=notes.get("backend") or f"{backend}: all {self.jobs[job_id].frames} frames in")
            rc = await runner
            if rc != 0:
                raise BackendFailed(f"reconstruction failed: {proc.describe_exit(rc)}")
            self._check_outputs(job_id, backend)
            self._observe("reconstructing", job_id, time.monotonic() - started)
        except BackendFailed as exc:
            await self._write_qc(job_id, error=str(exc))
            raise
        finally:
            stop.set()
            for task in (ingest, runner):
                task.cancel()
            await asyncio.gather(ingest, runner, return_exceptions=True)
            if proc.proc.returncode is None:
                await proc.terminate(self.settings.cancel_grace_s)
            self._update(job_id, runner_pid=None)
        await self._write_qc(job_id)

    def _load_index(self, job_dir: Path, spec: JobSpec) -> FrameIndex:
        """The frames of fully ingested videos; frames of a partial video are removed."""
        path = job_dir / FRAMES_INDEX_NAME
        index = FrameIndex.model_validate_json(path.read_text()) if path.exists() else FrameIndex()
        done = 0
        while done < len(spec.videos) and (job_dir / f".video_{done}.done").exists():
            done += 1
        index.frames = [f for f in index.frames if f.video < done]
        index.videos = [v for v in index.videos if v.index < done]
        keep = {f.name for f in index.frames}
        for stale in job_dir.glob("frame_*.jpg"):
            if stale.name not in keep:
                stale.unlink()
        for i in range(len(spec.videos)):
            shutil.rmtree(staging_dir(job_dir, i), ignore_errors=True)
        return index

    async def _ingest(self, job_id: int, *, stop: threading.Event | None = None) -> None:
        """Pull the videos not yet complete, ``ingest_concurrency`` at a time; ``stop`` ends it early."""
        job = self.jobs[job_id]
        spec = job.spec
        job_dir = self.job_dir(job_id)
        index = self._load_index(job_dir, spec)
        n = len(spec.videos)
        self._update(job_id, state=JobState.extracting, stage="extracting", frames=len(index.frames),
                     ingest_progress=len(index.videos) / n)
        self._note(job_id, "ingest", f"pulling frames of {n} video(s)")
        halt = stop if stop is not None else threading.Event()  # set: every pull of this job stops
        cancel = AnyOf(self._cancel_events[job_id], halt)
        loop = asyncio.get_running_loop()
        qc = self._qc[job_id] = JobQc.for_job(job_id, job_dir, spec, self.settings)
        await asyncio.to_thread(qc.resume, index.frames)
        pulled: dict[int, int] = {}  # frames pulled so far of each video being pulled
        landed = [len(index.frames)]  # frames in the job folder
        #: True: a progress() is scheduled (frames that land meanwhile share its state.json write); None: ended.
        pending: list[bool | None] = [False]

        def progress() -> None:
            if pending[0] is None:
                return  # the ingest has ended: its last word is said
            pending[0] = False
            job = self.jobs[job_id]
            expected = spec.extract.max_frames
            within = sum(min(c / expected, 0.99) for c in list(pulled.values())) if expected else 0.0
            share = (job.videos_done + within) / n
            active = ", ".join(str(i + 1) for i in sorted(pulled))
            self._note(job_id, "ingest", f"video {active}/{n}: {landed[0]} frames" if active else
                       f"{landed[0]} frames of {n} video(s)", frames=landed[0], progress=share,
                       ingest_progress=share)  # fmt: skip

        def schedule_progress() -> None:  # from the pull threads
            if pending[0] is False:
                pending[0] = True
                loop.call_soon_threadsafe(progress)

        def on_publish(frame: IndexedFrame, path: Path) -> None:  # in job order, one at a time
            qc.observe(frame, path)  # frame QC as frames land: no second pass over the files
            self.frames_ingested.inc()
            landed[0] += 1
            schedule_progress()

        todo = [i for i in range(len(index.videos), n)]
        ordered = OrderedFrames(job_dir, n, first_video=len(index.videos), next_number=len(index.frames) + 1,
                                on_publish=on_publish)
        limit = asyncio.Semaphore(self.settings.ingest_concurrency)
        in_order = asyncio.Lock()  # markers are written in the order videos complete in the job folder

        async def pull(i: int) -> None:
            source = spec.videos[i]
            async with limit:
                if cancel.is_set():
                    raise IngestCancelled()
                staging = staging_dir(job_dir, i)
                staging.mkdir(exist_ok=True)
                pulled[i] = 0

                def on_frame(frame: IndexedFrame, path: Path) -> None:
                    ordered.add(i, frame, path)
                    pulled[i] = frame.index
                    schedule_progress()

                for retry in range(self.settings.ingest_retries + 1):
                    thread = asyncio.ensure_future(asyncio.to_thread(
                        pull_video, source, spec.extract, staging, video_index=i, first_frame=1,
                        token=self.token, timeout_s=self.settings.storage_timeout_s, cancel=cancel,
                        on_frame=on_frame))  # fmt: skip
                    thread.add_done_callback(lambda f: f.cancelled() or f.exception())  # read, even when abandoned
                    try:
                        await asyncio.shield(thread)
                        break
                    except asyncio.CancelledError:
                        halt.set()  # the thread stops at its next frame: give it a moment to
                        await asyncio.wait({thread}, timeout=PULL_STOP_WAIT_S)
                        raise
                    except IngestError as exc:
                        if not exc.retryable or retry == self.settings.ingest_retries:
                            raise
                        delay_s = max(INGEST_BACKOFF_S * 2**retry, exc.retry_after_s or 0.0)
                        log.warning("job %s: %s; trying again in %.0f s", job_id, exc, delay_s)
                        self._note(job_id, "ingest", f"{exc}; trying again in {delay_s:.0f} s")
                        ordered.restart(i)
                        pulled[i] = 0
                        await asyncio.sleep(delay_s)
                info = await asyncio.to_thread(fetch_video_info, source, token=self.token)
                videos[i] = IndexedVideo(index=i, path=source.path, native_width=info.width if info else None,
                                         native_height=info.height if info else None)  # fmt: skip
            async with in_order:
                finished = await asyncio.to_thread(ordered.complete, i)
                pulled.pop(i, None)
                for v in finished:
                    index.frames.extend(ordered.published[v])
                    index.videos.append(videos[v])
                    atomic_write_bytes(job_dir / FRAMES_INDEX_NAME, index.model_dump_json(indent=1).encode())
                    atomic_write_bytes(job_dir / f".video_{v}.done", b"")
                    self._update(job_id, videos_done=v + 1)
                progress()

        videos: dict[int, IndexedVideo] = {}
        tasks = [asyncio.create_task(pull(i), name=f"job-{job_id}-video-{i}") for i in todo]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            halt.set()  # the other pulls stop at their next frame
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            pending[0] = None
        self._update(job_id, frames=landed[0], progress=1.0, ingest_progress=1.0)

    def _note(self, job_id: int, part: str, text: str, **changes) -> AgentJob:
        """Say ``text`` as the job's message; while it streams, beside the other part's words."""
        notes = self._notes.get(job_id)
        if notes is None or self.jobs[job_id].state != JobState.extracting:
            return self._update(job_id, message=text, **changes)
        notes[part] = text
        return self._update(job_id, message="; ".join(t for t in notes.values() if t), **changes)

    @contextlib.contextmanager
    def _timed(self, stage: str, job_id: int):
        """Observe a stage's duration and frame rate when it finishes without an error."""
        started = time.monotonic()
        yield
        self._observe(stage, job_id, time.monotonic() - started)

    def _observe(self, stage: str, job_id: int, elapsed_s: float) -> None:
        elapsed_s = max(elapsed_s, 1e-6)
        self.stage_seconds.labels(stage).observe(elapsed_s)
        self.stage_fps.labels(stage).set(self.jobs[job_id].frames / elapsed_s)
        log.info("job %s: %s took %.1f s", job_id, stage, elapsed_s)

    def _choose_backend(self, job_id: int, frames: int | None = None) -> str:
        """The backend to run: the job's, or for ``auto`` lingbot when it can run and fits
        ``frames`` frames (default: the frames ingested)."""
        job = self.jobs[job_id]
        if job.spec.backend != "auto":
            return job.spec.backend
        gpus, _ = self.probe.read()
        reason = lingbot_unavailable(gpus, self.settings.lingbot_python, self.settings.lingbot_checkpoint)
        need_mib = estimate_vram_mib("lingbot", job.frames if frames is None else frames, job.spec.extract.width, None)
        best_free = max((g.memory_free_mib for g in gpus), default=0)
        if reason is None and best_free < need_mib:
            reason = f"lingbot needs ~{need_mib} MiB of GPU memory, the freest GPU has {best_free} MiB"
        backend, why = ("colmap", f"auto chose colmap: {reason}") if reason else (
            "lingbot", f"auto chose lingbot ({best_free} MiB free, ~{need_mib} MiB needed)")
        self._update(job_id, backend_used=backend, message=why)
        return backend

    async def _reconstruct(self, job_id: int, backend: str, gpu_index: int | None) -> None:
        job = self.jobs[job_id]
        job_dir = self.job_dir(job_id)
        for name in OUTPUT_FILES:
            (job_dir / name).unlink(missing_ok=True)
        where = f" on GPU {gpu_index}" if gpu_index is not None else ""
        self._update(job_id, state=JobState.reconstructing, stage="reconstructing", backend_used=backend,
                     streaming=False, reconstruct_progress=0.0,
                     message=f"{backend}: starting on {job.frames} frames{where}")
        qc = self._qc.get(job_id)
        frames_dir = await asyncio.to_thread(qc.frames_for_backend) if qc else job_dir  # only kept frames
        proc = await self._start_runner(job_id, backend, self._runner_argv(job_id, backend, frames_dir, gpu_index))
        try:
            rc = await self._read_runner(job_id, proc)
        except asyncio.CancelledError:
            await proc.terminate(self.settings.cancel_grace_s)
            raise
        finally:
            if proc.proc.returncode is not None:
                self._update(job_id, runner_pid=None)
        if rc != 0:
            raise BackendFailed(f"reconstruction failed: {proc.describe_exit(rc)}")
        self._check_outputs(job_id, backend)

    def _runner_argv(self, job_id: int, backend: str, frames_dir: Path, gpu_index: int | None, *,
                     follow: bool = False) -> list[str]:  # fmt: skip
        return runner_argv(backend, frames_dir, self.job_dir(job_id), threads=self.settings.backend_threads,
                           lingbot_python=self.settings.lingbot_python,
                           lingbot_checkpoint=self.settings.lingbot_checkpoint, gpu_index=gpu_index,
                           colmap_max_features=self.settings.colmap_max_features,
                           colmap_max_image_size=self.settings.colmap_max_image_size, follow=follow)  # fmt: skip

    async def _start_runner(self, job_id: int, backend: str, argv: list[str]) -> Supervised:
        job_dir = self.job_dir(job_id)
        log_path = job_dir / BACKEND_LOG_NAME
        with open(log_path, "a") as log:
            log.write(f"--- {_now().isoformat(timespec='seconds')} {backend}: {' '.join(argv)}\n")
        proc = await Supervised.start(argv, cwd=job_dir, log_path=log_path)
        # runner_pid: so a restarted agent can stop an orphan; the log is served while it runs.
        self._update(job_id, runner_pid=proc.pid, files=sorted({*self.jobs[job_id].files, BACKEND_LOG_NAME}))
        return proc

    async def _read_runner(self, job_id: int, proc: Supervised) -> int:
        """Turn the runner's progress lines into the job's; its exit code."""
        while line := await proc.stdout.readline():
            self._on_progress(job_id, line)
        return await proc.wait()

    def _check_outputs(self, job_id: int, backend: str) -> None:
        missing = [name for name in OUTPUT_FILES if not (self.job_dir(job_id) / name).exists()]
        if missing:
            raise BackendFailed(f"the {backend} backend exited without writing {', '.join(missing)}")

    async def _write_qc(self, job_id: int, *, error: str | None = None) -> None:
        """``qc.json``, plots and ``report.html``; a QC bug is logged, never the job's failure."""
        qc = self._qc.pop(job_id, None)
        if qc is None:
            return
        try:
            await asyncio.to_thread(qc.finish, error=error)
        except Exception:  # noqa: BLE001
            log.exception("job %s: writing the QC report failed", job_id)

    def _on_progress(self, job_id: int, line: bytes) -> None:
        try:
            event = json.loads(line)
            stage, progress = str(event["stage"]), float(event["progress"])
        except (ValueError, KeyError, TypeError):
            log.debug("job %s: runner said %r", job_id, line[:200])
            return
        stages = RUNNER_STAGES.get(self.jobs[job_id].backend_used or self.jobs[job_id].spec.backend, ())
        share = (stages.index(stage) + min(max(progress, 0.0), 1.0)) / len(stages) if stage in stages else 0.0
        message = str(event.get("message") or stage)
        if job_id in self._notes:  # streaming, frames still landing: the stage's progress is the ingest's
            self._note(job_id, "backend", f"{self.jobs[job_id].backend_used}: {message}", reconstruct_progress=share)
        else:
            self._update(job_id, progress=share, reconstruct_progress=share, message=message)
