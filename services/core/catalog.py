"""The video catalog across storage nodes, and the recordings (GoPro chapters) in it.

Each storage agent is asked for ``GET /videos``; if it also answers ``GET /recordings``
(a list of ``{"id", "chapters": [paths]}``), its grouping is used, else the core groups
the files by their GoPro names itself (:mod:`services.core.gopro`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from shared.videos import VideoInfo

from services.core import gopro
from services.core.agents import AgentClient, AgentError
from services.core.store import Node, NodeRole, Store


@dataclass
class NodeCatalog:
    node: str
    videos: list[VideoInfo]
    recordings: list[gopro.Recording]


async def catalog_of(agents: AgentClient, node: Node) -> NodeCatalog:
    """One storage node's videos and recordings; raises :class:`AgentError`."""
    videos = (await agents.list_videos(node.url)).videos
    grouped = await agents.list_recordings(node.url)
    recordings = _from_agent(grouped, videos) if grouped is not None else None
    return NodeCatalog(node.name, videos, recordings if recordings is not None else gopro.group(videos))


def _from_agent(answer: dict, videos: list[VideoInfo]) -> list[gopro.Recording] | None:
    """The agent's own grouping, or None if it is not the shape we understand."""
    by_path: dict[str, VideoInfo] = {}
    for video in videos:  # the first root holding a path serves it: later copies are unreachable
        by_path.setdefault(video.path, video)
    try:
        out = []
        for item in answer["recordings"]:
            chapters = [by_path[p] for p in item["chapters"]]
            out.append(gopro.Recording(str(item["id"]), gopro.parse(chapters[0].path).gopro, chapters))
        return sorted(out, key=lambda r: r.id)
    except (KeyError, TypeError, IndexError):
        return None


async def catalogs(store: Store, agents: AgentClient, names: list[str] | None = None
                   ) -> tuple[list[NodeCatalog], dict[str, str]]:
    """Catalogs of the storage nodes (all, or ``names``), and why each failing one failed."""
    nodes = await run_in_threadpool(store.list_nodes, NodeRole.storage)
    if names is not None:
        nodes = [n for n in nodes if n.name in names]
    answers = await asyncio.gather(*(catalog_of(agents, n) for n in nodes), return_exceptions=True)
    found, errors = [], {}
    for node, answer in zip(nodes, answers):
        if isinstance(answer, AgentError):
            errors[node.name] = answer.message
        elif isinstance(answer, BaseException):
            raise answer
        else:
            found.append(answer)
    return found, errors
