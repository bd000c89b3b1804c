"""Soak: collect -> train -> eval (with a rerun recording) over and over in one process for a long time, and
check that memory does not grow once warmed up. Not in CI (``-m slow``).

    GENCTL_SOAK_MINUTES=30 .venv/bin/python -m pytest tests/test_soak.py -m slow -s

Memory is the resident set size from /proc/self/status (psutil when /proc is missing), measured after a
``gc.collect()`` at the end of each cycle. After the warm-up (the first ``WARMUP_FRAC`` of the cycles, at
least 2: allocator arenas, rerun's buffers and the shared TorchScript trace of the sampler settle) the RSS may exceed the warm-up level by at most ``GENCTL_SOAK_MAX_GROWTH_MB`` (default 64 MB), and
the second half of the cycles may not sit clearly above the first (a slow, steady leak).

``GENCTL_SOAK_RERUN=1`` also records every evaluation with rerun. Off by default: rerun-sdk 0.41 never drops a
RecordingStream made from Python (its batcher threads and part of the logged data stay, ~1-3 MB per recording;
upstream issue rerun-io/rerun#2116), so a process that makes a new recording every cycle grows by that much.
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

import pytest

from genctl.cli import main

pytestmark = pytest.mark.slow

WARMUP_FRAC = 0.3
TINY = ["model.hidden=[32,32,32]", "critic.hidden=[32,32]", "critic.steps=60", "policy.steps=60",
        "critic.batch_size=256", "policy.batch_size=256", "threads=1", "eval.steps=32", "log_every=20",
        "ckpt_every=30"]


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def cycle(tmp: Path, i: int, rerun: bool) -> None:
    store, runs = tmp / "soak.zarr", tmp / "runs"
    assert main(["--quiet", "collect", "PointMaze_UMaze-v3", "--expert", "maze", "--episodes", "6", "--noise", "0.3",
                 "--seed", str(i), "--overwrite", "-o", str(store)]) == 0
    assert main(["--quiet", "train", "--overwrite", f"data.store={store}", f"out_dir={runs}", "name=soak",
                 f"seed={i}", *TINY]) == 0
    record = ["--candidates", "16", "--frame-every", "10", "--rerun", "save", str(tmp / "soak.rrd")] if rerun else []
    assert main(["--quiet", "eval", str(runs / "soak"), "--episodes", "4", "--envs", "2", "--max-episode-steps",
                 "60", *record]) == 0


def test_soak_memory_stays_bounded(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    minutes = float(os.environ.get("GENCTL_SOAK_MINUTES", "30"))
    max_growth = float(os.environ.get("GENCTL_SOAK_MAX_GROWTH_MB", "64"))
    rerun = os.environ.get("GENCTL_SOAK_RERUN", "0") == "1"
    t0 = time.monotonic()
    samples: list[tuple[float, float]] = []  # (seconds, RSS MB) after each cycle
    i = 0
    while time.monotonic() - t0 < minutes * 60 or len(samples) < 4:
        cycle(tmp_path, i, rerun)
        capsys.readouterr()  # keep captured output from growing with the run
        gc.collect()
        samples.append((time.monotonic() - t0, rss_mb()))
        i += 1
    rss = [m for _, m in samples]
    warm = max(2, int(len(rss) * WARMUP_FRAC))
    base = max(rss[:warm])
    after = rss[warm:]
    half = len(after) // 2
    summary = {
        "minutes": round((time.monotonic() - t0) / 60, 2), "rerun": rerun, "cycles": len(rss), "warmup_cycles": warm,
        "rss_first_mb": round(rss[0], 1), "rss_after_warmup_mb": round(base, 1),
        "rss_max_after_warmup_mb": round(max(after), 1), "rss_last_mb": round(rss[-1], 1),
        "growth_mb": round(max(after) - base, 1),
        "first_half_mean_mb": round(sum(after[:half]) / max(half, 1), 1) if half else None,
        "second_half_mean_mb": round(sum(after[half:]) / len(after[half:]), 1),
        "cycle_s": round(samples[-1][0] / len(samples), 1),
    }
    with capsys.disabled():
        print("\nsoak:", json.dumps(summary))
        print("soak RSS per cycle (MB):", [round(m) for m in rss])
    assert max(after) - base <= max_growth, summary
    if half:
        assert summary["second_half_mean_mb"] - summary["first_half_mean_mb"] <= max_growth / 2, summary
