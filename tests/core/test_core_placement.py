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


def test_vram_estimate_is_the_shared_one():
    from shared import vram

    assert estimate_vram_mib is vram.estimate_vram_mib  # placement and agents use the same numbers
    assert estimate_vram_mib("colmap", 5000, 1920) == 0
    assert estimate_vram_mib("lingbot", 10_000, 518) == estimate_vram_mib("lingbot", None, 518)  # window-capped


def test_frame_estimate():
    assert estimate_frames([10.0, 2.5], 2.0, None) == 20 + 5
    assert estimate_frames([10.0, None], 2.0, 8) == 8 + 8
    assert estimate_frames([None], 2.0, None) is None


def test_ties_rotate_round_robin():
    nodes = [view("a"), view("b"), view("c")]
    assert choose_node(job(), nodes)[0].node.name == "a"
    assert choose_node(job(), nodes, last_placed="a")[0].node.name == "b"
    assert choose_node(job(), nodes, last_placed="c")[0].node.name == "a"


def test_fewest_jobs_before_round_robin_and_one_cpu_job_per_node():
    gpu_job = job("lingbot", state=JobState.reconstructing)
    nodes = [view("a", [20000], ("colmap", "lingbot"), jobs=[gpu_job]), view("b", [20000], ("colmap", "lingbot"))]
    assert choose_node(job(), nodes, last_placed="a")[0].node.name == "b"
    assert choose_node(job(), nodes, last_placed="b")[0].node.name == "b"  # fewer jobs beats rotation
    busy = [view("a", jobs=[job(state=JobState.extracting)])]
    node, why = choose_node(job(), busy)
    assert node is None and "busy" in why


def test_gpu_jobs_need_a_free_gpu_and_memory_not_yet_promised():
    need = estimate_vram_mib("lingbot", 48, 518)
    pending = job("lingbot", state=JobState.extracting)  # placed on GPU 0, not yet loaded: its VRAM is promised
    two_gpus = view("a", [20000, 12000], ("lingbot",), jobs=[pending])
    assert two_gpus.gpu_free_mib(0) == 20000 - need and two_gpus.gpu_free_mib(1) == 12000
    placement, _ = choose_node(job("lingbot"), [two_gpus])
    assert (placement.node.name, placement.gpu_index) == ("a", 1)  # GPU 0 already holds one
    assert choose_node(job("lingbot"), [two_gpus], jobs_per_gpu=2)[0].gpu_index == 1  # best fit: 12000 left
    assert choose_node(job("lingbot"), [view("b", [need - 1], ("lingbot",))])[0] is None  # one MiB short
    full = view("b", [20000], ("lingbot",), jobs=[job("lingbot", state=JobState.reconstructing)])
    assert choose_node(job("lingbot"), [full])[0] is None  # one reconstruction per GPU
    node, why = choose_node(job("lingbot"), [view("c")])
    assert node is None and "offers the lingbot backend" in why


def test_best_fit_picks_the_smallest_sufficient_gpu_across_nodes():
    nodes = [view("big", [22000], ("lingbot",)), view("small", [11000], ("lingbot",)),
             view("tiny", [6000], ("lingbot",))]
    assert choose_node(job("lingbot"), nodes)[0].node.name == "small"
    assert choose_node(job("lingbot", frames=4), nodes)[0].node.name == "tiny"
    short = [view("big", [22000], ("lingbot",)), view("small", [7000], ("lingbot",))]
    assert choose_node(job("lingbot"), short)[0].node.name == "big"  # ≈ 7.2 GB needed: 7000 MiB is short


def test_a_job_too_large_for_every_gpu_says_so_and_falls_back_only_if_allowed():
    nodes = [view("g", [6000], ("colmap", "lingbot"))]
    nodes[0].status.gpus[0].memory_total_mib = 6144  # a 6 GB card: below the smallest LingBot-Map tier
    huge = job("lingbot")
    placement, why = choose_node(huge, nodes)
    assert placement is None and "too large for every GPU" in why and "6144 MiB" in why
    huge.cpu_fallback = True
    placement, why = choose_node(huge, nodes)
    assert (placement.node.name, placement.backend, placement.gpu_index) == ("g", "colmap", None)
    assert "running colmap on the CPU instead" in why
    busy = [view("g", [6000], ("colmap", "lingbot"), jobs=[job(state=JobState.extracting)])]
    placement, why = choose_node(huge, busy)
    assert placement is None and "CPU fallback: every node offering colmap is busy" in why


def test_draining_nodes_get_no_new_jobs():
    a, b = view("a"), view("b")
    a.draining = True
    assert choose_node(job(), [a, b])[0].node.name == "b"
    b.draining = True
    assert choose_node(job(), [a, b])[0] is None
