"""``cosma-qc token new|jobs|logs|open`` (services/cli_jobs.py) against a real core on loopback,
with FAKE agents (tests/core/core_fakes.py) whose reports the test scripts."""

from __future__ import annotations

import os
import stat

import httpx
import pytest

from conftest import TOKEN, serve_app, wait_until
from core_fakes import AUTH, FakeGpuAgent, FakeStorageAgent, core_settings, video
from services.cli import main
from services.core.app import create_app
from shared.jobs import JobState


class ViewerGpuAgent(FakeGpuAgent):
    """The FAKE gpu agent plus ``POST /jobs/{id}/viewer``, answering the port a viewer would get."""

    def build_app(self):
        app = super().build_app()

        @app.post("/jobs/{job_id}/viewer")
        def start_viewer(job_id: int) -> dict:
            return {"job_id": job_id, "port": 8100 + job_id, "pid": 1, "started_at": "2026-11-29T11:00:00Z",
                    "idle_timeout_s": 1800}

        return app


def test_token_new_prints_or_writes_a_private_file(tmp_path, capsys):
    assert main(["token", "new"]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["token", "new"]) == 0
    assert len(first) >= 40 and first != capsys.readouterr().out.strip()
    path = tmp_path / "token"
    assert main(["token", "new", "--file", str(path)]) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(path.read_text().strip()) >= 40
    with pytest.raises(SystemExit, match="exists: pass --force"):
        main(["token", "new", "--file", str(path)])
    old = path.read_text()
    assert main(["token", "new", "--file", str(path), "--force"]) == 0
    assert path.read_text() != old


def test_jobs_list_show_cancel_retry_logs_and_open(tmp_path, monkeypatch, capsys):
    storage = FakeStorageAgent([video("GX010042.MP4"), video("GX010043.MP4")]).start()
    gpu = ViewerGpuAgent("g1").start()
    settings = core_settings(tmp_path, scheduler_enabled=True, tick_interval_s=0.05)
    try:
        with serve_app(create_app(settings)) as url:
            core = ["--core", url]
            for name, role, node_url in (("st", "storage", storage.url), ("g1", "gpu", gpu.url)):
                resp = httpx.post(f"{url}/api/v1/nodes", json={"name": name, "role": role, "url": node_url},
                                  headers=AUTH)
                assert resp.status_code == 201
            ids = []
            for path in ("GX010042.MP4", "GX010043.MP4"):
                resp = httpx.post(f"{url}/api/v1/jobs", json={"videos": [{"storage": "st", "path": path}]},
                                  headers=AUTH)
                ids.append(resp.json()["id"])
            first, second = ids
            wait_until(lambda: first in gpu.jobs, what="the first job placed on g1")
            gpu.report(first, JobState.done, "done", 1.0, message="reconstructed")
            wait_until(lambda: httpx.get(f"{url}/api/v1/jobs/{first}").json()["state"] == "done",
                       what="the core to see the job done")

            monkeypatch.delenv("COSMA_TOKEN", raising=False)
            assert main(["jobs", "list", *core]) == 0
            lines = capsys.readouterr().out.splitlines()
            assert [line.split()[1] for line in lines] == [str(second), str(first)]  # newest first
            assert main(["jobs", "list", "--state", "done", *core]) == 0
            out = capsys.readouterr().out
            assert f"job {first:>5}  done" in out and str(second) not in out.split()
            assert main(["jobs", "show", str(first), *core]) == 0
            out = capsys.readouterr().out
            assert "video  st:GX010042.MP4" in out and "g1" in out
            with pytest.raises(SystemExit, match="HTTP 404.*cosma-qc jobs list"):
                main(["jobs", "show", "999", *core])

            with pytest.raises(SystemExit, match="cannot post /jobs/.*/cancel: .*no cluster token"):
                main(["jobs", "cancel", str(second), *core])
            monkeypatch.setenv("COSMA_TOKEN", "wrong-token-0123456789")
            with pytest.raises(SystemExit, match="HTTP 401.*check COSMA_TOKEN"):
                main(["jobs", "cancel", str(second), *core])
            monkeypatch.setenv("COSMA_TOKEN", TOKEN)
            assert main(["jobs", "cancel", str(second), *core]) == 0
            assert "cancelled" in capsys.readouterr().out
            assert main(["jobs", "retry", str(second), *core]) == 0
            assert capsys.readouterr().out.split()[2] in ("queued", "assigned")

            assert main(["logs", str(first), *core]) == 0
            history = capsys.readouterr().out.splitlines()
            assert history[0].split()[1] == "queued" and history[-1].split()[1] == "done"
            assert main(["logs", str(first), "--follow", *core]) == 0  # already done: prints and returns
            assert capsys.readouterr().out.splitlines() == history

            assert main(["open", str(first), *core]) == 0
            assert capsys.readouterr().out.strip() == f"http://127.0.0.1:{8100 + first}/"
            with pytest.raises(SystemExit, match="is (queued|assigned): its viewer needs a finished"):
                main(["open", str(second), *core])
    finally:
        gpu.stop()
        storage.stop()
