"""The dashboard: server-rendered pages (Jinja2, everything escaped) and their static files.

``/`` overview, ``/jobs`` the job table, ``/jobs/{id}`` one job, ``/videos`` the catalog to
submit from, ``/stitches`` finished jobs merged. The pages' JavaScript (``static/dashboard.js``) keeps them live from
``/api/v1/events`` and re-fetches rows as HTML from ``/jobs/rows``, so rows are rendered in
one place only. Writes go to the REST API with the token the page keeps in a cookie.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path as FsPath
from posixpath import dirname
from typing import Annotated
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from shared.errors import NotFound
from shared.jobs import JobState
from shared.qc import QC_NAME
from shared.stitches import StitchPublic

from services.core import catalog, stitches
from services.core.api import dashboard
from services.core.api.deps import TOKEN_COOKIE, AgentsDep, StoreDep, check_dashboard_token
from services.core.models import API_PREFIX, file_url, last_status
from services.core.store import ACTIVE_STATES, Job, NodeRole, Store

router = APIRouter(tags=["pages"])
router.include_router(dashboard.router, prefix=API_PREFIX)
router.include_router(dashboard.media_router, prefix=API_PREFIX)

#: Jobs per page of the job table.
PAGE_JOBS = 50
#: Running jobs listed on the overview.
OVERVIEW_RUNNING = 50
#: How long the browser keeps the token cookie.
TOKEN_COOKIE_MAX_AGE_S = 30 * 86_400
#: Newest stitches shown (each is looked up on its node).
PAGE_STITCHES = 20

_HERE = FsPath(__file__).resolve().parent.parent
STATIC_DIR = _HERE / "static"
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _duration(start: datetime | None, end: datetime | None = None) -> str:
    if start is None:
        return ""
    seconds = int(((end or datetime.now(timezone.utc)) - start).total_seconds())
    if seconds < 60:
        return f"{max(seconds, 0)} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _thumb_url(storage: str, path: str) -> str:
    return f"{API_PREFIX}/videos/{quote(storage, safe='')}/{quote(path, safe='/')}/thumbnail?width=192"


_ENV.filters.update(duration=_duration, when=_when, size=_size, pct=lambda v: f"{v:.0%}")
_ENV.globals.update(file_url=file_url, qc_name=QC_NAME, thumb_url=_thumb_url,
                    states=[s.value for s in JobState],
                    active=[s.value for s in ACTIVE_STATES])


#: Scripts only from the core's own static files (none inline), so an escaping slip cannot run one.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _render(name: str, since: int, status_code: int = 200, **context) -> HTMLResponse:
    """``since``: the last event id before the page's data was read; its live updates start there."""
    return HTMLResponse(_ENV.get_template(name).render(since=since, **context), status_code=status_code,
                        headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP})


def _job_rows(store: Store, jobs: list[Job]) -> list[dict]:
    videos = store.videos_of(j.id for j in jobs)
    return [{"job": j, "videos": videos[j.id], "files": set(j.files)} for j in jobs]


# -- pages ---------------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def get_overview(store: StoreDep, agents: AgentsDep) -> HTMLResponse:
    def read() -> dict:
        since = store.last_event_id()
        nodes = store.list_nodes()
        open_jobs = store.open_job_counts()
        counts = {s.value: store.list_jobs(states=[s], limit=1)[1] for s in JobState}
        running, _ = store.list_jobs(states=ACTIVE_STATES, limit=OVERVIEW_RUNNING)
        shown = [{"node": n, "status": last_status(n), "open_jobs": open_jobs.get(n.name, 0), "storage": None}
                 for n in nodes]
        return dict(since=since, nodes=shown, counts=counts, running=_job_rows(store, running),
                    total=sum(counts.values()))

    found = await store.read(read)
    storage = [item for item in found["nodes"] if item["node"].role == NodeRole.storage]
    # The core polls storage nodes for liveness only: their disks are asked for here, briefly.
    answers = await asyncio.gather(*(dashboard.storage_status(agents, item["node"]) for item in storage))
    for item, answer in zip(storage, answers):
        item["storage"] = answer
    return _render("overview.html", found.pop("since"), page="overview", **found)


@router.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
async def get_jobs(
    store: StoreDep,
    state: Annotated[list[JobState] | None, Query()] = None,
    node: Annotated[str | None, Query(max_length=64)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    cursor: Annotated[int | None, Query(ge=1)] = None,
) -> HTMLResponse:
    node, q = node or None, q or None

    def read() -> tuple:
        since = store.last_event_id()  # first: the page follows every change after its read
        jobs, count = store.list_jobs(states=state, node=node, text=q, before_id=cursor, limit=PAGE_JOBS)
        return since, jobs, count, _job_rows(store, jobs), [n.name for n in store.list_nodes()]

    since, jobs, count, rows, nodes = await store.read(read)
    filters = {"state": [s.value for s in state or []], "node": node or "", "q": q or ""}
    next_url = None
    if len(jobs) == PAGE_JOBS:
        query = [("state", s) for s in filters["state"]] + [(k, filters[k]) for k in ("node", "q") if filters[k]]
        next_url = "/jobs?" + urlencode(query + [("cursor", jobs[-1].id)])
    # New jobs are added live only where they would be: the first page, unfiltered.
    live_insert = cursor is None and not state and not node and not q
    return _render("jobs.html", since, page="jobs", rows=rows, count=count, filters=filters,
                   next_url=next_url, first_page=cursor is None, live_insert=live_insert, nodes=nodes)


@router.get("/jobs/rows", response_class=HTMLResponse, include_in_schema=False)
async def get_job_rows(store: StoreDep, id: Annotated[list[int], Query(max_length=500)]) -> HTMLResponse:
    """Table rows of these jobs (for the page's live updates); unknown ids are left out."""
    def read() -> list[dict]:
        found = store.jobs_by_id(id)
        return _job_rows(store, [found[i] for i in sorted(found, reverse=True)])

    return _render("job_rows.html", 0, rows=await store.read(read))


@router.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
async def get_job_page(job_id: Annotated[int, Path(ge=1, le=10_000_000)], store: StoreDep,
                       agents: AgentsDep) -> HTMLResponse:
    def read() -> tuple:
        since = store.last_event_id()
        try:
            job = store.get_job(job_id)
        except NotFound:
            return since, None, None, None, None
        return since, job, store.videos_of([job_id])[job_id], store.job_events(job_id), dashboard.viewer_url(store, job)

    since, job, videos, events, viewer = await store.read(read)
    if job is None:
        return _render("missing.html", since, status_code=404, page="jobs", job_id=job_id)
    qc = await dashboard.load_qc(store, agents, job)
    files = set(job.files)
    plots = [p for p in (qc.report.plots if qc.report else []) if p in files]
    return _render("job.html", since, page="jobs", job=job, videos=videos, events=events, qc=qc, plots=plots,
                   files=files, viewer_url=viewer)


@router.get("/videos", response_class=HTMLResponse, include_in_schema=False)
async def get_videos(store: StoreDep, agents: AgentsDep) -> HTMLResponse:
    since = await store.read(store.last_event_id)
    found, errors = await catalog.catalogs(store, agents)
    storages = []
    for node in found:
        folders: dict[str, list] = {}
        for rec in node.recordings:
            durations = [v.duration_s for v in rec.chapters]
            folders.setdefault(dirname(rec.chapters[0].path) or ".", []).append({
                "rec": rec, "duration_s": None if None in durations else sum(durations),
                "size_bytes": sum(v.size_bytes for v in rec.chapters),
                "unreadable": [v.path for v in rec.chapters if v.error],
            })
        storages.append({"name": node.node, "folders": sorted(folders.items())})
    return _render("videos.html", since, page="videos", storages=storages, errors=sorted(errors.items()))


@router.get("/stitches", response_class=HTMLResponse, include_in_schema=False)
async def get_stitches(store: StoreDep, agents: AgentsDep) -> HTMLResponse:
    since = await store.read(store.last_event_id)
    listed = await store.read(stitches.list_all, store)
    shown = list(reversed(listed))[:PAGE_STITCHES]
    # Running ones are followed on read, and the residuals come from the node's report.
    fresh = await asyncio.gather(*(stitches.get(store, agents, s.id) for s in shown), return_exceptions=True)
    rows = [f if isinstance(f, StitchPublic) else s for s, f in zip(shown, fresh)]
    done, _ = await store.read(store.list_jobs, states=[JobState.done], limit=PAGE_JOBS * 2)
    return _render("stitches.html", since, page="stitches", stitches=rows,
                   done_jobs=await store.read(_job_rows, store, done))


@router.post("/dashboard/token", status_code=204, include_in_schema=False)
def set_token_cookie(request: Request, token: Annotated[str, Body(embed=True, max_length=4096)]) -> Response:
    """Check the token, then keep it in an HttpOnly cookie: the pages' scripts never read it back."""
    check_dashboard_token(request, token)
    response = Response(status_code=204)
    response.set_cookie(TOKEN_COOKIE, quote(token.strip(), safe=""), max_age=TOKEN_COOKIE_MAX_AGE_S, path="/",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.delete("/dashboard/token", status_code=204, include_in_schema=False)
def forget_token_cookie() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/static/{name}", include_in_schema=False)
def get_static(name: str) -> FileResponse:
    """The dashboard's own CSS and JavaScript (no CDN: the LAN may be offline)."""
    if name not in {p.name for p in STATIC_DIR.iterdir() if p.is_file()}:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-cache"})
