#!/usr/bin/env bash
# The GPU checks and figures in one prepared run, for a machine with a CUDA GPU and a Python that already has
# torch (no network needed): the CUDA tests, then benchmarks/policies.py and benchmarks/eval_loop.py with
# --device cuda. Logs go to OUTDIR (default $OUT, else /tmp/genctl-gpu).
#
#   bash benchmarks/gpu_run.sh [OUTDIR]          (env: NETS=ref,small, STEPS="test_cuda_units policies_cuda ...")
#
# Wheels for what the machine lacks may be put in .whl/ (installed first, without dependencies), and EGL/GL
# loader .debs in .gl/ (unpacked into /; only for a bare machine image that lacks them).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUTDIR=${1:-${OUT:-/tmp/genctl-gpu}}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
PY=${PYTHON:-python3}

if compgen -G ".gl/*.deb" >/dev/null; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUTDIR/gpu.txt"
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-cache-dir .whl/*.whl 2>&1 | tail -3
fi
cd /tmp  # import the installed genctl, not the source folder
$PY -c "import torch, genctl.envs, genctl.apps.evaluate; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    || exit 1

STEPS=${STEPS:-test_cuda_units policies_cuda eval_loop_cuda test_cuda_cli}  # which steps to run
step() {  # step NAME SECONDS CMD...: run with a time limit, log to OUTDIR/NAME.log, keep going on failure
    local name=$1 limit=$2; shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    echo "=== $name" | tee -a "$OUTDIR/summary.txt"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUTDIR/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$OUTDIR/summary.txt"
}

step test_cuda_units 90 $PY -m pytest -q -p no:cacheprovider "$REPO/tests/test_cuda.py" -k "not cli"
step policies_cuda 200 $PY "$REPO/benchmarks/policies.py" --device cuda --repeat 20 --nets ${NETS:-ref,small}
step eval_loop_cuda 120 $PY "$REPO/benchmarks/eval_loop.py" --device cuda --threads 1 --steps 31,10 \
    --env-steps 3000 --eval-episodes 5 --vec-envs 8
step test_cuda_cli 150 $PY -m pytest -q -p no:cacheprovider "$REPO/tests/test_cuda.py" -k "cli"
cat "$OUTDIR/summary.txt"
