#!/usr/bin/env bash
# Create .venv and install genctl with everything it needs (idempotent; fast when already done).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Headless MuJoCo rendering needs EGL (Mesa); install it only where it is missing.
if ! ldconfig -p 2>/dev/null | grep -q "libEGL_mesa"; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Mesa EGL for offscreen rendering"
    apt-get update -qq && apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0 >/dev/null
  else
    echo "[setup] warning: Mesa EGL not found; rendering needs libegl1 libegl-mesa0 libgl1-mesa-dri" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q -U pip 2>&1 | grep -v "^WARNING: Location" || true
fi
# torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels on a CPU machine.
if ! .venv/bin/python -W ignore -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0"
  .venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -W ignore -c "import torch" || { echo "[setup] installing torch==2.13.0 failed" >&2; exit 1; }
fi
if ! .venv/bin/python -c "import genctl.apps, rerun, zarr, mujoco, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.genctl-installed ]; then
  echo "[setup] installing genctl and its dependencies"
  if ! .venv/bin/python -m pip install -q -e ".[dev]" > .venv/install.log 2>&1; then
    tail -n 30 .venv/install.log >&2
    echo "[setup] pip install failed; full log: .venv/install.log" >&2
    exit 1
  fi
  .venv/bin/python -c "import genctl.apps, rerun, zarr, mujoco"
  touch .venv/.genctl-installed
fi
# rerun prints an analytics notice on first use; keep the machine quiet and offline.
.venv/bin/rerun analytics disable >/dev/null 2>&1 || true
