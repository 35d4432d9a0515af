"""Settings of the gpu agent."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from shared.qc import load_thresholds
from shared.settings import ServiceSettings


class GpuAgentSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="COSMA_GPU_", populate_by_name=True, extra="forbid")

    port: int = Field(8300, ge=0, le=65535, description="port to listen on")
    workdir: Path = Field(Path("/cosma-qc-frames"), description="root of the job folders (job_N/)")
    cpu_jobs: int = Field(1, ge=1, le=16, description="reconstructions on the CPU backend at once")
    jobs_per_gpu: int = Field(1, ge=1, le=8, description="reconstructions per GPU at once")
    ingests: int = Field(4, ge=1, le=64, description="jobs pulling frames at once")
    ingest_concurrency: int = Field(2, ge=1, le=16, description="videos of one job pulled at once (frames keep a sequential pull's numbers)")
    stream_reconstruction: bool = Field(True, description="start the backend as frames land, when a reconstruction slot is free and QC filtering is off; false: pull every frame first")
    colmap_max_features: int = Field(4096, ge=64, le=65536, description="colmap backend: SIFT features per frame at most")
    colmap_max_image_size: int = Field(2000, ge=256, le=8192, description="colmap backend: longest side SIFT works at")
    backend_threads: int = Field(0, ge=0, le=256, description="CPU threads for a backend (0: all cores)")
    disk_reserve_mib: int = Field(1024, ge=0, le=10**9, description="disk kept free under the workdir; jobs that would eat into it are refused (507)")
    cancel_grace_s: float = Field(5.0, gt=0, le=300, description="SIGTERM to SIGKILL delay on cancel")
    ingest_retries: int = Field(3, ge=0, le=20, description="new tries of a video after a transient error")
    storage_timeout_s: float = Field(60.0, gt=0, le=3600, description="read timeout on the frame stream")
    qc_filter_frames: bool = Field(False, description="drop blurry, black and frozen frames before reconstruction")
    qc_thresholds_file: Path | None = Field(None, description="JSON file of QC thresholds (see shared/qc.py)")
    lingbot_python: Path | None = Field(None, description="python of LingBot-Map's own environment (torch, lingbot_map)")
    lingbot_checkpoint: Path | None = Field(None, description="LingBot-Map checkpoint file (.pt; a pickle: trusted only)")
    viewer_base_port: int = Field(8100, ge=1, le=65535, description="job N's viewer listens on this port + N")
    stitch_viewer_base_port: int = Field(8600, ge=1, le=65535, description="stitch K's viewer listens on this "
                                         "port + K (apart from the jobs' ports; same viewer_max cap)")
    viewer_host: str = Field("0.0.0.0", description="address the viewers listen on")
    viewer_max: int = Field(4, ge=1, le=64, description="viewers running at once")
    viewer_idle_timeout_s: float = Field(1800.0, gt=0, description="a viewer stops after this long with no browser")
    viewer_max_points: int = Field(300_000, ge=1000, description="points a viewer sends to the browser")
    viewer_start_timeout_s: float = Field(60.0, gt=0, description="wait for a viewer to start serving")

    @field_validator("qc_thresholds_file")
    @classmethod
    def _thresholds_readable(cls, path: Path | None) -> Path | None:
        if path is not None:
            load_thresholds(path)  # fail at start, with the file's problem, not at the first job
        return path
