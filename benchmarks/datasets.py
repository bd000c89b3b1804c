"""Datasets benchmark: ingest speed and random-batch sampling speed (on disk vs in memory vs plain numpy).

    .venv/bin/python benchmarks/datasets.py [--rows 1000000] [--batch 4096] [--threads 1]

Prints ingest rows/s for a D4RL-like file (rows x 17 obs, next obs, rows x 6 actions) made in a temp dir, and
random batches/s of ``batch`` transitions from: the on-disk store (zarr ``oindex`` per key), the in-memory
``TransitionBatcher``, and plain numpy fancy indexing of the same five in-memory arrays (the reference).
Goals: ingest < 5 s for 1M rows; TransitionBatcher >= 0.8x numpy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def rate(fn: Callable[[], object], seconds: float, min_reps: int = 3) -> float:
    """Calls per second, after one warm-up call, measured for about ``seconds``."""
    fn()
    reps, t0 = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - t0 < seconds:
        fn()
        reps += 1
    return reps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (numpy indexing is single-threaded)")
    ap.add_argument("--seconds", type=float, default=2.0, help="time per sampling measurement")
    args = ap.parse_args()

    import torch

    from genctl.datasets import EpisodeStore, TransitionBatcher, ingest, load_transitions
    from genctl.datasets.testing import make_d4rl_file

    torch.set_num_threads(args.threads)
    n, b = args.rows, args.batch
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "d4rl.hdf5"
        t0 = time.perf_counter()
        make_d4rl_file(src, n=n, obs_dim=17, act_dim=6, episode_len=1000, infos=False)
        print(f"made {n:,} x (17 obs + 17 next obs + 6 act) D4RL file in {time.perf_counter() - t0:.2f} s "
              f"({src.stat().st_size / 2**20:.0f} MiB)")

        t0 = time.perf_counter()
        store = ingest(src, Path(tmp) / "store.zarr")
        dt = time.perf_counter() - t0
        print(f"ingest:            {dt:6.2f} s   {n / dt:12,.0f} rows/s   (goal < 5 s for 1M rows)")

        t0 = time.perf_counter()
        arrays = load_transitions(store)
        print(f"load_transitions:  {time.perf_counter() - t0:6.2f} s   (whole arrays into RAM)")

        rng = np.random.default_rng(0)
        keys = list(arrays)

        def numpy_batch() -> dict:
            idx = rng.integers(0, n, size=b)
            return {k: arrays[k][idx] for k in keys}

        obs = arrays["obs"]

        def numpy_obs_only() -> np.ndarray:
            return obs[rng.integers(0, n, size=b)]

        disk = EpisodeStore.open(store.path)
        zarrs = {k: disk.array_info(k) for k in ("obs", "action", "reward", "next_obs", "terminated")}

        def disk_batch() -> dict:
            idx = np.sort(rng.integers(0, n, size=b))
            return {k: (a.oindex[idx] if a.ndim == 1 else a.oindex[idx, :]) for k, a in zarrs.items()}

        batcher = TransitionBatcher(arrays, b, seed=0)
        ref = rate(numpy_batch, args.seconds)
        one = rate(numpy_obs_only, args.seconds)
        mem = rate(batcher.sample, args.seconds)
        ondisk = rate(disk_batch, max(args.seconds, 1.0), min_reps=2)
        print(f"\nrandom batches of {b} transitions (obs, action, reward, next_obs, terminal), "
              f"torch threads {args.threads}:")
        print(f"  numpy fancy indexing, 5 arrays (reference) {ref:9.1f} batches/s   1.00x")
        print(f"  numpy fancy indexing, obs array only       {one:9.1f} batches/s   {one / ref:.2f}x")
        print(f"  in memory, TransitionBatcher.sample()      {mem:9.1f} batches/s   {mem / ref:.2f}x   (goal >= 0.8x)")
        print(f"  on disk, zarr oindex per key               {ondisk:9.1f} batches/s   {ondisk / ref:.4f}x")


if __name__ == "__main__":
    main()
