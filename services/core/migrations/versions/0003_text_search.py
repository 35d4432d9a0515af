"""Indexes for the job list's text search (``GET /api/v1/jobs?q=``).

``q`` matches, case-insensitively, a substring of a job's message, error or recording or of
one of its video paths. A plain index cannot serve ``LIKE '%…%'``; trigram indexes can:

* PostgreSQL: ``pg_trgm`` GIN indexes on ``jobs.message``, ``error``, ``recording`` and
  ``job_videos.path`` (the store's query is one ``ILIKE`` per column, which they serve).
  ``CREATE EXTENSION pg_trgm`` needs a superuser, or (PostgreSQL 13+, where pg_trgm is a
  trusted extension) the owner of the database. If the core's user may not create it, the
  migration logs a warning and goes on without the indexes: search still works, by scanning.
  The operator can add them later: ``CREATE EXTENSION pg_trgm;`` then the four
  ``CREATE INDEX`` statements of :data:`PG_INDEXES` (see services/core/README.md).
* SQLite: an FTS5 table ``job_text`` with the trigram tokenizer (SQLite 3.34+), one row per
  job (rowid = job id; error, recording and video paths, one per line), kept up to date by
  triggers on ``jobs`` and ``job_videos``. Not the message: the scheduler rewrites the
  waiting reason of every queued job whenever it changes (1,000 at once on a first placing
  tick), and an FTS5 row costs ~70 µs to rewrite (+90 ms on that tick, measured); the store
  matches the message with ``LIKE`` (a scan of one column, ~1 ms at 10,000 jobs). Without
  FTS5 the table is not made and everything is scanned, as before.

SQLite batch migrations copy a table and drop the old one, and its triggers with it: a later
revision that batch-alters ``jobs`` or ``job_videos`` must call :func:`create_sqlite_triggers`
again.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import logging
import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("services.core.migrations")  # alembic loads this file under another name

#: (index name, table, column) of the PostgreSQL trigram indexes.
PG_INDEXES = (("ix_jobs_message_trgm", "jobs", "message"), ("ix_jobs_error_trgm", "jobs", "error"),
              ("ix_jobs_recording_trgm", "jobs", "recording"), ("ix_job_videos_path_trgm", "job_videos", "path"))

#: The indexed text of jobs (SQLite), one field per line (not the message: see above).
_SQLITE_BODY = (
    "SELECT j.id, coalesce(j.error, '') || char(10) || coalesce(j.recording, '') || char(10)"
    " || coalesce((SELECT group_concat(v.path, char(10)) FROM job_videos v WHERE v.job_id = j.id), '')"
    " FROM jobs j"
)


def _rebuild(job_id: str) -> str:
    return (f"DELETE FROM job_text WHERE rowid = {job_id}; "
            f"INSERT INTO job_text (rowid, body) {_SQLITE_BODY} WHERE j.id = {job_id};")


SQLITE_TRIGGERS = {
    "job_text_job_insert": f"AFTER INSERT ON jobs BEGIN {_rebuild('new.id')} END",
    "job_text_job_update": ("AFTER UPDATE OF error, recording ON jobs"
                            " WHEN old.error IS NOT new.error OR old.recording IS NOT new.recording"
                            f" BEGIN {_rebuild('new.id')} END"),
    "job_text_job_delete": "AFTER DELETE ON jobs BEGIN DELETE FROM job_text WHERE rowid = old.id; END",
    "job_text_video_insert": f"AFTER INSERT ON job_videos BEGIN {_rebuild('new.job_id')} END",
    "job_text_video_update": f"AFTER UPDATE ON job_videos BEGIN {_rebuild('old.job_id')} {_rebuild('new.job_id')} END",
    "job_text_video_delete": f"AFTER DELETE ON job_videos BEGIN {_rebuild('old.job_id')} END",
}


def create_sqlite_triggers() -> None:
    for name, body in SQLITE_TRIGGERS.items():
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute(f"CREATE TRIGGER {name} {body}")


def _sqlite_has_trigram() -> str | None:
    """None if this SQLite has FTS5 with the trigram tokenizer, else why not."""
    probe = sqlite3.connect(":memory:")  # the library the driver uses; tried aside, not in the migration
    try:
        probe.execute("CREATE VIRTUAL TABLE probe USING fts5(body, tokenize = 'trigram')")
        return None
    except sqlite3.Error as exc:
        return f"{exc} (SQLite {sqlite3.sqlite_version}; the trigram tokenizer needs FTS5 and 3.34+)"
    finally:
        probe.close()


def _upgrade_sqlite() -> None:
    missing = _sqlite_has_trigram()
    if missing:
        log.warning("no text search index for the job list: %s; search scans instead", missing)
        return
    op.execute("CREATE VIRTUAL TABLE job_text USING fts5(body, tokenize = 'trigram')")
    create_sqlite_triggers()
    op.execute(f"INSERT INTO job_text (rowid, body) {_SQLITE_BODY}")


def _upgrade_postgresql(bind: sa.Connection) -> None:
    has_trgm = bind.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").scalar() is not None
    if not has_trgm:
        try:
            with bind.begin_nested():  # a savepoint: a refusal must not abort the migration's transaction
                bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        except sa.exc.DBAPIError as exc:
            log.warning("could not create the pg_trgm extension (%s); the job list's text search works without "
                        "an index. To add one: as a superuser or the database owner run CREATE EXTENSION pg_trgm; "
                        "then the CREATE INDEX statements in services/core/README.md", str(exc.orig).splitlines()[0])
            return
    for name, table, column in PG_INDEXES:
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING gin ({column} gin_trgm_ops)")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _upgrade_sqlite()
    elif bind.dialect.name == "postgresql":
        _upgrade_postgresql(bind)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS job_text")
    elif bind.dialect.name == "postgresql":
        for name, _table, _column in PG_INDEXES:
            op.execute(f"DROP INDEX IF EXISTS {name}")  # the extension stays: others may use it
