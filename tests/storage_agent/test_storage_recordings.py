"""GoPro recordings, richer ffprobe facts, folder filter and paging, and the persistent probe cache."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time

import httpx
import pytest

from shared import gopro
from shared.videos import (ExtractionStatus, FrameParams, Recording, RecordingList, StorageStatus,
                           ThumbnailParams, VideoInfo, VideoList)
from services.storage_agent import catalog as catalog_module
from services.storage_agent.catalog import Catalog
from services.storage_agent.paths import StorageRoots
from services.storage_agent.probe import ProbeError, VideoFacts, parse_probe_output
from services.storage_agent.probecache import ProbeCache
from storage_media import AUTH, media, running_agent  # noqa: F401  (fixtures)

GOPRO_FILES = [
    "100GOPRO/GX010042.MP4", "100GOPRO/GX020042.MP4", "100GOPRO/GX100042.MP4",  # chapter 10 sorts last
    "100GOPRO/GH010043.MP4",
    "old/GOPR0007.MP4", "old/GP010007.MP4", "old/GP020007.MP4",
    "plongée 01.MP4",
]


@pytest.mark.parametrize("path, recording, chapter, is_gopro", [
    ("100GOPRO/GX010042.MP4", "100GOPRO/GX0042", 1, True),
    ("GH030001.mp4", "GH0001", 3, True),
    ("a/b/GOPR0007.MP4", "a/b/GOPR0007", 1, True),
    ("a/b/GP010007.MP4", "a/b/GOPR0007", 2, True),
    ("notes/dive.mov", "notes/dive.mov", 1, False),
    ("GX01004.MP4", "GX01004.MP4", 1, False),
])
def test_gopro_names_parse_to_recording_and_chapter(path, recording, chapter, is_gopro):
    assert gopro.parse(path) == gopro.Chapter(recording, chapter, is_gopro)


def test_every_wire_model_round_trips():
    samples = [
        VideoInfo(path="a/GX010042.MP4", root=0, size_bytes=1, mtime=1.5, duration_s=2.0, fps=29.97, width=1920,
                  height=1080, codec="hevc", variable_fps=False, rotation_deg=180, bit_rate_bps=60_000_000,
                  creation_time="2026-05-01T10:00:00.000000Z", recording="a/GX0042", chapter=1),
        VideoList(videos=[VideoInfo(path="x.mp4", root=1, size_bytes=0, mtime=0, error="empty")], total=3,
                  next_offset=1),
        RecordingList(recordings=[Recording(id="a/GX0042", gopro=True, root=0, chapters=["a/GX010042.MP4"],
                                            duration_s=2.0, size_bytes=1, unreadable=[])]),
        FrameParams(fps=1, keyframes=True), ThumbnailParams(t=3, width=200),
        StorageStatus(node_id="n", roots=[], cpu_load_1m=0.1, cpu_count=2, extractions_running=1,
                      extractions_max=2, extractions_queued=1,
                      extractions=[ExtractionStatus(path="a.mp4", state="queued", queue_position=1)]),
    ]
    for model in samples:
        assert type(model).model_validate_json(model.model_dump_json()) == model


@pytest.fixture
def gopro_root(tmp_path, media):
    root = tmp_path / "root"
    for i, name in enumerate(GOPRO_FILES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(media["good"], root / name)
    (root / "old" / "GP020007.MP4").write_bytes(b"")  # an unreadable chapter stays in its recording
    return root


def test_recordings_group_chapters_in_order_with_total_duration(gopro_root):
    with running_agent(gopro_root) as url, httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        response = client.get("/recordings")
        assert response.status_code == 200
        recordings = {r["id"]: r for r in response.json()["recordings"]}
        assert list(recordings) == sorted(recordings)
        assert recordings["100GOPRO/GX0042"] == {
            "id": "100GOPRO/GX0042", "gopro": True, "root": 0,
            "chapters": ["100GOPRO/GX010042.MP4", "100GOPRO/GX020042.MP4", "100GOPRO/GX100042.MP4"],
            "duration_s": 9.0, "size_bytes": 3 * (gopro_root / GOPRO_FILES[0]).stat().st_size, "unreadable": [],
        }
        assert recordings["100GOPRO/GH0043"]["chapters"] == ["100GOPRO/GH010043.MP4"]
        old = recordings["old/GOPR0007"]
        assert old["chapters"] == ["old/GOPR0007.MP4", "old/GP010007.MP4", "old/GP020007.MP4"]
        assert old["duration_s"] is None and old["unreadable"] == ["old/GP020007.MP4"]
        assert recordings["plongée 01.MP4"]["gopro"] is False
        assert client.get("/recordings", params={"folder": "old"}).json()["recordings"] == [old]

        videos = {v["path"]: v for v in client.get("/videos").json()["videos"]}
        assert (videos["old/GP010007.MP4"]["recording"], videos["old/GP010007.MP4"]["chapter"]) == ("old/GOPR0007", 2)
        assert videos["plongée 01.MP4"]["duration_s"] == 3.0
        assert client.get("/videos/plongée 01.MP4").json()["width"] == 320


def test_videos_filter_by_folder_and_page(gopro_root):
    with running_agent(gopro_root) as url, httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        everything = client.get("/videos").json()
        assert everything["total"] == len(GOPRO_FILES) and everything["next_offset"] is None
        paths = [v["path"] for v in everything["videos"]]
        pages, offset = [], 0
        while offset is not None:
            page = client.get("/videos", params={"offset": offset, "limit": 3}).json()
            assert page["total"] == len(GOPRO_FILES)
            pages += [v["path"] for v in page["videos"]]
            offset = page["next_offset"]
        assert pages == paths
        for folder in ("100GOPRO", "100GOPRO/"):
            inside = client.get("/videos", params={"folder": folder}).json()
            assert [v["path"] for v in inside["videos"]] == [p for p in paths if p.startswith("100GOPRO/")]
        assert client.get("/videos", params={"folder": "nowhere"}).json() == {"videos": [], "total": 0,
                                                                              "next_offset": None}
        for bad in ("../", "a/../..", "/etc", "a\\b", "%2e%2e"):
            response = client.get("/videos", params={"folder": bad})
            assert response.status_code == 403, bad
        assert client.get("/videos", params={"limit": 0}).status_code == 422


def _with_metadata(source, target, *, rotate: int, creation_time: str):
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source), "-c", "copy",
                    "-metadata", f"creation_time={creation_time}", "-metadata:s:v:0", f"rotate={rotate}",
                    str(target)], check=True, timeout=60)


def test_facts_include_rotation_creation_time_bit_rate_and_vfr(tmp_path, media):
    root = tmp_path / "root"
    root.mkdir()
    _with_metadata(media["good"], root / "GX010001.MP4", rotate=180, creation_time="2026-05-01T10:00:00Z")
    with running_agent(root) as url:
        info = httpx.get(f"{url}/videos/GX010001.MP4", headers=AUTH, timeout=30).json()
    assert info["rotation_deg"] == 180 and info["creation_time"].startswith("2026-05-01T10:00:00")
    assert info["variable_fps"] is False and info["bit_rate_bps"] > 0
    out = {"streams": [{"codec_name": "h264", "width": 1920, "height": 1080, "avg_frame_rate": "5000/201",
                        "r_frame_rate": "30/1", "side_data_list": [{"rotation": -90}]}],
           "format": {"duration": "12.5", "bit_rate": "8000000"}}
    facts = parse_probe_output(json.dumps(out).encode())
    assert facts.variable_fps is True and facts.rotation_deg == 270 and facts.bit_rate_bps == 8_000_000
    assert facts.duration_s == 12.5 and facts.creation_time is None


@pytest.mark.parametrize("stream, reason", [
    ({"codec_name": "h264", "width": 60000, "height": 60000}, "60000x60000 is absurd"),
    ({"codec_name": "h264", "width": 8, "height": 4}, "8x4 is absurd"),
    ({"codec_name": "h264", "width": 0, "height": 0}, "no picture size"),
])
def test_absurd_picture_sizes_are_unreadable(stream, reason):
    with pytest.raises(ProbeError, match=reason):
        parse_probe_output(json.dumps({"streams": [stream], "format": {}}).encode())


def _counting(monkeypatch, fake: bool = False) -> list[str]:
    calls: list[str] = []
    real_probe = catalog_module.probe_video

    async def probe(file, **kwargs):
        calls.append(file.name)
        if fake:
            return VideoFacts(duration_s=1.0, fps=30.0, width=1920, height=1080, codec="hevc")
        return await real_probe(file, **kwargs)

    monkeypatch.setattr(catalog_module, "probe_video", probe)
    return calls


def test_the_probe_cache_survives_a_restart_and_a_rescan_probes_only_what_changed(gopro_root, tmp_path,
                                                                                    monkeypatch):
    calls = _counting(monkeypatch)
    state = tmp_path / "state"

    def listing():
        cache = ProbeCache(state)
        try:
            return asyncio.run(Catalog(StorageRoots([gopro_root]), probe_timeout_s=30, probe_concurrency=2,
                                       cache=cache).list_videos())
        finally:
            cache.close()

    first = listing()
    assert len(calls) == len(GOPRO_FILES)
    assert listing() == first and len(calls) == len(GOPRO_FILES)  # a new process: nothing probed
    os.utime(gopro_root / "100GOPRO/GX020042.MP4", (1_000_000, 1_000_000))
    (gopro_root / "old" / "GP020007.MP4").unlink()
    shutil.copy(gopro_root / GOPRO_FILES[0], gopro_root / "GX010050.MP4")
    after = listing()
    assert sorted(calls[len(GOPRO_FILES):]) == ["GX010050.MP4", "GX020042.MP4"]
    assert len(after.videos) == len(GOPRO_FILES)
    assert str(gopro_root / "old" / "GP020007.MP4") not in {row[0] for row in _rows(state)}
    (state / "probe-cache.sqlite3").write_bytes(b"not a database")
    assert listing().total == len(GOPRO_FILES)  # a broken cache only costs probes


def _rows(state):
    import sqlite3
    with sqlite3.connect(state / "probe-cache.sqlite3") as db:
        return db.execute("SELECT file FROM probes").fetchall()


def test_listing_thousands_of_cached_files_takes_well_under_a_second(tmp_path, monkeypatch):
    root, state = tmp_path / "root", tmp_path / "state"
    for folder in range(30):
        (root / f"{100 + folder}GOPRO").mkdir(parents=True)
        for n in range(100):
            (root / f"{100 + folder}GOPRO" / f"GX{n % 3 + 1:02d}{n:04d}.MP4").write_bytes(b"x")
    calls = _counting(monkeypatch, fake=True)
    catalog = Catalog(StorageRoots([root]), probe_timeout_s=30, probe_concurrency=4, cache=ProbeCache(state))
    assert asyncio.run(catalog.list_videos()).total == 3000 and len(calls) == 3000
    catalog.cache.close()
    restarted = Catalog(StorageRoots([root]), probe_timeout_s=30, probe_concurrency=4, cache=ProbeCache(state))
    started = time.perf_counter()
    listed = asyncio.run(restarted.list_videos(limit=100))
    elapsed_s = time.perf_counter() - started
    assert listed.total == 3000 and len(listed.videos) == 100 and len(calls) == 3000
    assert elapsed_s < 1.0, f"listing 3000 cached files took {elapsed_s:.2f} s"
    restarted.cache.close()
