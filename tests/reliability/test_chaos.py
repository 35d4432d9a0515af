"""A small seeded chaos run (scripts/chaos.py): 6 jobs, 4 random faults, the invariants hold.

Real processes on loopback (a core, a storage agent, two gpu agents running colmap on the
CPU), real SIGKILLs and restarts, a real TCP proxy cutting an agent's link past the lease.
The schedule comes from a fixed seed; what the run checks is listed in scripts/chaos.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import chaos
from conftest import processes_matching, require_ffmpeg

pytestmark = pytest.mark.slow

SEED = 3  # its schedule: storage killed, gpu-1's link reset past the lease, core killed, gpu-2's link black-holed


def test_seeded_chaos_run_loses_nothing_and_completes_each_job_once(tmp_path):
    require_ffmpeg()
    outcome = chaos.run_chaos(seed=SEED, jobs=6, faults=4, base=tmp_path, max_seconds=240, log=print)

    assert outcome.violations == [], "\n".join(outcome.violations)
    assert [f.kind for f in outcome.faults] == ["kill_storage", "cut_link", "kill_core", "cut_link"]
    assert all(f.at_s is not None for f in outcome.faults)  # every fault was injected
    assert len(outcome.jobs) >= 6
    assert sum(outcome.counts.values()) == len(outcome.jobs)
    assert set(outcome.counts) <= {"done", "failed"}
    # Every process the run started is gone (the services, and any backend or ffmpeg of theirs).
    assert processes_matching(str(tmp_path)) == []


def test_the_fault_schedule_follows_from_the_seed():
    def schedule(seed):
        return chaos.draw_faults(chaos.random.Random(seed), 10, ["gpu-1", "gpu-2"], 6.0, (2.0, 6.0))

    assert schedule(7) == schedule(7)
    assert schedule(7) != schedule(8)
    for fault in schedule(7):
        assert fault.kind in chaos.FAULT_KINDS
        if fault.kind == "cut_link":
            assert fault.hold_s > 6.0 and fault.mode in ("blackhole", "reset")  # longer than the lease


def test_an_agent_link_reset_is_reported_with_a_reason(tmp_path):
    """Found by a chaos run: a pooled connection reset by the network raised an httpx error
    with an empty message, and the core logged "GET …/health failed: " with no reason."""
    import asyncio

    from conftest import TOKEN, serve_app
    from tcp_proxy import TcpProxy

    from services.core.agents import AgentClient, AgentUnreachable
    from services.storage_agent.app import create_app
    from services.storage_agent.config import StorageSettings

    app = create_app(StorageSettings(roots=[tmp_path], token=TOKEN))

    async def poll_twice(proxy):
        agents = AgentClient(TOKEN, poll_timeout_s=2, request_timeout_s=2)
        try:
            await agents.health(proxy.url)  # the connection is now open and pooled
            proxy.cut(mode="reset")
            await agents.health(proxy.url)
        finally:
            await agents.aclose()

    with serve_app(app) as url, TcpProxy(target_port=int(url.rsplit(":", 1)[1])) as proxy, \
            pytest.raises(AgentUnreachable) as raised:
        asyncio.run(poll_twice(proxy))
    reason = raised.value.message.split(" failed: ", 1)[1]
    assert reason.strip(), raised.value.message
