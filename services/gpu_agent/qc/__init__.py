"""Quality control of a job: frame metrics as frames land, reconstruction metrics, verdict, report.

| module | what it holds |
| --- | --- |
| `metrics` | per-frame measures on a grey image scaled to 640 px (sharpness, brightness, clipping) |
| `frames` | `FrameQc` (thread-safe accumulator, `frames_qc.csv`) and `judge` (neighbour rule, filter) |
| `recon` | registered share, jumps, gaps, extent, colmap statistics from the backend's outputs |
| `verdict` | reasons with measured value, threshold and frames; pass / warn / fail |
| `plots` | hand-written SVG charts; `report` the self-contained `report.html` |
| `job` | `JobQc`: what the job manager calls, in order |
"""

from services.gpu_agent.qc.job import KEPT_DIR, QC_OUTPUTS, JobQc, resolve_options

__all__ = ["KEPT_DIR", "QC_OUTPUTS", "JobQc", "resolve_options"]
