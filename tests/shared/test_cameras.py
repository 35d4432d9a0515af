import numpy as np
import pytest
from pydantic import ValidationError

from shared.cameras import (
    C2W_CONVENTION,
    CameraFrame,
    Cameras,
    FrameSource,
    Intrinsics,
    read_cameras,
    write_cameras,
)


def _cameras() -> Cameras:
    intrinsics = Intrinsics(fx=450.0, fy=450.0, cx=320.0, cy=180.0, width=640, height=360,
                            model="SIMPLE_RADIAL", distortion={"k": -0.01})  # fmt: skip
    c2w = np.eye(4)
    c2w[:3, 3] = [1.0, 2.0, 3.0]
    return Cameras(
        backend="colmap",
        version="pycolmap 4.2.1",
        parameters={"threads": 2, "matching": "sequential", "nested": {"a": [1, 2.5, None]}},
        frames=[
            CameraFrame(
                name="frame_000001.jpg",
                index=1,
                source=FrameSource(video=0, t_s=0.0),
                registered=True,
                c2w=c2w.tolist(),
                intrinsics=intrinsics,
                native_intrinsics=intrinsics.scaled(1920, 1080),
            ),
            CameraFrame(name="frame_000002.jpg", index=2, registered=False),
        ],
    )


def test_round_trip(tmp_path):
    cameras = _cameras()
    write_cameras(tmp_path / "cameras.json", cameras)
    assert read_cameras(tmp_path / "cameras.json") == cameras
    assert Cameras.model_validate_json(cameras.model_dump_json()) == cameras
    assert cameras.convention == C2W_CONVENTION
    assert [f.name for f in cameras.registered] == ["frame_000001.jpg"]
    np.testing.assert_array_equal(cameras.frames[0].centre(), [1.0, 2.0, 3.0])
    assert cameras.frames[1].centre() is None
    assert [p.name for p in tmp_path.iterdir()] == ["cameras.json"]


def test_intrinsics_scale_with_the_frame():
    native = Intrinsics(fx=450, fy=451, cx=320, cy=180, width=640, height=360).scaled(1920, 1080)
    assert (native.fx, native.fy, native.cx, native.cy) == (1350, 1353, 960, 540)
    assert (native.width, native.height) == (1920, 1080)


def test_strict_models_reject_bad_documents():
    document = _cameras().model_dump()
    with pytest.raises(ValidationError, match="extra"):
        Cameras.model_validate(document | {"surprise": 1})
    with pytest.raises(ValidationError):
        Cameras.model_validate(document | {"backend": "meshroom"})
    frame = document["frames"][0]
    with pytest.raises(ValidationError, match="exactly when"):
        CameraFrame.model_validate(frame | {"registered": False})
    with pytest.raises(ValidationError, match="exactly when"):
        CameraFrame.model_validate(frame | {"c2w": None})
    with pytest.raises(ValidationError, match="last row"):
        CameraFrame.model_validate(frame | {"c2w": [[1, 0, 0, 0]] * 4})
    with pytest.raises(ValidationError):
        CameraFrame.model_validate(frame | {"c2w": [[1, 0, 0]] * 4})
    with pytest.raises(ValidationError):
        Intrinsics(fx=0, fy=1, cx=0, cy=0, width=1, height=1)
