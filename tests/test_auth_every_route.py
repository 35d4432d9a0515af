"""Every route of every service, taken from its own OpenAPI document, refuses a request
without the token or with a wrong one (401), except the documented public ones.

Public: ``/health`` and ``/metrics`` everywhere, and on the core every read (GET) — the
dashboard is readable without the token; every core write needs it.
"""

from __future__ import annotations

import re

import httpx
import pytest

from conftest import TOKEN, make_test_video, serve_app
from services.core.app import create_app as create_core
from services.core.config import CoreSettings
from services.gpu_agent.app import create_app as create_gpu
from services.gpu_agent.config import GpuAgentSettings
from services.storage_agent.app import create_app as create_storage
from services.storage_agent.config import StorageSettings

PUBLIC_EVERYWHERE = {("GET", "/health"), ("GET", "/metrics")}
#: FastAPI's own documentation routes (not in the OpenAPI paths): public, like /health.
DOC_ROUTES = ["/openapi.json", "/docs"]


def build(role: str, tmp_path):
    if role == "core":
        return create_core(CoreSettings(token=TOKEN, data_dir=tmp_path / "core", scheduler_enabled=False))
    if role == "gpu":
        return create_gpu(GpuAgentSettings(token=TOKEN, workdir=tmp_path / "frames"))
    make_test_video(tmp_path / "videos" / "a.MP4", seconds=1)
    return create_storage(StorageSettings(token=TOKEN, roots=[tmp_path / "videos"]))


def is_public(role: str, method: str, path: str) -> bool:
    return (method, path) in PUBLIC_EVERYWHERE or (role == "core" and method == "GET")


def concrete(path: str) -> str:
    """A path template with each parameter filled: numbers for ids, a video path otherwise."""
    return re.sub(r"\{([^}:]+)(:[^}]*)?\}", lambda m: "1" if m.group(1).endswith(("id", "_n")) else "a.MP4", path)


@pytest.mark.parametrize("role", ["core", "gpu", "storage"])
def test_every_route_needs_the_token_unless_documented_public(role, tmp_path):
    app = build(role, tmp_path)
    checked = 0
    with serve_app(app) as url:
        spec = httpx.get(f"{url}/openapi.json").json()
        for path, methods in spec["paths"].items():
            for method in methods:
                method = method.upper()
                if is_public(role, method, path):
                    continue
                for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": f"Basic {TOKEN}"}):
                    resp = httpx.request(method, url + concrete(path), headers=headers, json={}, timeout=30)
                    assert resp.status_code == 401, (method, path, headers, resp.status_code, resp.text[:200])
                    assert resp.json()["error"]["code"] == "unauthorized"
                checked += 1
        for path in ["/health", "/metrics", *DOC_ROUTES]:
            assert httpx.get(url + path).status_code == 200, path
    assert checked >= {"core": 10, "gpu": 8, "storage": 3}[role]  # the walk really covered the API


def test_absurd_ids_are_a_422_not_a_database_error(tmp_path):
    """Found by a schemathesis run: ids beyond SQLite's integers used to reach the store (500)."""
    app = build("core", tmp_path)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    huge = 10**20
    with serve_app(app) as url:
        assert httpx.get(f"{url}/api/v1/jobs/{huge}").status_code == 422
        assert httpx.get(f"{url}/api/v1/stitches/{huge}").status_code == 422
        resp = httpx.post(f"{url}/api/v1/stitches", json={"jobs": [1, huge]}, headers=auth)
        assert resp.status_code == 422 and "jobs.1" in resp.json()["error"]["message"]
