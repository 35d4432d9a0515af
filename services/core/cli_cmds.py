"""``cosma-qc core migrate`` and ``cosma-qc nodes add|list|drain|undrain|remove``."""

from __future__ import annotations

import argparse

import httpx

from services.client import call, client_token
from shared.auth import auth_headers


def add_core_action(parser: argparse.ArgumentParser) -> None:
    """``cosma-qc core [serve|migrate]``: the core service, or only its schema migration."""
    parser.add_argument("action", nargs="?", choices=["serve", "migrate"], default="serve",
                        help="serve (default): run the core; migrate: bring its database to the newest "
                             "schema and exit (the core also does this at start)")


def cmd_core_migrate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from services.core.config import CoreSettings
    from services.core.migrate import head_revision
    from services.core.store import Store, make_engine

    given = {k: v for k, v in vars(args).items() if k in CoreSettings.model_fields}
    try:
        settings = CoreSettings(**given)  # no token needed to migrate
    except ValidationError as exc:
        raise SystemExit(f"invalid settings: {exc}") from None
    store = Store(make_engine(settings.resolved_database_url()))
    try:
        before, after = store.migrate()
    finally:
        store.engine.dispose()
    if before == after:
        print(f"database already at revision {after} (newest: {head_revision()})")
    else:
        print(f"database migrated from {before or 'empty'} to {after}")
    return 0


def add_nodes_parser(sub, add_client_arguments) -> None:
    nodes = sub.add_parser("nodes", help="add, list, drain and remove the agents the core drives")
    actions = nodes.add_subparsers(dest="nodes_action", required=True)

    add = actions.add_parser("add", help="register an agent")
    add.add_argument("name", help="node name (letters, digits, '.', '_', '-')")
    add.add_argument("url", help="base URL of its agent, e.g. http://192.168.1.84:8300")
    add.add_argument("--role", choices=["gpu", "storage"], default="gpu", help="gpu (default) or storage")
    listing = actions.add_parser("list", help="list nodes with their state")
    drain = actions.add_parser("drain", help="let a node finish its jobs and take no new ones")
    drain.add_argument("name")
    drain.add_argument("--undo", action="store_true", help="accept new jobs again")
    remove = actions.add_parser("remove", help="remove a node (refused while open jobs use it)")
    remove.add_argument("name")
    remove.add_argument("--force", action="store_true",
                        help="remove it anyway: its jobs are requeued (gpu) or failed (storage)")
    for parser in (add, listing, drain, remove):
        add_client_arguments(parser)
    nodes.set_defaults(func=cmd_nodes)


def _request(args: argparse.Namespace, method: str, path: str, *, write: bool, **kwargs) -> httpx.Response:
    headers = auth_headers(client_token(args.token_file, "change nodes")) if write else {}
    return call(method, f"{args.core}/api/v1{path}", what="the core", headers=headers, **kwargs)


def print_node_line(node: dict) -> None:
    since = f" since {node['offline_since']}" if node.get("offline_since") else ""
    error = f"  ({node['last_error']})" if node.get("last_error") else ""
    state = node["state"] + (",draining" if node.get("draining") and node["state"] != "draining" else "")
    print(f"node {node['name']:<12} {node['role']:<8} {state:<9} jobs {node['active_jobs']:<3} "
          f"{node['url']}{since}{error}")


def cmd_nodes(args: argparse.Namespace) -> int:
    action = args.nodes_action
    if action == "add":
        node = _request(args, "POST", "/nodes", write=True,
                        json={"name": args.name, "role": args.role, "url": args.url}).json()
        print_node_line(node)
    elif action == "list":
        for node in _request(args, "GET", "/nodes", write=False).json()["nodes"]:
            print_node_line(node)
    elif action == "drain":
        verb = "undrain" if args.undo else "drain"
        print_node_line(_request(args, "POST", f"/nodes/{args.name}/{verb}", write=True).json())
    elif action == "remove":
        _request(args, "DELETE", f"/nodes/{args.name}", write=True, params={"force": str(args.force).lower()})
        print(f"node {args.name} removed")
    return 0
