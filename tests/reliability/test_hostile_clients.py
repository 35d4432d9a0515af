"""Hostile clients against real service processes: slow readers, bodies sent byte by byte,
huge and deeply nested JSON bodies. Each service must keep serving everyone else and answer
the bad request with a 4xx, never a crash or a 5xx.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import pytest
from conftest import TOKEN, make_test_video
from service_procs import AUTH, Services, survey_base

#: A route of each service that takes a body (the storage agent has none: one it ignores).
ONE_ROUTE_EACH = [("core", "POST", "/api/v1/jobs"), ("gpu", "PUT", "/jobs/7"), ("storage", "GET", "/videos")]


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    base, sample = survey_base(tmp_path_factory, "hostile")
    videos = base / "videos"
    with Services(base) as running:
        storage = running.start("storage-agent", ["--root", videos, "--node-id", "st"])
        gpu = running.start("gpu-agent", ["--workdir", base / "frames", "--node-id", "g1", "--disk-reserve-mib", "0"])
        core = running.start("core", ["--data-dir", base / "core"])
        resp = httpx.post(f"{core.url}/api/v1/nodes", json={"name": "st", "role": "storage", "url": storage.url},
                          headers=AUTH, timeout=30)
        assert resp.status_code == 201, resp.text
        yield {"storage": storage, "gpu": gpu, "core": core, "video": sample.video.name, "all": running}


def raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def all_healthy(services) -> None:
    for name in ("storage", "gpu", "core"):
        assert services[name].proc.poll() is None, f"{name} died"
        assert httpx.get(f"{services[name].url}/health", timeout=10).status_code == 200, name


def test_a_client_reading_a_frame_stream_very_slowly_does_not_hold_up_the_others(services):
    storage = services["storage"]
    path = f"/videos/{services['video']}/frames?fps=10&width=640"
    slow = raw_connection(storage.url)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        slow.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        assert slow.recv(12).startswith(b"HTTP/1.1 200")
        stop = threading.Event()

        def trickle():  # one byte every 50 ms: the stream would take hours at this rate
            with contextlib.suppress(OSError):
                while not stop.is_set() and slow.recv(1):
                    time.sleep(0.05)

        reader = threading.Thread(target=trickle, daemon=True)
        reader.start()
        with httpx.Client(base_url=storage.url, headers=AUTH, timeout=60) as client:
            for _ in range(2):
                whole = client.get(path)
                assert whole.status_code == 200 and b"end.json" in whole.content[-2048:]
            assert client.get("/videos").status_code == 200
            assert client.get("/health").status_code == 200
        assert reader.is_alive(), "the slow reader should still be mid-stream"
        stop.set()
    finally:
        slow.close()
    all_healthy(services)


def test_a_client_that_stops_reading_is_dropped_and_its_extraction_slot_freed(tmp_path):
    """A frame stream too long for the socket buffers, a client that takes nothing more (a
    stopped process, a pulled cable): it held the node's only slot for ever before."""
    make_test_video(tmp_path / "videos" / "long.mp4", seconds=60, fps=10, size="640x360")
    with Services(tmp_path) as running:
        storage = running.start("storage-agent", ["--root", tmp_path / "videos", "--max-concurrent-extractions", "1",
                                                  "--extraction-wait-s", "120", "--stall-timeout-s", "3"])
        stalled = raw_connection(storage.url)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            stalled.sendall(f"GET /videos/long.mp4/frames?fps=10 HTTP/1.1\r\nHost: x\r\n"
                            f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
            assert stalled.recv(12).startswith(b"HTTP/1.1 200")
            # Waits for the only slot, and gets it once the stalled client is dropped.
            other = httpx.get(f"{storage.url}/videos/long.mp4/frames", params={"fps": 1}, headers=AUTH, timeout=180)
            assert other.status_code == 200 and b"end.json" in other.content[-2048:]
        finally:
            stalled.close()
        assert "the client took nothing for 3 s" in storage.log()


@pytest.mark.parametrize("service,method,path", ONE_ROUTE_EACH)
def test_request_bodies_sent_byte_by_byte_do_not_stop_the_service(services, service, method, path):
    url = services[service].url
    slow = []
    try:
        for _ in range(20):
            sock = raw_connection(url)
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{".encode())
            slow.append(sock)
        for _ in range(5):  # the slow senders trickle on while others are served
            for sock in slow:
                sock.sendall(b" ")
            assert httpx.get(f"{url}/health", timeout=10).status_code == 200
            time.sleep(0.1)
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
            probe = {"core": "/api/v1/jobs", "gpu": "/status", "storage": "/videos"}[service]
            assert client.get(probe).status_code == 200
    finally:
        for sock in slow:
            sock.close()
    all_healthy(services)


def _huge_jobs_body(mib: int) -> bytes:
    one = b'{"storage": "st", "path": "' + b"x" * 1000 + b'"},'
    count = mib * 1024 * 1024 // len(one)
    return b'{"videos": [' + one * count + b'{"storage": "st", "path": "y"}], "fps": 1}'


@pytest.mark.parametrize("service,method,path", [
    ("core", "POST", "/api/v1/jobs"),
    ("core", "POST", "/api/v1/nodes"),
    ("gpu", "PUT", "/jobs/7"),
])
def test_huge_and_deeply_nested_json_bodies_get_a_4xx_not_a_crash(services, service, method, path):
    url = services[service].url
    headers = {**AUTH, "Content-Type": "application/json"}
    bodies = {
        "huge": _huge_jobs_body(32),
        "deep": b"[" * 200_000 + b"]" * 200_000,
        "deep object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "not json": b"\xff\xfe" * 1_000_000,
    }
    for what, body in bodies.items():
        resp = httpx.request(method, f"{url}{path}", content=body, headers=headers, timeout=120)
        assert resp.status_code in (400, 413, 422), (what, resp.status_code, resp.text[:300])
        assert "error" in resp.json(), (what, resp.text[:300])
        assert TOKEN not in resp.text
    all_healthy(services)


@pytest.mark.parametrize("service,method,path", ONE_ROUTE_EACH)
def test_a_body_too_large_is_refused_with_413_before_it_is_read_even_without_a_token(services, service, method, path):
    """FastAPI parses a JSON body before the token is checked: without a size limit anyone
    could make a service parse gigabytes (a 200 MB body took a core to 2.3 GB, then 401)."""
    url = f"{services[service].url}{path}"
    declared = raw_connection(services[service].url)
    try:  # the size is declared: refused at once, the body never sent
        declared.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {8 << 30}\r\n\r\n".encode())
        assert declared.recv(12) == b"HTTP/1.1 413"
    finally:
        declared.close()

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"videos": ['
        for _ in range(64):
            yield b'{"storage": "st", "path": "' + b"x" * 100_000 + b'"},'

    for headers in ({"Content-Type": "application/json"}, {**AUTH, "Content-Type": "application/json"}):
        resp = httpx.request(method, url, content=chunks(), headers=headers, timeout=60)
        # Never read in full, never parsed; a route that takes no body (storage) never reads it.
        assert resp.status_code in ((200, 401) if service == "storage" else (401, 413)), resp.text[:300]
        if resp.status_code == 413:
            assert resp.json()["error"]["message"].startswith("the request body is over 4 MiB")
    all_healthy(services)
