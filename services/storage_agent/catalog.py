"""The video catalog: every video file under the roots, with its ffprobe facts.

Listing never fails because of one file: a file ffprobe cannot read is listed with its
``error``. Probes run a few at a time and are cached by (file, size, mtime) in a
:class:`~services.storage_agent.probecache.ProbeCache` (a SQLite file under the state
folder), so a disk of finished recordings costs one ffprobe per file once, across restarts;
a rescan probes only new or changed files. Each entry carries its GoPro recording and
chapter (:mod:`shared.gopro`); :meth:`Catalog.recordings` groups them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import anyio

from shared import gopro
from shared.errors import NotFound
from shared.videos import Recording, RecordingList, VideoInfo, VideoList
from services.storage_agent.paths import ResolvedVideo, StorageRoots, check_folder, is_video_name
from services.storage_agent.probe import ProbeError, VideoFacts, probe_video
from services.storage_agent.probecache import ProbeCache

log = logging.getLogger(__name__)

_CacheKey = tuple[str, int, int]


@dataclass(frozen=True)
class FoundVideo:
    root: int
    path: str
    file: Path
    size_bytes: int
    mtime: float
    mtime_ns: int


def find_videos(roots: StorageRoots, folder: str | None = None) -> list[FoundVideo]:
    """Walk every root (or only ``folder`` in each) for video files, skipping hidden entries
    and links leading out of the roots.

    Hidden names are skipped because disks written by macOS carry ``._GX010042.MP4``
    resource forks and ``.Trashes``, which are not videos. Symlinked folders are not
    followed (a loop or a second path to the same files); symlinked files are listed when
    they resolve to a video file under a root.
    """
    found: list[FoundVideo] = []
    for index, root in enumerate(roots.real):
        top = root.joinpath(*folder.split("/")) if folder else root
        # Only a real folder under the root, reached without links: the walk never leaves it.
        if folder and (top.is_symlink() or not top.is_dir() or top.resolve() != top):
            continue
        for dirpath, dirnames, filenames in os.walk(top, onerror=_walk_error):
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
    def __init__(self, roots: StorageRoots, *, probe_timeout_s: float, probe_concurrency: int,
                 cache: ProbeCache | None = None):
        self.roots = roots
        self.cache = cache if cache is not None else ProbeCache()
        self._probe_timeout_s = probe_timeout_s
        self._probe_slots = asyncio.Semaphore(probe_concurrency)
        self._probing: dict[_CacheKey, asyncio.Future[VideoFacts | ProbeError]] = {}

    async def facts(self, file: Path) -> VideoFacts:
        """ffprobe facts of a file, cached; :class:`ProbeError` if it cannot be read."""
        try:
            st = file.stat()
        except OSError as exc:
            raise ProbeError(f"cannot open it: {exc.strerror}") from None
        return await self._facts(file, (str(file), st.st_size, st.st_mtime_ns))

    async def _facts(self, file: Path, key: _CacheKey) -> VideoFacts:
        result = self.cache.get(*key)
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
                if not exc.transient:
                    self.cache.put(*key, exc.reason)
                return exc
        self.cache.put(*key, facts)
        return facts

    async def info(self, video: ResolvedVideo) -> VideoInfo:
        """Catalog entry of one resolved video."""
        try:
            st = video.file.stat()
        except OSError:
            raise NotFound(f"video {video.path!r} has just gone away") from None
        found = FoundVideo(root=video.root, path=video.path, file=video.file,
                           size_bytes=st.st_size, mtime=st.st_mtime, mtime_ns=st.st_mtime_ns)
        return await self._info(found)

    async def _entries(self, folder: str | None) -> list[tuple[VideoInfo, bool]]:
        """Every video (under ``folder``) in (root, path) order, and whether it can be served."""
        if folder is not None:
            folder = check_folder(folder)
        found = await anyio.to_thread.run_sync(find_videos, self.roots, folder)
        if folder is None:
            # A complete walk: rows of files that are gone only take room.
            walked = sorted({str(self.roots.real[f.root]) for f in found})
            await anyio.to_thread.run_sync(
                functools.partial(self.cache.keep_only, {str(f.file) for f in found}, under=walked))
        first_root: dict[str, int] = {}
        for f in found:
            first_root.setdefault(f.path, f.root)
        infos = await asyncio.gather(*(
            self._info(f) if first_root[f.path] == f.root else self._shadowed(f, first_root[f.path])
            for f in found
        ))
        entries = [(info, first_root[f.path] == f.root) for info, f in zip(infos, found)]
        return sorted(entries, key=lambda e: (e[0].root, e[0].path))

    async def list_videos(self, folder: str | None = None, *, offset: int = 0, limit: int | None = None) -> VideoList:
        """Videos under the roots (or under ``folder`` in each root), in (root, path) order, one page."""
        videos = [info for info, _ in await self._entries(folder)]
        end = len(videos) if limit is None else min(len(videos), offset + limit)
        return VideoList(videos=videos[offset:end], total=len(videos),
                         next_offset=end if end < len(videos) else None)

    async def recordings(self, folder: str | None = None) -> RecordingList:
        """Recordings (GoPro chapters grouped, in chapter order), sorted by id; hidden twins left out."""
        chapters: dict[str, list[VideoInfo]] = {}
        for info, servable in await self._entries(folder):
            if servable:
                chapters.setdefault(info.recording or info.path, []).append(info)
        out = []
        for recording_id in sorted(chapters):
            videos = sorted(chapters[recording_id], key=lambda v: (v.chapter or 1, v.path))
            durations = [v.duration_s for v in videos]
            out.append(Recording(
                id=recording_id, gopro=gopro.parse(videos[0].path).gopro, root=videos[0].root,
                chapters=[v.path for v in videos],
                duration_s=None if None in durations else round(sum(durations), 3),
                size_bytes=sum(v.size_bytes for v in videos),
                unreadable=[v.path for v in videos if v.error],
            ))
        return RecordingList(recordings=out)

    @staticmethod
    def _base(found: FoundVideo) -> dict:
        chapter = gopro.parse(found.path)
        return dict(root=found.root, path=found.path, size_bytes=found.size_bytes, mtime=found.mtime,
                    recording=chapter.recording, chapter=chapter.chapter)

    @classmethod
    async def _shadowed(cls, found: FoundVideo, by_root: int) -> VideoInfo:
        # A path is looked up in root order, so this file can never be served.
        return VideoInfo(
            **cls._base(found),
            error=f"unreachable: storage root {by_root} holds a video with the same path, "
                  "which is served instead; rename one of them",
        )

    async def _info(self, found: FoundVideo) -> VideoInfo:
        entry = self._base(found)
        try:
            facts = await self._facts(found.file, (str(found.file), found.size_bytes, found.mtime_ns))
        except ProbeError as exc:
            return VideoInfo(**entry, error=exc.reason)
        return VideoInfo(**entry, **dataclasses.asdict(facts))
