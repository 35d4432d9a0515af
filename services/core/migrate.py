"""Schema migrations: bring a database to the newest Alembic revision, keeping its data.

A database made by the walking skeleton (tables, but no ``alembic_version``) is stamped at
revision 0001, which is that schema, and upgraded from there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
FIRST_REVISION = "0001"


def _config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(_config(None)).get_current_head()  # type: ignore[arg-type]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Migrate to ``revision``; returns (revision before, revision after)."""
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch migrations copy tables; foreign keys would refuse the drop of the old copy.
            # (Only outside a transaction does SQLite take this pragma.)
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()  # ends SQLAlchemy's autobegun transaction (no SQL sent)
        try:
            with connection.begin():
                before, after = _upgrade(connection, revision)
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()
    if before != after:
        log.info("database migrated from %s to %s", before or "empty", after)
    return before, after


def _upgrade(connection: sa.Connection, revision: str) -> tuple[str | None, str]:
    if connection.dialect.name == "postgresql":
        # Several cores may start at once: one migrates, the others wait for it.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(384901)")
    before = MigrationContext.configure(connection).get_current_revision()
    if before is None and sa.inspect(connection).has_table("jobs"):
        log.info("database has the first schema but no revision: stamping %s", FIRST_REVISION)
        command.stamp(_config(connection), FIRST_REVISION)
        before = FIRST_REVISION
    command.upgrade(_config(connection), revision)
    return before, MigrationContext.configure(connection).get_current_revision()
