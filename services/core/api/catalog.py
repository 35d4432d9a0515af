"""``/api/v1/videos`` and ``/api/v1/recordings``: the catalog across every storage node."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.core import catalog, gopro
from services.core.api.deps import AgentsDep, StoreDep
from services.core.models import (ERROR_RESPONSES, CatalogVideo, RecordingPublic, RecordingsPublic, StorageError,
                                  VideosPublic)

router = APIRouter(tags=["catalog"], responses=ERROR_RESPONSES)

# The agent's VideoInfo carries more facts than the core publishes (rotation, bit rate, ...).
_VIDEO_FIELDS = set(CatalogVideo.model_fields) - {"storage", "recording", "chapter"}
StorageFilter = Annotated[list[str] | None, Query(description="only these storage nodes (default: all)")]


@router.get("/videos")
async def list_videos(store: StoreDep, agents: AgentsDep, storage: StorageFilter = None) -> VideosPublic:
    """Every video on every storage node, with its recording and chapter; unreachable nodes under errors."""
    found, errors = await catalog.catalogs(store, agents, storage)
    videos = []
    for node in found:
        for video in node.videos:
            chapter = gopro.parse(video.path)
            videos.append(CatalogVideo(storage=node.node, recording=chapter.recording, chapter=chapter.chapter,
                                       **video.model_dump(include=_VIDEO_FIELDS)))
    return VideosPublic(videos=videos, errors=_errors(errors))


@router.get("/recordings")
async def list_recordings(store: StoreDep, agents: AgentsDep, storage: StorageFilter = None) -> RecordingsPublic:
    """Recordings (GoPro chapters grouped, in order) on every storage node; submit one with ``recording``."""
    found, errors = await catalog.catalogs(store, agents, storage)
    recordings = []
    for node in found:
        for rec in node.recordings:
            durations = [v.duration_s for v in rec.chapters]
            recordings.append(RecordingPublic(
                storage=node.node, id=rec.id, gopro=rec.gopro, chapters=[v.path for v in rec.chapters],
                duration_s=None if None in durations else round(sum(durations), 3),
                size_bytes=sum(v.size_bytes for v in rec.chapters),
                unreadable=[v.path for v in rec.chapters if v.error],
            ))
    return RecordingsPublic(recordings=recordings, errors=_errors(errors))


def _errors(errors: dict[str, str]) -> list[StorageError]:
    return [StorageError(storage=name, message=message) for name, message in sorted(errors.items())]
