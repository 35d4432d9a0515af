import json
import subprocess

import numpy as np
import pycolmap
import pytest
from conftest import require_ffmpeg

from services.demo.synth import camera_pose, render_survey, terrain_for_seed

FPS, SECONDS, WIDTH, HEIGHT = 10.0, 1.5, 640, 360


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    require_ffmpeg()
    return render_survey(tmp_path_factory.mktemp("synth"), seconds=SECONDS, fps=FPS, width=WIDTH, height=HEIGHT)


def _probe(path) -> dict:
    argv = ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-of", "json",
            "-show_entries", "stream=codec_name,width,height,pix_fmt,nb_read_frames,r_frame_rate", str(path)]  # fmt: skip
    return json.loads(subprocess.run(argv, check=True, capture_output=True).stdout)["streams"][0]


def _decode_first_frame(path) -> np.ndarray:
    argv = ["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(argv, check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(HEIGHT, WIDTH, 3)


def test_video_is_a_decodable_gopro_named_h264_file(sample):
    assert sample.video.name == "GX010001.MP4"
    assert sample.frames == 15
    stream = _probe(sample.video)
    assert stream["codec_name"] == "h264" and stream["pix_fmt"] == "yuv420p"
    assert (stream["width"], stream["height"]) == (WIDTH, HEIGHT)
    assert int(stream["nb_read_frames"]) == sample.frames
    assert stream["r_frame_rate"] == "10/1"
    assert not [p for p in sample.video.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_poses_file_is_consistent(sample):
    assert sample.poses.name == "GX010001.poses.json"
    poses = json.loads(sample.poses.read_text())
    assert (poses["fps"], poses["width"], poses["height"]) == (FPS, WIDTH, HEIGHT)
    K = np.array(poses["K"])
    assert K.shape == (3, 3) and K[0, 2] == WIDTH / 2 and K[1, 2] == HEIGHT / 2 and K[0, 0] == K[1, 1] > 0
    assert poses["convention"].startswith("opencv c2w")
    frames = poses["frames"]
    assert [f["index"] for f in frames] == list(range(sample.frames))
    assert [f["t_s"] for f in frames] == pytest.approx([i / FPS for i in range(sample.frames)])
    c2w = np.array([f["c2w"] for f in frames])
    rotations = c2w[:, :3, :3]
    np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rotations.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-9)
    np.testing.assert_array_equal(c2w[:, 3], np.broadcast_to([0, 0, 0, 1], (sample.frames, 4)))
    assert (rotations[:, 2, 2] < -0.8).all()  # optical axes point down at the seabed (world z up)
    steps = np.linalg.norm(np.diff(c2w[:, :3, 3], axis=0), axis=1)
    assert (steps > 0.02).all() and (steps < 0.2).all()  # moving, with high overlap between frames


def test_video_shows_the_posed_render_with_rich_texture(sample, tmp_path):
    poses = json.loads(sample.poses.read_text())
    expected = terrain_for_seed(0).render(
        np.array(poses["K"]), np.array(poses["frames"][0]["c2w"]), WIDTH, HEIGHT
    )
    decoded = _decode_first_frame(sample.video)
    mse = np.mean((decoded.astype(np.float64) - expected) ** 2)
    assert 10 * np.log10(255**2 / mse) > 28  # PSNR: the video holds the ground-truth view

    grey = np.ascontiguousarray(decoded.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    options = pycolmap.FeatureExtractionOptions()
    options.sift.first_octave = 0
    options.num_threads = 1
    extractor = pycolmap.FeatureExtractor.create(options, pycolmap.Device.cpu)
    keypoints, _ = extractor.extract(pycolmap.Bitmap.from_array(grey.round().astype(np.uint8)))
    # Weakly textured scenes registered badly in trials; this one gives ~2400 per frame.
    assert len(keypoints) > 1500


def test_chapters_continue_the_flight(tmp_path):
    second = render_survey(tmp_path, name="GX020001.MP4", seconds=0.2, fps=FPS, width=64, height=36, start_s=SECONDS)
    poses = json.loads(second.poses.read_text())
    assert second.poses.name == "GX020001.poses.json" and second.frames == 2
    assert poses["frames"][0]["t_s"] == 0.0  # timestamps are within the chapter
    np.testing.assert_allclose(poses["frames"][0]["c2w"], camera_pose(SECONDS))


def test_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        render_survey(tmp_path, width=321)
    assert list(tmp_path.iterdir()) == []
