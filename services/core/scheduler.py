"""The scheduler: polls the agents, keeps job state and leases current, places queued jobs.

One :meth:`Scheduler.tick` does, in order:

1. poll every node (gpu: ``GET /status``, storage: ``GET /health``) → online/offline, last
   status; an agent still running a job the core has taken away from it is told to drop it
   (fencing: ``DELETE /jobs/{id}``);
2. poll each placed, unfinished job on its agent (``GET /jobs/{id}``) → copy state, stage,
   progress, message, error, files and renew its lease; a job whose agent stays silent past
   the lease is requeued as attempt+1 (or failed after ``max_attempts``);
3. place queued jobs, oldest first, on online gpu nodes (:func:`choose_node`) and push them
   (``PUT /jobs/{id}``).

Agent failures never escape a tick: transport errors and 5xx mark the node offline and back
off its polling; 4xx are logged as bugs. :meth:`Scheduler.run_forever` calls ``tick`` every
``tick_interval_s`` and backs off when a tick itself fails (e.g. the database is locked).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

import anyio.to_thread

from shared.gpu import AgentStatus
from shared.jobs import AgentJob, ExtractParams, JobSpec, JobState, VideoSource
from shared.vram import estimate_vram_mib  # the same numbers the agents use

from services.core.agents import AgentClient, AgentError, AgentRequestError
from services.core.config import CoreSettings
from services.core.metrics import SchedulerMetrics, timed
from services.core.store import Decision, Job, JobVideo, Node, NodeRole, NodeState, Store, utcnow

log = logging.getLogger(__name__)

#: Longest wait between polls of an unreachable node, and between failed ticks.
MAX_BACKOFF_S = 30.0

#: What a GPU job that allows it runs when it fits on no GPU.
CPU_FALLBACK_BACKEND = "colmap"
#: Queued jobs one placement round decides on (and locks) at most.
PLACE_BATCH = 20_000


def estimate_frames(durations_s: list[float | None], fps: float, max_frames: int | None) -> int | None:
    """Frames a job will extract (``max_frames`` caps each video); None if unknowable."""
    total = 0
    for duration_s in durations_s:
        if duration_s is None:
            if max_frames is None:
                return None
            total += max_frames  # an upper bound is good enough to size memory
        else:
            frames = max(1, math.ceil(duration_s * fps))
            total += min(frames, max_frames) if max_frames else frames
    return total


@dataclass
class Placement:
    node: "NodeView"
    gpu_index: int | None  # None for CPU backends
    backend: str


@dataclass
class NodeView:
    """What placement knows of one online gpu node: its last status and the core's jobs on it."""

    name: str
    url: str
    status: AgentStatus
    jobs: list[Job] = field(default_factory=list)
    draining: bool = False

    def device_of(self, backend: str) -> str | None:
        """'cpu' or 'gpu' if the node can run ``backend`` now, else None."""
        info = next((b for b in self.status.backends if b.name == backend and b.available), None)
        return info.device if info else None

    def jobs_on(self, device: str) -> list[Job]:
        return [j for j in self.jobs if (self.device_of(j.placed_backend) or "cpu") == device]

    def jobs_on_gpu(self, index: int) -> list[Job]:
        # Jobs placed before GPUs were tracked (gpu_index None) count against the first GPU.
        return [j for j in self.jobs_on("gpu") if (j.gpu_index or 0) == index]

    def gpu_free_mib(self, index: int) -> int:
        """The GPU's reported free memory, less what jobs placed on it and not yet loaded will take.

        Jobs already reconstructing are in the reported figure; those still assigned or
        extracting are not, so the core subtracts its own estimate of them.
        """
        gpu = next(g for g in self.status.gpus if g.index == index)
        pending = sum(estimate_vram_mib(j.placed_backend, j.frames_estimate, j.width)
                      for j in self.jobs_on_gpu(index) if j.state in (JobState.assigned, JobState.extracting))
        return gpu.memory_free_mib - pending

    def free_vram_mib(self) -> int:
        """Most free memory on any one GPU, as :meth:`gpu_free_mib` counts it."""
        return max((self.gpu_free_mib(g.index) for g in self.status.gpus), default=0)


def _fits(job: Job, backend: str, node: NodeView, jobs_per_gpu: int) -> list[tuple[int, int | None]]:
    """(VRAM left after the job, GPU index) for each place on ``node`` the job fits."""
    device = node.device_of(backend)
    if device is None:
        return []
    if device == "cpu":
        return [] if node.jobs_on("cpu") else [(0, None)]
    need_mib = estimate_vram_mib(backend, job.frames_estimate, job.width)
    places = []
    for gpu in node.status.gpus:
        if len(node.jobs_on_gpu(gpu.index)) >= jobs_per_gpu:
            continue
        left_mib = node.gpu_free_mib(gpu.index) - need_mib
        if left_mib >= 0:
            places.append((left_mib, gpu.index))
    return places


def choose_node(
    job: Job, nodes: list[NodeView], last_placed: str | None = None, *, jobs_per_gpu: int = 1,
    backend: str | None = None,
) -> tuple[Placement | None, str]:
    """Where to run ``job``, or None and why not.

    CPU backends: one such job per node. GPU backends: ``jobs_per_gpu`` per GPU, with the
    job's estimated VRAM free on that GPU; best fit (least VRAM left over). Then fewest
    jobs on the node, then round robin after ``last_placed``. Draining nodes take nothing.
    A GPU job that fits nowhere falls back to the CPU (colmap) if the job allows it.
    """
    backend = backend or job.backend
    offering = [n for n in nodes if n.device_of(backend) and not n.draining]
    candidates: list[tuple[tuple, Placement]] = []
    for node in offering:
        rotation = 0 if last_placed is None or node.name > last_placed else 1
        for left_mib, gpu_index in _fits(job, backend, node, jobs_per_gpu):
            candidates.append(((left_mib, len(node.jobs), rotation, node.name, gpu_index or 0),
                               Placement(node, gpu_index, backend)))
    if candidates:
        return min(candidates, key=lambda c: c[0])[1], ""
    if not offering:
        why = f"waiting: no online gpu node offers the {backend} backend"
    elif backend == "lingbot":
        need_mib = estimate_vram_mib(backend, job.frames_estimate, job.width)
        largest = max((g.memory_total_mib for n in offering for g in n.status.gpus), default=0)
        if need_mib > largest:
            why = (f"too large for every GPU: needs about {need_mib} MiB, the largest GPU has {largest} MiB; "
                   "lower the width or max_frames, or allow the CPU fallback")
        else:
            why = f"waiting: no online gpu node has a free GPU with {need_mib} MiB free"
    else:
        why = f"waiting: every node offering {backend} is busy"
    if job.cpu_fallback and backend != CPU_FALLBACK_BACKEND:
        placement, cpu_why = choose_node(job, nodes, last_placed, jobs_per_gpu=jobs_per_gpu,
                                         backend=CPU_FALLBACK_BACKEND)
        if placement is not None:
            return placement, f"{why.removeprefix('waiting: ')}; running {CPU_FALLBACK_BACKEND} on the CPU instead"
        why = f"{why}; CPU fallback: {cpu_why.removeprefix('waiting: ')}"
    return None, why


class _Backoff:
    """Per-node polling backoff: after n failures in a row, skip the node ~2^(n-1) ticks."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._failures: dict[str, int] = {}
        self._next_at: dict[str, datetime] = {}

    def due(self, name: str, now: datetime) -> bool:
        return now >= self._next_at.get(name, now)

    def failed(self, name: str, now: datetime) -> None:
        n = self._failures[name] = self._failures.get(name, 0) + 1
        delay_s = min(self.interval_s * 2 ** (n - 1), MAX_BACKOFF_S) * random.uniform(0.5, 1.0)
        self._next_at[name] = now + timedelta(seconds=delay_s)

    def succeeded(self, name: str) -> None:
        self._failures.pop(name, None)
        self._next_at.pop(name, None)


class Scheduler:
    def __init__(
        self, store: Store, agents: AgentClient, settings: CoreSettings,
        *, clock: Callable[[], datetime] = utcnow,
    ):
        self.store = store
        self.agents = agents
        self.settings = settings
        #: Source of "now" for leases and backoff; tests replace it to move time.
        self.clock = clock
        self._backoff = _Backoff(settings.tick_interval_s)
        self._last_placed: str | None = None
        self._reachable: dict[str, str | None] = {}  # node → None if polled fine this tick, else why not
        self._strangers: set[tuple[str, int]] = set()  # (node, job) runs we do not know, logged once
        self._tick_lock = asyncio.Lock()
        self.metrics = SchedulerMetrics()  # registered on the app's /metrics by create_app

    async def reconcile(self) -> None:
        """At core start: take up every unfinished job where its agent has it.

        Leases are renewed first (the core was away, not the agents), then one tick polls
        each agent: a job it still runs is followed from where it is, one it never got is
        pushed again, an older attempt is replaced, a job it runs that the core moved or
        ended is stopped. Nothing is placed twice: placement only takes queued jobs.
        """
        placed = await self._db(self.store.extend_leases, lease_s=self.settings.lease_s, now=self.clock())
        log.info("reconciling %d placed job(s) with their agents", placed)
        await self.tick()

    async def run_forever(self) -> None:
        """Reconcile, then tick every ``tick_interval_s`` until cancelled; back off while ticks fail."""
        failures = 0
        reconciled = False
        while True:
            started = asyncio.get_running_loop().time()
            try:
                if not reconciled:
                    await self.reconcile()
                    reconciled = True
                else:
                    await self.tick()
                failures, delay_s = 0, self.settings.tick_interval_s
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                delay_s = min(self.settings.tick_interval_s * 2**failures, MAX_BACKOFF_S) * random.uniform(0.5, 1)
                log.exception("scheduler tick failed (%d in a row); next try in %.1f s", failures, delay_s)
            elapsed_s = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(0.0, delay_s - elapsed_s))

    async def tick(self) -> None:
        """One round: poll nodes, poll placed jobs, place queued jobs (one round at a time)."""
        async with self._tick_lock, timed(self.metrics.tick_seconds):
            nodes = await self._db(self.store.list_nodes)
            await self._poll_nodes(nodes)
            await self._poll_jobs({n.name: n for n in nodes})
            await self._place()

    async def _db(self, fn, *args, **kwargs):
        # The store is synchronous; keep the event loop (and the API) free while it works.
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    # -- 1. nodes ------------------------------------------------------------------------

    async def _poll_nodes(self, nodes: list[Node]) -> None:
        """Poll the due nodes at once, record every answer in one transaction, then fence."""
        now = self.clock()
        due = [n for n in nodes if self._backoff.due(n.name, now)]
        # A node we back off from counts as not answering this tick.
        self._reachable = {n.name: n.last_error or "not answering" for n in nodes}
        answers = await asyncio.gather(*(self._poll_node(node, now) for node in due))
        await self._db(self.store.record_node_polls,
                       [(node.name, status.model_dump(mode="json") if status else None, error)
                        for node, (status, error) in zip(due, answers)], now=now)
        fencing = [(node, status.jobs) for node, (status, error) in zip(due, answers)
                   if status is not None and any(not j.state.final for j in status.jobs)]
        if fencing:
            ours = await self._db(self.store.jobs_by_id,
                                  [j.job_id for _, reported in fencing for j in reported if not j.state.final])
            await asyncio.gather(*(self._fence(node, reported, ours) for node, reported in fencing))

    async def _poll_node(self, node: Node, now: datetime) -> tuple[AgentStatus | None, str | None]:
        """Ask one node how it is: (its status if a gpu node, None) or (None, why it did not answer)."""
        try:
            if node.role == NodeRole.gpu:
                status: AgentStatus | None = await self.agents.gpu_status(node.url)
            else:
                await self.agents.health(node.url)
                status = None
        except AgentError as exc:
            self.metrics.poll_failures.labels(node.name).inc()
            self._reachable[node.name] = exc.message
            self._backoff.failed(node.name, now)
            if isinstance(exc, AgentRequestError):
                log.error("node %s refused a status poll (a bug, or a wrong token/URL): %s", node.name, exc.message)
            elif node.state != NodeState.offline:
                log.warning("node %s is offline: %s", node.name, exc.message)
            return None, exc.message
        self._reachable[node.name] = None
        self._backoff.succeeded(node.name)
        if node.state != NodeState.online:
            log.info("node %s is online", node.name)
        return status, None

    async def _fence(self, node: Node, reported: list[AgentJob], ours: dict[int, Job]) -> None:
        """Stop jobs the agent runs that the core has since cancelled or moved elsewhere."""
        running = [j for j in reported if not j.state.final]
        for report in running:
            job = ours.get(report.job_id)
            if job is None:
                if (node.name, report.job_id) not in self._strangers:
                    self._strangers.add((node.name, report.job_id))
                    log.warning("node %s runs job %d, which this core does not know; leaving it",
                                node.name, report.job_id)
            elif job.state.final or job.node != node.name:
                log.info("node %s still runs job %d attempt %d; telling it to stop",
                         node.name, job.id, report.attempt)
                await self._try(self.agents.cancel_job(node.url, job.id), f"stopping job {job.id} on {node.name}")

    # -- 2. placed jobs ------------------------------------------------------------------

    async def _poll_jobs(self, nodes: dict[str, Node]) -> None:
        """Poll every placed job at once; the reports are applied in one transaction."""
        jobs = await self._db(self.store.active_jobs)
        reports = await asyncio.gather(*(self._poll_job(job, nodes.get(job.node)) for job in jobs))
        current = [(job, report) for job, report in zip(jobs, reports) if report is not None]
        if not current:
            return
        now = self.clock()
        updated = await self._db(self.store.apply_reports, [(report, job.node) for job, report in current],
                                 lease_s=self.settings.lease_s, now=now)
        for job, _ in current:
            if job.id in updated and updated[job.id].state != job.state:
                log.info("job %d is %s on %s", job.id, updated[job.id].state.value, job.node)

    async def _poll_job(self, job: Job, node: Node | None) -> AgentJob | None:
        """Poll one placed job; its agent's report when it is current (to apply), else None."""
        now = self.clock()
        if node is None:
            await self._requeue(job, f"node {job.node} was removed", now)
            return None
        problem = self._reachable.get(node.name)
        if problem is None:
            try:
                report = await self.agents.get_job(node.url, job.id)
            except AgentError as exc:
                self.metrics.poll_failures.labels(node.name).inc()
                problem = exc.message
                if isinstance(exc, AgentRequestError) and exc.status_code == 404:
                    problem = f"{node.name} does not know job {job.id}"
                    if job.state == JobState.assigned:  # our push may have been lost: push again
                        await self._push(job, node.name, node.url, now)
                elif isinstance(exc, AgentRequestError):
                    log.error("node %s refused a poll of job %d (a bug?): %s", node.name, job.id, exc.message)
            else:
                return await self._take_report(job, node, report, now)
        if job.lease_expires_at is None or now >= job.lease_expires_at:
            self.metrics.lease_expiries.labels(node.name).inc()
            await self._requeue(job, f"{node.name} did not answer for {self.settings.lease_s:g} s ({problem})", now)
        elif job.message != f"no answer from {node.name}: {problem}":
            await self._db(self.store.note, job.id, f"no answer from {node.name}: {problem}",
                           node=node.name, attempt=job.attempt, now=now)
        return None

    async def _take_report(self, job: Job, node: Node, report: AgentJob, now: datetime) -> AgentJob | None:
        if report.attempt < job.attempt:  # it still runs an older attempt: replace it
            await self._push(job, node.name, node.url, now)
        elif report.attempt > job.attempt:
            log.error("node %s holds job %d at attempt %d, newer than the core's %d",
                      node.name, job.id, report.attempt, job.attempt)
        else:
            return report
        return None

    async def _requeue(self, job: Job, reason: str, now: datetime) -> None:
        updated = await self._db(self.store.requeue, job.id, reason, node=job.node, attempt=job.attempt,
                                 max_attempts=self.settings.max_attempts, now=now)
        if updated is not None:
            log.warning("job %d: %s → %s", job.id, reason, updated.state.value)

    # -- 3. placement --------------------------------------------------------------------

    async def _place(self) -> None:
        placed = await self._db(self.store.place, self._plan, batch=PLACE_BATCH,
                                lease_s=self.settings.lease_s, now=self.clock())
        if not placed:
            return
        for job in placed:
            log.info("job %d (attempt %d, %s) placed on %s", job.id, job.attempt, job.placed_backend, job.node)
            self.metrics.placements.labels(job.node).inc()
        videos, nodes = await self._db(self._push_context, placed)
        now = self.clock()
        await asyncio.gather(*(self._push(job, job.node, nodes[job.node].url, now, videos=videos[job.id], nodes=nodes)
                               for job in placed if job.node in nodes))

    def _push_context(self, jobs: list[Job]) -> tuple[dict[int, list[JobVideo]], dict[str, Node]]:
        """The videos of ``jobs`` and the nodes they involve (their gpu nodes, their storage), read once."""
        videos = self.store.videos_of(j.id for j in jobs)
        names = {j.node for j in jobs if j.node} | {v.storage for vs in videos.values() for v in vs}
        return videos, self.store.nodes_by_name(names)

    def _plan(self, queued: list[Job], videos: dict[int, list[JobVideo]], nodes: list[Node],
              active: list[Job]) -> list[Decision]:
        """Decide, in queue order, where each queued job goes (runs inside the claim transaction)."""
        storage_online = {n.name for n in nodes if n.role == NodeRole.storage and n.state == NodeState.online}
        views = {}
        for n in nodes:
            if n.role == NodeRole.gpu and n.state == NodeState.online and self._reachable.get(n.name, "") is None:
                try:
                    status = AgentStatus.model_validate(n.last_status)
                except ValueError:  # none yet, or stored by an older contract: wait for a fresh poll
                    continue
                views[n.name] = NodeView(n.name, n.url, status, draining=n.draining)
        for job in active:
            if job.node in views:
                views[job.node].jobs.append(job)
        decisions = []
        # Why a job of this shape fits nowhere; valid until the next placement changes capacity.
        # Thousands of queued jobs come in a few shapes: each is tried on the nodes once.
        no_room: dict[tuple, str] = {}
        for job in queued:
            missing = next((v.storage for v in videos[job.id] if v.storage not in storage_online), None)
            if missing is not None:
                decisions.append(Decision(job.id, message=f"waiting: storage node {missing} is not online"))
                continue
            shape = (job.backend, job.frames_estimate, job.width, job.cpu_fallback)
            if shape in no_room:
                decisions.append(Decision(job.id, message=no_room[shape]))
                continue
            placement, why = choose_node(job, list(views.values()), self._last_placed,
                                         jobs_per_gpu=self.settings.jobs_per_gpu)
            if placement is None:
                no_room[shape] = why
                decisions.append(Decision(job.id, message=why))
                continue
            no_room.clear()
            name = placement.node.name
            decisions.append(Decision(job.id, node=name, gpu_index=placement.gpu_index, backend=placement.backend,
                                      message=f"sent to {name}" + (f" ({why})" if why else "")))
            # Count it at once, as it will be stored, so the next job sees the capacity it takes.
            job.state, job.node, job.gpu_index, job.run_backend = JobState.assigned, name, placement.gpu_index, \
                placement.backend
            placement.node.jobs.append(job)
            self._last_placed = name
        return decisions

    async def _push(self, job: Job, node: str, url: str, now: datetime, *,
                    videos: list[JobVideo] | None = None, nodes: dict[str, Node] | None = None) -> None:
        """Send the job's spec to its node; a refused spec fails the job, a lost one is retried.

        ``videos`` and ``nodes`` (storage nodes by name, at least) are read here unless given.
        """
        if videos is None:
            videos = (await self._db(self.store.videos_of, [job.id]))[job.id]
        storage = nodes if nodes is not None else await self._db(self.store.nodes_by_name, [v.storage for v in videos])
        gone = sorted({v.storage for v in videos} - set(storage))
        if gone:
            await self._db(self.store.fail, job.id, f"storage node {gone[0]} no longer exists",
                           node=node, attempt=job.attempt, now=now)
            return
        spec = JobSpec(
            job_id=job.id, attempt=job.attempt, backend=job.placed_backend, gpu_index=job.gpu_index,
            videos=[VideoSource(storage_url=storage[v.storage].url, path=v.path) for v in videos],
            extract=ExtractParams(fps=job.fps, width=job.width, max_frames=job.max_frames),
        )
        try:
            await self.agents.put_job(url, spec)
        except AgentRequestError as exc:
            log.error("node %s refused job %d: %s", node, job.id, exc.message)
            await self._db(self.store.fail, job.id, f"{node} refused the job: {exc.message}",
                           node=node, attempt=job.attempt, now=now)
        except AgentError as exc:
            await self._db(self.store.note, job.id, f"could not send the job to {node} yet: {exc.message}",
                           node=node, attempt=job.attempt, now=now)

    async def _try(self, call, what: str) -> None:
        try:
            await call
        except AgentError as exc:
            log.warning("%s failed: %s", what, exc.message)
