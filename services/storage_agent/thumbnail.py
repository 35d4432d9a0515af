"""One JPEG of a video at a given time: ``GET /videos/{path}/thumbnail``.

ffmpeg seeks before the input (a keyframe seek, then decoding up to ``t``), so a thumbnail
costs one group of pictures whatever the length of the video. Thumbnails run a few at a
time, outside the frame-extraction slots: they are short and a catalog page asks for many.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from shared.errors import BadRequest
from shared.videos import ThumbnailParams
from services.storage_agent import fftools
from services.storage_agent.jpeg import MAX_FRAME_BYTES, SOI
from services.storage_agent.paths import ResolvedVideo
from services.storage_agent.probe import VideoFacts

#: JPEG qscale of thumbnails: small files, good enough to recognise a scene.
THUMBNAIL_QUALITY = 5
#: Share of the duration where the default thumbnail is taken: past the camera's first shake.
DEFAULT_AT = 0.1


def thumbnail_time(params: ThumbnailParams, facts: VideoFacts) -> float:
    """The time the thumbnail is taken at; :class:`BadRequest` past the end."""
    duration = facts.duration_s
    if params.t is None:
        return round(duration * DEFAULT_AT, 3) if duration else 0.0
    if duration is not None and params.t >= duration:
        raise BadRequest(f"t ({params.t:g}) is at or past the end of the video ({duration:.3f} s)")
    return params.t


def thumbnail_argv(file: Path, t_s: float, width: int) -> list[str]:
    return [
        fftools.FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error",
        "-ss", f"{t_s:.6f}", *fftools.input_args(file),
        "-map", "0:v:0", "-frames:v", "1", "-vf", f"scale={width}:-2",
        "-f", "image2pipe", "-c:v", "mjpeg", "-q:v", str(THUMBNAIL_QUALITY), "-",
    ]


class Thumbnailer:
    def __init__(self, *, concurrency: int, timeout_s: float):
        self._slots = asyncio.Semaphore(concurrency)
        self._timeout_s = timeout_s

    async def make(self, video: ResolvedVideo, facts: VideoFacts, params: ThumbnailParams) -> bytes:
        """The JPEG bytes; :class:`BadRequest` (422) if the video has no frame there."""
        t_s = thumbnail_time(params, facts)
        async with self._slots:
            proc = await fftools.start(thumbnail_argv(video.file, t_s, params.width))
            try:
                out = await asyncio.wait_for(self._read(proc.stdout), self._timeout_s)
                rc = await asyncio.wait_for(proc.wait(), self._timeout_s)
            except asyncio.TimeoutError:
                raise BadRequest(f"no thumbnail of {video.path!r}: ffmpeg took longer than "
                                 f"{self._timeout_s:g} s", code="unreadable_video") from None
            finally:
                await fftools.stop(proc)
        if rc != 0:
            reason = fftools.reason_from_log(list(proc.stderr_tail), video.file) or proc.describe_exit(rc)
            raise BadRequest(f"no thumbnail of {video.path!r} at {t_s:g} s: {reason}", code="unreadable_video")
        if not out.startswith(SOI):
            raise BadRequest(f"no thumbnail of {video.path!r}: no frame could be decoded at {t_s:g} s",
                             code="unreadable_video")
        return out

    @staticmethod
    async def _read(stream: asyncio.StreamReader) -> bytes:
        out = bytearray()
        while chunk := await stream.read(1 << 16):
            out += chunk
            if len(out) > MAX_FRAME_BYTES:
                raise BadRequest("ffmpeg's thumbnail is far larger than a JPEG should be")
        return bytes(out)
