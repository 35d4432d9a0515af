"""Writing the frame stream as an uncompressed tar, one member at a time.

The format is described in :mod:`shared.videos`: ``frame_%06d.jpg`` members with a pax
header ``COSMA.t_s``, then ``end.json``. Members are produced as bytes so they can be sent
as soon as each frame exists; :mod:`tarfile` reads the result with ``mode="r|"``.
"""

from __future__ import annotations

import tarfile
import time

from shared.frames import FRAME_NAME_FORMAT
from shared.videos import STREAM_END_NAME, TAR_TIMESTAMP_KEY, StreamEnd

_BLOCK = tarfile.BLOCKSIZE
#: Two zero blocks end a tar archive.
END_OF_ARCHIVE = b"\0" * (2 * _BLOCK)


def member(name: str, data: bytes, *, pax: dict[str, str] | None = None, mtime: float | None = None) -> bytes:
    """One tar member: (pax header,) header, data, padding to the block size."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(time.time() if mtime is None else mtime)
    if pax:
        info.pax_headers = dict(pax)
    header = info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")
    padding = -len(data) % _BLOCK
    return b"".join((header, data, b"\0" * padding))


def frame_member(number: int, t_s: float, jpeg: bytes) -> bytes:
    """Frame ``number`` (from 1) taken at ``t_s`` seconds into its video."""
    return member(FRAME_NAME_FORMAT.format(number), jpeg, pax={TAR_TIMESTAMP_KEY: f"{t_s:.6f}"})


def end_members(end: StreamEnd) -> bytes:
    """``end.json`` and the end-of-archive blocks: the last bytes of every stream."""
    return member(STREAM_END_NAME, end.model_dump_json().encode()) + END_OF_ARCHIVE
