"""Stitches on the core: placed on the gpu node holding most of their jobs, followed on read.

The core sends ``PUT /stitches/{id}`` (idempotent) to that node with every job's agent URL;
the agent fetches the other jobs' outputs itself. ``GET`` asks the agent while the stitch
runs and records what it says. A finished stitch's files, GLB and viewer stay on that node:
:func:`located` tells the API routes where to forward.
"""

from __future__ import annotations

import collections
from datetime import datetime

import httpx
from sqlmodel import select

from services.core.agents import AgentClient
from services.core.store import Store
from services.core.tables import Job, Node, Stitch, utcnow
from shared.errors import BadRequest, Conflict, NotFound, Unavailable
from shared.jobs import JobState
from shared.stitches import (
    StitchCreate,
    StitchInput,
    StitchPublic,
    StitchReport,
    StitchSpec,
    StitchState,
)


def _public(stitch: Stitch, report: StitchReport | None = None) -> StitchPublic:
    return StitchPublic(id=stitch.id, state=JobState(stitch.state).value,
                        node=stitch.node, job_ids=list(stitch.job_ids), message=stitch.message, error=stitch.error,
                        files=list(stitch.files), report=report, created_at=stitch.created_at,
                        updated_at=stitch.updated_at)


def plan(store: Store, body: StitchCreate) -> tuple[str, StitchSpec]:
    """The node holding most of the jobs (the first job's on a tie) and the agent's spec."""
    with store.session() as session:
        jobs = {job.id: job for job in session.exec(select(Job).where(Job.id.in_(body.jobs))).all()}
        nodes = {node.name: node for node in session.exec(select(Node)).all()}
    missing = [job_id for job_id in body.jobs if job_id not in jobs]
    if missing:
        raise NotFound(f"no job {', '.join(map(str, missing))}", code="job_not_found")
    unfinished = [job_id for job_id in body.jobs if jobs[job_id].state != JobState.done or not jobs[job_id].node]
    if unfinished:
        raise Conflict(f"jobs {', '.join(map(str, unfinished))} are not done: only finished jobs can be stitched",
                       code="jobs_not_done")
    gone = sorted({jobs[j].node for j in body.jobs if jobs[j].node not in nodes})
    if gone:
        raise Conflict(f"the nodes holding these jobs are no longer registered: {', '.join(gone)}", code="node_gone")
    counts = collections.Counter(jobs[job_id].node for job_id in body.jobs)
    first = jobs[body.jobs[0]].node
    target = max(counts, key=lambda name: (counts[name], name == first))
    spec = StitchSpec(jobs=[StitchInput(agent_url=nodes[jobs[j].node].url, job_id=j) for j in body.jobs],
                      frames_per_job=body.frames_per_job)
    return target, spec


async def create(store: Store, agents: AgentClient, body: StitchCreate) -> StitchPublic:
    target, spec = plan(store, body)
    now = utcnow()
    with store.session() as session:
        node_url = session.exec(select(Node).where(Node.name == target)).one().url
        stitch = Stitch(state=JobState.assigned, node=target, job_ids=list(body.jobs), message="sent to the node",
                        created_at=now, updated_at=now)
        session.add(stitch)
        session.commit()
        session.refresh(stitch)
    try:
        state = await _call(agents, "PUT", f"{node_url}/stitches/{stitch.id}", json=spec.model_dump(mode="json"))
    except Unavailable as exc:
        return _record(store, stitch.id, None, error=exc.message)
    return _record(store, stitch.id, state)


async def get(store: Store, agents: AgentClient, stitch_id: int) -> StitchPublic:
    stitch, node = _find(store, stitch_id)
    if node is None:
        return _public(stitch)
    try:
        state = await _call(agents, "GET", f"{node.url}/stitches/{stitch_id}")
    except Unavailable:
        if stitch.state in (JobState.done, JobState.failed):
            return _public(stitch)
        raise
    return _record(store, stitch_id, state)


def _find(store: Store, stitch_id: int) -> tuple[Stitch, Node | None]:
    with store.session() as session:
        stitch = session.get(Stitch, stitch_id)
        if stitch is None:
            raise NotFound(f"no stitch {stitch_id}", code="stitch_not_found")
        return stitch, session.exec(select(Node).where(Node.name == stitch.node)).first()


def located(store: Store, stitch_id: int) -> tuple[Stitch, Node]:
    """The stitch and the gpu node holding it; 404 when either is unknown."""
    stitch, node = _find(store, stitch_id)
    if node is None:
        raise NotFound(f"stitch {stitch_id} is on no registered gpu node ({stitch.node or 'never placed'})",
                       code="node_gone")
    return stitch, node


def list_all(store: Store) -> list[StitchPublic]:
    with store.session() as session:
        return [_public(s) for s in session.exec(select(Stitch).order_by(Stitch.id)).all()]


async def _call(agents: AgentClient, method: str, url: str, **kwargs) -> StitchState:
    try:
        resp = await agents.client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise Unavailable(f"the gpu node at {url} is unreachable: {type(exc).__name__}", code="node_unreachable")
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:200]
        if resp.status_code < 500:
            raise BadRequest(f"the gpu node refused the stitch: {message}", code="stitch_refused")
        raise Unavailable(f"the gpu node failed: {message}", code="node_error")
    return StitchState.model_validate(resp.json())


def _record(store: Store, stitch_id: int, state: StitchState | None, *, error: str | None = None) -> StitchPublic:
    now: datetime = utcnow()
    with store.session() as session:
        stitch = session.get(Stitch, stitch_id)
        if state is None:
            stitch.state, stitch.error, stitch.message = JobState.failed, error, "failed"
        else:
            stitch.state = {"running": JobState.reconstructing, "done": JobState.done,
                            "failed": JobState.failed}[state.state]
            stitch.message, stitch.error = state.message, state.error
            if state.report is not None:
                stitch.files = state.report.files()
        if stitch.state in (JobState.done, JobState.failed) and stitch.finished_at is None:
            stitch.finished_at = now
        stitch.updated_at = now
        session.add(stitch)
        session.commit()
        session.refresh(stitch)
        return _public(stitch, state.report if state else None)
