"""The store: round trips, compare-and-set transitions, SQLite settings."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from core_db import db, pg_cluster, pytest_generate_tests  # noqa: F401

from shared.errors import Conflict, NotFound
from shared.jobs import AgentJob, JobSpec, JobState, VideoSource
from services.core.store import NodeRole, NodeState, Store, make_engine, utcnow


@pytest.fixture
def url(db, tmp_path) -> str:
    return db or f"sqlite:///{tmp_path / 'nested' / 'core.db'}"


@pytest.fixture
def store(url):
    store = Store(make_engine(url))
    store.migrate()
    yield store
    store.engine.dispose()


def report(job_id: int, state: JobState, stage: str, progress: float, attempt: int = 1, **fields) -> AgentJob:
    now = utcnow()
    spec = JobSpec(job_id=job_id, attempt=attempt, videos=[VideoSource(storage_url="http://st", path="a.MP4")])
    return AgentJob(job_id=job_id, attempt=attempt, spec=spec, state=state, stage=stage, progress=progress,
                    created_at=now, updated_at=now, **fields)


def test_sqlite_runs_in_wal_mode_with_foreign_keys(store):
    if store.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_a_job_round_trips_with_its_videos_in_order_and_aware_timestamps(store, url):
    videos = [("st", "GX010042.MP4"), ("st", "GX020042.MP4"), ("nas", "dir/é.mov")]
    job = store.create_job(videos=videos, backend="lingbot", fps=2.5, width=None, max_frames=300,
                           frames_estimate=900)
    other = Store(make_engine(url))
    again = other.get_job(job.id)
    other.engine.dispose()
    assert (again.state, again.backend, again.fps, again.width, again.max_frames, again.frames_estimate) == (
        JobState.queued, "lingbot", 2.5, None, 300, 900)
    assert again.created_at == job.created_at and again.created_at.utcoffset() == timedelta(0)
    assert [(v.position, v.storage, v.path) for v in store.videos_of([job.id])[job.id]] == [
        (i, s, p) for i, (s, p) in enumerate(videos)]
    with pytest.raises(NotFound):
        store.get_job(job.id + 1)


def test_nodes_round_trip_and_names_are_unique(store):
    store.add_node(name="g1", role=NodeRole.gpu, url="http://h:1")
    with pytest.raises(Conflict):
        store.add_node(name="g1", role=NodeRole.storage, url="http://h:2")
    now = utcnow()
    store.record_node_poll("g1", now=now, status={"node_id": "g1"})
    node = store.get_node("g1")
    assert (node.state, node.last_seen, node.last_status, node.last_error) == (NodeState.online, now, {"node_id": "g1"}, None)
    store.record_node_poll("g1", now=now + timedelta(seconds=5), error="refused")
    node = store.get_node("g1")
    assert (node.state, node.last_seen, node.last_status, node.last_error) == (NodeState.offline, now, {"node_id": "g1"}, "refused")
    store.record_node_poll("gone", now=now, error="x")  # removed meanwhile: ignored


def test_transitions_are_compare_and_set(store):
    now = utcnow()
    job = store.create_job(videos=[("st", "a.MP4")], backend="colmap", fps=2, width=640, max_frames=None)
    assert store.assign(job.id, attempt=2, node="g1", lease_s=30, now=now) is None  # wrong attempt
    placed = store.assign(job.id, attempt=1, node="g1", lease_s=30, now=now)
    assert (placed.state, placed.node, placed.lease_expires_at) == (JobState.assigned, "g1", now + timedelta(seconds=30))
    assert store.assign(job.id, attempt=1, node="g2", lease_s=30, now=now) is None  # no longer queued

    assert store.apply_report(job.id, report(job.id, JobState.extracting, "extracting", 0.5), node="g2",
                              lease_s=30, now=now) is None  # not its node
    assert store.apply_report(job.id, report(job.id, JobState.extracting, "extracting", 0.5, attempt=2),
                              node="g1", lease_s=30, now=now) is None  # not its attempt
    later = now + timedelta(seconds=10)
    job = store.apply_report(job.id, report(job.id, JobState.extracting, "extracting", 0.5), node="g1",
                             lease_s=30, now=later)
    assert (job.state, job.progress, job.started_at, job.lease_expires_at) == (
        JobState.extracting, 0.5, later, later + timedelta(seconds=30))
    job = store.apply_report(job.id, report(job.id, JobState.extracting, "extracting", 0.2), node="g1",
                             lease_s=30, now=later)
    assert job.progress == 0.5
    job = store.apply_report(job.id, report(job.id, JobState.failed, "reconstructing", 0.2), node="g1",
                             lease_s=30, now=later)
    assert job.state == JobState.failed and "g1 reported the job failed" in job.error
    assert job.finished_at == later and job.lease_expires_at is None
    with pytest.raises(Conflict):
        store.cancel(job.id)


def test_requeue_counts_attempts_then_fails(store):
    now = utcnow()
    job = store.create_job(videos=[("st", "a.MP4")], backend="colmap", fps=2, width=640, max_frames=None)
    store.assign(job.id, attempt=1, node="g1", lease_s=30, now=now)
    job = store.requeue(job.id, "g1 vanished", node="g1", attempt=1, max_attempts=2, now=now)
    assert (job.state, job.attempt, job.node, job.lease_expires_at) == (JobState.queued, 2, None, None)
    assert job.message == "g1 vanished; requeued as attempt 2 of 2"
    store.set_waiting(job.id, "waiting: no node", now=now)
    store.set_waiting(job.id, "waiting: still no node", now=now)
    assert store.get_job(job.id).message == "g1 vanished; requeued as attempt 2 of 2 — waiting: still no node"

    assert store.requeue(job.id, "x", node="g1", attempt=2, max_attempts=2, now=now) is None  # not placed
    store.assign(job.id, attempt=2, node="g2", lease_s=30, now=now)
    job = store.requeue(job.id, "g2 vanished", node="g2", attempt=2, max_attempts=2, now=now)
    assert job.state == JobState.failed and job.error == "g2 vanished; gave up after 2 attempts"


def test_the_schema_has_no_sqlite_only_types():
    from sqlalchemy.dialects import postgresql

    from services.core.store import Job, JobVideo, Node

    for table in (Node, Job, JobVideo):
        ddl = str(sa.schema.CreateTable(table.__table__).compile(dialect=postgresql.dialect()))
        assert "TIMESTAMP WITH TIME ZONE" in ddl or table is JobVideo


def test_placement_is_serialized_across_processes_on_postgresql(store, url):
    """Two cores deciding at once: the second waits for the first and sees its placement."""
    import threading
    import time

    from services.core.store import Decision

    if store.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite ignores FOR UPDATE, run one core process on it")
    store.add_node(name="g1", role=NodeRole.gpu, url="http://h:1")
    first = store.create_job(videos=[("st", "a.MP4")], backend="colmap", fps=2, width=640, max_frames=None)
    second = store.create_job(videos=[("st", "b.MP4")], backend="colmap", fps=2, width=640, max_frames=None)
    other = Store(make_engine(url))
    seen_active: dict[str, list[int]] = {}

    def planner(name: str, delay_s: float):
        def plan(queued, videos, nodes, active):
            seen_active[name] = [j.id for j in active]
            time.sleep(delay_s)  # a slow decision: the other core tries meanwhile
            if any(j.node == "g1" for j in active):  # one job per node
                return [Decision(j.id, message="busy") for j in queued]
            return [Decision(queued[0].id, node="g1", backend="colmap")] + [
                Decision(j.id, message="busy") for j in queued[1:]]
        return plan

    placed: dict[str, list] = {}
    slow = threading.Thread(target=lambda: placed.setdefault(
        "slow", store.place(planner("slow", 0.5), batch=10, lease_s=30, now=utcnow())))
    slow.start()
    time.sleep(0.15)
    placed["fast"] = other.place(planner("fast", 0), batch=10, lease_s=30, now=utcnow())
    slow.join()
    other.engine.dispose()
    assert [j.id for j in placed["slow"]] == [first.id] and placed["fast"] == []
    assert seen_active["fast"] == [first.id]  # it waited, then saw the first placement
    assert store.get_job(second.id).state == JobState.queued
