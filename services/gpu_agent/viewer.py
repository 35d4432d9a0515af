"""Viser viewers, one process per job on port ``viewer_base_port + job_id``.

Each viewer is ``viewer_runner`` under :class:`shared.procs.Supervised`. It is started on
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
from services.gpu_agent.viewer_runner import EXIT_PORT_TAKEN
from shared.errors import ApiError, Conflict, NotFound, Unavailable
from shared.gpu import ViewerInfo
from shared.procs import Supervised

log = logging.getLogger(__name__)

#: The project root: the runner is started as ``python -m`` from there.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Viewers are stopped quickly: they hold no state worth a long grace.
STOP_GRACE_S = 3.0


@dataclass
class _Viewer:
    info: ViewerInfo
    process: Supervised
    watcher: asyncio.Task | None = None


class ViewerManager:
    """The running viewers of one agent, at most ``settings.viewer_max`` of them."""

    def __init__(self, settings: GpuAgentSettings):
        self.settings = settings
        self._viewers: dict[int, _Viewer] = {}
        self._lock = asyncio.Lock()  # one start or stop at a time keeps the cap exact

    def list(self) -> list[ViewerInfo]:
        return [viewer.info for viewer in sorted(self._viewers.values(), key=lambda v: v.info.job_id)]

    def port_for(self, job_id: int) -> int:
        port = self.settings.viewer_base_port + job_id
        if port > 65535:
            raise Conflict(f"job {job_id} has no viewer port: {self.settings.viewer_base_port} + {job_id} "
                           "is past 65535", code="viewer_port_out_of_range")
        return port

    async def start(self, job_id: int, job_dir: Path) -> tuple[ViewerInfo, bool]:
        """Start job ``job_id``'s viewer; returns it and whether it was started now."""
        async with self._lock:
            running = self._viewers.get(job_id)
            if running is not None and running.process.proc.returncode is None:
                return running.info, False
            if len(self._viewers) >= self.settings.viewer_max:
                raise Conflict(f"{len(self._viewers)} viewers are running, the most this agent allows "
                               f"(viewer_max); stop one first", code="too_many_viewers")
            port = self.port_for(job_id)
            argv = [sys.executable, "-m", "services.gpu_agent.viewer_runner", "--job-dir", str(job_dir),
                    "--port", str(port), "--host", self.settings.viewer_host,
                    "--max-points", str(self.settings.viewer_max_points),
                    "--idle-timeout-s", str(self.settings.viewer_idle_timeout_s), "--title", f"job {job_id}"]
            process = await Supervised.start(argv, cwd=PROJECT_ROOT)
            real_port = await self._wait_ready(process, job_id)
            info = ViewerInfo(job_id=job_id, port=real_port, pid=process.pid, started_at=datetime.now(timezone.utc),
                              idle_timeout_s=self.settings.viewer_idle_timeout_s)
            viewer = _Viewer(info, process)
            viewer.watcher = asyncio.create_task(self._watch(job_id, viewer), name=f"viewer-{job_id}")
            self._viewers[job_id] = viewer
            log.info("viewer of job %s on port %s (pid %s)", job_id, real_port, process.pid)
            return info, True

    async def _wait_ready(self, process: Supervised, job_id: int) -> int:
        try:
            line = await asyncio.wait_for(process.stdout.readline(), self.settings.viewer_start_timeout_s)
        except asyncio.TimeoutError:
            await process.terminate(STOP_GRACE_S)
            raise Unavailable(f"the viewer of job {job_id} did not start within "
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
                raise Conflict(f"cannot start the viewer of job {job_id}: {last}", code="viewer_port_taken") from None
            raise ApiError(f"the viewer of job {job_id} failed to start: {reason}", code="viewer_failed") from None
        return port

    async def _watch(self, job_id: int, viewer: _Viewer) -> None:
        rc = await viewer.process.wait()
        log.info("viewer of job %s ended: %s", job_id, viewer.process.describe_exit(rc))
        if self._viewers.get(job_id) is viewer:
            del self._viewers[job_id]

    async def stop(self, job_id: int) -> ViewerInfo:
        """Stop job ``job_id``'s viewer and wait until its process is gone."""
        async with self._lock:
            viewer = self._viewers.get(job_id)
            if viewer is None:
                raise NotFound(f"job {job_id} has no running viewer", code="no_viewer")
            await self._stop(job_id, viewer)
            return viewer.info

    async def _stop(self, job_id: int, viewer: _Viewer) -> None:
        await viewer.process.terminate(STOP_GRACE_S)
        if viewer.watcher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await viewer.watcher
        self._viewers.pop(job_id, None)

    async def stop_quietly(self, job_id: int) -> None:
        """Stop the viewer if there is one (a job being deleted)."""
        with contextlib.suppress(NotFound):
            await self.stop(job_id)

    async def stop_all(self) -> None:
        async with self._lock:
            for job_id, viewer in list(self._viewers.items()):
                await self._stop(job_id, viewer)
