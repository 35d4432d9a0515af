"""compose/ and the Grafana dashboard, checked without a Docker engine.

- every compose file parses (PyYAML), and the files it builds from or mounts exist;
- the Telegraf configurations parse (TOML) and scrape the services' /metrics;
- the Grafana dashboard parses, and every metric its queries name is exposed by the real
  services (all three built here and scraped);
- the systemd units: required keys always (a small parser: ``configparser`` refuses the
  repeated ``EnvironmentFile=``), and ``systemd-analyze verify`` where it is installed
  (``test_units_pass_systemd_analyze_verify`` is skipped, saying so, where it is not).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import TOKEN, serve_app
from metrics_scrape import scrape

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose"
COMPOSE_FILES = sorted(COMPOSE.glob("*.compose.yaml"))
UNITS = sorted((COMPOSE / "systemd").glob("*.service"))
DASHBOARD = COMPOSE / "grafana" / "dashboards" / "cosma-qc.json"
#: Fields Telegraf's inputs.nvidia_smi writes (measurement nvidia_smi) that the dashboard may use.
NVIDIA_SMI_FIELDS = {"temperature_gpu", "power_draw", "utilization_gpu", "utilization_memory", "memory_used",
                     "memory_free", "memory_total", "fan_speed", "clocks_current_graphics"}


def _load(path: Path) -> dict:
    with path.open() as fh:
        return yaml.safe_load(fh)


def test_there_is_one_compose_file_per_role():
    assert [p.name for p in COMPOSE_FILES] == ["core.compose.yaml", "gpu-agent.compose.yaml",
                                               "storage-agent.compose.yaml"]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_files_parse_and_reference_files_that_exist(path):
    doc = _load(path)
    assert doc["services"], path
    for name, service in doc["services"].items():
        assert service.get("restart") == "unless-stopped", f"{path.name}: {name} is not restarted"
        build = service.get("build")
        if build:
            context = (path.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), f"{path.name}: {name}'s Dockerfile"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (path.parent / source).exists(), f"{path.name}: {name} mounts missing {source}"
        for value in (service.get("environment") or {}).values():
            assert "${" not in str(value) or re.fullmatch(r"\$\{[A-Z_]+(:?[-?][^}]*)?\}", str(value)), value


def test_the_dockerfile_copies_what_exists_and_runs_the_cli():
    text = (COMPOSE / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+(?: \S+)*) \S+$", text, flags=re.M):
        for item in source.split():
            assert (ROOT / item).exists(), item
    assert 'ENTRYPOINT ["cosma-qc"]' in text and "ffmpeg" in text and "USER cosma" in text


def test_each_role_gets_its_ports_volumes_and_runtime():
    core = _load(COMPOSE / "core.compose.yaml")["services"]
    assert {"core", "caddy", "influxdb", "telegraf", "grafana"} <= set(core)
    assert "3849:3849" in core["caddy"]["ports"]
    gpu = _load(COMPOSE / "gpu-agent.compose.yaml")["services"]["gpu-agent"]
    assert gpu["runtime"] == "nvidia" and gpu["command"] == ["gpu-agent"]
    assert {"8300:8300", "8100-8199:8100-8199"} <= set(gpu["ports"])
    assert any(v.endswith(":/cosma-qc-frames") for v in gpu["volumes"])
    storage = _load(COMPOSE / "storage-agent.compose.yaml")["services"]["storage-agent"]
    videos = [v for v in storage["volumes"] if not v.startswith("storage-state:")]
    assert videos and all(v.endswith(":ro") for v in videos)  # the videos are only ever read
    assert "storage-state:/var/lib/cosma-qc" in storage["volumes"]  # the probe cache survives restarts
    assert storage["environment"]["COSMA_STORAGE_STATE_DIR"] == "/var/lib/cosma-qc"
    assert json.loads(storage["environment"]["COSMA_STORAGE_ROOTS"]) == ["/mnt/portablessd"]


def test_caddy_proxies_the_core_and_grafana():
    text = (COMPOSE / "caddy" / "Caddyfile").read_text()
    assert "reverse_proxy core:3849" in text and "reverse_proxy grafana:3000" in text
    assert text.count("{") == text.count("}")


def test_telegraf_scrapes_every_service_and_the_gpus():
    tomllib = pytest.importorskip("tomllib")
    core = tomllib.loads((COMPOSE / "telegraf" / "telegraf.conf").read_text())
    urls = core["inputs"]["prometheus"][0]["urls"]
    assert all(u.endswith("/metrics") for u in urls)
    assert {u.split(":")[-1].split("/")[0] for u in urls} == {"3849", "8300", "8310"}
    assert core["inputs"]["prometheus"][0]["metric_version"] == 2  # the shape the dashboard queries
    gpu = tomllib.loads((COMPOSE / "telegraf" / "telegraf-gpu.conf").read_text())
    assert gpu["inputs"]["nvidia_smi"]
    for conf in (core, gpu):
        assert conf["outputs"]["influxdb_v2"][0]["bucket"] == "cosma"


def test_grafana_provisioning_points_at_the_dashboard_and_the_datasource():
    provisioning = COMPOSE / "grafana" / "provisioning"
    datasource = _load(provisioning / "datasources" / "influxdb.yaml")["datasources"][0]
    provider = _load(provisioning / "dashboards" / "cosma.yaml")["providers"][0]
    mounts = _load(COMPOSE / "core.compose.yaml")["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


@pytest.fixture(scope="module")
def exposed_names(tmp_path_factory) -> set[str]:
    """Every sample name the three real services expose (a RECORDED probe stands in for NVML)."""
    from services.core.app import create_app as core_app
    from services.core.config import CoreSettings
    from services.gpu_agent.app import create_app as gpu_app
    from services.gpu_agent.config import GpuAgentSettings
    from services.gpu_agent.nvml import RecordedProbe
    from services.storage_agent.app import create_app as storage_app
    from services.storage_agent.config import StorageSettings
    from shared.gpu import GpuInfo

    tmp = tmp_path_factory.mktemp("deploy")
    (tmp / "videos").mkdir()
    gpu = GpuInfo(index=0, name="NVIDIA GeForce RTX 3060", uuid="GPU-1", memory_total_mib=12288,
                  memory_used_mib=512, memory_free_mib=11776, utilization_pct=3, temperature_c=40)
    apps = [
        core_app(CoreSettings(token=TOKEN, data_dir=tmp / "core", scheduler_enabled=False)),
        gpu_app(GpuAgentSettings(token=TOKEN, workdir=tmp / "frames"), probe=RecordedProbe([gpu])),
        storage_app(StorageSettings(token=TOKEN, roots=[tmp / "videos"])),
    ]
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names: set[str] = set()
    for app in apps:
        with serve_app(app) as url:
            scrape(url)  # HTTP series appear once a request was answered
            names |= set(scrape(url))
            # Labelled counters nothing has counted yet (placements, …) have no sample, only their TYPE line.
            text = httpx.get(f"{url}/metrics").text
            for family in text_string_to_metric_families(text):
                names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    return names


def test_dashboard_queries_name_metrics_the_services_expose(exposed_names):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            query = target["query"]
            measurement = re.search(r'r\._measurement == "(\w+)"', query).group(1)
            fields = set(re.findall(r'r\._field == "(\w+)"', query))
            assert fields, f"{panel['title']}: no field in {query!r}"
            known = exposed_names if measurement == "prometheus" else NVIDIA_SMI_FIELDS
            assert measurement in ("prometheus", "nvidia_smi")
            assert fields <= known, f"{panel['title']}: {fields - known} not exposed"
            used |= fields
    for wanted in ("cosma_core_jobs", "cosma_gpu_memory_used_mib", "cosma_gpu_memory_free_mib",
                   "cosma_gpu_utilization_percent", "cosma_storage_disk_free_bytes"):
        assert wanted in used


def _unit_entries(path: Path) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if re.fullmatch(r"\[\w+\]", line):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None and re.fullmatch(r"[A-Za-z]+", key), f"{path.name}:{number}: {line!r}"
        current.append((key, value))
    return sections


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_units_have_the_required_keys(path):
    sections = _unit_entries(path)
    assert set(sections) == {"Unit", "Service", "Install"}
    unit, service, install = (dict(sections[s]) for s in ("Unit", "Service", "Install"))
    assert unit["Description"] and "network-online.target" in unit["After"]
    assert service["User"] == "cosma" and service["Restart"] == "on-failure"
    assert service["ExecStart"].startswith("/opt/cosma-qc/venv/bin/cosma-qc ")
    env_files = [v for k, v in sections["Service"] if k == "EnvironmentFile"]
    assert "/etc/cosma-qc/token.env" in env_files and len(env_files) == 2
    for env_file in env_files:  # each has an example beside the units
        assert (COMPOSE / "systemd" / (Path(env_file).stem + ".env.example")).is_file(), env_file
    assert install["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed: the units were only parsed (test_units_have_the_required_keys)")
def test_units_pass_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart exists: point it at this checkout's cosma-qc.
    cli = Path(sys.executable).parent / "cosma-qc"
    if not cli.exists():
        pytest.skip(f"{cli} missing: install the package (make setup)")
    for unit in UNITS:
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/cosma-qc/venv/bin/cosma-qc", str(cli)))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in tmp_path.iterdir())],
                            capture_output=True, text=True, timeout=60)
    # Unknown keys and bad values are only warnings (exit 0): any output about our units fails.
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "cosma-qc-" in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


def test_deploy_guide_covers_the_lan():
    text = (ROOT / "docs" / "deploy.md").read_text()
    for needle in ("192.168.1.82", "192.168.1.84", "192.168.1.87", "192.168.1.168", "/mnt/portablessd",
                   "3849", "8300", "8310", "8100", "cosma-qc core migrate", "token", "pg_dump", "sqlite3",
                   "firewall", "Adding a GPU node"):
        assert needle in text, needle
