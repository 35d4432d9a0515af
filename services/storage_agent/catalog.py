"""The video catalog: every video file under the roots, with its ffprobe facts.

Listing never fails because of one file: a file ffprobe cannot read is listed with its
``error``. Probes run a few at a time and are cached by (file, size, mtime), so listing a
disk of finished recordings costs one ffprobe per file once.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import anyio

from shared.errors import NotFound
from shared.videos import VideoInfo, VideoList
from services.storage_agent.paths import ResolvedVideo, StorageRoots, is_video_name
from services.storage_agent.probe import ProbeError, VideoFacts, probe_video

log = logging.getLogger(__name__)

#: Probe results kept; a disk of GoPro chapters holds a few thousand files.
CACHE_ENTRIES = 20_000

_CacheKey = tuple[str, int, int]


@dataclass(frozen=True)
class FoundVideo:
    root: int
    path: str
    file: Path
    size_bytes: int
    mtime: float
    mtime_ns: int


def find_videos(roots: StorageRoots) -> list[FoundVideo]:
    """Walk every root for video files, skipping hidden entries and links leading out of the roots.

    Hidden names are skipped because disks written by macOS carry ``._GX010042.MP4``
    resource forks and ``.Trashes``, which are not videos. Symlinked folders are not
    followed (a loop or a second path to the same files); symlinked files are listed when
    they resolve to a video file under a root.
    """
    found: list[FoundVideo] = []
    for index, root in enumerate(roots.real):
        for dirpath, dirnames, filenames in os.walk(root, onerror=_walk_error):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or not is_video_name(name):
                    continue
                entry = Path(dirpath, name)
                try:
                    real = entry.resolve() if entry.is_symlink() else entry
                    if real is not entry and not (roots.contains(real) and is_video_name(real.name)):
                        continue
                    st = real.stat()
                except (OSError, RuntimeError):
                    continue
                if not os.path.isfile(real):
                    continue
                found.append(FoundVideo(
                    root=index, path=entry.relative_to(root).as_posix(), file=real,
                    size_bytes=st.st_size, mtime=st.st_mtime, mtime_ns=st.st_mtime_ns,
                ))
    return found


def _walk_error(exc: OSError) -> None:
    log.warning("cannot list %s: %s", exc.filename, exc.strerror)


class Catalog:
    def __init__(self, roots: StorageRoots, *, probe_timeout_s: float, probe_concurrency: int):
        self.roots = roots
        self._probe_timeout_s = probe_timeout_s
        self._probe_slots = asyncio.Semaphore(probe_concurrency)
        # Facts, or the reason ffprobe gave for an unreadable file.
        self._cache: collections.OrderedDict[_CacheKey, VideoFacts | str] = collections.OrderedDict()
        self._probing: dict[_CacheKey, asyncio.Future[VideoFacts | ProbeError]] = {}

    async def facts(self, file: Path) -> VideoFacts:
        """ffprobe facts of a file, cached; :class:`ProbeError` if it cannot be read."""
        try:
            st = file.stat()
        except OSError as exc:
            raise ProbeError(f"cannot open it: {exc.strerror}") from None
        return await self._facts(file, (str(file), st.st_size, st.st_mtime_ns))

    async def _facts(self, file: Path, key: _CacheKey) -> VideoFacts:
        result = self._cache.get(key)
        if result is None:
            # Requests for the same file (a listing and a frames request, two listings)
            # share one ffprobe run, which finishes and is cached even if they go away.
            task = self._probing.get(key)
            if task is None:
                task = asyncio.ensure_future(self._probe(file, key))
                self._probing[key] = task
                task.add_done_callback(lambda _: self._probing.pop(key, None))
            result = await asyncio.shield(task)
        # A fresh exception each time: raising one object again and again grows its traceback.
        if isinstance(result, ProbeError):
            raise ProbeError(result.reason, transient=result.transient)
        if isinstance(result, str):
            raise ProbeError(result)
        return result

    async def _probe(self, file: Path, key: _CacheKey) -> VideoFacts | ProbeError:
        async with self._probe_slots:
            try:
                facts = await probe_video(file, timeout_s=self._probe_timeout_s)
            except ProbeError as exc:
                if exc.transient:
                    return exc
                self._remember(key, exc.reason)
                return exc
        self._remember(key, facts)
        return facts

    def _remember(self, key: _CacheKey, result: VideoFacts | str) -> None:
        self._cache[key] = result
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)

    async def info(self, video: ResolvedVideo) -> VideoInfo:
        """Catalog entry of one resolved video."""
        try:
            st = video.file.stat()
        except OSError:
            raise NotFound(f"video {video.path!r} has just gone away") from None
        found = FoundVideo(root=video.root, path=video.path, file=video.file,
                           size_bytes=st.st_size, mtime=st.st_mtime, mtime_ns=st.st_mtime_ns)
        return await self._info(found)

    async def list_videos(self) -> VideoList:
        """Every video under the roots, in (root, path) order."""
        found = await anyio.to_thread.run_sync(find_videos, self.roots)
        first_root: dict[str, int] = {}
        for f in found:
            first_root.setdefault(f.path, f.root)
        infos = await asyncio.gather(*(
            self._info(f) if first_root[f.path] == f.root else self._shadowed(f, first_root[f.path])
            for f in found
        ))
        return VideoList(videos=sorted(infos, key=lambda v: (v.root, v.path)))

    @staticmethod
    async def _shadowed(found: FoundVideo, by_root: int) -> VideoInfo:
        # A path is looked up in root order, so this file can never be served.
        return VideoInfo(
            root=found.root, path=found.path, size_bytes=found.size_bytes, mtime=found.mtime,
            error=f"unreachable: storage root {by_root} holds a video with the same path, "
                  "which is served instead; rename one of them",
        )

    async def _info(self, found: FoundVideo) -> VideoInfo:
        entry = dict(root=found.root, path=found.path, size_bytes=found.size_bytes, mtime=found.mtime)
        try:
            facts = await self._facts(found.file, (str(found.file), found.size_bytes, found.mtime_ns))
        except ProbeError as exc:
            return VideoInfo(**entry, error=exc.reason)
        return VideoInfo(**entry, **dataclasses.asdict(facts))
