"""A FAKE reconstruction backend for the QC pipeline tests (pycolmap is too slow to run often).

Same command line and outputs as a real runner: reads ``frame_*.jpg`` in ``--frames``,
registers every one on a straight line and writes ``cameras.json`` and
``reconstruction.ply`` into ``--out``. What the job manager handed it is thus on record.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from shared.cameras import CAMERAS_NAME, CameraFrame, Cameras, write_cameras
from shared.plyio import write_ply


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    names = sorted(p.name for p in args.frames.glob("frame_*.jpg"))
    frames = []
    for name in names:
        index = int(name[6:12])
        c2w = np.eye(4)
        c2w[0, 3] = 0.1 * index
        frames.append(CameraFrame(name=name, index=index, registered=True, c2w=c2w.tolist()))
    write_cameras(args.out / CAMERAS_NAME, Cameras(backend="colmap", version="fake (test)", frames=frames))
    xyz = np.random.default_rng(0).uniform(-1, 1, (100, 3)).astype(np.float32)
    write_ply(args.out / "reconstruction.ply", xyz, np.zeros((100, 3), np.uint8))
    print(json.dumps({"stage": "writing", "progress": 1.0, "message": f"fake: {len(names)} frames"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
