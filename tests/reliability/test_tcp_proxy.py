"""The fault-injecting proxy itself: forwards, black-holes on cut(), resets, restores."""

from __future__ import annotations

import httpx
import pytest
from conftest import serve_app
from fastapi import FastAPI
from tcp_proxy import TcpProxy


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict:
        return {"ok": True}

    @app.post("/echo")
    async def echo(body: dict) -> dict:
        return body

    return app


def test_proxy_forwards_cuts_and_restores():
    with serve_app(_app()) as url:
        target_port = int(url.rsplit(":", 1)[1])
        with TcpProxy(target_port) as proxy:
            with httpx.Client(base_url=proxy.url, timeout=5) as client:
                assert client.get("/ping").json() == {"ok": True}
                big = {"data": "x" * 300_000}
                assert client.post("/echo", json=big).json() == big

            proxy.cut()
            assert proxy.is_cut
            # A black hole: the connection is accepted, nothing ever answers, the client's own
            # read timeout is what ends the wait.
            with httpx.Client(base_url=proxy.url, timeout=httpx.Timeout(0.5)) as client:
                with pytest.raises(httpx.ReadTimeout):
                    client.get("/ping")
            assert proxy.stats()["held"] >= 1

            proxy.restore()
            assert not proxy.is_cut
            assert proxy.stats()["held"] == 0
            with httpx.Client(base_url=proxy.url, timeout=5) as client:
                assert client.get("/ping").json() == {"ok": True}


def test_cut_freezes_open_keepalive_connections():
    with serve_app(_app()) as url, TcpProxy(int(url.rsplit(":", 1)[1])) as proxy:
        with httpx.Client(base_url=proxy.url, timeout=httpx.Timeout(0.5)) as client:
            assert client.get("/ping").status_code == 200
            proxy.cut()
            # The pooled connection is still open but no longer carries anything.
            with pytest.raises(httpx.ReadTimeout):
                client.get("/ping")
            proxy.restore()
            assert client.get("/ping").status_code == 200


def test_reset_mode_refuses_fast():
    with serve_app(_app()) as url, TcpProxy(int(url.rsplit(":", 1)[1])) as proxy:
        proxy.cut(mode="reset")
        with httpx.Client(base_url=proxy.url, timeout=5) as client:
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError)):
                client.get("/ping")
        proxy.restore()
        with httpx.Client(base_url=proxy.url, timeout=5) as client:
            assert client.get("/ping").status_code == 200


def test_fixed_listen_port_can_be_reused_after_stop():
    with serve_app(_app()) as url:
        target_port = int(url.rsplit(":", 1)[1])
        first = TcpProxy(target_port).start()
        port = first.port
        first.stop()
        with TcpProxy(target_port, listen_port=port) as second:
            assert second.port == port
            assert httpx.get(f"{second.url}/ping", timeout=5).json() == {"ok": True}
