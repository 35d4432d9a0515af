"""``cosma-qc submit`` and ``status`` against a real core on loopback, with a FAKE storage agent
(tests/core/core_fakes.py) serving a catalog of GoPro chapters."""

from __future__ import annotations

import httpx
import pytest

from conftest import TOKEN, serve_app
from core_fakes import AUTH, FakeStorageAgent, core_settings, video
from services.cli import main, progress_bar
from services.core.app import create_app


@pytest.fixture
def core(tmp_path, monkeypatch):
    storage = FakeStorageAgent([video("100GOPRO/GX010042.MP4"), video("100GOPRO/GX020042.MP4")]).start()
    try:
        with serve_app(create_app(core_settings(tmp_path))) as url:
            resp = httpx.post(f"{url}/api/v1/nodes", json={"name": "st", "role": "storage", "url": storage.url},
                              headers=AUTH)
            assert resp.status_code == 201
            monkeypatch.setenv("COSMA_TOKEN", TOKEN)
            yield url
    finally:
        storage.stop()


def job(url: str, job_id: int) -> dict:
    return httpx.get(f"{url}/api/v1/jobs/{job_id}").json()


def test_submit_videos_in_order_with_their_parameters(core, capsys):
    assert main(["submit", "--core", core, "--storage", "st", "100GOPRO/GX010042.MP4", "100GOPRO/GX020042.MP4",
                 "--fps", "3", "--max-frames", "50", "--priority", "5"]) == 0
    job_id = int(capsys.readouterr().out.split()[1])
    created = job(core, job_id)
    assert [v["path"] for v in created["videos"]] == ["100GOPRO/GX010042.MP4", "100GOPRO/GX020042.MP4"]
    assert (created["fps"], created["max_frames"], created["priority"]) == (3.0, 50, 5)


def test_submit_a_recording_takes_its_chapters(core, capsys):
    recordings = httpx.get(f"{core}/api/v1/recordings").json()["recordings"]
    recording = next(r for r in recordings if r["id"].endswith("0042"))
    assert main(["submit", "--core", core, "--storage", "st", "--recording", recording["id"]]) == 0
    job_id = int(capsys.readouterr().out.split()[1])
    assert [v["path"] for v in job(core, job_id)["videos"]] == ["100GOPRO/GX010042.MP4", "100GOPRO/GX020042.MP4"]


def test_submit_errors_say_what_to_do(core, monkeypatch):
    with pytest.raises(SystemExit, match="either video paths or --recording"):
        main(["submit", "--core", core, "--storage", "st"])
    with pytest.raises(SystemExit, match="HTTP 422.*nope.MP4"):
        main(["submit", "--core", core, "--storage", "st", "nope.MP4"])
    monkeypatch.setenv("COSMA_TOKEN", "wrong-token-0123456789")
    with pytest.raises(SystemExit, match="HTTP 401"):
        main(["submit", "--core", core, "--storage", "st", "100GOPRO/GX010042.MP4"])
    monkeypatch.delenv("COSMA_TOKEN")
    with pytest.raises(SystemExit, match="no cluster token"):
        main(["submit", "--core", core, "--storage", "st", "100GOPRO/GX010042.MP4"])


def test_progress_bar_shows_the_share_done_and_the_latest_message():
    line = progress_bar({"id": 4, "state": "reconstructing", "progress": 0.5, "message": "placing frame 20"},
                        width=10)
    assert line == "job 4 reconstructing [#####.....]  50.0%  placing frame 20"
