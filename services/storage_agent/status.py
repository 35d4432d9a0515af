"""``GET /status``: what the core needs to know about this node's load and disks."""

from __future__ import annotations

import os
import shutil

from shared.videos import ExtractionStatus, RootStatus, StorageStatus
from services.storage_agent.frames import Extractor
from services.storage_agent.paths import StorageRoots

_MIB = 1 << 20


def root_status(index: int, root: str) -> RootStatus:
    try:
        usage = shutil.disk_usage(root)
    except OSError as exc:
        return RootStatus(index=index, path=root, error=f"cannot read the disk: {exc.strerror}")
    return RootStatus(index=index, path=root, disk_total_mib=usage.total // _MIB, disk_free_mib=usage.free // _MIB)


def collect_status(node_id: str, roots: StorageRoots, extractor: Extractor,
                   extractions: list[ExtractionStatus]) -> StorageStatus:
    """Blocking (statvfs on each root): run it in a thread, with ``extractions`` taken on the event loop."""
    return StorageStatus(
        node_id=node_id,
        roots=[root_status(i, str(root)) for i, root in enumerate(roots.given)],
        cpu_load_1m=round(os.getloadavg()[0], 2),
        cpu_count=os.cpu_count() or 1,
        extractions_running=sum(e.state == "running" for e in extractions),
        extractions_max=extractor.max_concurrent,
        extractions_queued=sum(e.state == "queued" for e in extractions),
        extractions=extractions,
    )
