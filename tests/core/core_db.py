"""The core's tests run on SQLite and on a throwaway PostgreSQL (started once per session).

A module that touches the store imports ``db, pg_cluster, pytest_generate_tests`` from
here; each of its tests then runs twice, ``[sqlite]`` and ``[postgresql]``: the autouse
``db`` fixture points ``COSMA_CORE_DATABASE_URL`` at a fresh database (SQLite: the default
file in the test's data dir). Without the PostgreSQL binaries the PostgreSQL runs are
skipped, except under CI (``CI=true``), where they fail.

(Not a ``conftest.py``: the test modules import ``conftest`` by name for the root one.)
"""

from __future__ import annotations

import atexit
import os

import pytest

from pgcluster import ThrowawayPostgres, find_bindir

BACKENDS = ("sqlite", "postgresql")


_cluster: ThrowawayPostgres | None = None


def pytest_generate_tests(metafunc):
    if "db" in metafunc.fixturenames:
        metafunc.parametrize("db", BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def pg_cluster() -> ThrowawayPostgres:
    """One cluster for the whole session (kept in a global: each module imports this fixture)."""
    global _cluster
    if _cluster is None:
        bindir = find_bindir()
        if bindir is None:
            reason = "PostgreSQL server binaries not found (install postgresql-15, or set COSMA_PG_BIN)"
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(reason + ": CI runs the store tests on PostgreSQL too")
            pytest.skip(reason)
        _cluster = ThrowawayPostgres(bindir).start()
        atexit.register(_cluster.stop)
    return _cluster


@pytest.fixture(autouse=True)
def db(request, monkeypatch) -> str | None:
    """The database URL of this test (None: SQLite in the data dir), also in the environment."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        monkeypatch.delenv("COSMA_CORE_DATABASE_URL", raising=False)
        yield None
        return
    cluster = request.getfixturevalue("pg_cluster")
    url = cluster.create_database()
    monkeypatch.setenv("COSMA_CORE_DATABASE_URL", url)
    yield url
    cluster.drop_database(url)
