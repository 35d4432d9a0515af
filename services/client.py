"""How the CLI talks to the core and the agents: the token, and errors a person can act on."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from shared.auth import TokenError, load_token

#: Added to an error of that status, whoever answered it.
STATUS_HINTS = {401: " (check COSMA_TOKEN or --token-file: it must be the cluster's token)"}


def client_token(token_file: Path | None, doing: str) -> str:
    """The cluster token from COSMA_TOKEN or the file; exits saying what could not be done."""
    try:
        return load_token(os.environ.get("COSMA_TOKEN"), token_file)
    except TokenError as exc:
        raise SystemExit(f"cannot {doing}: {exc}") from None


def call(method: str, url: str, *, what: str, hints: dict[int, str] | None = None, **kwargs) -> httpx.Response:
    """One request; any failure exits with what answered, its message and a hint."""
    kwargs.setdefault("timeout", 30)
    try:
        resp = httpx.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise SystemExit(f"cannot reach {what} at {url}: {exc}; is it running, and is the URL right?") from None
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:500]
        hint = {**STATUS_HINTS, **(hints or {})}.get(resp.status_code, "")
        raise SystemExit(f"{what} answered HTTP {resp.status_code}: {message}{hint}")
    return resp
