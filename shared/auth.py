"""One bearer token per cluster: loading it, and the FastAPI dependency that checks it."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from fastapi import HTTPException, Request


class TokenError(ValueError):
    pass


def load_token(token: str | None, token_file: Path | None) -> str:
    """The token from the setting, else from the file; an error a person can act on if neither."""
    if token:
        return token.strip()
    if token_file is not None:
        try:
            value = Path(token_file).read_text().strip()
        except OSError as exc:
            raise TokenError(f"cannot read the token file {token_file}: {exc.strerror}") from exc
        if not value:
            raise TokenError(f"the token file {token_file} is empty; put the cluster token in it")
        return value
    raise TokenError(
        "no cluster token: set COSMA_TOKEN or pass --token-file FILE "
        "(create one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    )


def new_token() -> str:
    return secrets.token_urlsafe(32)


class BearerAuth:
    """Dependency: the request must carry ``Authorization: Bearer <token>``.

    The token is compared in constant time and never logged.
    """

    def __init__(self, token: str):
        self._token = token.encode()

    async def __call__(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HTTPException(
                401, "missing bearer token: send 'Authorization: Bearer <cluster token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise HTTPException(
                401, "wrong token: use the cluster token the services were started with",
                headers={"WWW-Authenticate": "Bearer"},
            )


def auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
