"""How the core reads a storage agent's own recording groups (services/core/catalog.py)."""

from __future__ import annotations

from services.core.catalog import _from_agent
from shared.videos import VideoInfo


def info(path: str, root: int) -> VideoInfo:
    return VideoInfo(path=path, root=root, size_bytes=1, mtime=0.0, duration_s=10.0)


def test_a_path_in_two_roots_is_the_first_roots_copy():
    first, shadowed = info("100GOPRO/GX010042.MP4", 0), info("100GOPRO/GX010042.MP4", 1)
    recordings = _from_agent({"recordings": [{"id": "100GOPRO/GX0042", "chapters": ["100GOPRO/GX010042.MP4"]}]},
                             [first, shadowed])
    assert recordings[0].chapters[0].root == 0  # the copy the storage agent actually serves


def test_an_answer_of_another_shape_falls_back_to_the_cores_own_grouping():
    assert _from_agent({"groups": []}, [info("a.MP4", 0)]) is None
