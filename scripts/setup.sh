#!/usr/bin/env bash
# Installs what COSMA QC needs on a fresh Debian machine: ffmpeg + ffprobe (Debian's ffmpeg
# package) and a virtual environment (.venv) with the package and its test tools.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  echo "setup: installing ffmpeg and ffprobe (Debian package ffmpeg)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq ffmpeg >/dev/null
fi

# The dashboard's browser tests drive Debian's chromium through Playwright (never its download).
if [ ! -x /usr/bin/chromium ]; then
  echo "setup: installing chromium (Debian package) for the dashboard's browser tests"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.cosma-qc-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing cosma-qc and its test tools into .venv"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v WARNING || true
  .venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v WARNING || true
  .venv/bin/python -c "import services.cli, pycolmap, fastapi, sqlmodel" \
    || { echo "setup: the install failed; see the pip output above" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

# The lingbot runner's tests drive it against a test double of LingBot-Map, which needs torch.
# On GPU nodes torch lives in LingBot-Map's own environment, never in this one; here the CPU
# build is enough. Skip with COSMA_SKIP_TORCH=1 (those tests then skip and say why).
if [ "${COSMA_SKIP_TORCH:-0}" != 1 ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch (CPU) for the lingbot adapter's tests"
  .venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v WARNING || true
fi

# Test-only: the Khronos glTF validator (npm) checks the GLB exports. No lock file is kept
# (it would name the registry); package.json pins the exact version.
if command -v npm >/dev/null && [ ! -d tests/tools/node_modules/gltf-validator ]; then
  echo "setup: installing the glTF validator for the tests (npm)"
  npm install --prefix tests/tools --no-package-lock --no-audit --no-fund --silent
fi
