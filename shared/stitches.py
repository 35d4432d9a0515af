"""Stitch wire models: ``PUT /stitches/{id}`` on a gpu agent, its state and ``stitch_K.json``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from shared.base import WireModel
from shared.cameras import Cameras, Matrix4
from shared.jobs import HTTP_URL_PATTERN


class StitchInput(WireModel):
    agent_url: Annotated[str, Field(min_length=1, max_length=2048, pattern=HTTP_URL_PATTERN,
                                    description="the agent holding the job, http(s)://host:port")]
    job_id: Annotated[int, Field(ge=1, le=10_000_000)]


class StitchSpec(WireModel):
    """The jobs to merge; the first is the reference frame."""

    jobs: Annotated[list[StitchInput], Field(min_length=2, max_length=16)]
    frames_per_job: Annotated[int, Field(ge=4, le=500, description="registered frames of each job matched "
                                         "against every other (cost grows with the square)")] = 20


class StitchJobResult(WireModel):
    agent_url: str
    job_id: int
    matrix: Matrix4 = Field(description="similarity (scale·R | t) from this job's frame into the first job's")
    scale: float
    cross_matches: int = Field(description="verified feature matches between this job's frames and the first job's")
    shared_frames: int = Field(description="frames of this job placed in the joint model")
    rmse: float = Field(description="camera-centre residual of the fit, in the first job's units")
    rmse_relative: float | None = Field(None, description="rmse over this job's trajectory length")


class StitchReport(WireModel):
    """``stitch_K.json`` in the work root, beside ``stitch_K.ply``."""

    stitch_id: int
    created_at: datetime
    ply: str
    cameras: str | None = Field(None, description="file of every job's cameras in the stitch's frame "
                                "(stitch_K_cameras.json); null for stitches made before it was written")
    jobs: list[StitchJobResult]

    def files(self) -> list[str]:
        """The stitch's files on its agent: the cloud, this report and the cameras."""
        return [self.ply, f"stitch_{self.stitch_id}.json"] + ([self.cameras] if self.cameras else [])


class StitchJobCameras(WireModel):
    job_id: int
    cameras: Cameras = Field(description="the job's cameras.json with every pose carried into the first job's frame")


class StitchCameras(WireModel):
    """``stitch_K_cameras.json``: each job's cameras in the stitch's (the first job's) frame."""

    stitch_id: int
    jobs: list[StitchJobCameras]


class StitchState(WireModel):
    stitch_id: int
    state: Literal["running", "done", "failed"]
    message: str = ""
    error: str | None = Field(None, description="why the stitch failed, in words a person can act on")
    report: StitchReport | None = None


class StitchRecord(WireModel):
    """``stitch_K.state.json`` on the agent: what it was asked and where it stands, kept across restarts."""

    spec: StitchSpec
    state: StitchState


class StitchCreate(WireModel):
    """``POST /api/v1/stitches`` on the core: finished jobs to merge; the first is the reference."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"jobs": [12, 15], "frames_per_job": 20}]})

    jobs: Annotated[list[Annotated[int, Field(ge=1, le=10_000_000)]], Field(min_length=2, max_length=16)]
    frames_per_job: Annotated[int, Field(ge=4, le=500)] = 20


class StitchPublic(WireModel):
    """A stitch as the core shows it; ``report`` once the agent has made it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "id": 1, "state": "done", "node": "gpu-84", "job_ids": [12, 15], "message": "stitched 2 jobs",
        "error": None, "files": ["stitch_1.ply", "stitch_1.json", "stitch_1_cameras.json"], "report": None,
        "created_at": "2026-11-29T10:00:00Z", "updated_at": "2026-11-29T10:04:00Z"}]})

    id: int
    state: str
    node: str | None
    job_ids: list[int]
    message: str = ""
    error: str | None = None
    files: list[str] = Field(default_factory=list)
    report: StitchReport | None = None
    created_at: datetime
    updated_at: datetime


class StitchViewerLink(WireModel):
    """A stitch's 3D viewer on its gpu node."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"stitch_id": 1, "port": 8601, "url": "http://192.168.1.84:8601/"}]})

    stitch_id: int
    port: int = Field(description="the port the viewer really listens on")
    url: str = Field(description="open this in a browser on the LAN")
