"""``GET /``: the job list as a plain server-rendered page (every value escaped)."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from services.core.api.deps import StoreDep
from services.core.models import file_url
from services.core.store import Job, Node

router = APIRouter(tags=["pages"])

#: Jobs shown on the page, newest first.
PAGE_JOBS = 200
#: Seconds between the browser's reloads of the page.
REFRESH_S = 5

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border-bottom: 1px solid #ddd; padding: .3em .7em; text-align: left; vertical-align: top; }
.failed, .offline { color: #b00020; } .done, .online { color: #1b5e20; } .error { color: #b00020; }
"""


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def get_index(store: StoreDep) -> HTMLResponse:
    jobs, count = store.list_jobs(limit=PAGE_JOBS)
    nodes = store.list_nodes()
    body = (
        f"<h1>COSMA QC</h1><h2>Jobs ({count})</h2>{_jobs_table(jobs)}"
        f"<h2>Nodes ({len(nodes)})</h2>{_nodes_table(nodes)}"
    )
    return HTMLResponse(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='{REFRESH_S}'><title>COSMA QC</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _cell(value: object, css: str = "") -> str:
    text = "" if value is None else str(value)
    return f"<td class='{escape(css)}'>{escape(text)}</td>" if css else f"<td>{escape(text)}</td>"


def _jobs_table(jobs: list[Job]) -> str:
    if not jobs:
        return "<p>No jobs yet.</p>"
    rows = []
    for job in jobs:
        links = " ".join(
            f"<a href='{escape(file_url(job.id, name))}'>{escape(name)}</a>" for name in job.files
        )
        rows.append(
            "<tr>" + _cell(job.id) + _cell(job.state.value, job.state.value) + _cell(job.stage)
            + _cell(f"{job.progress:.0%}") + _cell(job.node) + _cell(job.attempt) + _cell(job.backend)
            + _cell(job.error or job.message, "error" if job.error else "") + f"<td>{links}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in
                   ("job", "state", "stage", "progress", "node", "attempt", "backend", "message", "files"))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _nodes_table(nodes: list[Node]) -> str:
    if not nodes:
        return "<p>No nodes yet: add them with <code>POST /api/v1/nodes</code>.</p>"
    rows = [
        "<tr>" + _cell(n.name) + _cell(n.role.value) + _cell(n.url) + _cell(n.shown_state.value, n.shown_state.value)
        + _cell(n.last_seen.isoformat(timespec="seconds") if n.last_seen else "never")
        + _cell(n.last_error, "error") + "</tr>"
        for n in nodes
    ]
    head = "".join(f"<th>{h}</th>" for h in ("node", "role", "url", "state", "last seen", "last error"))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"
