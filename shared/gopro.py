"""GoPro file names → (recording, chapter): the chapters one recording was split into.

A camera splits a long recording into chapters of ~4 GB:

* HERO5 and later: ``GXccnnnn.MP4`` (HEVC) or ``GHccnnnn.MP4`` (AVC), chapter ``cc`` from
  01, recording number ``nnnn``;
* older cameras: ``GOPRnnnn.MP4`` for the first chapter, then ``GPccnnnn.MP4`` from 01
  (so ``GP01nnnn`` is the second chapter).

A recording is named by its folder, prefix and number (``100GOPRO/GX0042``); any other
video is a recording of one chapter named by its own path. Pure: used by the storage
agent (``GET /recordings``) and by the core when an agent does not group.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NEW = re.compile(r"^(G[XH])(\d{2})(\d{4})\.(mp4|mov)$", re.IGNORECASE)
_OLD_FIRST = re.compile(r"^GOPR(\d{4})\.(mp4|mov)$", re.IGNORECASE)
_OLD_NEXT = re.compile(r"^GP(\d{2})(\d{4})\.(mp4|mov)$", re.IGNORECASE)


@dataclass(frozen=True)
class Chapter:
    recording: str  # recording id
    chapter: int  # 1 for the first chapter
    gopro: bool


def parse(path: str) -> Chapter:
    """The recording and chapter of a video path (relative, '/'-separated)."""
    folder, _, name = path.rpartition("/")
    prefix = f"{folder}/" if folder else ""
    if m := _NEW.match(name):
        return Chapter(f"{prefix}{m.group(1).upper()}{m.group(3)}", int(m.group(2)), True)
    if m := _OLD_FIRST.match(name):
        return Chapter(f"{prefix}GOPR{m.group(1)}", 1, True)
    if m := _OLD_NEXT.match(name):
        return Chapter(f"{prefix}GOPR{m.group(2)}", int(m.group(1)) + 1, True)
    return Chapter(path, 1, False)
