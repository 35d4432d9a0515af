"""Pulling one video's frames from a storage agent into a job folder.

The storage agent streams a tar (see :mod:`shared.videos`); frames are read as they arrive,
written under a temporary name and renamed, so a frame file that exists is complete. A
stream that ends without its ``end.json`` member, or whose member says ffmpeg failed, is an
error: the video is fetched again in full on the next attempt.

The videos of a job may be pulled at once (:class:`OrderedFrames`): each into its own
staging folder, its frames moved into the job folder, with the numbers a one-by-one pull
gives them, only once every earlier video is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import threading
from pathlib import Path
from typing import Callable, Protocol
from urllib.parse import quote

import httpx

from shared.auth import auth_headers
from shared.frames import FRAME_NAME_FORMAT, IndexedFrame
from shared.jobs import ExtractParams, VideoSource
from shared.videos import STREAM_END_NAME, TAR_TIMESTAMP_KEY, StreamEnd, VideoInfo


class IngestError(Exception):
    """A video could not be pulled; the message names the video and the reason.

    ``retryable`` errors (storage busy or unreachable, a stream cut off) are worth another
    try; the others (unreadable video, refused path) are not.
    """

    def __init__(self, message: str, *, retryable: bool = False, retry_after_s: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s  # the storage agent's Retry-After, when it sent one


class IngestCancelled(Exception):
    pass


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


class AnyOf:
    """Set when any of its flags is: the job's cancel, or a stop for this ingest only."""

    def __init__(self, *flags: CancelFlag):
        self.flags = flags

    def is_set(self) -> bool:
        return any(flag.is_set() for flag in self.flags)


def staging_dir(job_dir: Path, video_index: int) -> Path:
    """Where video ``video_index`` is pulled before its frames join the job folder."""
    return job_dir / f".video_{video_index}.pulling"


class OrderedFrames:
    """The frames of a job's videos, pulled at once, moved into the job folder in job order.

    Video ``i`` is pulled into :func:`staging_dir` numbered from 1. A frame is moved into
    the job folder, renamed to its job-wide number, as soon as every earlier video is
    complete: a reader of the job folder sees frames appear in order, numbered exactly as
    a one-by-one pull numbers them. ``on_publish(frame, path)`` is called for each, in
    order. Thread-safe: pull threads call :meth:`add`; the ingest calls :meth:`complete`.

    A video pulled again after an error re-sends its frames from the first: those already
    moved into the job folder are dropped (the storage agent extracts the same frames
    for the same video and parameters), the others are staged again.
    """

    def __init__(self, job_dir: Path, videos: int, *, first_video: int, next_number: int,
                 on_publish: Callable[[IndexedFrame, Path], None]):  # fmt: skip
        self.job_dir = job_dir
        self.head = first_video  # the first video not complete yet: its frames go straight through
        self.next_number = next_number
        self.on_publish = on_publish
        self.published: dict[int, list[IndexedFrame]] = {i: [] for i in range(videos)}
        self._staged: dict[int, list[tuple[IndexedFrame, Path]]] = {i: [] for i in range(videos)}
        self._complete: set[int] = set()
        self._lock = threading.Lock()

    def add(self, video: int, frame: IndexedFrame, path: Path) -> None:
        with self._lock:
            if frame.index <= len(self.published[video]):
                path.unlink(missing_ok=True)  # a retried pull re-sent a frame already in the job folder
                return
            self._staged[video].append((frame, path))
            if video == self.head:
                self._flush(video)

    def restart(self, video: int) -> None:
        """Before pulling ``video`` again: forget its staged frames."""
        with self._lock:
            for _, path in self._staged[video]:
                path.unlink(missing_ok=True)
            self._staged[video] = []

    def complete(self, video: int) -> list[int]:
        """Mark ``video`` pulled; returns the videos now complete in the job folder, in order."""
        with self._lock:
            self._complete.add(video)
            finished = []
            while self.head in self._complete:
                self._flush(self.head)
                finished.append(self.head)
                shutil.rmtree(staging_dir(self.job_dir, self.head), ignore_errors=True)
                self.head += 1
                if self.head in self._staged:
                    self._flush(self.head)
            return finished

    def _flush(self, video: int) -> None:
        for staged, path in self._staged[video]:
            frame = IndexedFrame(name=FRAME_NAME_FORMAT.format(self.next_number), index=self.next_number,
                                 video=video, t_s=staged.t_s)  # fmt: skip
            target = self.job_dir / frame.name
            os.replace(path, target)
            self.next_number += 1
            self.published[video].append(frame)
            self.on_publish(frame, target)
        self._staged[video] = []


class _ByteStream:
    """A read()-able file over an iterator of chunks, for tarfile's streaming mode."""

    def __init__(self, chunks):
        self._chunks = chunks
        self._buf = bytearray()

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buf += chunk
        if size < 0:
            size = len(self._buf)
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out


def _error_message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except Exception:  # noqa: BLE001 - any non-typed body
        return response.text[:300] or response.reason_phrase


def _retry_after_s(response: httpx.Response) -> float | None:
    try:
        return min(float(response.headers["retry-after"]), 600.0)
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date: our own backoff decides


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not keep the half-written copy
        raise


def fetch_video_info(source: VideoSource, *, token: str, timeout_s: float = 30.0) -> VideoInfo | None:
    """The catalog facts of one video (native size for the intrinsics); None if unavailable."""
    url = f"{source.storage_url.rstrip('/')}/videos/{quote(source.path, safe='/')}"
    try:
        resp = httpx.get(url, headers=auth_headers(token), timeout=timeout_s)
        return VideoInfo.model_validate_json(resp.content) if resp.status_code == 200 else None
    except (httpx.HTTPError, httpx.InvalidURL, ValueError):
        return None


def pull_video(
    source: VideoSource,
    params: ExtractParams,
    job_dir: Path,
    *,
    video_index: int,
    first_frame: int,
    token: str,
    timeout_s: float,
    cancel: CancelFlag,
    on_frame: Callable[[IndexedFrame, Path], None],
) -> list[IndexedFrame]:
    """Stream one video's frames into ``job_dir``, numbered from ``first_frame``.

    Blocking: run it in a thread. Checks ``cancel`` between frames.
    """
    url = f"{source.storage_url.rstrip('/')}/videos/{quote(source.path, safe='/')}/frames"
    query = {"fps": params.fps}
    if params.width is not None:
        query["width"] = params.width
    if params.max_frames is not None:
        query["max_frames"] = params.max_frames
    if params.keyframes:
        query["keyframes"] = "true"
    timeout = httpx.Timeout(10.0, read=timeout_s)
    frames: list[IndexedFrame] = []
    end: StreamEnd | None = None
    try:
        with httpx.stream("GET", url, params=query, headers=auth_headers(token), timeout=timeout) as resp:
            if resp.status_code != 200:
                resp.read()
                raise IngestError(
                    f"storage agent refused {source.path} (HTTP {resp.status_code}): {_error_message(resp)}",
                    retryable=resp.status_code in (429, 502, 503, 504),
                    retry_after_s=_retry_after_s(resp),
                )
            with tarfile.open(fileobj=_ByteStream(resp.iter_bytes()), mode="r|") as tar:
                for member in tar:
                    if cancel.is_set():
                        raise IngestCancelled()
                    data = tar.extractfile(member).read() if member.isfile() else b""
                    if member.name == STREAM_END_NAME:
                        end = StreamEnd.model_validate_json(data)
                        break
                    t_s = float(member.pax_headers.get(TAR_TIMESTAMP_KEY, "0"))
                    index = first_frame + len(frames)
                    frame = IndexedFrame(
                        name=FRAME_NAME_FORMAT.format(index), index=index, video=video_index, t_s=t_s
                    )
                    path = job_dir / frame.name
                    atomic_write_bytes(path, data)
                    frames.append(frame)
                    on_frame(frame, path)
    except httpx.HTTPError as exc:
        raise IngestError(f"lost the frame stream of {source.path} from {source.storage_url}: {exc}",
                          retryable=True) from exc
    except (tarfile.TarError, json.JSONDecodeError, ValueError) as exc:
        raise IngestError(f"the frame stream of {source.path} is malformed: {exc}") from exc
    if end is None:
        raise IngestError(f"the frame stream of {source.path} ended early (no {STREAM_END_NAME})", retryable=True)
    if not end.ok:
        raise IngestError(f"frame extraction of {source.path} failed on the storage node: {end.error}")
    if not frames:
        raise IngestError(f"{source.path} gave no frames with fps={params.fps}; check the video's duration")
    return frames
