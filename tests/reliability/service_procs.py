"""Service processes for fault tests: started through the CLI, killed, restarted on the same port.

``Service(name, args, base)`` runs ``python -m services.cli <name> --port <fixed port> ...``
in its own session with ``COSMA_TOKEN`` set; its stdout and stderr are appended to
``base/logs/<name>-<port>.log`` across restarts (so a test can read every line it ever wrote).
``start()`` waits for ``/health``; ``kill()`` is a real SIGKILL (of the service only: a child
in its own process group, like a backend runner, survives as it would in production);
``stop()`` terminates and waits. ``Services`` stops every service it started, in reverse order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, name: str, args: list[str], base: Path, *, port: int | None = None,
                 env: dict[str, str] | None = None):
        self.name = name
        self.args = [str(a) for a in args]
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self.log_path = base / "logs" / f"{name}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Service:
        argv = [sys.executable, "-m", "services.cli", self.name, "--host", "127.0.0.1",
                "--port", str(self.port), *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, env={**os.environ, "COSMA_TOKEN": TOKEN, **self.env},
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on {self.url} within {START_TIMEOUT_S} s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL, no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class Services:
    """Start services and stop them all (reverse order) on exit, even after a failure."""

    def __init__(self, base: Path):
        self.base = base
        self.started: list[Service] = []

    def start(self, name: str, args: list, **kwargs) -> Service:
        service = Service(name, args, self.base, **kwargs)
        self.started.append(service)
        return service.start()

    def logs(self) -> dict[str, str]:
        return {s.log_path.name: s.log() for s in self.started}

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc) -> None:
        for service in reversed(self.started):
            with contextlib.suppress(Exception):
                service.stop()


def agent_job(url: str, job_id: int) -> dict | None:
    """A gpu agent's view of a job, or None when it does not answer or know it."""
    with contextlib.suppress(httpx.HTTPError):
        resp = httpx.get(f"{url}/jobs/{job_id}", headers=AUTH, timeout=5)
        if resp.status_code == 200:
            return resp.json()
    return None


def survey_base(tmp_path_factory, name: str):
    """A fresh folder with ``videos/GX010001.MP4``, a 3 s rendered survey (30 frames at 10 fps)."""
    from conftest import require_ffmpeg

    from services.demo.synth import render_survey

    require_ffmpeg()
    base = tmp_path_factory.mktemp(name)
    return base, render_survey(base / "videos", seconds=3.0, fps=10.0)
