"""``/videos`` and ``/recordings``: the catalog, one video's facts, a thumbnail, its frames as a tar stream."""

from __future__ import annotations

import logging
from typing import Annotated

import anyio
from fastapi import APIRouter, Query
from pydantic import Field
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from shared.videos import FrameParams, RecordingList, ThumbnailParams, VideoInfo, VideoList
from services.storage_agent.api.deps import AgentDep
from services.storage_agent.frames import Extraction, Segmented, plan_extraction
from services.storage_agent.probe import ProbeError, VideoUnreadable

log = logging.getLogger(__name__)
router = APIRouter(tags=["videos"])

TAR_MEDIA_TYPE = "application/x-tar"


class ExtractionResponse(StreamingResponse):
    """Streams an extraction and stops its ffmpeg however the response ends.

    The body generator alone is not enough: if the client goes away before the first
    chunk, or the server stops iterating after a failed send, the generator's own
    clean-up never runs.
    """

    def __init__(self, extraction: Extraction | Segmented):
        super().__init__(extraction.tar_chunks(), media_type=TAR_MEDIA_TYPE,
                         headers={"Cache-Control": "no-store"})
        self.extraction = extraction

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A client that takes no bytes for as long as ffmpeg may stall (stopped, or cut off with
        # no FIN) is dropped: else it holds an extraction slot for ever and starves the others.
        timeout_s = self.extraction._stall_timeout_s

        async def send_or_drop(message) -> None:
            with anyio.fail_after(timeout_s):
                await send(message)

        try:
            await super().__call__(scope, receive, send_or_drop)
        except* TimeoutError:
            log.warning("frames of %s: the client took nothing for %g s; stream dropped, ffmpeg stopped",
                        self.extraction.video.path, timeout_s)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
                await self.extraction.close()


FolderQuery = Annotated[
    str | None, Query(max_length=4096, description="only videos under this folder (relative, '/'-separated)")
]


@router.get("/videos")
async def list_videos(
    agent: AgentDep,
    folder: FolderQuery = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int | None, Query(ge=1, le=100_000, description="page size; default: all")] = None,
) -> VideoList:
    """Videos under the storage roots (or one folder) with size, mtime, ffprobe facts (or why unreadable)."""
    return await agent.catalog.list_videos(folder or None, offset=offset, limit=limit)


@router.get("/recordings")
async def list_recordings(agent: AgentDep, folder: FolderQuery = None) -> RecordingList:
    """Recordings: GoPro chapters grouped in chapter order with their total duration; other videos alone."""
    return await agent.catalog.recordings(folder or None)


class FramesQuery(FrameParams):
    """The frames route's query: :class:`FrameParams` and this node's own decoding option."""

    segments: Annotated[int | None, Field(
        ge=1, le=64,
        description="most ffmpeg processes this extraction may run at once, each decoding a time segment "
                    "(1 = one pass; default: the node's decode_processes; always within it, and only for "
                    "videos of at least two min_segment_s, not in keyframes mode); for benchmarks and tests",
    )] = None


@router.get(
    "/videos/{path:path}/frames",
    status_code=200,  # ExtractionResponse has no status_code default for the OpenAPI generator to read
    response_class=ExtractionResponse,
    responses={200: {"content": {TAR_MEDIA_TYPE: {}}, "description": "tar of frame_%06d.jpg, then end.json"}},
)
async def stream_frames(
    path: str, params: Annotated[FramesQuery, Query()], agent: AgentDep
) -> ExtractionResponse:
    """Sample frames with ffmpeg on this node and stream them as a tar while they are made."""
    video = agent.roots.resolve(path)
    try:
        facts = await agent.catalog.facts(video.file)
    except ProbeError as exc:
        raise VideoUnreadable(f"cannot read video {path!r}: {exc.reason}") from None
    plan = plan_extraction(params, facts)
    extraction = await agent.extractor.start(video, plan, segments=params.segments)
    return ExtractionResponse(extraction)


@router.get(
    "/videos/{path:path}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "one JPEG"}},
)
async def get_thumbnail(path: str, params: Annotated[ThumbnailParams, Query()], agent: AgentDep) -> Response:
    """One JPEG of the video at ``t`` seconds (default: 10% in), ``width`` wide."""
    video = agent.roots.resolve(path)
    try:
        facts = await agent.catalog.facts(video.file)
    except ProbeError as exc:
        raise VideoUnreadable(f"cannot read video {path!r}: {exc.reason}") from None
    jpeg = await agent.thumbnailer.make(video, facts, params)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})


@router.get("/videos/{path:path}")
async def get_video(path: str, agent: AgentDep) -> VideoInfo:
    """Catalog entry of one video."""
    return await agent.catalog.info(agent.roots.resolve(path))
