"""Draining and offline nodes, job priorities and placements, the event history, stitches.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("draining", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("offline_since", TS))
        batch.add_column(sa.Column("announced", sa.Boolean, nullable=False, server_default=sa.false()))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("cpu_fallback", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("run_backend", sa.String(16)))
        batch.add_column(sa.Column("gpu_index", sa.Integer))
        batch.add_column(sa.Column("retry_base", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("recording", sa.String(512)))
    op.create_index("ix_jobs_claim", "jobs", ["state", "priority", "id"])
    # Offline nodes of the old schema have no "since": take their last sighting.
    op.execute("UPDATE nodes SET offline_since = last_seen WHERE state = 'offline'")

    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("job_id", sa.Integer),
        sa.Column("node", sa.String(64)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_index("ix_events_job_id", "events", ["job_id"])
    # The history starts with the jobs that exist: one event per job, in its current state.
    op.execute(
        "INSERT INTO events (at, kind, job_id, node, state, attempt, message) "
        "SELECT updated_at, 'job', id, node, state, attempt, COALESCE(error, message) FROM jobs ORDER BY id"
    )
    op.create_table(
        "stitches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("node", sa.String(64)),
        sa.Column("job_ids", sa.JSON, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("files", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS),
    )


def downgrade() -> None:
    op.drop_table("stitches")
    op.drop_index("ix_events_job_id", "events")
    op.drop_table("events")
    op.drop_index("ix_jobs_claim", "jobs")
    with op.batch_alter_table("jobs") as batch:
        for name in ("recording", "retry_base", "gpu_index", "run_backend", "cpu_fallback", "priority"):
            batch.drop_column(name)
    with op.batch_alter_table("nodes") as batch:
        for name in ("announced", "offline_since", "draining"):
            batch.drop_column(name)
