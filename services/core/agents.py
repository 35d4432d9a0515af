"""HTTP client of the core towards the gpu and storage agents.

Every failure becomes one of these, so callers can tell "try again later" from "our bug"::

    AgentError               the agent at ``url`` could not do what we asked
     ├── AgentUnreachable    connection refused, DNS, timeout: retry later
     ├── AgentServerError    it answered 5xx, or a body that is not the contract: retry later
     └── AgentRequestError   it answered 4xx: our request was wrong (or the token is)
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from shared import API_VERSION, API_VERSION_HEADER
from shared.auth import auth_headers
from shared.gpu import AgentStatus
from shared.health import Health
from shared.jobs import AgentJob, JobSpec
from shared.videos import VideoList


class AgentError(Exception):
    def __init__(self, url: str, message: str):
        super().__init__(message)
        self.url = url
        self.message = message


class AgentUnreachable(AgentError):
    pass


class AgentServerError(AgentError):
    pass


class AgentRequestError(AgentError):
    def __init__(self, url: str, message: str, *, status_code: int, code: str):
        super().__init__(url, message)
        self.status_code = status_code
        self.code = code


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """``(code, message)`` from a typed error body, or from the bare status if it has none."""
    try:
        detail = response.json()["error"]
        return str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        return "http_error", (response.text[:200].strip() or response.reason_phrase)


class AgentClient:
    """One pooled ``httpx.AsyncClient`` for every agent, carrying the cluster token.

    The underlying client is made on first use, in the event loop that uses it, and is
    closed by :meth:`aclose` (the app's lifespan); a later call makes a fresh one.
    """

    def __init__(self, token: str, *, poll_timeout_s: float, request_timeout_s: float):
        self._headers = {**auth_headers(token), API_VERSION_HEADER: API_VERSION}
        self.poll_timeout_s = poll_timeout_s
        self.request_timeout_s = request_timeout_s
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(headers=self._headers, timeout=self.request_timeout_s)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _send(self, method: str, url: str, *, timeout_s: float | None = None, **kwargs) -> httpx.Response:
        timeout = timeout_s if timeout_s is not None else self.request_timeout_s
        try:
            response = await self.client.request(method, url, timeout=timeout, **kwargs)
        except httpx.TimeoutException:
            raise AgentUnreachable(url, f"{method} {url} timed out after {timeout:g} s") from None
        except httpx.TransportError as exc:
            raise AgentUnreachable(url, f"{method} {url} failed: {str(exc) or type(exc).__name__}") from None
        _raise_for_status(method, url, response)
        return response

    async def _get_model(self, url: str, model: type[BaseModel], timeout_s: float | None = None):
        response = await self._send("GET", url, timeout_s=timeout_s)
        return _parse(url, response, model)

    # -- gpu agent ---------------------------------------------------------------------

    async def gpu_status(self, base_url: str) -> AgentStatus:
        return await self._get_model(f"{base_url}/status", AgentStatus, self.poll_timeout_s)

    async def get_job(self, base_url: str, job_id: int) -> AgentJob:
        return await self._get_model(f"{base_url}/jobs/{job_id}", AgentJob, self.poll_timeout_s)

    async def put_job(self, base_url: str, spec: JobSpec) -> AgentJob:
        url = f"{base_url}/jobs/{spec.job_id}"
        response = await self._send("PUT", url, json=spec.model_dump(mode="json"))
        return _parse(url, response, AgentJob)

    async def cancel_job(self, base_url: str, job_id: int, *, purge: bool = False) -> bool:
        """Ask the agent to stop the job (``purge``: and delete its files); False if it does
        not know it (nothing to stop)."""
        try:
            await self._send("DELETE", f"{base_url}/jobs/{job_id}", params={"purge": "true"} if purge else None)
        except AgentRequestError as exc:
            if exc.status_code == 404:
                return False
            raise
        return True

    async def open_file(self, base_url: str, job_id: int, name: str, *, byte_range: str | None = None) -> httpx.Response:
        """A streaming response for an artifact (a part of it with ``byte_range``); the caller must ``aclose()`` it."""
        url = f"{base_url}/jobs/{job_id}/files/{quote(name, safe='')}"
        request = self.client.build_request("GET", url, timeout=self.request_timeout_s,
                                            headers={"Range": byte_range} if byte_range else None)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TimeoutException:
            raise AgentUnreachable(url, f"GET {url} timed out after {self.request_timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise AgentUnreachable(url, f"GET {url} failed: {str(exc) or type(exc).__name__}") from None
        if response.is_error:
            await response.aread()
            await response.aclose()
            _raise_for_status("GET", url, response)
        return response

    # -- storage agent -----------------------------------------------------------------

    async def list_videos(self, base_url: str) -> VideoList:
        return await self._get_model(f"{base_url}/videos", VideoList)

    async def list_recordings(self, base_url: str) -> dict | None:
        """The agent's ``GET /recordings`` as JSON, or None if it has no such route."""
        try:
            response = await self._send("GET", f"{base_url}/recordings")
        except AgentRequestError as exc:
            if exc.status_code in (404, 405):
                return None
            raise
        try:
            answer = response.json()
        except ValueError:
            return None
        return answer if isinstance(answer, dict) else None

    # -- any agent -----------------------------------------------------------------------

    async def health(self, base_url: str) -> Health:
        return await self._get_model(f"{base_url}/health", Health, self.poll_timeout_s)


def _raise_for_status(method: str, url: str, response: httpx.Response) -> None:
    if not response.is_error:
        return
    code, message = _error_of(response)
    text = f"{method} {url} answered {response.status_code}: {message}"
    if response.status_code >= 500:
        raise AgentServerError(url, text)
    raise AgentRequestError(url, text, status_code=response.status_code, code=code)


def _parse(url: str, response: httpx.Response, model: type[BaseModel]):
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise AgentServerError(
            url, f"{url} answered a body that is not a {model.__name__} ({where}: {first.get('msg')})"
        ) from None
