"""Viser viewers, one process per job on port ``viewer_base_port + job_id`` and per stitch on
``stitch_viewer_base_port + stitch_id`` (so stitch K never takes job K's port), all under one
``viewer_max`` cap.

A viewer shows a :class:`Shown`: a folder with a PLY and a cameras file (a job's folder, or
a stitch's files in the work root). Each viewer is ``viewer_runner`` under :class:`shared.procs.Supervised`. It is started on
request, reports the port it really serves on (or exits saying the port is taken), and is
stopped on request, when its job is deleted, when the agent stops, or by itself after its
idle timeout; a watcher task per viewer forgets it once its process has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from services.gpu_agent.config import GpuAgentSettings
from services.gpu_agent.glb import PLY_NAME, GlbSource
from services.gpu_agent.viewer_runner import EXIT_PORT_TAKEN
from shared.errors import ApiError, Conflict, NotFound, Unavailable
from shared.cameras import CAMERAS_NAME
from shared.gpu import ViewerInfo
from shared.procs import Supervised
from shared.qc import QC_NAME

log = logging.getLogger(__name__)

#: The project root: the runner is started as ``python -m`` from there.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Viewers are stopped quickly: they hold no state worth a long grace.
STOP_GRACE_S = 3.0


@dataclass(frozen=True)
class Shown:
    """What a viewer shows: a PLY and cameras in one folder, with a QC report or a stitch report."""

    kind: str  # "job" or "stitch"
    id: int
    folder: Path
    ply: str
    cameras: str
    qc: str | None = None
    stitch_report: str | None = None

    @classmethod
    def of_job(cls, job_id: int, job_dir: Path) -> Shown:
        return cls("job", job_id, job_dir, PLY_NAME, CAMERAS_NAME, qc=QC_NAME)

    @classmethod
    def of_stitch(cls, stitch_id: int, root: Path) -> Shown:
        source = GlbSource.of_stitch(root, stitch_id)
        return cls("stitch", stitch_id, root, source.ply, source.cameras, stitch_report=f"stitch_{stitch_id}.json")

    @property
    def label(self) -> str:
        return f"{self.kind} {self.id}"

    def argv(self) -> list[str]:
        argv = ["--dir", str(self.folder), "--ply", self.ply, "--cameras", self.cameras, "--title", self.label]
        if self.qc:
            argv += ["--qc", self.qc]
        if self.stitch_report:
            argv += ["--stitch-report", self.stitch_report]
        return argv


@dataclass
class _Viewer:
    info: ViewerInfo
    process: Supervised
    watcher: asyncio.Task | None = None


class ViewerManager:
    """The running viewers of one agent, at most ``settings.viewer_max`` of them."""

    def __init__(self, settings: GpuAgentSettings):
        self.settings = settings
        self._viewers: dict[tuple[str, int], _Viewer] = {}
        self._lock = asyncio.Lock()  # one start or stop at a time keeps the cap exact

    def list(self) -> list[ViewerInfo]:
        return [self._viewers[key].info for key in sorted(self._viewers)]

    def port_for(self, kind: str, item_id: int) -> int:
        base = self.settings.viewer_base_port if kind == "job" else self.settings.stitch_viewer_base_port
        port = base + item_id
        if port > 65535:
            setting = "viewer_base_port" if kind == "job" else "stitch_viewer_base_port"
            raise Conflict(f"{kind} {item_id} has no viewer port: {setting} {base} + {item_id} is past 65535",
                           code="viewer_port_out_of_range")
        return port

    async def start(self, shown: Shown) -> tuple[ViewerInfo, bool]:
        """Start the viewer of a job or stitch; returns it and whether it was started now."""
        key = (shown.kind, shown.id)
        async with self._lock:
            running = self._viewers.get(key)
            if running is not None and running.process.proc.returncode is None:
                return running.info, False
            if len(self._viewers) >= self.settings.viewer_max:
                raise Conflict(f"{len(self._viewers)} viewers are running, the most this agent allows "
                               f"(viewer_max); stop one first", code="too_many_viewers")
            port = self.port_for(shown.kind, shown.id)
            argv = [sys.executable, "-m", "services.gpu_agent.viewer_runner", *shown.argv(),
                    "--port", str(port), "--host", self.settings.viewer_host,
                    "--max-points", str(self.settings.viewer_max_points),
                    "--idle-timeout-s", str(self.settings.viewer_idle_timeout_s)]
            process = await Supervised.start(argv, cwd=PROJECT_ROOT)
            real_port = await self._wait_ready(process, shown.label)
            info = ViewerInfo(port=real_port, pid=process.pid, started_at=datetime.now(timezone.utc),
                              idle_timeout_s=self.settings.viewer_idle_timeout_s, **{f"{shown.kind}_id": shown.id})
            viewer = _Viewer(info, process)
            viewer.watcher = asyncio.create_task(self._watch(key, viewer), name=f"viewer-{shown.kind}-{shown.id}")
            self._viewers[key] = viewer
            log.info("viewer of %s on port %s (pid %s)", shown.label, real_port, process.pid)
            return info, True

    async def _wait_ready(self, process: Supervised, label: str) -> int:
        try:
            line = await asyncio.wait_for(process.stdout.readline(), self.settings.viewer_start_timeout_s)
        except asyncio.TimeoutError:
            await process.terminate(STOP_GRACE_S)
            raise Unavailable(f"the viewer of {label} did not start within "
                              f"{self.settings.viewer_start_timeout_s:.0f} s", code="viewer_timeout") from None
        try:
            port = int(json.loads(line)["port"])
        except (ValueError, KeyError, TypeError):
            # Most often stdout closed because the runner is exiting: let it, to read its code.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            rc = await process.terminate(STOP_GRACE_S)  # and nothing of its group lingers
            reason = process.describe_exit(rc)
            if rc == EXIT_PORT_TAKEN:
                last = process.stderr_tail[-1] if process.stderr_tail else "the port is taken"
                raise Conflict(f"cannot start the viewer of {label}: {last}", code="viewer_port_taken") from None
            raise ApiError(f"the viewer of {label} failed to start: {reason}", code="viewer_failed") from None
        return port

    async def _watch(self, key: tuple[str, int], viewer: _Viewer) -> None:
        rc = await viewer.process.wait()
        log.info("viewer of %s %s ended: %s", *key, viewer.process.describe_exit(rc))
        if self._viewers.get(key) is viewer:
            del self._viewers[key]

    async def stop(self, item_id: int, kind: str = "job") -> ViewerInfo:
        """Stop the viewer of job (or stitch) ``item_id`` and wait until its process is gone."""
        key = (kind, item_id)
        async with self._lock:
            viewer = self._viewers.get(key)
            if viewer is None:
                raise NotFound(f"{kind} {item_id} has no running viewer", code="no_viewer")
            await self._stop(key, viewer)
            return viewer.info

    async def _stop(self, key: tuple[str, int], viewer: _Viewer) -> None:
        await viewer.process.terminate(STOP_GRACE_S)
        if viewer.watcher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await viewer.watcher
        self._viewers.pop(key, None)

    async def stop_quietly(self, item_id: int, kind: str = "job") -> None:
        """Stop the viewer if there is one (a job being deleted)."""
        with contextlib.suppress(NotFound):
            await self.stop(item_id, kind)

    async def stop_all(self) -> None:
        async with self._lock:
            for key, viewer in list(self._viewers.items()):
                await self._stop(key, viewer)
