"""Settings of the storage agent (flags, ``COSMA_STORAGE_*`` variables, defaults)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class StorageSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="COSMA_STORAGE_", populate_by_name=True, extra="forbid")

    port: int = Field(8310, ge=0, le=65535, description="port to listen on")
    # In the environment: a JSON list, COSMA_STORAGE_ROOTS='["/mnt/portablessd"]'.
    roots: list[Path] = Field([], description="folder holding videos; repeat for several")
    state_dir: Path | None = Field(
        None, description="folder for the agent's own state (the probe cache); none: cache in memory only"
    )
    probe_timeout_s: float = Field(30.0, gt=0, le=600, description="seconds ffprobe may take on one file")
    probe_concurrency: int = Field(
        4, ge=1, le=64, description="ffprobe processes run at once while listing the catalog"
    )
    max_concurrent_extractions: int = Field(
        2, ge=1, le=64, description="ffmpeg frame extractions run at once; more requests wait"
    )
    max_queued_extractions: int = Field(
        8, ge=0, le=1000, description="frames requests that may wait for a slot; more get 503 at once"
    )
    extraction_wait_s: float = Field(
        30.0, ge=0, le=3600,
        description="seconds a queued frames request waits for a free extraction slot before a 503",
    )
    cpu_share: float = Field(
        1.0, gt=0, le=1,
        description="share of this node's CPU cores frame extraction may keep busy; sets the default of "
                    "decode_processes (cores x share)",
    )
    decode_processes: int | None = Field(
        None, ge=1, le=256,
        description="ffmpeg decode processes all frame extractions together may run at once: a long video's "
                    "time segments are decoded in parallel within it (each extraction always runs one); "
                    "below max_concurrent_extractions it lowers that too; default: cores x cpu_share, "
                    "at least max_concurrent_extractions",
    )
    min_segment_s: float = Field(
        30.0, ge=0.5, le=86_400,
        description="seconds of video a time segment must have to get its own ffmpeg (shorter videos: one pass)",
    )
    segment_buffer_mib: int = Field(
        64, ge=1, le=4096,
        description="MiB of JPEGs a segment decoded ahead of the one being streamed may hold before its "
                    "ffmpeg waits",
    )
    stall_timeout_s: float = Field(
        120.0, gt=0, le=3600,
        description="seconds ffmpeg may go without producing output before it is stopped",
    )

    def resolved_decode_processes(self, cores: int) -> int:
        """``decode_processes``, or ``cores`` x ``cpu_share`` but no fewer than ``max_concurrent_extractions``."""
        return self.decode_processes or max(self.max_concurrent_extractions, round(cores * self.cpu_share))

    @field_validator("roots")
    @classmethod
    def _roots_are_folders(cls, roots: list[Path]) -> list[Path]:
        resolved: list[Path] = []
        for root in roots:
            if not root.exists():
                raise ValueError(f"storage root {root} does not exist; is the disk mounted?")
            if not root.is_dir():
                raise ValueError(f"storage root {root} is not a folder")
            real = root.resolve()
            for i, other in enumerate(resolved):
                # A file under nested roots would have two paths and be listed twice.
                if real == other or real.is_relative_to(other) or other.is_relative_to(real):
                    raise ValueError(
                        f"storage root {root} overlaps root {roots[i]}; give folders that do not contain each other"
                    )
            resolved.append(real)
        return roots
