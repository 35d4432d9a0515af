"""The lingbot runner's pure maths (numpy only) and the VRAM model in shared/vram.py."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from services.gpu_agent.backends import lingbot_math as lm
from shared import vram


def _pose(yaw: float, pitch: float, centre) -> np.ndarray:
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_x = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    pose = np.eye(4)
    pose[:3, :3] = rot_y @ rot_x
    pose[:3, 3] = centre
    return pose


K = np.array([[400.0, 0, 259], [0, 400.0, 147], [0, 0, 1]])


def test_one_point_unprojected_from_two_cameras_is_the_same_world_point():
    point = np.array([0.4, -0.3, 6.0])
    cams = [_pose(0.1, -0.05, [0.0, 0.0, 0.0]), _pose(-0.2, 0.1, [1.5, 0.2, 0.5])]
    found = []
    for c2w in cams:
        uv, depth = lm.project(point, K, c2w)
        assert depth > 0 and 0 <= uv[0] < 518 and 0 <= uv[1] < 294
        found.append(lm.unproject(np.array([depth]), K, c2w, np.array([uv[1]]), np.array([uv[0]]))[0])
    np.testing.assert_allclose(found[0], point, atol=1e-9)
    np.testing.assert_allclose(found[1], point, atol=1e-9)
    # The same pixels read with the poses taken as world-to-camera disagree: a swap shows.
    swapped = [lm.unproject(np.array([lm.project(point, K, c)[1]]), K, lm.invert_rigid(c),
                            np.array([lm.project(point, K, c)[0][1]]), np.array([lm.project(point, K, c)[0][0]]))[0]
               for c in cams]  # fmt: skip
    assert np.linalg.norm(swapped[0] - swapped[1]) > 0.5


def test_model_pose_is_read_as_camera_to_world():
    pose = _pose(0.3, 0.1, [1, 2, 3])
    assert lm.MODEL_POSE_IS_C2W
    np.testing.assert_allclose(lm.model_pose_to_c2w(pose[:3]), pose)
    np.testing.assert_allclose(lm.invert_rigid(pose) @ pose, np.eye(4), atol=1e-12)


def test_quaternion_is_xyzw():
    half = math.sqrt(0.5)
    np.testing.assert_allclose(lm.quat_xyzw_to_matrix([0, 0, half, half]), [[0, -1, 0], [1, 0, 0], [0, 0, 1]],
                               atol=1e-12)  # fmt: skip


def test_fov_intrinsics_as_upstream():
    k = lm.fov_to_intrinsics(2 * math.atan(147 / 400), 2 * math.atan(259 / 400), 294, 518)
    np.testing.assert_allclose(k, K)


@pytest.mark.parametrize("frames, interval", [(0, 1), (1, 1), (320, 1), (321, 2), (640, 2), (641, 3), (3000, 10)])
def test_keyframe_interval(frames, interval):
    assert lm.keyframe_interval(frames) == interval
    assert vram.keyframe_interval(frames) == interval  # the core's copy agrees


def test_keyframe_schedule():
    flags = [lm.is_keyframe(i, 4, 3) for i in range(12)]
    assert flags == [True] * 4 + [True, False, False, True, False, False, True, False]
    assert all(lm.is_keyframe(i, 8, 1) for i in range(50))


def test_mode_choice():
    assert lm.choose_mode(3000) == "streaming"
    assert lm.choose_mode(3001) == "windowed"
    assert lm.choose_mode(10, "windowed") == "windowed"
    with pytest.raises(ValueError):
        lm.choose_mode(10, "fast")


def test_window_plan_covers_everything_with_overlap():
    assert lm.window_plan(20, 24) == [(0, 20)]
    plan = lm.window_plan(100, 24, 16)
    assert plan[0] == (0, 24) and plan[-1] == (76, 100)
    assert all(end - start == 24 for start, end in plan)
    assert all(prev[1] - cur[0] >= 16 for prev, cur in itertools.pairwise(plan))
    with pytest.raises(ValueError):
        lm.window_plan(100, 16, 16)


def test_window_alignment_recovers_a_similarity():
    truth = [_pose(0.05 * i, 0.02 * i, [0.3 * i, 0.05 * i, 0.1]) for i in range(5)]
    sim = np.eye(4)
    sim[:3, :3] = 0.5 * _pose(0.4, -0.2, [0, 0, 0])[:3, :3]
    sim[:3, 3] = [1, -2, 3]
    # cur = sim⁻¹ applied to the truth, as a window at another scale and origin sees it
    cur, _ = lm.apply_similarity_to_c2w(np.linalg.inv(sim), np.stack(truth))
    found = lm.align_windows(np.stack(truth), cur, scale_ratios=[0.5] * 5)
    np.testing.assert_allclose(found, sim, atol=1e-9)
    back, scale = lm.apply_similarity_to_c2w(found, cur)
    np.testing.assert_allclose(back, np.stack(truth), atol=1e-9)
    assert scale == pytest.approx(0.5)
    # Without depth ratios the centres' spread gives the scale.
    np.testing.assert_allclose(lm.align_windows(np.stack(truth), cur), sim, atol=1e-9)


def test_frame_points_keep_confident_finite_pixels():
    depth = np.full((8, 10), 2.0)
    depth[0, 0] = np.nan
    depth[1, 1] = -1
    conf = np.full((8, 10), 2.0)
    conf[4:] = 1.2
    colours = np.full((8, 10, 3), 0.5)
    xyz, rgb, c = lm.frame_points(depth, conf, colours, K, np.eye(4), conf_threshold=1.5, stride=1)
    assert len(xyz) == 4 * 10 - 2
    assert (c > 1.5).all() and (rgb == 128).all() and np.allclose(xyz[:, 2], 2.0)
    xyz, _, _ = lm.frame_points(depth, conf, colours, K, np.eye(4), conf_threshold=1.5, stride=2)
    assert len(xyz) == 2 * 5 - 1


def test_voxel_cap():
    rng = np.random.default_rng(0)
    xyz = rng.random((20_000, 3))
    conf = rng.random(20_000)
    keep = lm.voxel_cap(xyz, 1000, conf)
    assert 0 < len(keep) <= 1000 and (np.diff(keep) > 0).all()
    assert conf[keep].mean() > conf.mean()  # the most confident point of each voxel
    assert len(lm.voxel_cap(xyz[:10], 1000)) == 10


def test_intrinsics_at_frame_and_native_size():
    # A 640x360 frame becomes 518x294; the model's centre (259, 147) is the frame's centre.
    k = lm.frame_intrinsics(K, 640, 360)
    assert k["width"] == 640 and k["height"] == 360
    assert k["fx"] == pytest.approx(400 * 640 / 518) and k["fy"] == pytest.approx(400 * 360 / 294)
    assert k["cx"] == pytest.approx(259.5 * 640 / 518) and k["cy"] == pytest.approx(147.5 * 360 / 294)
    native = lm.scaled_intrinsics(k, 1920, 1080)
    assert native["fx"] == pytest.approx(k["fx"] * 3) and native["cy"] == pytest.approx(k["cy"] * 3)
    # A portrait frame is resized to 518 wide, then centre-cropped to 518 high.
    tall = lm.frame_intrinsics(np.array([[400.0, 0, 259], [0, 400, 259], [0, 0, 1]]), 360, 640)
    assert tall["cy"] == pytest.approx((259.5 + 203) * 640 / 924)  # 640 * 518 / 360 → 924 rows, 203 cut


def test_depth_consistency_tells_the_conventions_apart():
    plane_z = 5.0
    poses = [_pose(0.0, 0.0, [0, 0, 0]), _pose(0.1, 0.0, [0.8, 0.0, 0.0])]
    depths = []
    for pose in poses:
        v, u = lm.pixel_grid(294, 518)
        rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(u.shape)], -1)
        depths.append((plane_z - pose[2, 3]) / (rays @ pose[2, :3]))
    right = lm.depth_consistency(depths[0], K, poses[0], depths[1], K, poses[1])
    swapped = lm.depth_consistency(depths[0], K, lm.invert_rigid(poses[0]), depths[1], K, lm.invert_rigid(poses[1]))
    assert right < 1e-3 and swapped > 20 * right  # rounding to pixels leaves ~1e-4


def test_confidence_stats():
    stats = lm.confidence_stats(np.array([1.0, 2.0, 3.0, np.nan]), 1.5)
    assert stats["median"] == 2.0 and stats["above_threshold"] == pytest.approx(2 / 3, abs=1e-4)
    assert lm.confidence_stats(np.array([np.nan]), 1.5)["mean"] is None


# --- shared/vram.py -----------------------------------------------------------------


def test_input_size_depends_on_aspect_not_width():
    assert vram.lingbot_input_size(640, 360) == (518, 294)
    assert vram.lingbot_input_size(3840, 2160) == (518, 294)
    assert vram.lingbot_input_size(640, 480) == (518, 392)
    assert vram.lingbot_input_size(360, 640) == (518, 518)  # cropped
    assert vram.lingbot_input_size(None, None) == (518, 294)


def test_tier_choice_from_free_vram():
    assert [t.name for t in vram.LINGBOT_TIERS] == ["large", "medium", "small"]
    assert vram.choose_lingbot_tier(23_000, 1000, 640, 360).name == "large"  # RTX 3090, idle
    assert vram.choose_lingbot_tier(11_500, 1000, 640, 360).name == "medium"  # RTX 3060, idle
    assert vram.choose_lingbot_tier(7_800, 1000, 640, 360).name == "small"  # an 8 GB card
    assert vram.choose_lingbot_tier(1_000, 1000, 640, 360).name == "small"  # none fits: try the smallest
    # Short jobs cache fewer frames, so they fit a bigger tier.
    assert vram.choose_lingbot_tier(9_000, 20, 640, 360).name == "large"


def test_vram_estimate():
    assert vram.estimate_vram_mib("colmap", 1000, 640, 360) == 0
    small = vram.LINGBOT_TIERS[-1]
    short, full = vram.estimate_vram_mib("lingbot", 10, 640), vram.estimate_vram_mib("lingbot", 5000, 640)
    assert vram.LINGBOT_BASE_MIB < short < full
    assert full == vram.estimate_vram_mib("lingbot", None, 640) == vram.estimate_vram_mib("lingbot", 100_000, 1920)
    assert full == vram.lingbot_tier_vram_mib(small, None, 640, 360)
    assert vram.estimate_vram_mib("lingbot", 5000, 640, 480) > full  # taller input, more tokens
    with pytest.raises(ValueError, match="unknown"):
        vram.lingbot_tier("huge")
