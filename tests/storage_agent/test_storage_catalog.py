"""The catalog: recursive listing with ffprobe facts, unreadable files listed with their error."""

from __future__ import annotations

import asyncio
import os
import shutil

import httpx

from services.storage_agent import catalog as catalog_module
from services.storage_agent.catalog import Catalog
from services.storage_agent.paths import StorageRoots
from storage_media import AUTH, layout, media, read_tar, running_agent  # noqa: F401  (fixtures)


def test_listing_is_recursive_with_facts_and_errors(layout):
    root = layout["root"]
    with running_agent(root) as url:
        response = httpx.get(f"{url}/videos", headers=AUTH, timeout=30)
    assert response.status_code == 200
    videos = {v["path"]: v for v in response.json()["videos"]}
    assert sorted(videos) == [
        "GX010042.MP4", "broken/cut.mov", "broken/text.MP4", "broken/truncated.mp4", "broken/zero.MP4",
        "day1/alias.mp4", "day1/boat/GX020042.MP4",
    ]  # no notes.txt, no hidden files, no folder named .mp4, no links out of the root
    good = videos["day1/boat/GX020042.MP4"]
    stat = (root / "day1/boat/GX020042.MP4").stat()
    assert good == {
        "path": "day1/boat/GX020042.MP4", "root": 0, "size_bytes": stat.st_size, "mtime": stat.st_mtime,
        "duration_s": 3.0, "fps": 10.0, "width": 320, "height": 180, "codec": "h264", "error": None,
        "variable_fps": False, "rotation_deg": 0, "bit_rate_bps": good["bit_rate_bps"], "creation_time": None,
        "recording": "day1/boat/GX0042", "chapter": 2,
    }
    assert good["bit_rate_bps"] > 10_000
    assert videos["day1/alias.mp4"]["width"] == 320
    assert "moov atom not found" in videos["broken/truncated.mp4"]["error"]
    assert videos["broken/zero.MP4"]["error"] == "the file is empty (0 bytes)"
    assert "Invalid data" in videos["broken/text.MP4"]["error"]
    assert videos["broken/text.MP4"]["duration_s"] is None
    assert str(root) not in response.text  # reasons do not leak absolute paths


def test_one_video_by_path(layout):
    with running_agent(layout["root"]) as url, httpx.Client(base_url=url, headers=AUTH) as client:
        assert client.get("/videos/GX010042.MP4").json()["duration_s"] == 3.0
        broken = client.get("/videos/broken/zero.MP4")
        assert broken.status_code == 200 and broken.json()["error"] == "the file is empty (0 bytes)"


def test_several_roots_first_root_wins_and_the_hidden_twin_is_marked(tmp_path, media):
    first, second = tmp_path / "ssd", tmp_path / "nas"
    for folder in (first, second):
        folder.mkdir()
        shutil.copy(media["good"], folder / "GX010042.MP4")
    shutil.copy(media["good"], second / "only_here.mov")
    with running_agent(first, second) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        videos = client.get("/videos").json()["videos"]
        assert [(v["root"], v["path"], v["error"]) for v in videos][:2] == [
            (0, "GX010042.MP4", None), (1, "GX010042.MP4", videos[1]["error"]),
        ]
        assert "unreachable" in videos[1]["error"] and "storage root 0" in videos[1]["error"]
        assert videos[2]["root"] == 1 and videos[2]["path"] == "only_here.mov" and videos[2]["error"] is None
        frames = read_tar(client.get("/videos/only_here.mov/frames", params={"fps": 1}).content)
        assert len(frames) == 4


def test_probes_are_cached_until_the_file_changes(layout, monkeypatch):
    calls = []
    real_probe = catalog_module.probe_video

    async def counting_probe(file, **kwargs):
        calls.append(file.name)
        return await real_probe(file, **kwargs)

    monkeypatch.setattr(catalog_module, "probe_video", counting_probe)
    catalog = Catalog(StorageRoots([layout["root"]]), probe_timeout_s=30, probe_concurrency=2)

    async def twice():
        first = await catalog.list_videos()
        second = await catalog.list_videos()
        return first, second

    first, second = asyncio.run(twice())
    assert first == second
    probed = len(calls)
    assert probed == 6  # each file once, day1/alias.mp4 sharing its target's probe
    video = layout["root"] / "GX010042.MP4"
    os.utime(video, (1_000_000, 1_000_000))
    asyncio.run(catalog.list_videos())
    assert calls[probed:] == ["GX010042.MP4"]
