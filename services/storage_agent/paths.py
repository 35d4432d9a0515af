"""Confinement of requested paths to the storage roots: only video files under a root are opened.

A request names a video by its path relative to a root, '/'-separated, exactly as
``GET /videos`` lists it. With several roots the path is looked up in root order and the
first root holding it wins; the catalog marks a file hidden that way as unreachable.

Every check happens before the disk is touched, and the resolved file (symlinks followed)
must still lie under a root, so neither ``..`` in any encoding nor a symlink can reach
outside. Answers do not tell whether something outside the roots exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote

from shared.errors import Forbidden, NotFound
from shared.videos import VIDEO_EXTENSIONS

#: Longer request paths are refused before they reach the file system.
MAX_PATH_CHARS = 4096
#: Rounds of percent-decoding tried when looking for disguised traversal (%252e is two).
_DECODE_ROUNDS = 4


@dataclass(frozen=True)
class ResolvedVideo:
    root: int
    path: str
    """Relative to its root, '/'-separated: how clients name it."""
    file: Path
    """Absolute, symlinks resolved: what ffprobe and ffmpeg open."""


def is_video_name(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


def _why_unsafe(path: str) -> str | None:
    if "\x00" in path:
        return "it contains a NUL byte"
    if "\\" in path:
        return "it contains a backslash; separate folders with '/'"
    if path.startswith("/"):
        return "absolute paths are refused; give the path relative to its root, as GET /videos lists it"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "'..', '.' and empty segments are refused; give the path as GET /videos lists it"
    return None


def check_relative_path(path: str) -> str:
    """The path if it is a clean relative video path; :class:`Forbidden` otherwise."""
    if not path:
        raise Forbidden("an empty video path is refused")
    if len(path) > MAX_PATH_CHARS:
        raise Forbidden(f"video paths longer than {MAX_PATH_CHARS} characters are refused")
    if reason := _why_unsafe(path):
        raise Forbidden(f"video path {path!r} is refused: {reason}")
    decoded = path
    for _ in range(_DECODE_ROUNDS):
        once_more = unquote(decoded)
        if once_more == decoded:
            break
        decoded = once_more
        if _why_unsafe(decoded):
            # The server already decoded the URL once; what is left is a disguise.
            raise Forbidden(f"video path {path!r} is refused: it hides '..', '/' or '\\' in percent-encoding")
    if not is_video_name(path):
        raise Forbidden(
            f"video path {path!r} is refused: only video files ({', '.join(VIDEO_EXTENSIONS)}) are served"
        )
    return path


def check_folder(folder: str) -> str:
    """A clean relative folder (``day1/boat``), without a trailing '/'; :class:`Forbidden` otherwise."""
    folder = folder.strip("/") if not folder.startswith("/") else folder
    if not folder or len(folder) > MAX_PATH_CHARS:
        raise Forbidden("a folder must be a non-empty path relative to the roots, as GET /videos lists them")
    if reason := _why_unsafe(folder):
        raise Forbidden(f"folder {folder!r} is refused: {reason}")
    if _why_unsafe(unquote(unquote(folder))):
        raise Forbidden(f"folder {folder!r} is refused: it hides '..', '/' or '\\' in percent-encoding")
    return folder


class StorageRoots:
    """The configured roots, resolved once, and the lookup of a relative path among them."""

    def __init__(self, roots: Sequence[Path]):
        self.given = [Path(r) for r in roots]
        self.real = [Path(r).resolve(strict=True) for r in roots]

    def __len__(self) -> int:
        return len(self.real)

    def contains(self, real: Path) -> bool:
        """Whether a resolved path lies under one of the roots."""
        return any(real.is_relative_to(root) for root in self.real)

    def resolve(self, path: str) -> ResolvedVideo:
        """The video file a client path names; :class:`Forbidden` or :class:`NotFound` if none."""
        check_relative_path(path)
        parts = path.split("/")
        for i in range(len(self.real)):
            candidate = self.real[i].joinpath(*parts)
            try:
                real = candidate.resolve()
            except (OSError, RuntimeError):  # symlink loop, name too long
                continue
            # Containment before existence, so a link out of the root says nothing about
            # what lies outside.
            if not self.contains(real):
                raise Forbidden(f"video path {path!r} is refused: it leads outside the storage roots")
            if not real.is_file():  # absent, a folder, a dangling link
                continue
            if not is_video_name(real.name):
                raise Forbidden(f"video path {path!r} is refused: it links to a file that is not a video")
            return ResolvedVideo(root=i, path=path, file=real)
        raise NotFound(f"no video {path!r} under the storage roots; GET /videos lists what there is")
