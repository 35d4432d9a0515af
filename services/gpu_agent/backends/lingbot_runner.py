"""The ``lingbot`` backend: LingBot-Map streaming reconstruction of a frame folder, on a GPU.

Run by the gpu agent with LingBot-Map's own interpreter (``lingbot_python``)::

    python lingbot_runner.py --frames DIR --out DIR --checkpoint PATH [--device cuda]
        [--tier auto|large|medium|small] [--mode auto|streaming|windowed]
        [--keyframe-interval N] [--conf-threshold 1.5] [--pixel-stride 4]
        [--max-points 2000000] [--free-vram-mib N] [--follow]

It imports only the stdlib, numpy, torch and ``lingbot_map`` (+ Pillow, which LingBot-Map
needs): none of this project's packages, which that environment lacks. Its pure helpers,
``lingbot_math.py`` beside it and ``shared/vram.py``, are stdlib/numpy files it loads by
path. Outputs, atomically, into ``--out``: ``reconstruction.ply`` (x y z, rgb, confidence,
frame), ``cameras.json`` (the schema of ``shared/cameras.py``) and ``lingbot_stats.json``
(tier, mode, frames/s, VRAM peak, per-frame confidence). Progress: JSON lines
``{"stage", "progress", "message"}`` on stdout, stages ``loading``, ``inference``,
``writing``; logs on stderr. Exit 2: failed, the last stderr line says why; 143: SIGTERM.

``--follow``: started while the agent is still pulling frames. Only the checkpoint load
(and torch's start) overlaps the ingest: the memory tier, the streaming/windowed choice
and the keyframe interval all depend on the frame count, known once the agent writes
``.ingest.done``; inference then runs as without ``--follow``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

_HERE = Path(__file__).resolve().parent


def _load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


lm = _load_by_path("cosma_lingbot_math", _HERE / "lingbot_math.py")
vram = _load_by_path("cosma_vram", _HERE.parents[2] / "shared" / "vram.py")

log = logging.getLogger("lingbot_runner")

STAGES = ("loading", "inference", "writing")
PLY_NAME, CAMERAS_NAME, STATS_NAME, FRAMES_INDEX_NAME = (
    "reconstruction.ply", "cameras.json", "lingbot_stats.json", "frames.json")  # fmt: skip
C2W_CONVENTION = "opencv c2w (x right, y down, z forward)"  # shared.cameras.C2W_CONVENTION
INGEST_DONE_NAME = ".ingest.done"  # services.gpu_agent.backends.INGEST_DONE_NAME
FOLLOW_POLL_S = 0.2
FRAME_PATTERN = re.compile(r"frame_(\d{6,})\.jpg")
EXIT_FAILED, EXIT_CANCELLED = 2, 128 + signal.SIGTERM
#: Upstream's RoPE limit on scale frames + keyframes in one stream.
MAX_FRAME_NUM = 1024
#: Frames decoded at once: bounds host memory (upstream preloads every frame).
LOAD_CHUNK = 32
#: Frames of the first window whose depth is kept for the pose-convention check.
CONSISTENCY_FRAMES = 6


class RunnerError(Exception):
    """A failure the operator can act on; its message is the last stderr line."""


class Cancelled(BaseException):
    """SIGTERM arrived: stop at the next bytecode, leave no partial output."""


class OutOfMemory(Exception):
    """CUDA out of memory at one tier (the runner retries one tier lower)."""


class Progress:
    """JSON lines on the real stdout, progress monotonic within each stage."""

    def __init__(self, stream: TextIO):
        self.stream, self.stage, self.value = stream, None, 0.0

    def __call__(self, stage: str, progress: float, message: str = "") -> None:
        if stage != self.stage:
            self.stage, self.value = stage, 0.0
        self.value = max(self.value, min(1.0, max(0.0, progress)))
        self.stream.write(json.dumps({"stage": stage, "progress": round(self.value, 4), "message": message}) + "\n")
        self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lingbot_runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=Path, required=True, help="folder of frame_%%06d.jpg")
    parser.add_argument("--out", type=Path, required=True, help="folder for the outputs")
    parser.add_argument("--checkpoint", type=Path, required=True, help="LingBot-Map checkpoint (.pt, trusted)")
    parser.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    parser.add_argument("--tier", default="auto", choices=["auto"] + [t.name for t in vram.LINGBOT_TIERS],
                        help="memory tier (default: from the free VRAM)")
    parser.add_argument("--mode", default="auto", choices=["auto", "streaming", "windowed"],
                        help=f"windowed above {lm.STREAMING_MAX_FRAMES} frames unless set")
    parser.add_argument("--keyframe-interval", type=int, default=0, help="0: 1 up to 320 frames, else ceil(N/320)")
    parser.add_argument("--conf-threshold", type=float, default=1.5, help="keep points above this confidence")
    parser.add_argument("--pixel-stride", type=int, default=4, help="unproject every n-th pixel row and column")
    parser.add_argument("--max-points", type=int, default=2_000_000, help="voxel-grid cap on the point count")
    parser.add_argument("--free-vram-mib", type=int, default=None, help="override the measured free VRAM")
    parser.add_argument("--follow", action="store_true",
                        help=f"started before the last frame lands: load the checkpoint, then wait for {INGEST_DONE_NAME}")
    args = parser.parse_args(argv)

    # Upstream and tqdm print to stdout; progress must own it: keep a private copy of
    # fd 1 for the JSON lines and point fd 1 at stderr.
    progress = Progress(os.fdopen(os.dup(1), "w", buffering=1))
    sys.stdout.flush()
    os.dup2(2, 1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s lingbot_runner %(message)s")

    def on_sigterm(signum, frame):
        raise Cancelled()

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        run(args, progress)
    except Cancelled:
        print("the lingbot backend was stopped (SIGTERM)", file=sys.stderr, flush=True)
        return EXIT_CANCELLED
    except RunnerError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return EXIT_FAILED
    except Exception as exc:
        log.exception("unexpected failure")
        print(f"the lingbot backend failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    return 0


def run(args: argparse.Namespace, progress: Progress) -> None:
    state_dict = None
    if args.follow:  # the checkpoint load overlaps the ingest; the rest needs every frame
        torch = _import_torch(args)
        state_dict = _load_with_progress(torch, args, progress)
        wait_for_ingest(args.frames, progress)
    frames = list_frames(args.frames)
    index = load_frame_index(args.frames)
    size = frame_size(args.frames, frames)
    torch = _import_torch(args)

    n = len(frames)
    in_w, in_h = vram.lingbot_input_size(*size)
    device = torch.device(args.device)
    free_mib = args.free_vram_mib
    if free_mib is None and device.type == "cuda":
        free_mib = torch.cuda.mem_get_info(device)[0] // 2**20
    first = vram.lingbot_tier(args.tier) if args.tier != "auto" else \
        vram.choose_lingbot_tier(free_mib if free_mib is not None else 0, n, *size)
    tiers = list(vram.LINGBOT_TIERS[vram.LINGBOT_TIERS.index(first):])
    mode = lm.choose_mode(n, args.mode)
    interval = args.keyframe_interval or (lm.keyframe_interval(n) if mode == "streaming" else 1)
    log.info("%d frames of %dx%d (model input %dx%d), %s mode, keyframe interval %d, free VRAM %s MiB, tier %s",
             n, *size, in_w, in_h, mode, interval, free_mib, first.name)

    if state_dict is None:
        state_dict = _load_with_progress(torch, args, progress)

    started = time.monotonic()
    retries = []
    for i, tier in enumerate(tiers):
        try:
            result = infer(torch, state_dict, args, frames, tier=tier, mode=mode, interval=interval,
                           device=device, progress=progress)  # fmt: skip
            break
        except OutOfMemory:
            retries.append(tier.name)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if i + 1 == len(tiers):
                raise RunnerError(
                    f"not enough GPU memory for {n} frames at {in_w}x{in_h} even at the smallest LingBot-Map "
                    f"tier ({tier.name}, {free_mib} MiB free at start); try fewer frames (a lower fps or "
                    "max_frames) or a GPU with more free memory") from None  # fmt: skip
            log.warning("GPU memory exhausted at tier %s; retrying at tier %s", tier.name, tiers[i + 1].name)
            progress("inference", 0.0, f"out of GPU memory at tier {tier.name}; retrying at tier {tiers[i + 1].name}")
    elapsed_s = time.monotonic() - started

    progress("writing", 0.0, f"writing {PLY_NAME} and {CAMERAS_NAME}")
    args.out.mkdir(parents=True, exist_ok=True)
    points = write_points(result, frames, index, args)
    parameters = {
        "tier": tier.name, "retried_tiers": retries, "mode": mode, "keyframe_interval": interval,
        "scale_frames": tier.scale_frames, "kv_cache_window": tier.window,
        "camera_iterations": tier.camera_iterations, "attention": result["attention"],
        "input_width": in_w, "input_height": in_h, "conf_threshold": args.conf_threshold,
        "pixel_stride": args.pixel_stride, "max_points": args.max_points, "device": str(device),
        "dtype": result["dtype"], "checkpoint": args.checkpoint.name,
    }  # fmt: skip
    write_cameras(result, frames, index, size, args.out, parameters)
    peak = torch.cuda.max_memory_allocated(device) // 2**20 if device.type == "cuda" else None
    reserved = torch.cuda.max_memory_reserved(device) // 2**20 if device.type == "cuda" else None
    stats = {
        "backend": "lingbot", "version": lingbot_version(), "parameters": parameters,
        "frames": n, "points": points, "inference_s": round(elapsed_s, 3),
        "fps": round(n / elapsed_s, 3) if elapsed_s > 0 else None, "free_vram_mib_at_start": free_mib,
        "vram_peak_mib": peak, "vram_reserved_peak_mib": reserved,
        "estimated_vram_mib": vram.lingbot_tier_vram_mib(tier, n, *size),
        "pose_consistency": result["consistency"], "per_frame": result["per_frame"],
    }  # fmt: skip
    write_json(args.out / STATS_NAME, stats)
    progress("writing", 1.0, f"{n} frames, {points} points, {stats['fps']} frames/s, tier {tier.name}")


def _import_torch(args: argparse.Namespace):
    if not args.checkpoint.is_file():
        raise RunnerError(f"lingbot: checkpoint not found at {args.checkpoint}")
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # before CUDA starts
    import torch

    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise RunnerError("lingbot: no CUDA device is visible to LingBot-Map's torch; check the driver and "
                          "CUDA_VISIBLE_DEVICES, or run the colmap backend")  # fmt: skip
    return torch


def _load_with_progress(torch, args: argparse.Namespace, progress: Progress) -> dict:
    progress("loading", 0.0, f"loading the checkpoint {args.checkpoint.name}")
    state_dict = load_checkpoint(torch, args.checkpoint)
    progress("loading", 1.0, "checkpoint loaded")
    return state_dict


def wait_for_ingest(frames_dir: Path, progress: Progress, poll_s: float = FOLLOW_POLL_S) -> None:
    """Until the agent writes ``.ingest.done``; gives up when the agent that started us is gone."""
    parent, landed = os.getppid(), -1
    while not (frames_dir / INGEST_DONE_NAME).exists():
        if os.getppid() != parent:
            raise RunnerError("lingbot: the gpu agent that started this runner is gone before all frames landed; "
                              "stopping")  # fmt: skip
        count = sum(1 for p in frames_dir.iterdir() if FRAME_PATTERN.fullmatch(p.name)) if frames_dir.is_dir() else 0
        if count != landed:
            landed = count
            progress("loading", 1.0, f"checkpoint loaded; {count} frames landed, waiting for the rest")
        time.sleep(poll_s)


# --- inputs ------------------------------------------------------------------------


def list_frames(frames_dir: Path) -> list[tuple[str, int]]:
    """(file name, frame number) of each ``frame_NNNNNN.jpg``, in order."""
    if not frames_dir.is_dir():
        raise RunnerError(f"frames folder {frames_dir} does not exist")
    frames = sorted((p.name, int(m.group(1))) for p in frames_dir.iterdir()
                    if (m := FRAME_PATTERN.fullmatch(p.name)) and p.is_file())  # fmt: skip
    if len(frames) < 2:
        raise RunnerError(f"LingBot-Map needs at least 2 frames (frame_NNNNNN.jpg) in {frames_dir}, "
                          f"found {len(frames)}")  # fmt: skip
    return frames


def frame_size(frames_dir: Path, frames: list[tuple[str, int]]) -> tuple[int, int]:
    from PIL import Image

    sizes = {}
    for name, _ in frames:
        try:
            with Image.open(frames_dir / name) as img:
                sizes.setdefault(img.size, name)
        except OSError as exc:
            raise RunnerError(f"frame {name} is not a readable image: {exc}") from None
    if len(sizes) > 1:
        raise RunnerError(f"frames have different sizes ({', '.join(f'{w}x{h} from {n}' for (w, h), n in sizes.items())}); "
                          "LingBot-Map needs one size per job")  # fmt: skip
    return next(iter(sizes))


def load_frame_index(frames_dir: Path) -> dict | None:
    """``frames.json`` as plain JSON (sources are nice to have: a bad index is ignored)."""
    path = frames_dir / FRAMES_INDEX_NAME
    try:
        data = json.loads(path.read_bytes())
        return {"frames": {f["name"]: f for f in data.get("frames", [])},
                "videos": {v["index"]: v for v in data.get("videos", [])}}  # fmt: skip
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None


def load_checkpoint(torch, path: Path) -> dict:
    """The state dict, on the CPU: loading straight to the GPU holds two copies."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # a pickle: trusted files only
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise RunnerError(f"lingbot: {path} holds no state dict (expected a dict, or one under 'model')")
    return state


def lingbot_version() -> str:
    try:
        from importlib.metadata import version

        return f"lingbot-map {version('lingbot-map')}"
    except Exception:  # noqa: BLE001 - a source checkout on PYTHONPATH has no metadata
        import lingbot_map

        return f"lingbot-map {getattr(lingbot_map, '__version__', 'unknown')}"


# --- inference ---------------------------------------------------------------------


def build_model(torch, state_dict: dict, tier, mode: str, device):
    if mode == "windowed":
        from lingbot_map.models.gct_stream_window import GCTStream
    else:
        from lingbot_map.models.gct_stream import GCTStream
    flashinfer = tier.flashinfer and importlib.util.find_spec("flashinfer") is not None
    model = GCTStream(img_size=vram.LINGBOT_IMAGE_SIZE, patch_size=vram.LINGBOT_PATCH_SIZE, enable_3d_rope=True,
                      max_frame_num=MAX_FRAME_NUM, kv_cache_sliding_window=tier.window,
                      kv_cache_scale_frames=tier.scale_frames, kv_cache_cross_frame_special=True,
                      kv_cache_include_scale_frames=True, use_sdpa=not flashinfer,
                      camera_num_iterations=tier.camera_iterations)  # fmt: skip
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing:  # upstream only prints counts; a half-loaded model gives garbage silently
        raise RunnerError(f"lingbot: the checkpoint lacks {len(missing)} weights of the model "
                          f"(e.g. {', '.join(list(missing)[:3])}); is it a LingBot-Map checkpoint "
                          "for this version of lingbot_map?")  # fmt: skip
    if unexpected:
        log.warning("checkpoint has %d unexpected keys (ignored)", len(unexpected))
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    else:
        dtype = torch.float32
    model = model.to(device).eval()
    if dtype != torch.float32 and getattr(model, "aggregator", None) is not None:
        model.aggregator = model.aggregator.to(dtype=dtype)  # heads stay fp32, as upstream
    return model, dtype, "flashinfer" if flashinfer else "sdpa"


def is_oom(torch, exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())  # fmt: skip


def infer(torch, state_dict, args, frames, *, tier, mode, interval, device, progress) -> dict:
    """Every frame's pose, intrinsics and confident camera-space points, at one tier."""
    model, oom = None, False
    try:
        model, dtype, attention = build_model(torch, state_dict, tier, mode, device)
        plan = [(0, len(frames))] if mode == "streaming" else lm.window_plan(len(frames), tier.window)
        records: dict[int, dict] = {}
        loader = ChunkLoader(args.frames, frames)
        total = sum(end - start for start, end in plan)
        done = 0
        for w, (start, end) in enumerate(plan):
            window = {}
            for i, record in stream_window(torch, model, loader, start, end, tier, interval, device, dtype, args):
                window[i] = record
                done += 1
                progress("inference", done / total, f"frame {done} of {total} (tier {tier.name}, {mode})")
            if w and plan[w - 1][1] > start:
                align_window(records, window, range(start, plan[w - 1][1]))
            for i, record in window.items():
                records.setdefault(i, record)  # shared frames keep the earlier window's result
        consistency = pose_consistency(records)
        for record in records.values():
            record.pop("depth", None)
        return {"records": records, "attention": attention, "dtype": str(dtype).removeprefix("torch."),
                "consistency": consistency, "per_frame": per_frame_stats(records, frames, interval, tier, plan)}
    except Exception as exc:
        if not is_oom(torch, exc):
            raise
        oom = True  # raised below, outside this handler, so no traceback pins GPU tensors
    finally:
        model = None
    if oom:
        raise OutOfMemory()


def stream_window(torch, model, loader, start, end, tier, interval, device, dtype, args):
    """Yield (frame position, record) for frames [start, end): one bidirectional pass over
    the scale frames, then one forward per frame; non-keyframes are not cached."""
    from lingbot_map.utils.pose_enc import pose_encoding_to_extri_intri

    scale = min(tier.scale_frames, end - start)
    autocast = torch.amp.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    model.clean_kv_cache()
    blocks = [(start, start + scale)] + [(i, i + 1) for i in range(start + scale, end)]
    for lo, hi in blocks:
        images = loader.get(lo, hi)
        keyframe = lm.is_keyframe(lo - start, scale, interval)
        if not keyframe:
            model._set_skip_append(True)
        try:
            with torch.no_grad(), autocast:
                out = model.forward(images.unsqueeze(0).to(device, non_blocking=True), num_frame_for_scale=scale,
                                    num_frame_per_block=hi - lo, causal_inference=True)  # fmt: skip
        finally:
            if not keyframe:
                model._set_skip_append(False)
        height, width = images.shape[-2:]
        pose, intrinsics = pose_encoding_to_extri_intri(out["pose_enc"].float(), (height, width))
        pose, intrinsics = pose[0].cpu().numpy(), intrinsics[0].cpu().numpy()
        depth = out["depth"][0, ..., 0].float().cpu().numpy()
        conf = out["depth_conf"][0].float().cpu().numpy()
        colours = images.permute(0, 2, 3, 1).float().numpy()
        del out
        for s in range(hi - lo):
            xyz, rgb, c = lm.frame_points(depth[s], conf[s], colours[s], intrinsics[s], np.eye(4),
                                          conf_threshold=args.conf_threshold, stride=args.pixel_stride)  # fmt: skip
            record = {"c2w": lm.model_pose_to_c2w(pose[s]), "pose_raw": lm.to_4x4(pose[s]), "k": intrinsics[s],
                      "xyz_cam": xyz, "rgb": rgb, "conf": c, "stats": lm.confidence_stats(conf[s], args.conf_threshold),
                      "median_depth": float(np.median(depth[s][np.isfinite(depth[s])])) if np.isfinite(depth[s]).any() else None,
                      "keyframe": lm.is_keyframe(lo - start + s, scale, interval)}  # fmt: skip
            if lo + s < CONSISTENCY_FRAMES:
                record["depth"] = depth[s]
            yield lo + s, record


class ChunkLoader:
    """Frames decoded ``LOAD_CHUNK`` at a time with upstream's preprocessing, on the CPU."""

    def __init__(self, frames_dir: Path, frames: list[tuple[str, int]]):
        self.paths = [str(frames_dir / name) for name, _ in frames]
        self.chunk_start, self.chunk = -1, None

    def get(self, lo: int, hi: int):
        from lingbot_map.utils.load_fn import load_and_preprocess_images

        if self.chunk is None or lo < self.chunk_start or hi > self.chunk_start + len(self.chunk):
            stop = min(len(self.paths), max(hi, lo + LOAD_CHUNK))
            self.chunk = load_and_preprocess_images(self.paths[lo:stop], mode="crop", image_size=vram.LINGBOT_IMAGE_SIZE,
                                                    patch_size=vram.LINGBOT_PATCH_SIZE)  # fmt: skip
            self.chunk_start = lo
        return self.chunk[lo - self.chunk_start : hi - self.chunk_start]


def align_window(records: dict, window: dict, shared: range) -> None:
    """Move a window's poses and points into the running world (Sim(3) on shared frames)."""
    prev = np.stack([records[i]["c2w"] for i in shared])
    cur = np.stack([window[i]["c2w"] for i in shared])
    ratios = [records[i]["median_depth"] / window[i]["median_depth"] for i in shared
              if records[i]["median_depth"] and window[i]["median_depth"]]  # fmt: skip
    sim = lm.align_windows(prev, cur, ratios)
    for record in window.values():
        record["c2w"], scale = lm.apply_similarity_to_c2w(sim, record["c2w"])
        record["xyz_cam"] = record["xyz_cam"] * np.float32(scale)
        if record["median_depth"]:
            record["median_depth"] *= scale


def pose_consistency(records: dict) -> dict:
    """Depth disagreement of the first frames under both readings of the model's pose."""
    firsts = sorted(i for i, r in records.items() if "depth" in r)
    result = {}
    for name, to_c2w in (("c2w", lambda p: p), ("w2c", lm.invert_rigid)):
        errors = [lm.depth_consistency(records[firsts[0]]["depth"], records[firsts[0]]["k"],
                                       to_c2w(records[firsts[0]]["pose_raw"]), records[i]["depth"],
                                       records[i]["k"], to_c2w(records[i]["pose_raw"]))
                  for i in firsts[1:]]  # fmt: skip
        errors = [e for e in errors if e is not None]
        result[name] = round(float(np.median(errors)), 5) if errors else None
    return result


def per_frame_stats(records, frames, interval, tier, plan) -> dict:
    return {frames[i][0]: {**r["stats"], "keyframe": r["keyframe"], "points": len(r["xyz_cam"]),
                           "median_depth": None if r["median_depth"] is None else round(r["median_depth"], 5)}
            for i, r in sorted(records.items())}  # fmt: skip


# --- outputs -----------------------------------------------------------------------


def write_points(result: dict, frames, index, args) -> int:
    records = result["records"]
    xyz, rgb, conf, frame = [], [], [], []
    for i, record in sorted(records.items()):
        pose = record["c2w"]
        xyz.append(record["xyz_cam"] @ pose[:3, :3].T.astype(np.float32) + pose[:3, 3].astype(np.float32))
        rgb.append(record["rgb"])
        conf.append(record["conf"])
        frame.append(np.full(len(record["rgb"]), frame_number(frames[i], index), np.int32))
    xyz, rgb, conf, frame = (np.concatenate(a) for a in (xyz, rgb, conf, frame))
    keep = lm.voxel_cap(xyz, args.max_points, conf)
    write_ply(args.out / PLY_NAME, xyz[keep], rgb[keep], conf[keep], frame[keep])
    return len(keep)


def frame_number(frame: tuple[str, int], index: dict | None) -> int:
    entry = index["frames"].get(frame[0]) if index else None
    return int(entry["index"]) if entry else frame[1]


def write_cameras(result, frames, index, size, out_dir: Path, parameters: dict) -> None:
    cameras = []
    for i, (name, number) in enumerate(frames):
        record = result["records"][i]
        c2w = record["c2w"]
        registered = bool(np.isfinite(c2w).all())
        intrinsics = lm.frame_intrinsics(record["k"], *size) if np.isfinite(record["k"]).all() else None
        entry = index["frames"].get(name) if index else None
        native = None
        if intrinsics and entry:
            video = index["videos"].get(entry.get("video"), {})
            if video.get("native_width") and video.get("native_height"):
                native = lm.scaled_intrinsics(intrinsics, video["native_width"], video["native_height"])
        cameras.append({
            "name": name, "index": frame_number((name, number), index),
            "source": {"video": entry["video"], "t_s": entry["t_s"]} if entry else None,
            "registered": registered, "c2w": c2w.tolist() if registered else None,
            "intrinsics": intrinsics, "native_intrinsics": native,
        })  # fmt: skip
    write_json(out_dir / CAMERAS_NAME, {"backend": "lingbot", "version": lingbot_version(), "parameters": parameters,
                                        "convention": C2W_CONVENTION, "frames": cameras})  # fmt: skip


def write_ply(path: Path, xyz, rgb, confidence, frame) -> None:
    """Binary little-endian PLY as ``shared/plyio.py`` writes it (x y z, rgb, confidence, frame)."""
    table = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                      ("blue", "u1"), ("confidence", "<f4"), ("frame", "<i4")])  # fmt: skip
    for j, axis in enumerate("xyz"):
        table[axis] = xyz[:, j]
    for j, channel in enumerate(("red", "green", "blue")):
        table[channel] = rgb[:, j]
    table["confidence"], table["frame"] = confidence, frame
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(xyz)}"]
    header += [f"property {kind} {name}" for name, kind in (
        ("x", "float"), ("y", "float"), ("z", "float"), ("red", "uchar"), ("green", "uchar"), ("blue", "uchar"),
        ("confidence", "float"), ("frame", "int"))]  # fmt: skip
    header.append("end_header\n")
    _atomic_write(path, "\n".join(header).encode("ascii") + table.tobytes())


def write_json(path: Path, document: dict) -> None:
    _atomic_write(path, json.dumps(document, indent=1, allow_nan=False).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


if __name__ == "__main__":
    sys.exit(main())
