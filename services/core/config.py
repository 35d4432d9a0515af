"""Settings of the core: where it keeps its database and how its scheduler paces itself."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class CoreSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="COSMA_CORE_", populate_by_name=True, extra="forbid")

    port: int = Field(3849, ge=0, le=65535, description="port to listen on")
    data_dir: Path = Field(Path("./cosma-qc-data"), description="folder holding the core's SQLite database")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy database URL, e.g. postgresql+psycopg://user@host/cosma; "
        "none: the SQLite file core.db in the data dir",
    )
    scheduler_enabled: bool = Field(
        True, description="run the scheduler loop in the background (off: call tick() by hand)"
    )
    tick_interval_s: float = Field(1.0, gt=0, le=3600, description="seconds between scheduler ticks")
    poll_timeout_s: float = Field(
        5.0, gt=0, le=300, description="timeout of each status or job poll sent to an agent"
    )
    request_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="timeout of other requests to agents (job pushes, video catalogs, cancels)",
    )
    lease_s: float = Field(
        30.0, gt=0, le=86_400,
        description="a placed job whose agent stays silent this long is taken back and requeued",
    )
    max_attempts: int = Field(3, ge=1, le=100, description="placements of one job before it is failed")
    jobs_per_gpu: int = Field(1, ge=1, le=16, description="gpu jobs placed on one GPU at once")

    read_threads: int | None = Field(
        None, ge=1, le=64,
        description="threads serving the API's database reads; none: 1 with SQLite (reads are "
        "CPU work under Python's GIL), 4 with PostgreSQL (reads wait on the network)",
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'core.db').resolve()}"
