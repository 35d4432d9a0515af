"""The storage agent as a service: settings, auth, status, and no ffmpeg left behind."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import ValidationError

from conftest import TOKEN, wait_until
from shared.settings import add_settings_arguments, settings_from_args
from services.storage_agent.config import StorageSettings
from storage_media import AUTH, ffmpeg_pids, read_tar, layout, long_video, media, running_agent  # noqa: F401  (fixtures)


def test_settings_validate_roots_with_clear_messages(tmp_path):
    (tmp_path / "file.mp4").write_bytes(b"")
    (tmp_path / "a" / "b").mkdir(parents=True)
    cases = [
        ([tmp_path / "missing"], "does not exist"),
        ([tmp_path / "file.mp4"], "is not a folder"),
        ([tmp_path / "a", tmp_path / "a" / "b"], "overlaps"),
        ([tmp_path / "a", tmp_path / "a"], "overlaps"),
    ]
    for roots, message in cases:
        with pytest.raises(ValidationError, match=message):
            StorageSettings(roots=roots, token=TOKEN)
    settings = StorageSettings(roots=[tmp_path / "a"], token=TOKEN)
    assert settings.port == 8310 and settings.max_concurrent_extractions >= 1


def test_settings_from_flags_and_environment(tmp_path, monkeypatch):
    for name in ("ssd", "nas"):
        (tmp_path / name).mkdir()
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, StorageSettings)
    assert "folder holding videos; repeat for several" in parser.format_help()
    monkeypatch.setenv("COSMA_TOKEN", TOKEN)
    monkeypatch.setenv("COSMA_STORAGE_PROBE_TIMEOUT_S", "7")
    args = parser.parse_args(["--roots", str(tmp_path / "ssd"), "--roots", str(tmp_path / "nas"),
                              "--max-concurrent-extractions", "3"])
    settings = settings_from_args(StorageSettings, args)
    assert settings.roots == [tmp_path / "ssd", tmp_path / "nas"]
    assert settings.max_concurrent_extractions == 3 and settings.probe_timeout_s == 7
    monkeypatch.setenv("COSMA_STORAGE_ROOTS", json.dumps([str(tmp_path / "nas")]))
    assert StorageSettings().roots == [tmp_path / "nas"]
    with pytest.raises(SystemExit, match="does not exist"):
        settings_from_args(StorageSettings, parser.parse_args(["--roots", str(tmp_path / "gone")]))


def test_health_needs_no_token_and_everything_else_does(layout):
    with running_agent(layout["root"]) as url, httpx.Client(base_url=url, timeout=30) as client:
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["role"] == "storage" and health.json()["node_id"] == "storage-test"
        for target in ("/videos", "/status", "/videos/GX010042.MP4", "/videos/GX010042.MP4/frames"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
                response = client.get(target, headers=headers)
                assert response.status_code == 401, (target, headers)
                assert response.json()["error"]["code"] == "unauthorized"
                assert response.headers["www-authenticate"] == "Bearer"


def test_status_reports_disks_load_and_extractions(layout, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    with running_agent(layout["root"], other, max_concurrent_extractions=3) as url:
        status = httpx.get(f"{url}/status", headers=AUTH).json()
    assert status["node_id"] == "storage-test"
    assert [r["index"] for r in status["roots"]] == [0, 1]
    assert status["roots"][0]["path"] == str(layout["root"])
    assert all(r["disk_free_mib"] > 0 and r["error"] is None for r in status["roots"])
    assert status["cpu_load_1m"] >= 0 and status["cpu_count"] >= 1
    assert status["extractions_running"] == 0 and status["extractions_max"] == 3


# Big frames of a long video: far more output than socket buffers hold, so ffmpeg is
# still running (blocked on its pipe) while the client holds the stream open.
HEAVY = {"fps": 30, "width": 1280, "quality": 2}


def test_client_disconnect_mid_stream_stops_ffmpeg(tmp_path, long_video):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(long_video, root / "GX010099.MP4")
    with running_agent(root) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        with client.stream("GET", "/videos/GX010099.MP4/frames", params=HEAVY) as response:
            assert response.status_code == 200
            chunks = response.iter_bytes()  # kept: a dropped iterator closes the response
            assert next(chunks)
            wait_until(lambda: ffmpeg_pids(str(root)), timeout_s=10, what="ffmpeg running mid-stream")
            assert client.get("/status").json()["extractions_running"] == 1
            time.sleep(0.5)
            assert ffmpeg_pids(str(root)), "ffmpeg should wait for the client, not run ahead and exit"
        # Leaving the block closes the connection after reading one chunk.
        wait_until(lambda: not ffmpeg_pids(str(root)), timeout_s=10, what="ffmpeg to be stopped (no orphan)")
        wait_until(lambda: client.get("/status").json()["extractions_running"] == 0, timeout_s=10,
                   what="the extraction slot to be freed")

        # A client gone before the first byte.
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port)) as sock:
            sock.sendall(f"GET /videos/GX010099.MP4/frames?fps=30&width=1280 HTTP/1.1\r\n"
                         f"Host: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
            wait_until(lambda: ffmpeg_pids(str(root)), timeout_s=10, what="ffmpeg to start")
        wait_until(lambda: not ffmpeg_pids(str(root)), timeout_s=10, what="ffmpeg to be stopped (no orphan)")
        wait_until(lambda: client.get("/status").json()["extractions_running"] == 0, timeout_s=10,
                   what="the extraction slot to be freed")
        assert client.get("/health").status_code == 200


def test_extractions_are_capped_and_a_freed_slot_is_reused(tmp_path, long_video, media):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(long_video, root / "long.mp4")
    shutil.copy(media["good"], root / "short.mp4")
    settings = {"max_concurrent_extractions": 1, "extraction_wait_s": 0.3}
    with running_agent(root, **settings) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        with client.stream("GET", "/videos/long.mp4/frames", params=HEAVY) as first:
            chunks = first.iter_bytes()  # kept: a dropped iterator closes the response
            assert next(chunks)
            busy = client.get("/videos/short.mp4/frames")
            assert busy.status_code == 503
            assert busy.json()["error"]["code"] == "busy" and "limit" in busy.json()["error"]["message"]
            assert int(busy.headers["retry-after"]) >= 2
            assert client.get("/status").json()["extractions_running"] == 1
        wait_until(lambda: client.get("/status").json()["extractions_running"] == 0, timeout_s=10,
                   what="the extraction slot to be freed")
        again = client.get("/videos/short.mp4/frames", params={"fps": 1})
        assert again.status_code == 200
        assert [info.name for info, _ in read_tar(again.content)][-2:] == ["frame_000003.jpg", "end.json"]
    assert not ffmpeg_pids(str(root))
