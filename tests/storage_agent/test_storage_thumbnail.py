"""``GET /videos/{path}/thumbnail``: one JPEG, bounded time and width, clear 422s."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from storage_media import AUTH, layout, media, running_agent  # noqa: F401  (fixtures)


@pytest.fixture
def client(layout):
    with running_agent(layout["root"]) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
        yield c


def _size(jpeg: bytes, tmp_path) -> dict:
    sample = tmp_path / "thumb.jpg"
    sample.write_bytes(jpeg)
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height",
                            "-of", "json", str(sample)], check=True, capture_output=True, timeout=30)
    return json.loads(probe.stdout)["streams"][0]


def test_a_thumbnail_is_one_jpeg_of_the_asked_width(client, tmp_path):
    response = client.get("/videos/day1/boat/GX020042.MP4/thumbnail", params={"t": 2.5, "width": 160})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content[:2] == b"\xff\xd8" and response.content[-2:] == b"\xff\xd9"
    assert _size(response.content, tmp_path) == {"codec_name": "mjpeg", "width": 160, "height": 90}
    default = client.get("/videos/GX010042.MP4/thumbnail")
    assert default.status_code == 200 and _size(default.content, tmp_path)["width"] == 320


@pytest.mark.parametrize("params, status, text", [
    ({"t": 3}, 422, "past the end"),
    ({"t": -1}, 422, "t:"),
    ({"width": 4000}, 422, "width"),
    ({"width": 8}, 422, "width"),
])
def test_bad_times_and_widths_are_422(client, params, status, text):
    response = client.get("/videos/GX010042.MP4/thumbnail", params=params)
    assert response.status_code == status and text in response.json()["error"]["message"]


def test_unreadable_and_refused_videos(client):
    response = client.get("/videos/broken/zero.MP4/thumbnail")
    assert response.status_code == 422 and response.json()["error"]["code"] == "unreadable_video"
    assert client.get("/videos/link_out.mp4/thumbnail").status_code == 403
    assert client.get("/videos/missing.mp4/thumbnail").status_code == 404


def test_a_time_in_the_missing_part_of_a_cut_file_is_422(client):
    response = client.get("/videos/broken/cut.mov/thumbnail", params={"t": 2.8})
    assert response.status_code == 422, response.text
    assert "cut.mov" in response.json()["error"]["message"]
