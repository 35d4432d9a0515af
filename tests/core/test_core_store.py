"""The store: round trips, compare-and-set transitions, SQLite settings."""

from __future__ import annotations

import asyncio
import threading
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


def test_node_polls_of_a_tick_are_recorded_in_one_call_with_events_on_changes_only(store):
    for name in ("g1", "g2", "g3"):
        store.add_node(name=name, role=NodeRole.gpu, url=f"http://{name}")
    store.add_node(name="st", role=NodeRole.storage, url="http://st")
    now = utcnow()
    store.record_node_polls([("g1", {"node_id": "g1"}, None), ("g2", None, "refused"), ("st", None, None),
                             ("gone", None, "x")], now=now)  # "gone": removed meanwhile, ignored
    nodes = {n.name: n for n in store.list_nodes()}
    assert (nodes["g1"].state, nodes["g1"].last_seen, nodes["g1"].last_status) == (NodeState.online, now, {"node_id": "g1"})
    assert (nodes["g2"].state, nodes["g2"].offline_since, nodes["g2"].last_error) == (NodeState.offline, now, "refused")
    assert (nodes["st"].state, nodes["st"].last_status) == (NodeState.online, None)
    assert nodes["g3"].state == NodeState.unknown  # not polled this tick: untouched
    first = store.last_event_id()
    later = now + timedelta(seconds=5)
    store.record_node_polls([("g1", {"node_id": "g1", "x": 1}, None), ("g2", None, "still refused"),
                             ("st", None, None)], now=later)
    nodes = {n.name: n for n in store.list_nodes()}
    assert (nodes["g1"].last_seen, nodes["g1"].last_status) == (later, {"node_id": "g1", "x": 1})
    assert (nodes["g2"].offline_since, nodes["g2"].last_error) == (now, "still refused")  # offline since the first
    assert store.events_after(first) == []  # no state changed: no event
    store.record_node_polls([("g2", {"node_id": "g2"}, None), ("g1", None, "timeout")], now=later)
    nodes = {n.name: n for n in store.list_nodes()}
    assert (nodes["g2"].state, nodes["g2"].offline_since, nodes["g2"].last_error) == (NodeState.online, None, None)
    assert (nodes["g1"].state, nodes["g1"].offline_since, nodes["g1"].last_seen) == (NodeState.offline, later, later)
    assert sorted((e.node, e.state, e.message) for e in store.events_after(first)) == [
        ("g1", "offline", "timeout"), ("g2", "online", "")]


def test_reports_of_a_tick_are_applied_in_one_call_compare_and_set_each(store):
    now = utcnow()
    jobs = [store.create_job(videos=[("st", f"{i}.MP4")], backend="colmap", fps=2, width=640, max_frames=None)
            for i in range(4)]
    for job in jobs:
        store.assign(job.id, attempt=1, node="g1", lease_s=30, now=now)
    a, b, c, d = (j.id for j in jobs)
    later = now + timedelta(seconds=10)
    changed = store.apply_reports([
        (report(a, JobState.extracting, "extracting", 0.5), "g1"),
        (report(b, JobState.extracting, "extracting", 0.5), "g2"),  # not its node
        (report(c, JobState.extracting, "extracting", 0.5, attempt=2), "g1"),  # not its attempt
        (report(d, JobState.done, "done", 1.0, files=["reconstruction.ply"]), "g1"),
    ], lease_s=30, now=later)
    assert sorted(changed) == [a, d]
    got = store.jobs_by_id([a, b, c, d])
    assert (got[a].state, got[a].progress, got[a].started_at, got[a].lease_expires_at, got[a].updated_at) == (
        JobState.extracting, 0.5, later, later + timedelta(seconds=30), later)
    assert (got[b].state, got[b].lease_expires_at) == (JobState.assigned, now + timedelta(seconds=30))
    assert (got[c].state, got[c].updated_at) == (JobState.assigned, now)
    assert (got[d].state, got[d].files, got[d].finished_at, got[d].lease_expires_at) == (
        JobState.done, ["reconstruction.ply"], later, None)
    assert [e.state for e in store.job_events(a)] == ["queued", "assigned", "extracting"]
    assert [e.state for e in store.job_events(b)] == ["queued", "assigned"]
    # The same report again: lease renewed, progress never backwards, no new event.
    again = later + timedelta(seconds=10)
    store.apply_reports([(report(a, JobState.extracting, "extracting", 0.25), "g1")], lease_s=30, now=again)
    job = store.get_job(a)
    assert (job.progress, job.lease_expires_at) == (0.5, again + timedelta(seconds=30))
    assert len(store.job_events(a)) == 3
    assert store.apply_reports([], lease_s=30, now=again) == {}


def test_plain_job_rows_list_what_the_orm_lists(store):
    from services.core.models import JobPublic

    now = utcnow()
    jobs = []
    for i in range(7):
        # Three videos a job, their position order not their name order: the list aggregates
        # them in the database and must keep positions.
        videos = [("st", f"dir/GX0{i}.MP4"), ("nas", f"b{i}.MP4"), ("nas", f"a{i}.MP4")]
        jobs.append(job := store.create_job(videos=videos, backend="colmap", fps=2,
                               width=640, max_frames=None, recording="GX0042" if i == 3 else None))
        if i % 2:
            store.assign(job.id, attempt=1, node=f"g{i % 3}", lease_s=30, now=now)
    done = store.apply_report(jobs[5].id, report(jobs[5].id, JobState.done, "done", 1.0, files=["a b.ply"]),
                              node="g2", lease_s=30, now=now)
    assert done.files == ["a b.ply"]
    cases = [{}, {"limit": 3}, {"limit": 3, "before_id": 5}, {"limit": 2, "offset": 3},
             {"states": [JobState.assigned]}, {"node": "g1"}, {"text": "gx03"}, {"text": "GX0042"},
             {"states": [JobState.queued], "text": "B4"}, {"text": "nothing"},
             {"text": "dir/", "before_id": 5, "limit": 2}, {"text": "mp4", "limit": 2, "offset": 3},
             {"text": "mp4", "before_id": 4, "offset": 1}, {"text": "gx", "limit": 3},
             {"offset": 7}, {"states": [JobState.queued], "offset": 50}, {"text": "mp4", "offset": 9}]
    for case in cases:
        jobs, count = store.list_jobs(**case)
        rows, row_count = store.list_job_rows(**case)
        videos = store.videos_of(j.id for j in jobs)
        assert row_count == count, case
        assert [len(r["videos"]) for r in rows] == [3] * len(jobs), case
        assert [JobPublic.model_validate(JobPublic.row_dict(r)) for r in rows] == [
            JobPublic.of(j, videos[j.id]) for j in jobs], case


def test_the_start_up_warm_up_changes_nothing(store):
    """Store.warm_up runs the reads of a tick before the core serves; it must write nothing."""
    store.add_node(name="g1", role=NodeRole.gpu, url="http://g1")
    queued = store.create_job(videos=[("st", "a.MP4")], backend="colmap", fps=2, width=640, max_frames=None)
    placed = store.create_job(videos=[("st", "b.MP4")], backend="colmap", fps=2, width=640, max_frames=None)
    store.assign(placed.id, attempt=1, node="g1", lease_s=30, now=utcnow())
    before = (store.jobs_by_id([queued.id, placed.id]), store.list_nodes(), store.last_event_id())
    store.warm_up()
    store.warm_up()
    assert (store.jobs_by_id([queued.id, placed.id]), store.list_nodes(), store.last_event_id()) == before


def test_reads_run_on_the_stores_own_reader_threads(url):
    """Store.read serves the API's reads on its own threads: one on SQLite (reads there are
    CPU work under the GIL), four by default otherwise, or as many as asked."""
    async def names(store: Store) -> set[str]:
        def name() -> str:
            threading.Event().wait(0.02)  # long enough for the 8 reads to overlap where they can
            return threading.current_thread().name
        return set(await asyncio.gather(*(store.read(name) for _ in range(8))))

    for read_threads, expected in [(None, 1 if url.startswith("sqlite") else 4), (2, 2)]:
        store = Store(make_engine(url), read_threads=read_threads)
        store.migrate()
        job = store.create_job(videos=[("st", "a.MP4")], backend="colmap", fps=2, width=640, max_frames=None)
        try:
            seen = asyncio.run(names(store))
            assert len(seen) == expected and all(n.startswith("store-read") for n in seen), seen
            rows, count = asyncio.run(store.read(store.list_job_rows, limit=5))
            assert count >= 1 and rows[0]["id"] == job.id
        finally:
            store.close()


def test_a_read_whose_connection_was_dropped_is_read_again_on_a_new_one(url, caplog):
    """The list's PostgreSQL connections are not pinged at each checkout (a round trip a list):
    a read that meets a connection the server dropped (a restart) runs again, and answers."""
    if url.startswith("sqlite"):
        pytest.skip("PostgreSQL only: SQLite has no server to drop a connection")
    store = Store(make_engine(url))
    store.migrate()
    job = store.create_job(videos=[("st", "a.MP4")], backend="colmap", fps=2, width=640, max_frames=None)

    async def list_across_a_drop():
        before = await store.read(store.list_job_rows, limit=5)  # leaves a pooled read connection
        with store.engine.connect() as conn:  # what a restart of PostgreSQL does to it
            killed = conn.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()").scalar_one()
        return before, killed, await store.read(store.list_job_rows, limit=5)

    try:
        with caplog.at_level("WARNING", logger="services.core.store"):
            before, killed, after = asyncio.run(list_across_a_drop())
        assert killed >= 1
        assert before == after and after[0][0]["id"] == job.id
        assert "a database connection was dropped" in caplog.text  # it did meet the dead one
    finally:
        store.close()
