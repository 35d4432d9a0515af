"""A throwaway PostgreSQL cluster in a temporary folder, for the tests and the benchmarks.

``initdb`` + ``pg_ctl`` from the PostgreSQL server binaries (Debian: postgresql-15), on a
free loopback port, durability off (fsync, synchronous commit) since nothing in it matters.
As root (CI) the server runs as the ``postgres`` user, because initdb refuses root.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

#: Where Debian puts the server binaries; newest first, 15 is what CI has.
_BIN_GLOBS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/*/bin")


def find_bindir() -> Path | None:
    if os.environ.get("COSMA_PG_BIN"):
        return Path(os.environ["COSMA_PG_BIN"])
    for pattern in _BIN_GLOBS:
        for found in sorted(glob.glob(pattern), reverse=True):
            if Path(found, "initdb").exists() and Path(found, "pg_ctl").exists():
                return Path(found)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayPostgres:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.folder = Path(tempfile.mkdtemp(prefix="cosma-pg-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        self.user = "cosma"
        self._as_postgres = os.geteuid() == 0

    def _run(self, *argv: str) -> None:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")

    def start(self) -> "ThrowawayPostgres":
        if self._as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "--auth=trust", f"--username={self.user}", "--no-sync",
                  "--encoding=UTF8", "--locale=C")
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "server.log"),
                  "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        try:
            if self.data.exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._admin(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")


if __name__ == "__main__":  # start one by hand: prints its URL, stops on Enter
    cluster = ThrowawayPostgres(find_bindir()).start()
    print(cluster.create_database(), flush=True)
    try:
        input()
    finally:
        cluster.stop()
