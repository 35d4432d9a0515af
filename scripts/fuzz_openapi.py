"""Property-based fuzzing of each service's API against its own OpenAPI document.

Every operation of the core, the gpu agent and the storage agent gets schemathesis-generated
requests (valid and edge-case values, with the cluster token); any 5xx is reported. Runs on
loopback with real uvicorn servers, real ffmpeg, a fresh SQLite core. Not part of the test
suite (minutes on 2 cores); run it after API changes:

    .venv/bin/pip install schemathesis
    .venv/bin/python scripts/fuzz_openapi.py [--examples N]

Exit status 1 when a 5xx was seen.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=8, help="cases per operation (default: 8)")
    args = parser.parse_args()

    import schemathesis
    from hypothesis import HealthCheck, given, settings

    from conftest import TOKEN, make_test_video, serve_app
    from services.core.app import create_app as core_app
    from services.core.config import CoreSettings
    from services.gpu_agent.app import create_app as gpu_app
    from services.gpu_agent.config import GpuAgentSettings
    from services.storage_agent.app import create_app as storage_app
    from services.storage_agent.config import StorageSettings

    work = Path(tempfile.mkdtemp(prefix="cosma-fuzz-"))
    make_test_video(work / "videos" / "a.MP4", seconds=1)
    apps = {
        "storage": storage_app(StorageSettings(token=TOKEN, roots=[work / "videos"])),
        "gpu": gpu_app(GpuAgentSettings(token=TOKEN, workdir=work / "frames")),
        "core": core_app(CoreSettings(token=TOKEN, data_dir=work / "core", scheduler_enabled=False)),
    }
    failures: dict[tuple, str] = {}
    for role, app in apps.items():
        cases = 0
        with serve_app(app) as url:
            schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
            for result in schema.get_all_operations():
                operation = result.ok()

                @settings(max_examples=args.examples, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy())
                def check(case):
                    nonlocal cases
                    cases += 1
                    resp = case.call(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
                    if resp.status_code >= 500:
                        failures.setdefault((role, case.method, operation.path), resp.text[:300])

                check()
        print(f"{role}: {cases} cases", flush=True)
    for (role, method, path), body in failures.items():
        print(f"5xx  {role} {method} {path}: {body}")
    print("no 5xx" if not failures else f"{len(failures)} operations answered 5xx")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
