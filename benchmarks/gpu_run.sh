#!/usr/bin/env bash
# The GPU checks and figures in one prepared run, for a machine with a CUDA GPU and a Python that already has
# torch (no network needed): the CUDA tests, then benchmarks/policies.py and benchmarks/eval_loop.py with
# --device cuda. Logs go to OUTDIR (default $OUT, else /tmp/genctl-gpu).
#
#   bash benchmarks/gpu_run.sh [OUTDIR]          (env: NETS=ref,small, STEPS="test_cuda_units policies_cuda ...",
#                                                 QSTORE, QUALITY_ARGS, QUALITY_LIMIT, QUALITY_BG=1: see below)
#
# Issue 18 item 3 adds three steps (not in the default STEPS): vision_cuda (benchmarks/vision.py: the encoders and a
# vision training step on the GPU), ooc_cuda (benchmarks/datasets.py --only ooc --ooc-device cuda: the out-of-core
# camera loader feeding a GPU training step, against the in-memory table on the GPU), and quality_cuda
# (benchmarks/quality.py on each zarr store in QSTORE, paths in the repo, with QUALITY_ARGS and QUALITY_ARGS_<i>: BC/GMPO/GMPG at budgets
# larger than the CPU's; QUALITY_BG=1 runs it beside the CUDA tests, after the timing steps).
#
# Wheels for what the machine lacks go in .whl/ (benchmarks/gpu_wheels.sh makes them; installed first, without
# dependencies), and EGL/GL loader .debs in .gl/ (unpacked into /; only for a bare machine image that lacks them:
# the CLI tests render with MUJOCO_GL=egl; without .gl run the other steps with MUJOCO_GL=disable).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUTDIR=${1:-${OUT:-/tmp/genctl-gpu}}
mkdir -p "$OUTDIR"
# MUJOCO_GL=disable where the machine has no EGL (Hopper training and eval need no renderer; the CLI tests do)
export PYTHONUNBUFFERED=1 MUJOCO_GL=${MUJOCO_GL:-egl}
export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-$MUJOCO_GL}
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
step() {  # step NAME SECONDS CMD...: run with a time limit, log to OUTDIR/LOG.log (LOG=NAME unless STEP_LOG is
    local name=$1 limit=$2 log=${STEP_LOG:-$1}; shift 2  # set), keep going on failure
    [[ " $STEPS " == *" $name "* ]] || return 0
    echo "=== $log" | tee -a "$OUTDIR/summary.txt"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUTDIR/$log.log"
    echo "=== $log: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$OUTDIR/summary.txt"
}

step policies_cuda 200 $PY "$REPO/benchmarks/policies.py" --device cuda --repeat 20 --nets ${NETS:-ref,small}
step eval_loop_cuda 120 $PY "$REPO/benchmarks/eval_loop.py" --device cuda --threads 1 --steps 31,10 \
    --env-steps 3000 --eval-episodes 5 --vec-envs 8
step vision_cuda 50 $PY "$REPO/benchmarks/vision.py" --device cuda --repeat 5 --kinds small,resnet18 --batch 64
step ooc_cuda 60 $PY "$REPO/benchmarks/datasets.py" --only ooc --ooc-device cuda --ooc-encoder small --reps 3 --seconds 1
step ooc_cuda_resnet 50 $PY "$REPO/benchmarks/datasets.py" --only ooc --ooc-device cuda --ooc-encoder resnet18 \
    --reps 2 --seconds 1

quality() {  # the quality protocol on each store of QSTORE; its runs' small files come back as OUTDIR/quality.tgz
    rm -rf /tmp/genctl-quality && mkdir -p /tmp/genctl-quality
    nvidia-smi dmon -s u -d 5 > "$OUTDIR/dmon.txt" 2>&1 &
    local dmon=$! i=0 store pids=()
    # shellcheck disable=SC2086  # QSTORE and the QUALITY_ARGS are word lists on purpose
    for store in ${QSTORE:?QSTORE}; do  # one quality.py per store, all at once; QUALITY_ARGS_<i> (1-based) adds to store i
        i=$((i + 1))
        local extra="QUALITY_ARGS_$i"
        STEP_LOG="quality_$i" step quality_cuda "${QUALITY_LIMIT:-400}" $PY "$REPO/benchmarks/quality.py" \
            --store "$REPO/$store" --out "/tmp/genctl-quality/q$i" ${QUALITY_ARGS:-} ${!extra:-} >/dev/null &
        pids+=($!)
    done
    wait "${pids[@]}"
    kill "$dmon" 2>/dev/null
    (cd /tmp/genctl-quality && tar -czf "$OUTDIR/quality.tgz" q*/logs \
        $(ls -d q*/results.json q*/runs/*/eval*.json q*/runs/*/critic.json q*/runs/*/config.yaml 2>/dev/null))
}
# The timing steps above ran alone; the quality runs (timed only as wall time) may overlap the CUDA tests.
if [[ " $STEPS " == *" quality_cuda "* ]]; then
    if [[ -n "${QUALITY_BG:-}" ]]; then quality >/dev/null 2>&1 & else quality; fi
fi
step test_cuda_units 90 $PY -m pytest -q -p no:cacheprovider "$REPO/tests/test_cuda.py" -k "not cli"
step test_cuda_cli 150 $PY -m pytest -q -p no:cacheprovider "$REPO/tests/test_cuda.py" -k "cli"
wait
cat "$OUTDIR/summary.txt"
