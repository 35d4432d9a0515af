"""The probe cache: ffprobe facts by (file, size, mtime), in memory and in a small SQLite file.

With a state folder the cache outlives restarts, so a disk of thousands of chapters is
probed once, not at every start; without one it lives in memory only. A row is valid
while the file keeps its size and mtime; a changed file is probed again and its row
replaced. Reads come from memory; each probe result is one short write (WAL, no fsync
per commit: losing the last rows in a power cut costs a re-probe, nothing more).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
from pathlib import Path

from services.storage_agent.probe import VideoFacts

log = logging.getLogger(__name__)

CACHE_FILE_NAME = "probe-cache.sqlite3"
#: Bump when VideoFacts or the probe changes meaning: older rows are then dropped.
SCHEMA_VERSION = 2

#: Facts, or the reason ffprobe gave for an unreadable file.
Result = VideoFacts | str


class ProbeCache:
    def __init__(self, state_dir: Path | None = None):
        self._memory: dict[str, tuple[int, int, Result]] = {}
        self._lock = threading.Lock()  # the listing prunes from a worker thread
        self._db: sqlite3.Connection | None = None
        self.file = state_dir / CACHE_FILE_NAME if state_dir is not None else None
        if self.file is not None:
            self._open(self.file)

    def _open(self, file: Path) -> None:
        file.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(file, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                db.execute("DROP TABLE IF EXISTS probes")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("CREATE TABLE IF NOT EXISTS probes (file TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                       "mtime_ns INTEGER NOT NULL, facts TEXT, error TEXT)")
            rows = db.execute("SELECT file, size, mtime_ns, facts, error FROM probes").fetchall()
        except sqlite3.Error as exc:
            # A broken cache must not stop the agent: it only costs probes.
            log.warning("probe cache %s unusable (%s); caching in memory only", file, exc)
            return
        for name, size, mtime_ns, facts, error in rows:
            try:
                self._memory[name] = (size, mtime_ns, VideoFacts(**json.loads(facts)) if facts else error)
            except (TypeError, ValueError):
                continue
        self._db = db
        log.info("probe cache %s: %d files known", file, len(self._memory))

    def __len__(self) -> int:
        return len(self._memory)

    def get(self, file: str, size: int, mtime_ns: int) -> Result | None:
        entry = self._memory.get(file)
        if entry is None or entry[0] != size or entry[1] != mtime_ns:
            return None
        return entry[2]

    def put(self, file: str, size: int, mtime_ns: int, result: Result) -> None:
        with self._lock:
            self._memory[file] = (size, mtime_ns, result)
            if self._db is None:
                return
            facts = json.dumps(dataclasses.asdict(result)) if isinstance(result, VideoFacts) else None
            error = result if isinstance(result, str) else None
            try:
                self._db.execute("INSERT OR REPLACE INTO probes VALUES (?, ?, ?, ?, ?)",
                                 (file, size, mtime_ns, facts, error))
            except sqlite3.Error as exc:
                log.warning("probe cache write failed (%s); kept in memory", exc)

    def keep_only(self, files: set[str], *, under: list[str]) -> None:
        """Forget files under the folders ``under`` that a complete walk did not find.

        Only roots where the walk found videos are pruned: an unmounted disk leaves an
        empty mount point, and forgetting its thousands of probes would cost them all again.
        """
        prefixes = tuple(folder.rstrip("/") + "/" for folder in under)
        if not prefixes:
            return
        with self._lock:
            gone = [f for f in self._memory if f.startswith(prefixes) and f not in files]
            for f in gone:
                del self._memory[f]
            if self._db is not None and gone:
                try:
                    self._db.execute("BEGIN")
                    self._db.executemany("DELETE FROM probes WHERE file = ?", [(f,) for f in gone])
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    log.warning("probe cache prune failed (%s)", exc)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
