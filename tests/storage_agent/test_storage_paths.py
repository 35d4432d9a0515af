"""Path confinement: only video files under the roots are ever opened, whatever the request says."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import httpx
import pytest

from shared.errors import NotFound
from services.storage_agent.paths import Forbidden, StorageRoots, check_relative_path
from storage_media import AUTH, SECRET, layout, media, running_agent  # noqa: F401  (fixtures)


@pytest.mark.parametrize("path", [
    "GX010042.MP4", "day1/boat/GX020042.MP4", "a.mov", "A.MoV", "100%.mp4", "with space.mp4",
])
def test_clean_relative_video_paths_pass(path):
    assert check_relative_path(path) == path


@pytest.mark.parametrize("path, why", [
    ("", "empty"),
    ("../x.mp4", "'..'"),
    ("a/../../x.mp4", "'..'"),
    ("a/./x.mp4", "'..'"),
    ("a//x.mp4", "'..'"),
    ("/etc/x.mp4", "absolute"),
    ("a\\..\\x.mp4", "backslash"),
    ("x.mp4\x00.txt", "NUL"),
    ("%2e%2e%2fx.mp4", "percent-encoding"),
    ("%252e%252e%252fx.mp4", "percent-encoding"),
    ("%25252e%25252e%25252fx.mp4", "percent-encoding"),
    ("%2fetc%2fx.mp4", "percent-encoding"),
    ("..%5cx.mp4", "percent-encoding"),
    ("notes.txt", "only video files"),
    ("x.mp4.txt", "only video files"),
    ("x" * 5000 + ".mp4", "longer than"),
])
def test_unsafe_paths_are_forbidden(path, why):
    with pytest.raises(Forbidden, match=why):
        check_relative_path(path)


def test_resolve_follows_links_only_within_the_roots(layout):
    roots = StorageRoots([layout["root"]])
    video = roots.resolve("day1/alias.mp4")
    assert video.file == (layout["root"] / "GX010042.MP4").resolve() and video.path == "day1/alias.mp4"
    with pytest.raises(Forbidden, match="outside the storage roots"):
        roots.resolve("link_out.mp4")
    with pytest.raises(Forbidden, match="outside the storage roots"):
        roots.resolve("link_secret.mp4")
    with pytest.raises(Forbidden, match="not a video"):
        roots.resolve("notes_link.mp4")
    with pytest.raises(NotFound):
        roots.resolve("folder.mp4")
    with pytest.raises(NotFound):
        roots.resolve("missing.mp4")


def test_a_link_out_of_the_root_is_refused_whether_or_not_its_target_exists(layout):
    (layout["root"] / "dangling_out.mp4").symlink_to(layout["outside"] / "nothing-here.mp4")
    with pytest.raises(Forbidden):
        StorageRoots([layout["root"]]).resolve("dangling_out.mp4")


def _raw_get(url: str, target: str) -> tuple[int, bytes]:
    """GET with the request target sent byte for byte (httpx would normalise '..' away)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", target, headers=AUTH)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_traversal_in_every_disguise_is_refused_and_nothing_outside_is_read(layout):
    outside = str(layout["outside"])
    raw_targets = [
        "/videos/../outside/secret.mp4/frames",
        "/videos/day1/../../outside/secret.mp4/frames",
        "/videos/../outside/secret.txt",
        "/videos/..%2foutside%2fsecret.mp4/frames",
        "/videos/%2e%2e%2foutside%2fsecret.mp4/frames",
        "/videos/%2E%2E/outside/secret.mp4/frames",
        "/videos/%252e%252e%252foutside%252fsecret.mp4/frames",
        "/videos/%25252e%25252e%25252foutside%25252fsecret.mp4/frames",
        f"/videos/{outside}/secret.mp4/frames",
        f"/videos/%2F{outside.lstrip('/')}/secret.mp4/frames",
        "/videos/..%5coutside%5csecret.mp4/frames",
        "/videos/GX010042.MP4%00/frames",
        "/videos/link_out.mp4/frames",
        "/videos/link_out.mp4",
        "/videos/link_secret.mp4/frames",
        "/videos/notes_link.mp4/frames",
        "/videos/notes.txt/frames",
        "/videos/notes.txt",
        "/videos/GX010042.MP4.txt/frames",
    ]
    with running_agent(layout["root"]) as url:
        for target in raw_targets:
            status, body = _raw_get(url, target)
            assert status == 403, (target, status, body)
            assert b'"code":"forbidden"' in body, (target, body)
            assert SECRET.encode() not in body
        # The same through httpx, which keeps percent-encoding as given.
        with httpx.Client(base_url=url, headers=AUTH) as client:
            for target in ("/videos/%2e%2e%2foutside%2fsecret.mp4/frames",
                           "/videos/%252e%252e%252foutside%252fsecret.mp4/frames"):
                response = client.get(target)
                assert response.status_code == 403
                assert "percent-encoding" in response.json()["error"]["message"] or "'..'" in response.json()["error"]["message"]
            listing = client.get("/videos").text
            assert "link_out" not in listing and "link_secret" not in listing and SECRET not in listing
            # Still serving what is inside.
            assert client.get("/videos/GX010042.MP4").json()["width"] == 320


def test_missing_and_non_file_videos_are_404(layout):
    with running_agent(layout["root"]) as url, httpx.Client(base_url=url, headers=AUTH) as client:
        for target in ("/videos/missing.mp4/frames", "/videos/day1/missing.MOV", "/videos/folder.mp4/frames"):
            response = client.get(target)
            assert response.status_code == 404, target
            assert response.json()["error"]["code"] == "not_found"
