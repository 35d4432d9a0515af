"""The typed error body every service answers with, and the handlers that produce it.

Exception tree::

    ApiError                 carries an HTTP status, a machine code and a sentence
     ├── NotFound            404
     ├── Forbidden           403
     ├── Conflict            409
     ├── Unavailable         503
     └── BadRequest          400 / 422
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.base import WireModel

log = logging.getLogger(__name__)


class ErrorDetail(WireModel):
    code: str
    message: str


class ErrorBody(WireModel):
    error: ErrorDetail


class ApiError(Exception):
    status_code = 500
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class Unavailable(ApiError):
    status_code = 503
    code = "unavailable"


class BadRequest(ApiError):
    status_code = 422
    code = "invalid"


def error_response(status_code: int, code: str, message: str, headers=None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
            loc = loc[1:]
        where = ".".join(str(p) for p in loc)
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Make every error leave the service as ``{"error": {"code", "message"}}``."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
        return error_response(
            exc.status_code, code.get(exc.status_code, "http_error"), str(exc.detail), exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); see the service log")
