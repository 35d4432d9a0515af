"""``colmap_stats.json``: the SfM statistics QC reads from a colmap run, beside ``cameras.json``.

Written by the colmap runner while its database still exists (keypoints live there; the
runner deletes it after). Weak texture shows first as few keypoints per frame, a poor model
as a high mean reprojection error or short tracks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pycolmap

COLMAP_STATS_NAME = "colmap_stats.json"


def write_colmap_stats(model: pycolmap.Reconstruction, database: Path, out_dir: Path) -> None:
    """Keypoints per frame (from the database) and the model's error and track statistics."""
    db = pycolmap.Database.open(database)
    try:
        keypoints = {image.name: int(db.num_keypoints_for_image(image.image_id)) for image in db.read_all_images()}
    finally:
        db.close()
    registered = model.num_reg_images()
    stats = {
        "mean_reprojection_error_px": float(model.compute_mean_reprojection_error()),
        "mean_track_length": float(model.compute_mean_track_length()) if model.num_points3D() else None,
        "mean_observations_per_frame": float(model.compute_mean_observations_per_reg_image()) if registered else None,
        "keypoints": dict(sorted(keypoints.items())),
    }
    path = Path(out_dir) / COLMAP_STATS_NAME
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(stats, indent=1))
    os.replace(tmp, path)
