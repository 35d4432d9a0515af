"""Fixtures shared by every test: real uvicorn servers on loopback, in threads."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from typing import Iterator

import pytest
import uvicorn

TOKEN = "test-token-0123456789"


class ThreadedServer(uvicorn.Server):
    """A real uvicorn server on 127.0.0.1:0 in a thread (signal handlers off)."""

    def install_signal_handlers(self) -> None:  # pragma: no cover - uvicorn hook
        pass

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[str]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while not self.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("uvicorn server did not start")
                time.sleep(0.01)
            port = self.servers[0].sockets[0].getsockname()[1]
            yield f"http://127.0.0.1:{port}"
        finally:
            self.should_exit = True
            thread.join(timeout=20)


@contextlib.contextmanager
def serve_app(app) -> Iterator[str]:
    """Serve a FastAPI app on loopback; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    with ThreadedServer(config).run_in_thread() as url:
        yield url


@pytest.fixture
def token() -> str:
    return TOKEN


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def require_ffmpeg() -> None:
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not on PATH: install Debian's ffmpeg package (make setup does)")


def make_test_video(path, *, seconds: float = 2.0, fps: int = 10, size: str = "320x180") -> None:
    """A small H.264 MP4 from ffmpeg's testsrc2 pattern."""
    import subprocess

    require_ffmpeg()
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", str(fps), str(path)],
        check=True,
    )


def wait_until(predicate, *, timeout_s: float = 60.0, interval_s: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def processes_matching(needle: str) -> list[int]:
    """PIDs whose command line contains ``needle`` (from /proc)."""
    import os

    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline and int(entry) != os.getpid():
            pids.append(int(entry))
    return pids
