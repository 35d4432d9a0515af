"""Alembic environment of the core: runs on the connection :func:`services.core.migrate.upgrade` hands it."""

from __future__ import annotations

from alembic import context

from services.core.tables import SQLModel

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
