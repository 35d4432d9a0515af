"""GoPro file names → recordings: the chapters one recording was split into, in order.

A camera splits a long recording into chapters of ~4 GB:

* HERO6 and later: ``GXccnnnn.MP4`` (HEVC) or ``GHccnnnn.MP4`` (AVC), chapter ``cc`` from
  01, recording number ``nnnn``;
* older cameras: ``GOPRnnnn.MP4`` for the first chapter, then ``GPccnnnn.MP4`` from 01.

A recording is named by its folder, prefix and number (``100GOPRO/GX0042``); any other
video is a recording of one chapter named by its own path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from shared.gopro import Chapter, parse  # noqa: F401  (the parser lives in shared/, the storage agent uses it too)
from shared.videos import VideoInfo


@dataclass
class Recording:
    id: str
    gopro: bool
    chapters: list[VideoInfo] = field(default_factory=list)


def group(videos: Iterable[VideoInfo]) -> list[Recording]:
    """Recordings of a catalog, sorted by id, each with its chapters in order."""
    found: dict[str, tuple[Recording, list[tuple[int, VideoInfo]]]] = {}
    for video in videos:
        chapter = parse(video.path)
        recording, chapters = found.setdefault(chapter.recording, (Recording(chapter.recording, chapter.gopro), []))
        chapters.append((chapter.chapter, video))
    out = []
    for recording_id in sorted(found):
        recording, chapters = found[recording_id]
        recording.chapters = [v for _, v in sorted(chapters, key=lambda c: (c[0], c[1].path))]
        out.append(recording)
    return out
