"""``cosma-qc token new``, ``jobs list|show|cancel|retry``, ``logs JOB``, ``open JOB``: operators' commands.

They talk to the core's API (``--core`` / ``COSMA_CORE_URL``) with the cluster token
(``COSMA_TOKEN`` / ``--token-file``) where a write needs it; ``open`` also asks the job's gpu
agent for its viewer. Every error says what to do next.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import webbrowser
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from services.client import call, client_token
from shared.auth import auth_headers

#: Bytes of randomness in a new token (43 URL-safe characters).
TOKEN_BYTES = 32
FINAL_STATES = ("done", "failed", "cancelled")


def add_jobs_commands(sub, add_client_arguments) -> None:
    """Register ``token``, ``jobs``, ``logs`` and ``open`` on the ``cosma-qc`` subparsers."""
    token = sub.add_parser("token", help="make a cluster token")
    token_actions = token.add_subparsers(dest="token_action", required=True)
    new = token_actions.add_parser("new", help="print a new random cluster token (or write it to --file)")
    new.add_argument("--file", type=Path, default=None,
                     help="write it to this file (mode 0600) instead of printing it (default: print)")
    new.add_argument("--force", action="store_true", help="overwrite --file if it exists")
    new.set_defaults(func=cmd_token_new)

    jobs = sub.add_parser("jobs", help="list, show, cancel and retry jobs")
    actions = jobs.add_subparsers(dest="jobs_action", required=True)
    listing = actions.add_parser("list", help="jobs, newest first")
    listing.add_argument("--state", action="append", default=None,
                         choices=["queued", "assigned", "extracting", "reconstructing", "done", "failed", "cancelled"],
                         help="only jobs in this state; repeat for several (default: all)")
    listing.add_argument("--node", default=None, help="only jobs placed on this node")
    listing.add_argument("--search", default=None, help="text in the message, error, recording or a video path")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    show = actions.add_parser("show", help="one job: state, backend, videos, files")
    cancel = actions.add_parser("cancel", help="cancel a job (its gpu agent stops it)")
    retry = actions.add_parser("retry", help="queue a failed or cancelled job again")
    for parser in (show, cancel, retry):
        parser.add_argument("job", type=int, help="job number")
    for parser in (listing, show):
        parser.add_argument("--json", action="store_true", help="print the core's JSON answer")
    for parser in (listing, show, cancel, retry):
        add_client_arguments(parser)
    jobs.set_defaults(func=cmd_jobs)

    logs = sub.add_parser("logs", help="a job's history: every state change and message, oldest first")
    logs.add_argument("job", type=int, help="job number")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    logs.add_argument("--interval-s", type=float, default=2.0, help="seconds between polls with --follow (default: 2)")
    add_client_arguments(logs)
    logs.set_defaults(func=cmd_logs)

    open_ = sub.add_parser("open", help="start a job's 3D viewer on its gpu node and print (or open) its URL")
    open_.add_argument("job", type=int, help="job number")
    open_.add_argument("--browser", action="store_true", help="also open it in a web browser (default: print only)")
    add_client_arguments(open_)
    open_.set_defaults(func=cmd_open)


# -- token ------------------------------------------------------------------------------

def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def cmd_token_new(args: argparse.Namespace) -> int:
    token = new_token()
    if args.file is None:
        print(token)
        return 0
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
    try:
        fd = os.open(args.file, flags, 0o600)
    except FileExistsError:
        raise SystemExit(f"{args.file} exists: pass --force to replace the token in it") from None
    except OSError as exc:
        raise SystemExit(f"cannot write {args.file}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(args.file, 0o600)  # O_CREAT's mode does not apply to a file that existed
    print(f"new cluster token written to {args.file}; put the same token on every node (docs/deploy.md)")
    return 0


# -- talking to the core ----------------------------------------------------------------

JOB_HINTS = {404: " (`cosma-qc jobs list` shows the jobs there are)"}


def _token(args: argparse.Namespace, doing: str) -> str:
    return client_token(args.token_file, doing)


def _call(method: str, url: str, *, what: str, **kwargs) -> httpx.Response:
    return call(method, url, what=what, hints=JOB_HINTS, **kwargs)


def _core(args: argparse.Namespace, method: str, path: str, *, write: bool = False, **kwargs) -> httpx.Response:
    headers = auth_headers(_token(args, f"{method.lower()} {path}")) if write else None
    return _call(method, f"{args.core.rstrip('/')}/api/v1{path}", what="the core", headers=headers, **kwargs)


def job_line(job: dict) -> str:
    pct = f"{100 * job.get('progress', 0):5.1f}%"
    extra = job.get("error") or job.get("message") or ""
    return (f"job {job['id']:>5}  {job['state']:<14} {job.get('stage') or '':<15} {pct}  "
            f"{job.get('node') or '-':<12} {extra}")


# -- jobs -------------------------------------------------------------------------------

def cmd_jobs(args: argparse.Namespace) -> int:
    action = args.jobs_action
    if action == "list":
        params: dict = {"limit": args.limit}
        if args.state:
            params["state"] = args.state
        if args.node:
            params["node"] = args.node
        if args.search:
            params["q"] = args.search
        page = _core(args, "GET", "/jobs", params=params).json()
        if args.json:
            print(json.dumps(page, indent=2))
            return 0
        for job in page["jobs"]:
            print(job_line(job))
        shown = len(page["jobs"])
        if page["count"] > shown:
            print(f"({shown} of {page['count']} jobs; --limit shows more)")
        return 0
    if action == "show":
        job = _core(args, "GET", f"/jobs/{args.job}").json()
        if args.json:
            print(json.dumps(job, indent=2))
            return 0
        print(job_line(job))
        print(f"  backend {job['backend']}" + (f" (ran {job['run_backend']})" if job.get("run_backend") else "")
              + f", attempt {job['attempt']}, {job['fps']:g} fps, width {job.get('width') or 'native'}")
        for video in job.get("videos", []):
            print(f"  video  {video.get('storage')}:{video.get('path')}")
        for url in job.get("files", []):
            print(f"  file   {url}")
        return 0
    verb = action  # cancel, retry
    job = _core(args, "POST", f"/jobs/{args.job}/{verb}", write=True).json()
    print(job_line(job))
    return 0


# -- logs -------------------------------------------------------------------------------

def event_line(event: dict) -> str:
    where = f" on {event['node']}" if event.get("node") else ""
    attempt = f" attempt {event['attempt']}" if event.get("attempt") else ""
    return f"{event['at']}  {event['state']:<14}{attempt}{where}  {event.get('message') or ''}".rstrip()


def cmd_logs(args: argparse.Namespace) -> int:
    seen: set[int] = set()
    while True:
        events = _core(args, "GET", f"/jobs/{args.job}/events").json()["events"]
        for event in sorted(events, key=lambda e: e["id"]):
            if event["id"] not in seen:
                seen.add(event["id"])
                print(event_line(event), flush=True)
        if not args.follow:
            return 0
        job = _core(args, "GET", f"/jobs/{args.job}").json()
        if job["state"] in FINAL_STATES:
            return 0 if job["state"] == "done" else 1
        time.sleep(args.interval_s)


# -- open -------------------------------------------------------------------------------

def cmd_open(args: argparse.Namespace) -> int:
    job = _core(args, "GET", f"/jobs/{args.job}").json()
    if job["state"] != "done":
        raise SystemExit(f"job {args.job} is {job['state']}: its viewer needs a finished reconstruction"
                         + ("; `cosma-qc logs` says why" if job["state"] == "failed" else "; try again when done"))
    if not job.get("node"):
        raise SystemExit(f"job {args.job} has no gpu node on record: nothing to view")
    node = _core(args, "GET", f"/nodes/{job['node']}").json()
    token = _token(args, "start a viewer")
    viewer = _call("POST", f"{node['url'].rstrip('/')}/jobs/{args.job}/viewer", what=f"gpu node {node['name']}",
                   headers=auth_headers(token)).json()
    url = f"http://{urlsplit(node['url']).hostname}:{viewer['port']}/"
    print(url)
    if args.browser and not webbrowser.open(url):
        print("no web browser found here: open the URL above", file=sys.stderr)
    return 0
