"""The core's database: every query and state change the API and scheduler make.

Each :class:`Store` method is one short transaction. Job transitions are compare-and-set
(the job must still be where the caller saw it: same state family, node and attempt), so
the scheduler, the API and other core processes never overwrite each other's decisions.
Every change of a job's state, node or attempt, and of a node's state, is also written to
the ``events`` table in the same transaction: the job history and the live event stream.

Placement (:meth:`Store.place`) is the one place that claims work: it locks the gpu node
rows, then the queued jobs it will decide on with ``FOR UPDATE SKIP LOCKED``, so several
core processes on one PostgreSQL database never place a job twice nor over-commit a GPU.
SQLite ignores ``FOR UPDATE``: with SQLite run one core process.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import json
import logging
import operator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, or_, select

from shared.errors import Conflict, NotFound
from shared.jobs import AgentJob, JobState

from services.core import migrate
from services.core.tables import (Event, Job, JobVideo, Node, NodeRole, NodeState, Stitch,  # noqa: F401
                                  UtcDateTime, utcnow)

log = logging.getLogger(__name__)

ACTIVE_STATES = (JobState.assigned, JobState.extracting, JobState.reconstructing)
OPEN_STATES = (JobState.queued, *ACTIVE_STATES)
WAITING_SEPARATOR = " — "  # between why a job was requeued and why it still waits
_ANY: Any = object()  # "do not check this" in compare-and-set transitions


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


@dataclass
class Decision:
    """What placement decided for one queued job: a node (and GPU, backend), or why it waits."""

    job_id: int
    node: str | None = None
    gpu_index: int | None = None
    backend: str | None = None
    message: str = ""


#: plan(queued jobs in queue order, their videos, every node, active jobs) -> decisions
Planner = Callable[[list[Job], dict[int, list[JobVideo]], list[Node], list[Job]], list[Decision]]


def _apply(session: Session, job: Job, change, now: datetime) -> None:
    """Apply ``change`` to a locked job row; a change of state, node or attempt is an event."""
    before = (job.state, job.node, job.attempt)
    change(job)
    job.updated_at = now
    session.add(job)
    if (job.state, job.node, job.attempt) != before:
        session.add(_job_event(job, now))


def _job_event(job: Job, now: datetime) -> Event:
    text = job.error if job.state == JobState.failed and job.error else job.message
    return Event(at=now, kind="job", job_id=job.id, node=job.node, state=job.state.value,
                 attempt=job.attempt, message=text)


def _node_event(node: Node, now: datetime, message: str = "", state: str | None = None) -> Event:
    return Event(at=now, kind="node", node=node.name, state=state or node.shown_state.value,
                 message=message or (node.last_error or ""))


class Store:
    def __init__(self, engine: Engine, *, read_threads: int | None = None):
        """``read_threads``: threads serving :meth:`read` (none: 1 on SQLite, 4 otherwise)."""
        self.engine = engine
        self._sqlite_search: bool | None = None  # the FTS5 table of migration 0003 exists (checked once)
        if read_threads is None:
            read_threads = 1 if engine.dialect.name == "sqlite" else 4
        self._reads = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="store-read")
        # The job list's connections on PostgreSQL: a pool of their own, in AUTOCOMMIT (no BEGIN
        # and ROLLBACK round trips around a statement) and not pinged at every checkout (a
        # round trip: p95 of the list under 8 clients 53-56 ms with it, 46-49 without). A read
        # that meets a dropped connection instead is run once more by read(), on a new one.
        self._read_engine = engine if engine.dialect.name == "sqlite" else sa.create_engine(
            engine.url, isolation_level="AUTOCOMMIT", pool_size=read_threads, max_overflow=read_threads)

    async def read(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` (a read of this store: never a write) on the store's readers.

        The API's reads run here rather than in the thread pool shared with writes. On SQLite
        one thread: a read is CPU work under the GIL, and eight of them in eight pool threads
        spent more time handing the GIL to each other than reading (the job list under 8
        clients: 5.6 ms of CPU a request and p95 100 ms, against 2.4 ms and 32 ms on one
        reader thread; bench/RESULTS.md, "Round 4"). A write would wait here for the
        database's write lock and hold every read up: writes stay in the shared pool.

        A read whose connection turns out dropped (PostgreSQL restarted, or the connection was
        killed) runs once more, on a new connection: reads are safe to repeat.
        """
        return await asyncio.get_running_loop().run_in_executor(
            self._reads, functools.partial(_again_if_dropped, fn, args, kwargs))

    def close(self) -> None:
        """Stop the readers and close the engine's connections."""
        self._reads.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()
        self._read_engine.dispose()

    def migrate(self) -> tuple[str | None, str]:
        """Bring the schema to the newest revision (see :mod:`services.core.migrate`)."""
        self._sqlite_search = None
        return migrate.upgrade(self.engine)

    create_tables = migrate  # the name the skeleton used

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def warm_up(self) -> None:
        """Run, without changing anything, the reads a scheduler tick and a job list make.

        The core calls this at start-up, before it serves: the first tick of a fresh process
        then does not pay SQLAlchemy's first compilation of each statement on this engine, nor
        (called through the thread pool) anyio's thread backend and the pool's first thread.
        Writes nothing: placement with a planner that decides nothing, a report and a poll for
        ids and names that do not exist.
        """
        now = utcnow()
        self.list_nodes()
        self.active_jobs()
        self.nodes_by_name([""])
        self.jobs_by_id([0])
        self.videos_of([0])
        self.record_node_polls([("", None, "warm-up")], now=now)
        self._change_many([(0, ACTIVE_STATES, lambda job: None, "", 0)], now=now)
        self.place(lambda *_: [], batch=1, lease_s=0, now=now)
        self.list_job_rows(limit=1)
        self.last_event_id()

    # -- nodes -------------------------------------------------------------------------

    def add_node(self, *, name: str, role: NodeRole, url: str, now: datetime | None = None,
                 announced: bool = False) -> Node:
        now = now or utcnow()
        node = Node(name=name, role=role, url=url, created_at=now, announced=announced)
        taken = f"a node named {name!r} already exists; remove it first to change it"
        with self.session() as session:
            if session.exec(select(Node.id).where(Node.name == name)).first() is not None:
                raise Conflict(taken)
            session.add(node)
            session.add(_node_event(node, now, f"added as a {role.value} node at {url}"))
            try:
                session.commit()
            except IntegrityError:
                raise Conflict(taken) from None
            session.refresh(node)
        return node

    def announce_node(self, *, name: str, role: NodeRole, url: str, now: datetime | None = None) -> tuple[Node, bool]:
        """Add the node, or update its URL if it announced itself before; (node, created)."""
        now = now or utcnow()
        with self.session() as session:
            node = session.exec(select(Node).where(Node.name == name).with_for_update()).first()
            if node is None:
                session.rollback()
                try:
                    return self.add_node(name=name, role=role, url=url, now=now, announced=True), True
                except Conflict:  # another announce won the race: update that one
                    return self.announce_node(name=name, role=role, url=url, now=now)
            if node.role != role:
                raise Conflict(f"node {name!r} is registered as a {node.role.value} node, not {role.value}")
            if node.url != url:
                session.add(_node_event(node, now, f"announced a new URL {url} (was {node.url})"))
                node.url = url
            node.announced = True
            session.add(node)
            session.commit()
            session.refresh(node)
            return node, False

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

    def set_draining(self, name: str, draining: bool, *, now: datetime | None = None) -> Node:
        now = now or utcnow()
        with self.session() as session:
            node = session.exec(select(Node).where(Node.name == name).with_for_update()).first()
            if node is None:
                raise NotFound(f"no node named {name!r}")
            if node.draining != draining:
                node.draining = draining
                session.add(node)
                text = "draining: finishes its jobs, gets no new ones" if draining else "accepting new jobs again"
                session.add(_node_event(node, now, text, state="draining" if draining else node.state.value))
                session.commit()
                session.refresh(node)
            return node

    def remove_node(self, name: str, *, force: bool = False, now: datetime | None = None) -> list[int]:
        """Delete a node; refused while open jobs depend on it unless ``force``.

        Forced: jobs placed on a gpu node are requeued by the next tick (their node is
        gone); open jobs reading from a storage node fail. Returns the ids of those jobs.
        """
        now = now or utcnow()
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
            if ids and not force:
                listed = ", ".join(str(i) for i in ids[:10]) + (" …" if len(ids) > 10 else "")
                raise Conflict(f"node {name!r} is in use by open jobs ({listed}); cancel them, "
                               "drain the node and wait, or remove it with force")
            if ids and node.role == NodeRole.storage:
                for job in session.exec(select(Job).where(col(Job.id).in_(ids)).with_for_update()).all():
                    job.state, job.finished_at, job.lease_expires_at = JobState.failed, now, None
                    job.error = f"storage node {name} was removed while the job needed it"
                    job.updated_at = now
                    session.add(job)
                    session.add(_job_event(job, now))
            session.add(_node_event(node, now, "removed" + (" (forced)" if force and ids else ""), state="removed"))
            session.delete(node)
            session.commit()
        return ids

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
        self.record_node_polls([(name, status, error)], now=now)

    def record_node_polls(
        self, polls: Iterable[tuple[str, dict[str, Any] | None, str | None]], *, now: datetime
    ) -> None:
        """The node polls of one tick, ``(name, status, error)`` each, in one transaction.

        Same rules as :meth:`record_node_poll`; nodes removed meanwhile are skipped. Only
        the columns that change are written, and nothing for a node where nothing does.
        """
        polls = list(polls)
        if not polls:
            return
        nodes_t = Node.__table__
        with self.session() as session:
            conn = session.connection()
            rows = {row.name: row for row in conn.execute(
                sa.select(nodes_t).where(nodes_t.c.name.in_([p[0] for p in polls])).order_by(nodes_t.c.name)
            ).mappings()}
            updates: dict[frozenset, list[dict]] = {}
            events = []
            for name, status, error in polls:
                row = rows.get(name)
                if row is None:  # removed while we polled it
                    continue
                if error is None:
                    new = {"state": NodeState.online, "last_seen": now, "last_error": None, "offline_since": None}
                    if status is not None:
                        new["last_status"] = status
                else:
                    new = {"state": NodeState.offline, "last_error": error}
                    if row["state"] != NodeState.offline:
                        new["offline_since"] = now
                changed = {k: v for k, v in new.items() if row[k] != v}
                if not changed:
                    continue
                updates.setdefault(frozenset(changed), []).append(
                    {"b_id": row["id"], **{f"v_{k}": v for k, v in changed.items()}})
                if new["state"] != row["state"]:
                    node = Node(**{**row, **changed})
                    events.append(_node_event(node, now))
            for columns, params in updates.items():  # one executemany per set of changed columns
                conn.execute(nodes_t.update().where(nodes_t.c.id == sa.bindparam("b_id"))
                             .values({c: sa.bindparam(f"v_{c}") for c in columns}), params)
            session.add_all(events)
            session.commit()

    # -- jobs: reads ---------------------------------------------------------------------

    def get_job(self, job_id: int) -> Job:
        with self.session() as session:
            job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def list_jobs(
        self, *, states: Iterable[JobState] | None = None, node: str | None = None, text: str | None = None,
        before_id: int | None = None, limit: int = 100, offset: int = 0,
    ) -> tuple[list[Job], int]:
        """A page of jobs, newest first, and how many match the filters in all.

        ``text`` matches a substring (case-insensitive, ``%`` and ``_`` literal) of the message,
        error or recording, or of any video path; ``before_id`` is the cursor: only jobs older
        than that id.
        """
        where = self._job_filters(states, node, text)
        page = [*where, Job.id < before_id] if before_id is not None else where
        with self.session() as session:
            total = session.exec(select(func.count()).select_from(Job).where(*where)).one()
            rows = session.exec(
                select(Job).where(*page).order_by(col(Job.id).desc()).offset(offset).limit(limit)
            ).all()
        return list(rows), int(total)

    def list_job_rows(
        self, *, states: Iterable[JobState] | None = None, node: str | None = None, text: str | None = None,
        before_id: int | None = None, limit: int = 100, offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """:meth:`list_jobs` as plain dicts, read without ORM objects: what the API lists. Keys
        are :data:`JOB_LIST_FIELDS`, in that order (``files``: the stored names; ``videos``:
        ``{"storage", "path"}`` dicts in order).

        One statement gives the page, each job's videos (aggregated as JSON by the database)
        and the count (a subquery the database runs once); a text search runs its match first,
        once, and its ids give both the count and the page.
        """
        jobs = Job.__table__
        where = self._job_filters(states, node, text)
        page = [*where, jobs.c.id < before_id] if before_id is not None else where
        query = _list_select(self.engine.dialect.name)
        total = None
        with self._read_connection() as conn:
            if text:
                # The text match scans a column (the message, at least): once, not once for the
                # count and again for the page.
                ids = conn.execute(sa.select(jobs.c.id).where(*where).order_by(jobs.c.id.desc())).scalars().all()
                total = len(ids)
                if before_id is not None:
                    ids = ids[bisect.bisect_right(ids, -before_id, key=operator.neg):]  # ids < before_id
                page = [jobs.c.id.in_(ids[offset:offset + limit])]
                offset = 0
            else:
                query = query.add_columns(sa.select(func.count()).select_from(jobs).where(*where)
                                          .scalar_subquery().label("total"))
            result = conn.execute(query.where(*page).order_by(jobs.c.id.desc()).offset(offset).limit(limit)).all()
            if total is None:  # from the rows, or (a page past the end) on its own
                total = result[0][-1] if result else conn.execute(
                    sa.select(func.count()).select_from(jobs).where(*where)).scalar_one()
        rows = []
        for values in result:
            row = dict(zip(JOB_LIST_FIELDS, values))
            for key in ("files", "videos"):  # JSON text on SQLite, decoded already on PostgreSQL
                if isinstance(row[key], str):
                    row[key] = [] if row[key] == "[]" else json.loads(row[key])
            rows.append(row)
        return rows, int(total)

    def _read_connection(self) -> sa.Connection:
        """A connection for the list's reads: from the read pool on PostgreSQL (see __init__); the
        engine's own on SQLite (pysqlite begins no transaction for a SELECT, and its AUTOCOMMIT
        would cost two PRAGMAs a checkout)."""
        return self._read_engine.connect()

    def _job_filters(self, states: Iterable[JobState] | None, node: str | None, text: str | None) -> list:
        """The WHERE clauses of a job listing (see :meth:`list_jobs`)."""
        jobs = Job.__table__
        where = []
        if states:
            where.append(jobs.c.state.in_(list(states)))
        if node:
            where.append(jobs.c.node == node)
        if text:
            where.append(self._text_match(text))
        return where

    def _text_match(self, text: str) -> sa.ColumnElement:
        """Jobs whose message, error, recording or a video path contains ``text``.

        Served by the search index of migration 0003 where there is one: PostgreSQL's
        ``pg_trgm`` indexes serve the ``ILIKE`` per column below; SQLite's FTS5 trigram table
        ``job_text`` holds error, recording and paths (text of 3 characters or more), the
        message is scanned (SQLite's ``LIKE`` ignores ASCII case: no ``lower()``). Without the
        index, the same query scans.
        """
        jobs, videos = Job.__table__, JobVideo.__table__
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        if self.engine.dialect.name == "postgresql":
            # One SELECT per indexed column: an OR across them (and the videos) would scan.
            return jobs.c.id.in_(sa.union(*(
                sa.select(column.table.c.job_id if column.table is videos else jobs.c.id)
                .where(column.ilike(pattern, escape="\\"))
                for column in (jobs.c.message, jobs.c.error, jobs.c.recording, videos.c.path))))

        def like(column) -> sa.ColumnElement:
            return column.like(pattern, escape="\\")

        if len(text) >= 3 and self._has_sqlite_search():
            # A quoted FTS5 phrase of trigrams: the substring, case-folded; no operators inside.
            # A UNION of ids rather than an OR: SQLite then reads the jobs by id (2 ms, not 3.6).
            return jobs.c.id.in_(sa.union(
                sa.select(jobs.c.id).where(like(jobs.c.message)),
                sa.select(_JOB_TEXT.c.rowid).where(_JOB_TEXT.c.body.op("MATCH")('"' + text.replace('"', '""') + '"'))))
        return or_(like(jobs.c.message), like(jobs.c.error), like(jobs.c.recording),
                   jobs.c.id.in_(sa.select(videos.c.job_id).where(like(videos.c.path))))

    def _has_sqlite_search(self) -> bool:
        if self._sqlite_search is None:
            with self.engine.connect() as conn:
                self._sqlite_search = conn.exec_driver_sql(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'job_text'").first() is not None
        return self._sqlite_search

    def queued_jobs(self) -> list[Job]:
        """Queued jobs in the order placement takes them: priority, then oldest first."""
        with self.session() as session:
            return list(session.exec(
                select(Job).where(Job.state == JobState.queued).order_by(col(Job.priority).desc(), col(Job.id))
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
        with self.session() as session:
            return _videos_of(session, job_ids)

    def job_events(self, job_id: int) -> list[Event]:
        with self.session() as session:
            return list(session.exec(select(Event).where(Event.job_id == job_id).order_by(col(Event.id))).all())

    def events_after(self, after_id: int, limit: int = 500) -> list[Event]:
        with self.session() as session:
            return list(session.exec(
                select(Event).where(col(Event.id) > after_id).order_by(col(Event.id)).limit(limit)
            ).all())

    def last_event_id(self) -> int:
        with self.session() as session:
            return int(session.exec(select(func.coalesce(func.max(Event.id), 0))).one())

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
        priority: int = 0,
        cpu_fallback: bool = False,
        recording: str | None = None,
        now: datetime | None = None,
    ) -> Job:
        """A queued job reading ``videos`` (``(storage node, path)`` in order)."""
        now = now or utcnow()
        job = Job(backend=backend, fps=fps, width=width, max_frames=max_frames, frames_estimate=frames_estimate,
                  priority=priority, cpu_fallback=cpu_fallback, recording=recording,
                  created_at=now, updated_at=now, message="waiting for a node")
        with self.session() as session:
            session.add(job)
            session.flush()
            for position, (storage, path) in enumerate(videos):
                session.add(JobVideo(job_id=job.id, position=position, storage=storage, path=path))
            session.add(_job_event(job, now))
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
            _apply(session, job, change, now)
            session.commit()
            session.refresh(job)
            return job

    def place(self, plan: Planner, *, batch: int, lease_s: float, now: datetime) -> list[Job]:
        """Claim up to ``batch`` queued jobs, let ``plan`` decide, apply; the jobs placed.

        In one transaction: lock the node rows (placement is serialized across core
        processes, so capacity is counted once), then the queued jobs no one else holds
        (``SKIP LOCKED``), read the active jobs fresh, and write the decisions. Jobs are read
        as plain rows (:class:`JobRow`, the columns placement uses): building ORM objects for
        thousands of queued jobs would cost more than the whole decision.
        """
        jobs = Job.__table__
        with self.session() as session:
            nodes = list(session.exec(select(Node).order_by(Node.name).with_for_update(of=Node)).all())
            conn = session.connection()
            columns = [jobs.c[name] for name in JobRow.COLUMNS]
            queued = [JobRow(row) for row in conn.execute(
                sa.select(*columns).where(jobs.c.state == JobState.queued)
                .order_by(jobs.c.priority.desc(), jobs.c.id).limit(batch).with_for_update(skip_locked=True)
            ).all()]
            if not queued:
                session.rollback()
                return []
            active = [JobRow(row) for row in conn.execute(
                sa.select(*columns).where(jobs.c.state.in_(ACTIVE_STATES))).all()]
            videos: dict[int, list] = {j.id: [] for j in queued}
            ids = list(videos)
            for start in range(0, len(ids), 5000):
                for row in conn.execute(sa.select(JobVideo.__table__.c.job_id, JobVideo.__table__.c.storage)
                                        .where(JobVideo.__table__.c.job_id.in_(ids[start:start + 5000]))).all():
                    videos[row.job_id].append(row)
            by_id = {j.id: j for j in queued}
            placed, waiting, assigned = [], [], []
            for decision in plan(queued, videos, nodes, active):
                job = by_id[decision.job_id]
                if decision.node is None:
                    message = _waiting_message(job, decision.message)
                    if message != job.message:  # most ticks change nothing: do not write
                        waiting.append({"b_id": job.id, "message": message})
                    continue
                job.state, job.node, job.gpu_index, job.run_backend = (
                    JobState.assigned, decision.node, decision.gpu_index, decision.backend)
                job.message = decision.message or f"sent to {decision.node}"
                assigned.append({"b_id": job.id, "v_node": job.node, "v_gpu_index": job.gpu_index,
                                 "v_run_backend": job.run_backend, "v_message": job.message})
                session.add(_job_event(job, now))
                placed.append(job.id)
            if assigned:  # one executemany: the placements of a round differ only in these columns
                conn.execute(jobs.update().where(jobs.c.id == sa.bindparam("b_id")).values(
                    state=JobState.assigned, node=sa.bindparam("v_node"), gpu_index=sa.bindparam("v_gpu_index"),
                    run_backend=sa.bindparam("v_run_backend"), message=sa.bindparam("v_message"),
                    stage="", progress=0.0, error=None, files=[],
                    lease_expires_at=now + timedelta(seconds=lease_s), updated_at=now), assigned)
            if waiting:
                conn.execute(jobs.update().where(jobs.c.id == sa.bindparam("b_id"))
                             .values(message=sa.bindparam("message"), updated_at=now), waiting)
            session.commit()
        if not placed:
            return []
        by_id = self.jobs_by_id(placed)
        return [by_id[i] for i in placed]

    def assign(self, job_id: int, *, attempt: int, node: str, lease_s: float, now: datetime,
               gpu_index: int | None = None, backend: str | None = None) -> Job | None:
        def change(job: Job) -> None:
            job.state, job.node, job.stage, job.progress = JobState.assigned, node, "", 0.0
            job.gpu_index, job.run_backend = gpu_index, backend
            job.message, job.error, job.files = f"sent to {node}", None, []
            job.lease_expires_at = now + timedelta(seconds=lease_s)

        return self._change(job_id, [JobState.queued], change, attempt=attempt, now=now)

    def set_waiting(self, job_id: int, reason: str, *, now: datetime) -> None:
        """Say why a queued job is still queued, after why it was requeued if it was."""
        job = self.jobs_by_id([job_id]).get(job_id)
        if job is None or job.state != JobState.queued:
            return
        message = _waiting_message(job, reason)
        if message != job.message:
            def change(job: Job) -> None:
                job.message = message

            self._change(job_id, [JobState.queued], change, attempt=job.attempt, now=now)

    def apply_report(
        self, job_id: int, report: AgentJob, *, node: str, lease_s: float, now: datetime
    ) -> Job | None:
        """Copy what the agent says about its (current-attempt) job; renews the lease."""
        return self._change(job_id, ACTIVE_STATES, _report_change(report, node, lease_s, now),
                            node=node, attempt=report.attempt, now=now)

    def apply_reports(
        self, reports: Iterable[tuple[AgentJob, str]], *, lease_s: float, now: datetime
    ) -> dict[int, Job]:
        """:meth:`apply_report` for every ``(report, node)`` a tick polled, in one transaction.

        Each report is applied compare-and-set as on its own (the job must still be placed on
        that node at that attempt); returns the jobs changed, by id.
        """
        return self._change_many(
            [(r.job_id, ACTIVE_STATES, _report_change(r, node, lease_s, now), node, r.attempt) for r, node in reports],
            now=now)

    def _change_many(
        self, changes: list[tuple[int, Iterable[JobState], Callable[[Job], None], str | None, int]], *,
        now: datetime,
    ) -> dict[int, Job]:
        """:meth:`_change` for many jobs, ``(job_id, states, change, node, attempt)`` each, in one
        transaction (rows locked in id order); the changed jobs by id."""
        if not changes:
            return {}
        ids = sorted({c[0] for c in changes})
        changed: dict[int, Job] = {}
        with self.session() as session:
            jobs: dict[int, Job] = {}
            for start in range(0, len(ids), 5000):  # stay under the databases' bound-parameter limits
                jobs.update((j.id, j) for j in session.exec(
                    select(Job).where(col(Job.id).in_(ids[start:start + 5000])).order_by(col(Job.id)).with_for_update()
                ).all())
            for job_id, states, change, node, attempt in changes:
                job = jobs.get(job_id)
                if job is None or job.state not in tuple(states) or job.node != node or job.attempt != attempt:
                    continue
                _apply(session, job, change, now)
                changed[job_id] = job
            session.commit()
        return changed

    def note(self, job_id: int, message: str, *, node: str, attempt: int, now: datetime) -> Job | None:
        """Record why a poll failed, without renewing the lease."""
        def change(job: Job) -> None:
            job.message = message

        return self._change(job_id, ACTIVE_STATES, change, node=node, attempt=attempt, now=now)

    def extend_leases(self, *, lease_s: float, now: datetime) -> int:
        """Give every placed job a full lease from ``now``: after a core restart the core was
        silent, not the agents. Returns how many jobs were placed."""
        until = now + timedelta(seconds=lease_s)
        with self.session() as session:
            jobs = session.exec(select(Job).where(col(Job.state).in_(ACTIVE_STATES)).with_for_update()).all()
            for job in jobs:
                if job.lease_expires_at is None or job.lease_expires_at < until:
                    job.lease_expires_at = until
                    session.add(job)
            session.commit()
            return len(jobs)

    def requeue(
        self, job_id: int, reason: str, *, node: str, attempt: int, max_attempts: int, now: datetime
    ) -> Job | None:
        """Take the job back from ``node``: queued again as attempt+1, or failed at the limit."""
        def change(job: Job) -> None:
            made = job.attempt - job.retry_base
            if made >= max_attempts:
                job.state, job.finished_at = JobState.failed, now
                job.error = f"{reason}; gave up after {made} attempts"
                job.message = ""
            else:
                job.attempt += 1
                job.state, job.node, job.stage, job.progress, job.files = JobState.queued, None, "", 0.0, []
                job.gpu_index, job.run_backend = None, None
                job.message = f"{reason}; requeued as attempt {made + 1} of {max_attempts}"
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

    def retry(self, job_id: int, *, now: datetime | None = None) -> Job:
        """Queue a failed or cancelled job again as a new attempt; its history stays."""
        now = now or utcnow()
        before = self.get_job(job_id)
        if before.state not in (JobState.failed, JobState.cancelled):
            raise Conflict(f"job {job_id} is {before.state.value}; only failed or cancelled jobs can be retried")

        def change(job: Job) -> None:
            job.retry_base = job.attempt
            job.attempt += 1
            job.state, job.node, job.stage, job.progress, job.files = JobState.queued, None, "", 0.0, []
            job.gpu_index, job.run_backend, job.lease_expires_at = None, None, None
            job.error, job.finished_at, job.started_at = None, None, None
            job.message = f"retried by request (was {before.state.value})"

        job = self._change(job_id, [before.state], change, attempt=before.attempt, now=now)
        if job is None:
            raise Conflict(f"job {job_id} changed while it was being retried; try again")
        return job

    def delete_job(self, job_id: int, *, now: datetime | None = None) -> Job:
        """Delete a finished job, its videos and history; returns it as it was."""
        now = now or utcnow()
        with self.session() as session:
            job = session.exec(select(Job).where(Job.id == job_id).with_for_update()).first()
            if job is None:
                raise NotFound(f"no job {job_id}")
            if not job.state.final:
                raise Conflict(f"job {job_id} is {job.state.value}; cancel it before deleting it")
            session.exec(sa.delete(JobVideo).where(col(JobVideo.job_id) == job_id))
            session.exec(sa.delete(Event).where(col(Event.job_id) == job_id))
            session.delete(job)
            session.add(Event(at=now, kind="job", job_id=job_id, node=job.node, state="deleted",
                              attempt=job.attempt, message="deleted by request"))
            session.commit()
        return job


def _report_change(report: AgentJob, node: str, lease_s: float, now: datetime) -> Callable[[Job], None]:
    """What applying an agent's report does to its job (see :meth:`Store.apply_report`)."""
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

    return change


class JobRow:
    """A job read as a plain row, for placement: the columns placement uses, as attributes.

    Only :attr:`COLUMNS` are read (no timestamps, no JSON): decoding those for thousands of
    queued jobs on every tick cost more than the decision itself.
    """

    COLUMNS = ("id", "state", "node", "gpu_index", "backend", "run_backend", "frames_estimate", "width",
               "cpu_fallback", "priority", "message", "error", "attempt", "retry_base")

    def __init__(self, row):  # a row of COLUMNS, in that order
        self.__dict__.update(zip(self.COLUMNS, row))

    @property
    def placed_backend(self) -> str:
        return self.run_backend or self.backend


#: The fields of a job as the API lists it (:class:`services.core.models.JobPublic`, in its
#: order: the response is serialized from these dicts as they are).
JOB_LIST_FIELDS = ("id", "state", "stage", "progress", "message", "error", "node", "gpu_index", "attempt", "backend",
                   "run_backend", "priority", "cpu_fallback", "recording", "fps", "width", "max_frames",
                   "frames_estimate", "videos", "files", "created_at", "updated_at", "started_at", "finished_at")

#: The FTS5 table of migration 0003 (SQLite): rowid = job id, body = its searchable text.
_JOB_TEXT = sa.table("job_text", sa.column("rowid", sa.Integer), sa.column("body", sa.Text))


def _again_if_dropped(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """``fn(*args, **kwargs)``, run once more if its database connection turned out dropped
    (SQLAlchemy then has discarded the pool's connections of before: the second run gets a new
    one). Only for reads: a write may have been committed before its connection dropped."""
    try:
        return fn(*args, **kwargs)
    except sa.exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.warning("a database connection was dropped (%s); reading again on a new one",
                    str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__)
        return fn(*args, **kwargs)


@functools.cache
def _list_select(dialect: str) -> sa.Select:
    """SELECT of :data:`JOB_LIST_FIELDS` (built once per dialect: 24 columns cost more to build
    than to read).

    ``files`` as text: most jobs have none, ``[]`` needs no JSON parser. ``videos``: a JSON
    array of ``{"storage", "path"}`` objects in position order, aggregated by the database
    (SQLite before 3.44 has no ``ORDER BY`` inside an aggregate: it aggregates an ordered
    subquery).
    """
    jobs, videos_t = Job.__table__, JobVideo.__table__
    if dialect == "postgresql":
        entry = sa.func.json_build_object("storage", videos_t.c.storage, "path", videos_t.c.path)
        videos = sa.select(sa.func.coalesce(sa.func.json_agg(aggregate_order_by(entry, videos_t.c.position)),
                                            sa.literal_column("'[]'::json"))) \
            .where(videos_t.c.job_id == jobs.c.id).scalar_subquery()
    else:
        ordered = sa.select(videos_t.c.storage, videos_t.c.path).where(videos_t.c.job_id == jobs.c.id) \
            .order_by(videos_t.c.position).correlate(jobs).subquery()
        videos = sa.select(sa.func.json_group_array(sa.func.json_object("storage", ordered.c.storage,
                                                                       "path", ordered.c.path))).scalar_subquery()
    return sa.select(*(videos.label(name) if name == "videos" else
                       sa.type_coerce(jobs.c.files, sa.Text).label(name) if name == "files" else jobs.c[name]
                       for name in JOB_LIST_FIELDS))


def _videos_of(session: Session, job_ids: Iterable[int]) -> dict[int, list[JobVideo]]:
    ids = list(set(job_ids))
    found: dict[int, list[JobVideo]] = {i: [] for i in ids}
    for start in range(0, len(ids), 5000):  # stay under the databases' bound-parameter limits
        rows = session.exec(
            select(JobVideo).where(col(JobVideo.job_id).in_(ids[start:start + 5000]))
            .order_by(col(JobVideo.job_id), col(JobVideo.position))
        ).all()
        for row in rows:
            found[row.job_id].append(row)
    return found


def _waiting_message(job: Job, reason: str) -> str:
    requeued = job.message.split(WAITING_SEPARATOR)[0] if job.attempt > job.retry_base + 1 else ""
    return f"{requeued}{WAITING_SEPARATOR}{reason}" if requeued else reason
