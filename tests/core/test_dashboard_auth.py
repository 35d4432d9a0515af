"""The dashboard's token cookie: accepted for writes on its own, refused when wrong or cross-site."""

from __future__ import annotations

import pytest

from core_fakes import AUTH, anyio_backend, core_settings, running_core  # noqa: F401
from conftest import TOKEN
from services.core.api.deps import TOKEN_COOKIE

pytestmark = pytest.mark.anyio

NODE = {"name": "g1", "role": "gpu", "url": "http://h:1"}


def cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"{TOKEN_COOKIE}={value}"}


async def test_the_cookie_alone_authorises_a_write_and_a_wrong_one_is_401(tmp_path):
    async with running_core(core_settings(tmp_path)) as (_app, client):
        assert (await client.post("/api/v1/nodes", json=NODE)).status_code == 401

        wrong = await client.post("/api/v1/nodes", json=NODE, headers=cookie(TOKEN + "x"))
        assert wrong.status_code == 401 and "cookie" in wrong.json()["error"]["message"]
        assert (await client.post("/api/v1/nodes", json=NODE, headers=cookie(""))).status_code == 401

        right = await client.post("/api/v1/nodes", json=NODE, headers=cookie(TOKEN))
        assert right.status_code == 201, right.text

        # A bearer header still decides when both are sent; reads never needed either.
        both = await client.post("/api/v1/nodes/g1/drain",
                                 headers={"Authorization": "Bearer nope", **cookie(TOKEN)})
        assert both.status_code == 401
        assert (await client.post("/api/v1/nodes/g1/drain", headers=AUTH)).status_code == 200


async def test_the_cookie_is_refused_from_another_sites_page(tmp_path):
    async with running_core(core_settings(tmp_path)) as (_app, client):
        foreign = await client.post("/api/v1/nodes", json=NODE,
                                    headers={"Origin": "http://evil.example", **cookie(TOKEN)})
        assert foreign.status_code == 401
        own = await client.post("/api/v1/nodes", json=NODE, headers={"Origin": "http://core", **cookie(TOKEN)})
        assert own.status_code == 201, own.text
