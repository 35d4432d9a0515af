"""Fixtures and helpers of the storage agent tests: real test videos made by ffmpeg, and an agent on loopback.

Imported by the test modules (not a conftest, so its name cannot clash with other folders').
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

from conftest import TOKEN, require_ffmpeg, serve_app
from services.storage_agent.app import create_app
from services.storage_agent.config import StorageSettings

SECRET = "TOP-SECRET-8e1f0c: this must never leave the storage node"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_video(path: Path, *, seconds: float = 3, size: str = "320x180", rate: int = 10, faststart: bool = False) -> Path:
    """A small H.264 MP4 from ffmpeg's testsrc2 pattern."""
    require_ffmpeg()
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(rate),
        *(["-movflags", "+faststart"] if faststart else []),
        str(path),
    ]
    subprocess.run(argv, check=True, timeout=60)
    return path


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """Source videos made once per session; copy them into a root, never serve this folder."""
    folder = tmp_path_factory.mktemp("media")
    good = make_video(folder / "good.mp4")
    faststart = make_video(folder / "faststart.mp4", faststart=True)
    # Cut before the index (moov is at the end): ffprobe cannot read it at all.
    no_index = folder / "no_index.mp4"
    no_index.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    # Cut after the index (faststart): ffprobe reads it, decoding runs out half way.
    cut = folder / "cut.mp4"
    cut.write_bytes(faststart.read_bytes()[: int(faststart.stat().st_size * 0.55)])
    return {"good": good, "no_index": no_index, "cut": cut}


@pytest.fixture(scope="session")
def long_video(tmp_path_factory) -> Path:
    """30 s: long enough that a stream of it is still running when a test pokes at it."""
    return make_video(tmp_path_factory.mktemp("long") / "long.mp4", seconds=30)


@pytest.fixture
def layout(tmp_path, media) -> dict[str, Path]:
    """A storage root as found on a field disk, and a secret folder beside it."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    shutil.copy(media["good"], outside / "secret.mp4")

    shutil.copy(media["good"], _parent(root / "GX010042.MP4"))
    shutil.copy(media["good"], _parent(root / "day1" / "boat" / "GX020042.MP4"))
    shutil.copy(media["no_index"], _parent(root / "broken" / "truncated.mp4"))
    shutil.copy(media["cut"], _parent(root / "broken" / "cut.mov"))
    (root / "broken" / "zero.MP4").write_bytes(b"")
    (root / "broken" / "text.MP4").write_text("these are my notes, not a video\n")
    (root / "notes.txt").write_text("dive log\n")
    (root / "._GX010042.MP4").write_bytes(b"\0\5\26\7 macOS resource fork")
    (root / ".Trashes").mkdir()
    shutil.copy(media["good"], root / ".Trashes" / "old.MP4")
    (root / "folder.mp4").mkdir()
    os.symlink(outside / "secret.mp4", root / "link_out.mp4")
    os.symlink(outside / "secret.txt", root / "link_secret.mp4")
    os.symlink(root / "notes.txt", root / "notes_link.mp4")
    os.symlink(root / "GX010042.MP4", root / "day1" / "alias.mp4")
    return {"root": root, "outside": outside}


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def running_agent(*roots: Path, **settings) -> Iterator[str]:
    """A storage agent on loopback serving ``roots``; yields its base URL."""
    config = StorageSettings(roots=list(roots), token=TOKEN, node_id="storage-test", **settings)
    with serve_app(create_app(config)) as url:
        yield url


def read_tar(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    """Every member of a frame stream, read the way clients read it (``r|``)."""
    members = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as archive:
        for info in archive:
            members.append((info, archive.extractfile(info).read()))
    return members


def ffmpeg_pids(marker: str) -> list[int]:
    """ffmpeg processes whose command line mentions ``marker`` (e.g. a test's temp folder).

    The agent runs in this process (uvicorn in a thread), so its ffmpeg children are ours.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"ffmpeg" and any(marker.encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids
