"""Placement rules and estimates, as pure functions."""

from __future__ import annotations

from shared.gpu import AgentStatus, BackendInfo, GpuInfo
from shared.jobs import JobState
from services.core.scheduler import NodeView, choose_node, estimate_frames, estimate_vram_mib
from services.core.store import Job, utcnow


def job(backend: str = "colmap", frames: int | None = 48, width: int | None = 518, state=JobState.queued) -> Job:
    now = utcnow()
    return Job(id=1, backend=backend, fps=2, width=width, frames_estimate=frames, state=state,
               created_at=now, updated_at=now)


def view(name: str, free_mib: list[int] = (), backends=("colmap",), jobs=()) -> NodeView:
    gpus = [GpuInfo(index=i, name="g", uuid=f"u{i}", memory_total_mib=24576, memory_used_mib=24576 - f,
                    memory_free_mib=f) for i, f in enumerate(free_mib)]
    infos = [BackendInfo(name=b, available=True, device="gpu" if b == "lingbot" else "cpu") for b in backends]
    status = AgentStatus(node_id=name, gpus=gpus, backends=infos, cpu_load_1m=0, cpu_count=4,
                         disk_free_mib=1, jobs=[])
    return NodeView(name, f"http://{name}", status, list(jobs))


def test_vram_estimate():
    assert estimate_vram_mib("colmap", 5000, 1920) == 0
    assert estimate_vram_mib("lingbot", 48, 518) == 4096 + 48 * 130
    assert estimate_vram_mib("lingbot", 10_000, 518) == estimate_vram_mib("lingbot", None, 518)  # window-capped
    assert estimate_vram_mib("lingbot", 10, 1036) == 4096 + 10 * 130 * 4


def test_frame_estimate():
    assert estimate_frames([10.0, 2.5], 2.0, None) == 20 + 5
    assert estimate_frames([10.0, None], 2.0, 8) == 8 + 8
    assert estimate_frames([None], 2.0, None) is None


def test_ties_rotate_round_robin():
    nodes = [view("a"), view("b"), view("c")]
    assert choose_node(job(), nodes)[0].name == "a"
    assert choose_node(job(), nodes, last_placed="a")[0].name == "b"
    assert choose_node(job(), nodes, last_placed="c")[0].name == "a"


def test_fewest_jobs_before_round_robin_and_one_cpu_job_per_node():
    gpu_job = job("lingbot", state=JobState.reconstructing)
    nodes = [view("a", [20000], ("colmap", "lingbot"), jobs=[gpu_job]), view("b", [20000], ("colmap", "lingbot"))]
    assert choose_node(job(), nodes, last_placed="a")[0].name == "b"
    assert choose_node(job(), nodes, last_placed="b")[0].name == "b"  # fewer jobs beats rotation
    busy = [view("a", jobs=[job(state=JobState.extracting)])]
    node, why = choose_node(job(), busy)
    assert node is None and "busy" in why


def test_gpu_jobs_need_a_free_gpu_and_memory_not_yet_promised():
    pending = job("lingbot", state=JobState.extracting)  # placed, not yet on the GPU: its VRAM is promised
    two_gpus = view("a", [20000, 12000], ("lingbot",), jobs=[pending])
    assert two_gpus.free_vram_mib() == 20000 - estimate_vram_mib("lingbot", 48, 518)
    assert choose_node(job("lingbot"), [two_gpus])[0] is None  # 20000 - 10336 left < 10336 needed
    assert choose_node(job("lingbot", frames=10), [two_gpus])[0].name == "a"
    full = view("b", [20000], ("lingbot",), jobs=[job("lingbot", state=JobState.reconstructing)])
    assert choose_node(job("lingbot"), [full])[0] is None  # one reconstruction per GPU
    node, why = choose_node(job("lingbot"), [view("c")])
    assert node is None and "offers the lingbot backend" in why
