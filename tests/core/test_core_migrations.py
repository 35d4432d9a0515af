"""Alembic migrations: from an empty database, and from the previous (skeleton) schema with data."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from core_db import db, pg_cluster, pytest_generate_tests  # noqa: F401

from core_fakes import anyio_backend, core_settings, running_core  # noqa: F401
from services.core import migrate
from services.core.store import Store, make_engine
from services.core.tables import SQLModel


@pytest.fixture
def engine(db, tmp_path):
    engine = make_engine(db or f"sqlite:///{tmp_path / 'core' / 'core.db'}")
    yield engine
    engine.dispose()


def _schema_diff(engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)


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
