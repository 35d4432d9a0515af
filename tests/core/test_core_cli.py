"""``cosma-qc core migrate`` and ``cosma-qc nodes …`` against a real core on loopback."""

from __future__ import annotations

import pytest
from core_db import db, pg_cluster, pytest_generate_tests  # noqa: F401

from conftest import TOKEN, serve_app
from core_fakes import core_settings
from services.cli import main
from services.core.app import create_app
from services.core.migrate import head_revision


def test_core_migrate_then_nodes_add_list_drain_remove(tmp_path, db, monkeypatch, capsys):
    database = ["--database-url", db] if db else ["--data-dir", str(tmp_path / "core")]
    head = head_revision()  # the newest migration: the CLI takes an empty database all the way
    assert main(["core", "migrate", *database]) == 0
    assert f"migrated from empty to {head}" in capsys.readouterr().out
    assert main(["core", "migrate", *database]) == 0
    assert f"already at revision {head}" in capsys.readouterr().out

    with serve_app(create_app(core_settings(tmp_path))) as url:
        core = ["--core", url]
        monkeypatch.delenv("COSMA_TOKEN", raising=False)
        with pytest.raises(SystemExit, match="no cluster token"):
            main(["nodes", "add", "g1", "http://127.0.0.1:9", *core])
        monkeypatch.setenv("COSMA_TOKEN", TOKEN)
        assert main(["nodes", "add", "g1", "http://127.0.0.1:9", *core]) == 0
        assert main(["nodes", "add", "st", "http://127.0.0.1:9", "--role", "storage", *core]) == 0
        with pytest.raises(SystemExit, match="HTTP 409: a node named 'g1' already exists"):
            main(["nodes", "add", "g1", "http://127.0.0.1:9", *core])
        capsys.readouterr()
        assert main(["nodes", "drain", "g1", *core]) == 0
        assert "unknown,draining" in capsys.readouterr().out  # not polled yet, and draining
        assert main(["nodes", "list", *core]) == 0
        listed = capsys.readouterr().out.splitlines()
        assert [line.split()[1] for line in listed] == ["g1", "st"]
        assert main(["nodes", "drain", "g1", "--undo", *core]) == 0
        assert main(["nodes", "remove", "g1", *core]) == 0
        assert "node g1 removed" in capsys.readouterr().out
        with pytest.raises(SystemExit, match="HTTP 404"):
            main(["nodes", "remove", "g1", "--force", *core])
