"""``cosma-qc``: start each service, run the demo, drive the cluster."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


from services.client import call, client_token
from shared.auth import auth_headers
from shared.settings import ServiceSettings, add_settings_arguments, settings_from_args

DEFAULT_CORE_URL = "http://127.0.0.1:3849"


def _service_commands():
    """(name, help, settings class, app factory), imported lazily so --help stays fast."""
    from services.core.app import create_app as core_app
    from services.core.config import CoreSettings
    from services.gpu_agent.app import create_app as gpu_app
    from services.gpu_agent.config import GpuAgentSettings
    from services.storage_agent.app import create_app as storage_app
    from services.storage_agent.config import StorageSettings

    return [
        ("core", "run the core: REST API, dashboard, job store and scheduler", CoreSettings, core_app),
        ("gpu-agent", "run a gpu agent: frame ingest and 3D reconstruction", GpuAgentSettings, gpu_app),
        ("storage-agent", "run a storage agent: video catalog and frame extraction", StorageSettings, storage_app),
    ]


def _add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--core", default=os.environ.get("COSMA_CORE_URL", DEFAULT_CORE_URL),
                        help=f"core URL (default: {DEFAULT_CORE_URL}; env: COSMA_CORE_URL)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="file holding the cluster token (default: none; env: COSMA_TOKEN holds the token)")


def print_job_line(job: dict) -> None:
    pct = f"{100 * job.get('progress', 0):5.1f}%"
    extra = job.get("error") or job.get("message") or ""
    print(f"job {job['id']:>5}  {job['state']:<14} {job.get('stage') or '':<15} {pct}  "
          f"{job.get('node') or '-':<12} {extra}", flush=True)


def cmd_submit(args: argparse.Namespace) -> int:
    token = client_token(args.token_file, "submit")
    if bool(args.paths) == bool(args.recording):
        raise SystemExit("give either video paths or --recording ID (see /api/v1/recordings), not both")
    body = {"fps": args.fps, "backend": args.backend, "priority": args.priority, "cpu_fallback": args.cpu_fallback}
    if args.recording:
        body["recording"] = {"storage": args.storage, "id": args.recording}
    else:
        body["videos"] = [{"storage": args.storage, "path": p} for p in args.paths]
    if args.width:
        body["width"] = args.width
    if args.max_frames:
        body["max_frames"] = args.max_frames
    job = call("POST", f"{args.core}/api/v1/jobs", what="the core", json=body, headers=auth_headers(token),
               timeout=60).json()
    print_job_line(job)
    if not args.wait:
        return 0
    return wait_for_job(args.core, job["id"])


def progress_bar(job: dict, width: int = 30) -> str:
    """One terminal line: state, a bar for the stage's progress, the latest message."""
    filled = round(width * max(0.0, min(1.0, job.get("progress") or 0.0)))
    message = (job.get("error") or job.get("message") or "")[:60]
    return (f"job {job['id']} {job['state']:<14} [{'#' * filled}{'.' * (width - filled)}] "
            f"{100 * (job.get('progress') or 0):5.1f}%  {message}")


def wait_for_job(core_url: str, job_id: int, *, poll_s: float = 1.0) -> int:
    """Follow a job until it ends: a live bar on a terminal, a line per change otherwise."""
    live = sys.stdout.isatty()
    last = None
    while True:
        job = call("GET", f"{core_url}/api/v1/jobs/{job_id}", what="the core").json()
        line = (job["state"], job.get("stage"), round(job.get("progress", 0), 2), job.get("message"))
        if live:
            print("\r\033[K" + progress_bar(job), end="", flush=True)
        elif line != last:
            print_job_line(job)
        last = line
        if job["state"] in ("done", "failed", "cancelled"):
            if live:
                print()
                if job.get("error"):
                    print(f"error: {job['error']}")
            return 0 if job["state"] == "done" else 1
        time.sleep(poll_s)


def cmd_status(args: argparse.Namespace) -> int:
    if args.job is not None:
        print(json.dumps(call("GET", f"{args.core}/api/v1/jobs/{args.job}", what="the core").json(), indent=2))
        return 0
    nodes = call("GET", f"{args.core}/api/v1/nodes", what="the core")
    jobs = call("GET", f"{args.core}/api/v1/jobs", what="the core")
    for node in nodes.json()["nodes"]:
        print(f"node {node['name']:<12} {node['role']:<8} {node['state']:<8} {node['url']}")
    for job in jobs.json()["jobs"]:
        print_job_line(job)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cosma-qc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, settings_cls, factory in _service_commands():
        p = sub.add_parser(name, help=help_text, description=help_text + ". The token comes from "
                           "COSMA_TOKEN or --token-file.")
        add_settings_arguments(p, settings_cls)
        p.set_defaults(settings_cls=settings_cls, factory=factory)
        if name == "core":
            from services.core.cli_cmds import add_core_action

            add_core_action(p)

    from services.demo.run import add_demo_arguments, cmd_demo

    demo = sub.add_parser("demo", help="generate a sample survey video and run it through a local cluster")
    add_demo_arguments(demo)
    demo.set_defaults(func=cmd_demo)

    submit = sub.add_parser("submit", help="submit a job to the core")
    _add_client_arguments(submit)
    submit.add_argument("--storage", required=True, help="name of the storage node holding the videos")
    submit.add_argument("paths", nargs="*", help="video paths on that node, in order (one job)")
    submit.add_argument("--recording", default=None,
                        help="instead of paths: a GoPro recording id, all its chapters in order (default: none)")
    submit.add_argument("--priority", type=int, default=0, help="higher runs first (default: 0)")
    submit.add_argument("--cpu-fallback", action="store_true",
                        help="run colmap on a CPU if the job fits on no GPU (default: off)")
    submit.add_argument("--fps", type=float, default=2.0, help="frames per second to sample (default: 2.0)")
    submit.add_argument("--width", type=int, default=None, help="frame width (default: the core's, 640)")
    submit.add_argument("--max-frames", type=int, default=None, help="cap on frames per video (default: none)")
    submit.add_argument("--backend", choices=["colmap", "lingbot"], default="colmap",
                        help="reconstruction backend (default: colmap)")
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends (default: off)")
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="show nodes and jobs, or one job")
    _add_client_arguments(status)
    status.add_argument("job", nargs="?", type=int, help="a job number (default: all jobs)")
    status.set_defaults(func=cmd_status)

    from services.gpu_agent.lingbot_check import (
        add_lingbot_check_arguments,
        cmd_lingbot_check,
    )

    check = sub.add_parser("lingbot-check", help="run LingBot-Map once on this GPU node: VRAM peak, frames/s, points")
    add_lingbot_check_arguments(check)
    check.set_defaults(func=cmd_lingbot_check)

    # Its options are the suite's own (bench/suite.py --help); main() hands them over untouched.
    sub.add_parser("bench", add_help=False, help="run the benchmark suite (a source checkout's bench/suite.py; "
                   "--quick for a few minutes) and rewrite bench/RESULTS.md's generated block")

    from services.core.cli_cmds import add_nodes_parser

    add_nodes_parser(sub, _add_client_arguments)

    from services.cli_jobs import add_jobs_commands

    add_jobs_commands(sub, _add_client_arguments)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        from services.benchcli import cmd_bench

        return cmd_bench(extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if hasattr(args, "func"):
        return args.func(args) or 0
    if getattr(args, "action", "serve") == "migrate":
        from services.core.cli_cmds import cmd_core_migrate

        return cmd_core_migrate(args)
    settings: ServiceSettings = settings_from_args(args.settings_cls, args)
    from shared.service import serve

    serve(args.factory(settings), settings.host, settings.port, settings.log_level, settings.log_format)
    return 0


if __name__ == "__main__":
    sys.exit(main())
