"""Alembic migrations: from an empty database, and from the previous (skeleton) schema with data."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from core_db import db, pg_cluster, pytest_generate_tests  # noqa: F401

from core_fakes import anyio_backend, core_settings, running_core  # noqa: F401
from services.core import migrate
from services.core.store import Store, make_engine
from services.core.tables import Job, SQLModel, utcnow


@pytest.fixture
def engine(db, tmp_path):
    engine = make_engine(db or f"sqlite:///{tmp_path / 'core' / 'core.db'}")
    yield engine
    engine.dispose()


def _search_objects(name, type_, parent_names) -> bool:
    """False for revision 0003's search index, which the tables do not declare (SQLite: the FTS5
    table and its shadow tables; PostgreSQL: the pg_trgm indexes)."""
    if type_ == "table":
        return not name.startswith("job_text")
    return not (type_ == "index" and name and name.endswith("_trgm"))


def _schema_diff(engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"include_name": _search_objects}),
                                SQLModel.metadata)


def test_an_empty_database_migrates_to_the_tables_of_the_code(engine):
    assert migrate.current_revision(engine) is None
    assert migrate.upgrade(engine) == (None, migrate.head_revision())
    assert _schema_diff(engine) == []
    assert migrate.upgrade(engine)[0] == migrate.head_revision()  # a second run does nothing


def _fill_first_schema(engine) -> None:
    """Rows as the skeleton core wrote them."""
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO nodes (name, role, url, state, last_seen, last_error, last_status, created_at) VALUES "
            "('g1', 'gpu', 'http://h:1', 'offline', '2026-01-01 10:00:00', 'refused', :status, '2026-01-01 09:00:00'),"
            "('st', 'storage', 'http://h:2', 'online', '2026-01-01 10:00:00', NULL, NULL, '2026-01-01 09:00:00')"),
            {"status": json.dumps({"node_id": "g1"})})
        conn.execute(sa.text(
            "INSERT INTO jobs (state, stage, progress, message, error, node, attempt, backend, fps, width, "
            "max_frames, frames_estimate, created_at, updated_at, files) VALUES "
            "('done', 'done', 1.0, '', NULL, 'g1', 1, 'colmap', 2.0, 640, NULL, 20, "
            "'2026-01-01 09:10:00', '2026-01-01 09:20:00', :files),"
            "('queued', '', 0.0, 'waiting for a node', NULL, NULL, 2, 'lingbot', 1.0, 518, 100, 100, "
            "'2026-01-01 09:30:00', '2026-01-01 09:30:00', '[]')"), {"files": json.dumps(["reconstruction.ply"])})
        conn.execute(sa.text("INSERT INTO job_videos (job_id, position, storage, path) VALUES "
                             "(1, 0, 'st', 'GX010042.MP4'), (1, 1, 'st', 'GX020042.MP4'), (2, 0, 'st', 'GX010043.MP4')"))


@pytest.mark.anyio
@pytest.mark.parametrize("stamped", [True, False], ids=["at-0001", "skeleton-without-revision"])
async def test_the_previous_schema_with_data_upgrades_and_keeps_it(engine, tmp_path, db, stamped):
    migrate.upgrade(engine, "0001")
    if not stamped:  # the skeleton made its tables with create_all: no alembic_version at all
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE alembic_version"))
    _fill_first_schema(engine)

    before, after = Store(engine).migrate()
    assert (before, after) == ("0001", migrate.head_revision())
    assert _schema_diff(engine) == []

    async with running_core(core_settings(tmp_path)) as (app, client):  # the app on the upgraded database
        jobs = (await client.get("/api/v1/jobs")).json()
        assert jobs["count"] == 2
        done, queued = jobs["jobs"][1], jobs["jobs"][0]
        assert (done["state"], done["node"], done["files"]) == (
            "done", "g1", ["/api/v1/jobs/1/files/reconstruction.ply"])
        assert [v["path"] for v in done["videos"]] == ["GX010042.MP4", "GX020042.MP4"]
        assert (queued["attempt"], queued["priority"], queued["cpu_fallback"], queued["gpu_index"]) == (2, 0, False, None)
        history = (await client.get("/api/v1/jobs/1/events")).json()["events"]
        assert [(e["state"], e["node"]) for e in history] == [("done", "g1")]  # the history starts here
        nodes = {n["name"]: n for n in (await client.get("/api/v1/nodes")).json()["nodes"]}
        assert nodes["g1"]["state"] == "offline" and nodes["g1"]["offline_since"].startswith("2026-01-01T10:00")
        assert nodes["g1"]["status"] is None or nodes["g1"]["draining"] is False
        assert nodes["st"]["draining"] is False

        queued_id = queued["id"]
        app.state.store.cancel(queued_id)  # the new code writes to the old rows
        assert (await client.get(f"/api/v1/jobs/{queued_id}")).json()["state"] == "cancelled"


def test_downgrade_to_the_first_schema_and_up_again(engine):
    migrate.upgrade(engine)
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(migrate._config(conn), "0001")
    assert migrate.current_revision(engine) == "0001"
    assert "events" not in sa.inspect(engine).get_table_names()
    migrate.upgrade(engine)
    assert _schema_diff(engine) == []


def _search(store: Store, text: str) -> list[int]:
    jobs, count = store.list_jobs(text=text)
    rows, row_count = store.list_job_rows(text=text)
    assert [r["id"] for r in rows] == [j.id for j in jobs] and row_count == count == len(jobs), text
    return [j.id for j in jobs]


def _search_plan(store: Store, text: str) -> str:
    query = sa.select(Job.__table__.c.id).where(*store._job_filters(None, None, text))
    sql = str(query.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True}))
    with store.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            return " ".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # 3 rows: show that the index can serve it
        return " ".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql))


def test_text_search_index_from_the_previous_schema_follows_every_change(engine):
    migrate.upgrade(engine, "0002")
    _fill_first_schema(engine)  # jobs 1 (done, 2 videos) and 2 (queued)
    assert migrate.upgrade(engine) == ("0002", migrate.head_revision())
    store = Store(engine)
    assert _search(store, "gx020042") == [1]  # rows from before the index are in it
    assert _search(store, "WAITING for") == [2]
    plan = _search_plan(store, "gx020042")
    assert ("job_text VIRTUAL TABLE" in plan) if engine.dialect.name == "sqlite" else ("_trgm" in plan), plan

    now = utcnow()
    job = store.create_job(videos=[("st", "dive/GH010777.MP4"), ("st", "dive/GH020777.MP4")], backend="colmap",
                           fps=2, width=640, max_frames=None, recording="dive/GH0777")
    assert _search(store, "gh020777") == [job.id] and _search(store, "DIVE/GH0777") == [job.id]
    assert _search(store, "waiting for") == [job.id, 2]
    store.assign(job.id, attempt=1, node="g1", lease_s=30, now=now)  # message: "sent to g1"
    assert _search(store, "sent to g1") == [job.id] and _search(store, "waiting for") == [2]
    store.fail(job.id, "100% of the frames_out are blurred", node="g1", attempt=1, now=now)
    assert _search(store, "0% of") == [job.id]
    assert _search(store, "frames_out") == [job.id] and _search(store, "frames-out") == []  # _ and % are literal
    assert _search(store, "%") == [job.id] and _search(store, "g1") == [job.id]  # under 3 characters: a scan
    store.delete_job(job.id)
    assert _search(store, "gh020777") == [] and _search(store, "blurred") == []
    with engine.begin() as conn:  # a path changed by hand is found by its new name
        conn.execute(sa.text("UPDATE job_videos SET path = 'renamed/X.MP4' WHERE job_id = 1 AND position = 1"))
    assert _search(store, "renamed/x") == [1] and _search(store, "gx020042") == []


def test_search_without_the_index_scans_and_finds_the_same(engine):
    """SQLite without FTS5 (the table is not made): the store falls back to LIKE."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: PostgreSQL's fallback is the next test")
    migrate.upgrade(engine)
    _fill_first_schema(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE job_text")
    store = Store(engine)
    assert _search(store, "gx020042") == [1] and _search(store, "WAITING for") == [2]
    assert "job_text" not in _search_plan(store, "gx020042")


def test_without_the_right_to_create_pg_trgm_the_migration_goes_on_without_the_index(db, pg_cluster, caplog):
    if db is None:
        pytest.skip("PostgreSQL only: the extension's privileges")
    role = f"plain_{uuid.uuid4().hex[:8]}"  # not a superuser, not the database's owner: may not create extensions
    pg_cluster._admin(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
    admin = make_engine(db)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"GRANT ALL ON SCHEMA public TO {role}")
    admin.dispose()
    engine = make_engine(db.replace(f"//{pg_cluster.user}@", f"//{role}@"))
    try:
        with caplog.at_level(logging.WARNING, logger="services.core"):
            assert Store(engine).migrate() == (None, migrate.head_revision())
        assert "could not create the pg_trgm extension" in caplog.text and "CREATE EXTENSION pg_trgm" in caplog.text
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%trgm'")).scalar() == 0
        _fill_first_schema(engine)
        store = Store(engine)
        assert _search(store, "gx020042") == [1] and _search(store, "WAITING for") == [2]  # by scanning
        assert _schema_diff(engine) == []
    finally:
        engine.dispose()
