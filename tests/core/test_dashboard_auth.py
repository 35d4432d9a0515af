"""The dashboard's token cookie: set by the core once the token checks out (HttpOnly), accepted
for writes on its own, refused when wrong or cross-site."""

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


async def test_the_core_sets_the_cookie_only_for_the_right_token_and_scripts_cannot_read_it(tmp_path):
    async with running_core(core_settings(tmp_path)) as (_app, client):
        wrong = await client.post("/dashboard/token", json={"token": "nope"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers

        right = await client.post("/dashboard/token", json={"token": TOKEN})
        assert right.status_code == 204
        set_cookie = right.headers["set-cookie"].lower()
        assert set_cookie.startswith(f"{TOKEN_COOKIE}=") and "httponly" in set_cookie
        assert "samesite=strict" in set_cookie and "path=/" in set_cookie
        assert (await client.post("/api/v1/nodes", json=NODE)).status_code == 201  # the client keeps the cookie

        forgot = await client.delete("/dashboard/token")
        assert forgot.status_code == 204 and f'{TOKEN_COOKIE}=""' in forgot.headers["set-cookie"]
        assert (await client.post("/api/v1/nodes/g1/drain")).status_code == 401
