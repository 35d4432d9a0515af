"""GPU memory estimates per backend, used by the core (placement) and the gpu agent (tiers).

Every figure here is an *estimate* (arithmetic from LINGBOT_NOTES.md and the memory
reported upstream, not a measurement on our nodes): calibrate the constants from the
peaks that ``cosma-qc lingbot-check`` and each job's ``lingbot_stats.json`` report.

LingBot-Map resizes every frame to 518 px wide (height rounded to a multiple of 14 and
cropped to 518), so its memory depends on the frames' aspect ratio, never their width.
Its KV cache holds the scale frames plus at most a sliding window of keyframes, so
memory stops growing with the frame count once the window is full.

This module is stdlib-only on purpose: the lingbot runner loads it by file path inside
LingBot-Map's own Python environment, where this project's packages are not installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: LingBot-Map's input width and patch size (its demo defaults).
LINGBOT_IMAGE_SIZE = 518
LINGBOT_PATCH_SIZE = 14
#: Frame aspect assumed when only the width is known: GoPro footage is 16:9.
DEFAULT_ASPECT = 9 / 16
#: bf16 weights (≈ 3.4 GB) + CUDA context + per-frame activations, in MiB.
LINGBOT_BASE_MIB = 4300
#: KV cache per cached frame at 518×294 (FlashInfer pre-allocates ≈ 8.6 GB for 72 slots;
#: SDPA was reported at ≈ 130 MB per frame), in MiB; scales with the pixel count.
LINGBOT_PER_CACHED_FRAME_MIB = 110
LINGBOT_REFERENCE_PIXELS = 518 * 294
#: Kept free on top of an estimate when choosing a tier: allocator fragmentation.
LINGBOT_HEADROOM_MIB = 512


@dataclass(frozen=True)
class LingbotTier:
    """One LingBot-Map memory setting: what the runner passes to ``GCTStream``."""

    name: str
    scale_frames: int  # kv_cache_scale_frames and num_scale_frames
    window: int  # kv_cache_sliding_window, in keyframes
    camera_iterations: int  # camera_num_iterations
    flashinfer: bool  # FlashInfer when installed (else SDPA); False forces SDPA


#: From the most to the least memory; the runner retries one tier lower on CUDA OOM.
LINGBOT_TIERS: tuple[LingbotTier, ...] = (
    LingbotTier("large", scale_frames=8, window=64, camera_iterations=4, flashinfer=True),  # 24 GB cards
    LingbotTier("medium", scale_frames=4, window=48, camera_iterations=2, flashinfer=False),  # 12 GB cards
    LingbotTier("small", scale_frames=2, window=24, camera_iterations=1, flashinfer=False),  # 8 GB cards
)


def lingbot_tier(name: str) -> LingbotTier:
    for tier in LINGBOT_TIERS:
        if tier.name == name:
            return tier
    raise ValueError(f"unknown LingBot-Map tier {name!r}; known: {', '.join(t.name for t in LINGBOT_TIERS)}")


def lingbot_input_size(width: int | None, height: int | None) -> tuple[int, int]:
    """(width, height) LingBot-Map runs at for frames of this size (its "crop" preprocessing)."""
    aspect = height / width if width and height else DEFAULT_ASPECT
    resized = round(aspect * LINGBOT_IMAGE_SIZE / LINGBOT_PATCH_SIZE) * LINGBOT_PATCH_SIZE
    return LINGBOT_IMAGE_SIZE, max(LINGBOT_PATCH_SIZE, min(resized, LINGBOT_IMAGE_SIZE))


def keyframe_interval(frames: int) -> int:
    """Every how many streamed frames one is kept in the KV cache: 1 up to 320 frames
    (the model was trained on 320 views), else ``ceil(frames / 320)``."""
    return 1 if frames <= 320 else math.ceil(frames / 320)


def cached_frames(frames: int | None, tier: LingbotTier, interval: int | None = None) -> int:
    """Frames held in the KV cache at its fullest; unknown ``frames``: a full window."""
    if frames is None:
        return tier.scale_frames + tier.window
    interval = interval or keyframe_interval(frames)
    scale = min(tier.scale_frames, frames)
    keyframes = math.ceil(max(0, frames - scale) / interval)
    return scale + min(tier.window, keyframes)


def lingbot_tier_vram_mib(tier: LingbotTier, frames: int | None, width: int | None, height: int | None) -> int:
    """Estimated peak GPU memory of one LingBot-Map run at ``tier``, in MiB."""
    in_w, in_h = lingbot_input_size(width, height)
    per_frame = LINGBOT_PER_CACHED_FRAME_MIB * (in_w * in_h) / LINGBOT_REFERENCE_PIXELS
    return int(LINGBOT_BASE_MIB + cached_frames(frames, tier) * per_frame)


def choose_lingbot_tier(free_mib: int, frames: int | None, width: int | None, height: int | None) -> LingbotTier:
    """The largest tier whose estimate plus headroom fits ``free_mib``; the smallest if none
    does (an out-of-memory failure then says more than a refusal would)."""
    for tier in LINGBOT_TIERS:
        if lingbot_tier_vram_mib(tier, frames, width, height) + LINGBOT_HEADROOM_MIB <= free_mib:
            return tier
    return LINGBOT_TIERS[-1]


def estimate_vram_mib(backend: str, frames: int | None, width: int | None, height: int | None = None) -> int:
    """GPU memory a job needs at least, in MiB (an *estimate*); 0 for CPU backends.

    For ``lingbot`` this is the smallest tier's need: the runner takes a larger tier when
    the GPU has room. Unknown frame counts count as a full cache; an unknown size as 16:9.
    """
    if backend != "lingbot":
        return 0
    return lingbot_tier_vram_mib(LINGBOT_TIERS[-1], frames, width, height)
