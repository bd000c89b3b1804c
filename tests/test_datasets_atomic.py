"""Kill a real ingest (SIGKILL, in a subprocess) at several moments: the target must be absent or a complete,
valid store (the previous version, or the new one if the rename already happened) — never half-written."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from genctl.datasets import EpisodeStore, ingest
from genctl.datasets.testing import make_d4rl_file
from genctl.fsutil import cleanup_stale

BIG_N = 300_000
SCRIPT = (
    "import sys, genctl.datasets as d; print('ready', flush=True); "
    "d.ingest(sys.argv[1], sys.argv[2], fmt='d4rl', overwrite=True); print('done', flush=True)"
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src")
    small = make_d4rl_file(folder / "small.hdf5", n=120, episode_len=60)
    big = make_d4rl_file(folder / "big.hdf5", n=BIG_N, obs_dim=17, act_dim=6, episode_len=1000, infos=False)
    return small, big


def _run_and_kill(big, target, delay: float | None) -> tuple[bool, float]:
    """Start an ingest and SIGKILL it ``delay`` s after its imports finished (None: let it finish).
    Returns (completed, seconds from ready to exit)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(big), str(target)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        t0 = time.perf_counter()
        if delay is not None:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return "done" in out, time.perf_counter() - t0


def _check(tmp_path, target, allowed: set[int]) -> str:
    cleanup_stale(tmp_path, target.name)  # the killed writer's temp sibling is removable
    assert sorted(os.listdir(tmp_path)) == ([target.name] if target.exists() else [])
    if not target.exists():
        return "none"
    store = EpisodeStore.open(target, deep=True)  # must be complete and valid
    assert store.n_transitions in allowed
    return "new" if store.n_transitions == BIG_N else "old"


def test_sigkill_mid_overwrite_keeps_previous_version(tmp_path, sources):
    small, big = sources
    target = tmp_path / "store.zarr"
    ingest(small, target)
    ingest(small, tmp_path / "calib.zarr")
    finished, duration = _run_and_kill(big, tmp_path / "calib.zarr", None)  # how long a full run takes here
    assert finished
    for p in tmp_path.iterdir():
        if p.name != target.name:
            shutil.rmtree(p)
    outcomes = []
    for frac in (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.97, 1.05):
        _run_and_kill(big, target, frac * duration)
        outcomes.append(_check(tmp_path, target, {120, BIG_N}))
        assert outcomes[-1] != "none", "the previous store vanished"
        if outcomes[-1] == "new":
            break
    assert outcomes[0] == "old", outcomes  # at least one kill landed mid-write


def test_sigkill_mid_fresh_ingest_leaves_nothing(tmp_path, sources):
    _, big = sources
    target = tmp_path / "store.zarr"
    outcomes = []
    for delay in (0.0, 0.15, 0.35):
        _run_and_kill(big, target, delay)
        outcomes.append(_check(tmp_path, target, {BIG_N}))
        if outcomes[-1] == "new":
            break
    assert outcomes[0] == "none", outcomes
