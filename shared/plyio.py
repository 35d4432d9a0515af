"""Binary little-endian PLY point clouds, the format of ``reconstruction.ply`` and stitches.

Written: ``x y z`` float32, ``red green blue`` uchar, and optionally ``confidence`` float32
and ``frame`` int32. Read: any binary little-endian PLY whose first element is ``vertex``
with scalar properties, returned as ``{property name: 1-D array}`` in file order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: PLY scalar type names (both spellings) and their little-endian numpy types.
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "<i2", "int16": "<i2", "ushort": "<u2", "uint16": "<u2",
    "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
    "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
}  # fmt: skip

#: Bytes of header read before giving up: real headers are a few hundred bytes.
_MAX_HEADER_BYTES = 64 * 1024


def write_ply(path, xyz, rgb, *, confidence=None, frame=None) -> None:
    """Write a point cloud atomically (temp file in the same folder, then ``os.replace``)."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must have shape (N, 3), got {xyz.shape}")
    n = len(xyz)
    columns: list[tuple[str, str, np.ndarray]] = [
        ("x", "float", xyz[:, 0]), ("y", "float", xyz[:, 1]), ("z", "float", xyz[:, 2]),
    ]  # fmt: skip
    rgb = _colours(rgb, n)
    columns += [("red", "uchar", rgb[:, 0]), ("green", "uchar", rgb[:, 1]), ("blue", "uchar", rgb[:, 2])]
    if confidence is not None:
        columns.append(("confidence", "float", _column("confidence", confidence, n)))
    if frame is not None:
        frame = _column("frame", frame, n)
        if not np.issubdtype(frame.dtype, np.integer):
            raise ValueError(f"frame must hold integers, got {frame.dtype}")
        columns.append(("frame", "int", frame))

    table = np.empty(n, dtype=[(name, _PLY_TYPES[kind]) for name, kind, _ in columns])
    for name, _, values in columns:
        table[name] = values
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property {kind} {name}" for name, kind, _ in columns]
    header.append("end_header\n")

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write("\n".join(header).encode("ascii"))
            f.write(table.tobytes())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _column(name: str, values, n: int) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {array.shape}")
    return array


def _colours(rgb, n: int) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.shape != (n, 3):
        raise ValueError(f"rgb must have shape ({n}, 3), got {rgb.shape}")
    if rgb.dtype == np.uint8:
        return rgb
    # Integer colours in range are accepted; floats are ambiguous (0..1 or 0..255?).
    if not np.issubdtype(rgb.dtype, np.integer):
        raise ValueError(f"rgb must be uint8 (0..255), got {rgb.dtype}")
    if n and (rgb.min() < 0 or rgb.max() > 255):
        raise ValueError("rgb values must lie in 0..255")
    return rgb.astype(np.uint8)


def read_ply(path) -> dict[str, np.ndarray]:
    """Read the vertex element of a binary little-endian PLY as ``{name: array}``.

    Raises :class:`ValueError` naming the problem for anything malformed or unsupported.
    """
    path = Path(path)
    data = path.read_bytes()
    end = data.find(b"end_header", 0, _MAX_HEADER_BYTES)
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path.name} is not a PLY file (no 'ply' magic or no end_header)")
    newline = data.find(b"\n", end)
    if newline < 0:
        raise ValueError(f"{path.name}: header ends without a newline")
    body = memoryview(data)[newline + 1 :]
    lines = data[:end].decode("ascii", errors="replace").splitlines()[1:]

    count, fields = _parse_header(path.name, lines)
    dtype = np.dtype(fields)
    expected = count * dtype.itemsize
    if len(body) < expected:
        raise ValueError(f"{path.name} is truncated: {len(body)} bytes of data, {count} vertices need {expected}")
    if len(body) > expected and not _has_more_elements(lines):
        raise ValueError(f"{path.name} has {len(body) - expected} unexpected bytes after its vertices")
    table = np.frombuffer(body[:expected], dtype=dtype, count=count)
    return {name: table[name].copy() for name in dtype.names}


def _parse_header(name: str, lines: list[str]) -> tuple[int, list[tuple[str, str]]]:
    fmt, count, fields, in_vertex, seen_vertex = None, None, [], False, False
    for line in lines:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = " ".join(words[1:])
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise ValueError(f"{name}: bad element line {line!r}")
            if seen_vertex:
                break  # later elements (faces, …) are not read
            if words[1] != "vertex":
                raise ValueError(f"{name}: first element is {words[1]!r}, expected 'vertex'")
            count, in_vertex, seen_vertex = int(words[2]), True, True
        elif words[0] == "property" and in_vertex:
            if len(words) != 3 or words[1] not in _PLY_TYPES:
                raise ValueError(f"{name}: unsupported vertex property {line!r} (lists are not supported)")
            if words[2] in {f for f, _ in fields}:
                raise ValueError(f"{name}: property {words[2]!r} appears twice")
            fields.append((words[2], _PLY_TYPES[words[1]]))
        else:
            raise ValueError(f"{name}: unexpected header line {line!r}")
    if fmt != "binary_little_endian 1.0":
        raise ValueError(f"{name}: format {fmt!r} is not supported, only 'binary_little_endian 1.0'")
    if count is None or not fields:
        raise ValueError(f"{name}: no vertex element with properties")
    return count, fields


def _has_more_elements(lines: list[str]) -> bool:
    return sum(1 for line in lines if line.split()[:1] == ["element"]) > 1
