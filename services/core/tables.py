"""The core's tables (SQLModel) and the column types that make them portable.

The schema is owned by the Alembic revisions in ``migrations/versions``: change a table
here, then add a revision that makes the same change (``tests/core/test_core_migrations.py``
fails while the two disagree). No native enums and no SQLite-only types, so the same
tables run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from shared.jobs import JobState


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class NodeRole(str, enum.Enum):
    gpu = "gpu"
    storage = "storage"


class NodeState(str, enum.Enum):
    """Reachability as last polled; ``draining`` is only ever shown, never stored (see ``Node.draining``)."""

    unknown = "unknown"  # added, not polled yet
    online = "online"
    offline = "offline"
    draining = "draining"


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

    def result_processor(self, dialect, coltype):
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        # SQLite keeps "YYYY-MM-DD HH:MM:SS[.ffffff]" text: fromisoformat (C) instead of
        # SQLAlchemy's regular-expression parser, then UTC; a third of a list's read was this.
        def process(value: str | None) -> datetime | None:
            return None if value is None else datetime.fromisoformat(value).replace(tzinfo=timezone.utc)

        return process

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
    # revision 0002
    draining: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    offline_since: datetime | None = Field(default=None, sa_type=UtcDateTime)
    announced: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})

    @property
    def shown_state(self) -> NodeState:
        return NodeState.draining if self.draining and self.state == NodeState.online else self.state


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (sa.Index("ix_jobs_claim", "state", "priority", "id"),)  # the scheduler's queue order

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
    # revision 0002
    priority: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    cpu_fallback: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    #: Backend of the current placement (the job's own, or colmap when it fell back to the CPU).
    run_backend: str | None = Field(default=None, max_length=16)
    gpu_index: int | None = None
    #: Attempts made before the last retry; max_attempts counts from here.
    retry_base: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    recording: str | None = Field(default=None, max_length=512)

    @property
    def placed_backend(self) -> str:
        return self.run_backend or self.backend


class JobVideo(SQLModel, table=True):
    __tablename__ = "job_videos"

    job_id: int = Field(foreign_key="jobs.id", primary_key=True)
    position: int = Field(primary_key=True)
    storage: str = Field(max_length=64)
    path: str = Field(sa_type=sa.Text)


class Event(SQLModel, table=True):
    """One change of a job or a node: the job history, and what ``/api/v1/events`` streams."""

    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UtcDateTime)
    kind: str = Field(max_length=8, description="'job' or 'node'")
    job_id: int | None = Field(default=None, index=True)
    node: str | None = Field(default=None, max_length=64)
    state: str = Field(max_length=16)
    attempt: int | None = None
    message: str = Field(default="", sa_type=sa.Text)


class Stitch(SQLModel, table=True):
    """Several finished jobs registered into one cloud (``stitch_K.ply`` on a gpu node)."""

    __tablename__ = "stitches"

    id: int | None = Field(default=None, primary_key=True)
    state: JobState = Field(default=JobState.queued, sa_type=_enum(JobState))
    node: str | None = Field(default=None, max_length=64)
    job_ids: list[int] = Field(default_factory=list, sa_type=sa.JSON)
    message: str = Field(default="", sa_type=sa.Text)
    error: str | None = Field(default=None, sa_type=sa.Text)
    files: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


TABLES = (Node, Job, JobVideo, Event, Stitch)
