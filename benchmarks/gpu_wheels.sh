#!/usr/bin/env bash
# Prepare .whl/ for benchmarks/gpu_run.sh on a GPU machine that has Python 3.12 + torch but none of genctl's
# other dependencies and no network: downloads (here, where pip works) the CPython 3.12 manylinux wheels genctl's
# training, eval and tests import, and builds genctl's own wheel from this checkout. About 37 MB.
#
#   bash benchmarks/gpu_wheels.sh            (then carry .whl, and a store if the quality step needs one)
#
# gymnasium-robotics is repacked without its Adroit-hand and Franka-kitchen meshes (41 of its 45 MB): genctl
# imports the package for its registry, and a device call carries at most 64 MiB. Versions are the ones this
# checkout's .venv holds, so the GPU machine runs what the CPU tests ran.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
PKGS="zarr numcodecs donfig google-crc32c gymnasium farama-notifications mujoco glfw pyopengl pydantic pydantic-core
      annotated-types typing-inspection gymnasium-robotics pettingzoo"
pins=$($PY - "$PKGS" <<'EOF'
import sys
from importlib.metadata import version
print(" ".join(f"{p}=={version(p)}" for p in sys.argv[1].split()))
EOF
)
# shellcheck disable=SC2086  # pins is a word list
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pins 2>&1 | grep -v '^WARNING' || true
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
whl=$(ls .whl/gymnasium_robotics-*.whl)
(cd "$tmp" && unzip -q "$OLDPWD/$whl" && rm -rf gymnasium_robotics/envs/assets/{kitchen_franka,adroit_hand} \
    && rec=$(ls -d ./*.dist-info)/RECORD && grep -v -E 'assets/(kitchen_franka|adroit_hand)/' "$rec" > R \
    && mv R "$rec" && rm "$OLDPWD/$whl" && zip -qr "$OLDPWD/$whl" gymnasium_robotics ./*.dist-info)
$PY -m pip wheel -q . --no-deps --no-build-isolation -w .whl 2>&1 | grep -v -E '^\s*(!!|corresp)' || true
ls .whl
du -sh .whl
