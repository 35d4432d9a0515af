import numpy as np
import pytest

from shared.plyio import read_ply, write_ply


def _cloud(n: int = 100, seed: int = 0):
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    return xyz, rgb


def test_round_trip_with_all_columns(tmp_path):
    xyz, rgb = _cloud()
    confidence = np.linspace(0, 1, len(xyz), dtype=np.float32)
    frame = np.arange(len(xyz), dtype=np.int32)
    path = tmp_path / "cloud.ply"
    write_ply(path, xyz, rgb, confidence=confidence, frame=frame)

    ply = read_ply(path)
    assert list(ply) == ["x", "y", "z", "red", "green", "blue", "confidence", "frame"]
    np.testing.assert_array_equal(np.column_stack([ply["x"], ply["y"], ply["z"]]), xyz)
    np.testing.assert_array_equal(np.column_stack([ply["red"], ply["green"], ply["blue"]]), rgb)
    np.testing.assert_array_equal(ply["confidence"], confidence)
    np.testing.assert_array_equal(ply["frame"], frame)
    assert ply["x"].dtype == np.float32 and ply["red"].dtype == np.uint8 and ply["frame"].dtype == np.int32
    assert path.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\nelement vertex 100\n")
    assert [p.name for p in tmp_path.iterdir()] == ["cloud.ply"]  # no temp file left behind


def test_round_trip_minimal_and_empty(tmp_path):
    xyz, rgb = _cloud(7)
    write_ply(tmp_path / "a.ply", xyz, rgb.astype(np.int64))  # integer colours in range are accepted
    assert set(read_ply(tmp_path / "a.ply")) == {"x", "y", "z", "red", "green", "blue"}
    write_ply(tmp_path / "empty.ply", np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    assert len(read_ply(tmp_path / "empty.ply")["x"]) == 0


def test_reads_other_writers_files_with_faces_after_vertices(tmp_path):
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment from elsewhere\nelement vertex 2\n"
        "property double x\nproperty double y\nproperty double z\n"
        "element face 0\nproperty list uchar int vertex_indices\nend_header\n"
    )
    body = np.arange(6, dtype="<f8").tobytes()
    (tmp_path / "mesh.ply").write_bytes(header.encode() + body)
    ply = read_ply(tmp_path / "mesh.ply")
    np.testing.assert_array_equal(ply["z"], [2.0, 5.0])


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a PLY"),
        (b"hello world", "not a PLY"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0.5\n", "not supported"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nend_header\n\0\0\0\0", "truncated"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nend_header\n" + b"\0" * 9, "unexpected bytes"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty list uchar int x\nend_header\n", "lists"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex x\nend_header\n", "bad element"),
        (b"ply\nformat binary_little_endian 1.0\nelement face 1\nproperty float x\nend_header\n", "expected 'vertex'"),
        (b"ply\nformat binary_little_endian 1.0\nend_header\n", "no vertex element"),
    ],
)
def test_malformed_files_raise_value_error(tmp_path, content, message):
    path = tmp_path / "bad.ply"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_ply(path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"xyz": np.zeros((3, 2))}, "xyz"),
        ({"rgb": np.zeros((2, 3), np.uint8)}, "rgb"),
        ({"rgb": np.zeros((3, 3), np.float32)}, "uint8"),
        ({"rgb": np.full((3, 3), 300)}, "0..255"),
        ({"confidence": np.zeros(4)}, "confidence"),
        ({"frame": np.zeros(3, np.float32)}, "integers"),
    ],
)
def test_write_rejects_bad_columns(tmp_path, kwargs, message):
    args = {"xyz": np.zeros((3, 3)), "rgb": np.zeros((3, 3), np.uint8)} | kwargs
    with pytest.raises(ValueError, match=message):
        write_ply(tmp_path / "x.ply", **args)
    assert list(tmp_path.iterdir()) == []
