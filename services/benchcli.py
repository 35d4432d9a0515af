"""``cosma-qc bench``: run the benchmark suite of the source checkout this package runs from.

The suite (``bench/suite.py``) stays out of the installed package on purpose: it drives
``bench/``'s scripts and the test fakes under ``tests/``, which only a checkout has, and
a deployed node has no use for it. This command finds the checkout (the package is
installed editable by ``make setup``) and runs the suite there with this interpreter, so
``make bench`` and ``cosma-qc bench`` are the same code; every argument is the suite's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def suite_path() -> Path:
    return Path(__file__).resolve().parent.parent / "bench" / "suite.py"


def cmd_bench(argv: list[str]) -> int:
    suite = suite_path()
    if not suite.exists():
        raise SystemExit(f"cosma-qc bench runs the benchmark suite of a source checkout, and {suite} does not "
                         "exist (an installed package has no bench/): clone the repository, run `make setup`, "
                         "then `make bench` there")
    try:
        return subprocess.call([sys.executable, str(suite), *argv], cwd=suite.parent.parent)
    except KeyboardInterrupt:
        return 130
