"""The core's database: tables, and every query and state change the API and scheduler make.

Each :class:`Store` method is one short transaction. Job transitions are compare-and-set
(the job must still be where the caller saw it: same state family, node and attempt), so
the scheduler and the API never overwrite each other's decisions. Portable SQL only, so the
same code runs on SQLite (the embedded default, WAL mode) and PostgreSQL.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, func, select

from shared.errors import Conflict, NotFound
from shared.jobs import AgentJob, JobState

ACTIVE_STATES = (JobState.assigned, JobState.extracting, JobState.reconstructing)
OPEN_STATES = (JobState.queued, *ACTIVE_STATES)
WAITING_SEPARATOR = " — "  # between why a job was requeued and why it still waits
_ANY: Any = object()  # "do not check this" in compare-and-set transitions


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class NodeRole(str, enum.Enum):
    gpu = "gpu"
    storage = "storage"


class NodeState(str, enum.Enum):
    unknown = "unknown"  # added, not polled yet
    online = "online"
    offline = "offline"


class UtcDateTime(sa.TypeDecorator):
    """Timezone-aware UTC datetimes on every database (SQLite has no time zones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use store.utcnow()")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _enum(cls: type[enum.Enum]) -> sa.Enum:
    # VARCHAR rather than a PostgreSQL ENUM type: adding a state needs no migration.
    return sa.Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class Node(SQLModel, table=True):
    __tablename__ = "nodes"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    role: NodeRole = Field(sa_type=_enum(NodeRole))
    url: str = Field(max_length=2048)
    state: NodeState = Field(default=NodeState.unknown, sa_type=_enum(NodeState))
    last_seen: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    last_status: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    created_at: datetime = Field(sa_type=UtcDateTime)


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    id: int | None = Field(default=None, primary_key=True)
    state: JobState = Field(default=JobState.queued, sa_type=_enum(JobState), index=True)
    stage: str = Field(default="", max_length=64)
    progress: float = 0.0
    message: str = Field(default="", sa_type=sa.Text)
    error: str | None = Field(default=None, sa_type=sa.Text)
    node: str | None = Field(default=None, max_length=64, index=True)
    attempt: int = 1
    backend: str = Field(max_length=16)
    fps: float
    width: int | None = None
    max_frames: int | None = None
    frames_estimate: int | None = None
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    files: list[str] = Field(default_factory=list, sa_type=sa.JSON)


class JobVideo(SQLModel, table=True):
    __tablename__ = "job_videos"

    job_id: int = Field(foreign_key="jobs.id", primary_key=True)
    position: int = Field(primary_key=True)
    storage: str = Field(max_length=64)
    path: str = Field(sa_type=sa.Text)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their folder created and WAL switched on."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if not parsed.database or parsed.database == ":memory:":
        # One shared connection: the API and scheduler threads must see the same memory database.
        engine = sa.create_engine(url, connect_args={"check_same_thread": False}, poolclass=sa.StaticPool)
    else:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})  # seconds to wait for a write lock

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the scheduler's writes
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync at checkpoints only
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


class Store:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create_tables(self) -> None:
        SQLModel.metadata.create_all(self.engine, tables=[t.__table__ for t in (Node, Job, JobVideo)])

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # -- nodes -------------------------------------------------------------------------

    def add_node(self, *, name: str, role: NodeRole, url: str, now: datetime | None = None) -> Node:
        node = Node(name=name, role=role, url=url, created_at=now or utcnow())
        with self.session() as session:
            if session.exec(select(Node.id).where(Node.name == name)).first() is not None:
                raise Conflict(f"a node named {name!r} already exists; remove it first to change it")
            session.add(node)
            try:
                session.commit()
            except IntegrityError:
                raise Conflict(f"a node named {name!r} already exists; remove it first to change it") from None
            session.refresh(node)
        return node

    def list_nodes(self, role: NodeRole | None = None) -> list[Node]:
        query = select(Node).order_by(Node.name)
        if role is not None:
            query = query.where(Node.role == role)
        with self.session() as session:
            return list(session.exec(query).all())

    def nodes_by_name(self, names: Iterable[str]) -> dict[str, Node]:
        with self.session() as session:
            rows = session.exec(select(Node).where(col(Node.name).in_(list(set(names))))).all()
        return {node.name: node for node in rows}

    def get_node(self, name: str) -> Node:
        node = self.nodes_by_name([name]).get(name)
        if node is None:
            raise NotFound(f"no node named {name!r}")
        return node

    def remove_node(self, name: str) -> None:
        """Delete a node that no open job depends on."""
        with self.session() as session:
            node = session.exec(select(Node).where(Node.name == name).with_for_update()).first()
            if node is None:
                raise NotFound(f"no node named {name!r}")
            if node.role == NodeRole.gpu:
                users = select(Job.id).where(Job.node == name, col(Job.state).in_(ACTIVE_STATES))
            else:
                users = (select(Job.id).join(JobVideo, col(JobVideo.job_id) == col(Job.id))
                         .where(JobVideo.storage == name, col(Job.state).in_(OPEN_STATES)).distinct())
            ids = sorted(session.exec(users).all())
            if ids:
                listed = ", ".join(str(i) for i in ids[:10]) + (" …" if len(ids) > 10 else "")
                raise Conflict(f"node {name!r} is in use by open jobs ({listed}); cancel them or wait")
            session.delete(node)
            session.commit()

    def open_job_counts(self) -> dict[str, int]:
        """Per node: unfinished jobs placed on it (gpu) or reading from it (storage)."""
        with self.session() as session:
            placed = session.exec(
                select(Job.node, func.count()).where(col(Job.state).in_(ACTIVE_STATES), col(Job.node).is_not(None))
                .group_by(Job.node)
            ).all()
            reading = session.exec(
                select(JobVideo.storage, func.count(sa.distinct(JobVideo.job_id)))
                .join(Job, col(JobVideo.job_id) == col(Job.id))
                .where(col(Job.state).in_(OPEN_STATES)).group_by(JobVideo.storage)
            ).all()
        return {**dict(reading), **dict(placed)}

    def record_node_poll(
        self, name: str, *, now: datetime, status: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        """A poll of the node succeeded (``error`` None: online, ``status`` kept) or failed."""
        with self.session() as session:
            node = session.exec(select(Node).where(Node.name == name)).first()
            if node is None:  # removed while we polled it
                return
            if error is None:
                node.state, node.last_seen, node.last_error = NodeState.online, now, None
                if status is not None:
                    node.last_status = status
            else:
                node.state, node.last_error = NodeState.offline, error
            session.add(node)
            session.commit()

    # -- jobs: reads ---------------------------------------------------------------------

    def get_job(self, job_id: int) -> Job:
        with self.session() as session:
            job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def list_jobs(
        self, *, states: Iterable[JobState] | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[Job], int]:
        """A page of jobs, newest first, and how many match in all."""
        where = [col(Job.state).in_(list(states))] if states else []
        with self.session() as session:
            total = session.exec(select(func.count()).select_from(Job).where(*where)).one()
            rows = session.exec(
                select(Job).where(*where).order_by(col(Job.id).desc()).offset(offset).limit(limit)
            ).all()
        return list(rows), int(total)

    def queued_jobs(self) -> list[Job]:
        with self.session() as session:
            return list(session.exec(
                select(Job).where(Job.state == JobState.queued).order_by(col(Job.id))
            ).all())

    def active_jobs(self) -> list[Job]:
        """Jobs placed on a gpu node and not finished."""
        with self.session() as session:
            return list(session.exec(
                select(Job).where(col(Job.state).in_(ACTIVE_STATES)).order_by(col(Job.id))
            ).all())

    def jobs_by_id(self, ids: Iterable[int]) -> dict[int, Job]:
        with self.session() as session:
            rows = session.exec(select(Job).where(col(Job.id).in_(list(set(ids))))).all()
        return {job.id: job for job in rows}

    def videos_of(self, job_ids: Iterable[int]) -> dict[int, list[JobVideo]]:
        ids = list(set(job_ids))
        found: dict[int, list[JobVideo]] = {i: [] for i in ids}
        if not ids:
            return found
        with self.session() as session:
            rows = session.exec(
                select(JobVideo).where(col(JobVideo.job_id).in_(ids))
                .order_by(col(JobVideo.job_id), col(JobVideo.position))
            ).all()
        for row in rows:
            found[row.job_id].append(row)
        return found

    # -- jobs: changes -------------------------------------------------------------------

    def create_job(
        self,
        *,
        videos: list[tuple[str, str]],
        backend: str,
        fps: float,
        width: int | None,
        max_frames: int | None,
        frames_estimate: int | None = None,
        now: datetime | None = None,
    ) -> Job:
        """A queued job reading ``videos`` (``(storage node, path)`` in order)."""
        now = now or utcnow()
        job = Job(backend=backend, fps=fps, width=width, max_frames=max_frames,
                  frames_estimate=frames_estimate, created_at=now, updated_at=now, message="waiting for a node")
        with self.session() as session:
            session.add(job)
            session.flush()
            for position, (storage, path) in enumerate(videos):
                session.add(JobVideo(job_id=job.id, position=position, storage=storage, path=path))
            session.commit()
            session.refresh(job)
        return job

    def _change(
        self, job_id: int, states: Iterable[JobState], change: Callable[[Job], None], *,
        node: str | None = _ANY, attempt: int = _ANY, now: datetime,
    ) -> Job | None:
        """Apply ``change`` if the job is still in ``states`` (and on ``node`` at ``attempt``
        when given); the changed job, or None if it had moved on."""
        with self.session() as session:
            job = session.exec(select(Job).where(Job.id == job_id).with_for_update()).first()
            if job is None or job.state not in tuple(states):
                return None
            if (node is not _ANY and job.node != node) or (attempt is not _ANY and job.attempt != attempt):
                return None
            change(job)
            job.updated_at = now
            session.add(job)
            session.commit()
            session.refresh(job)
            return job

    def assign(self, job_id: int, *, attempt: int, node: str, lease_s: float, now: datetime) -> Job | None:
        def change(job: Job) -> None:
            job.state, job.node, job.stage, job.progress = JobState.assigned, node, "", 0.0
            job.message, job.error, job.files = f"sent to {node}", None, []
            job.lease_expires_at = now + timedelta(seconds=lease_s)

        return self._change(job_id, [JobState.queued], change, attempt=attempt, now=now)

    def set_waiting(self, job_id: int, reason: str, *, now: datetime) -> None:
        """Say why a queued job is still queued, after why it was requeued if it was."""
        job = self.jobs_by_id([job_id]).get(job_id)
        if job is None or job.state != JobState.queued:
            return
        requeued = job.message.split(WAITING_SEPARATOR)[0] if job.attempt > 1 else ""
        message = f"{requeued}{WAITING_SEPARATOR}{reason}" if requeued else reason
        if message != job.message:  # most ticks change nothing: do not write
            def change(job: Job) -> None:
                job.message = message

            self._change(job_id, [JobState.queued], change, attempt=job.attempt, now=now)

    def apply_report(
        self, job_id: int, report: AgentJob, *, node: str, lease_s: float, now: datetime
    ) -> Job | None:
        """Copy what the agent says about its (current-attempt) job; renews the lease."""
        def change(job: Job) -> None:
            state = report.state if report.state not in (JobState.queued, JobState.assigned) else JobState.assigned
            if report.stage == job.stage and state == job.state:
                job.progress = max(job.progress, report.progress)  # never backwards within a stage
            else:
                job.progress = report.progress
            job.state, job.stage, job.message = state, report.stage, report.message
            job.files = list(report.files)
            if state in (JobState.extracting, JobState.reconstructing) and job.started_at is None:
                job.started_at = now
            if state.final:
                job.finished_at, job.lease_expires_at = now, None
                if state == JobState.failed:
                    job.error = report.error or f"{node} reported the job failed without a reason"
            else:
                job.lease_expires_at = now + timedelta(seconds=lease_s)

        return self._change(job_id, ACTIVE_STATES, change, node=node, attempt=report.attempt, now=now)

    def note(self, job_id: int, message: str, *, node: str, attempt: int, now: datetime) -> Job | None:
        """Record why a poll failed, without renewing the lease."""
        def change(job: Job) -> None:
            job.message = message

        return self._change(job_id, ACTIVE_STATES, change, node=node, attempt=attempt, now=now)

    def requeue(
        self, job_id: int, reason: str, *, node: str, attempt: int, max_attempts: int, now: datetime
    ) -> Job | None:
        """Take the job back from ``node``: queued again as attempt+1, or failed at the limit."""
        def change(job: Job) -> None:
            if job.attempt >= max_attempts:
                job.state, job.finished_at = JobState.failed, now
                job.error = f"{reason}; gave up after {job.attempt} attempts"
                job.message = ""
            else:
                job.attempt += 1
                job.state, job.node, job.stage, job.progress, job.files = JobState.queued, None, "", 0.0, []
                job.message = f"{reason}; requeued as attempt {job.attempt} of {max_attempts}"
                job.error = None
            job.lease_expires_at = None

        return self._change(job_id, ACTIVE_STATES, change, node=node, attempt=attempt, now=now)

    def fail(self, job_id: int, error: str, *, node: str, attempt: int, now: datetime) -> Job | None:
        def change(job: Job) -> None:
            job.state, job.error, job.finished_at, job.lease_expires_at = JobState.failed, error, now, None

        return self._change(job_id, ACTIVE_STATES, change, node=node, attempt=attempt, now=now)

    def cancel(self, job_id: int, *, now: datetime | None = None) -> Job:
        """Mark an open job cancelled; returns it as it was before (its node tells whom to stop)."""
        now = now or utcnow()
        before = self.get_job(job_id)
        if before.state.final:
            raise Conflict(f"job {job_id} is already {before.state.value}")

        def change(job: Job) -> None:
            job.state, job.finished_at, job.lease_expires_at = JobState.cancelled, now, None
            job.message = "cancelled by request"

        if self._change(job_id, OPEN_STATES, change, node=before.node, attempt=before.attempt, now=now) is None:
            raise Conflict(f"job {job_id} changed while it was being cancelled; try again")
        return before
