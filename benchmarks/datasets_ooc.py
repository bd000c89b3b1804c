"""The ``--only ooc`` section of benchmarks/datasets.py: out-of-core camera batches (data.cache_gb) against the
in-memory table and against the training step, all measured in the same run (see that file's docstring)."""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # 2 shared cores: avoid OpenMP spin-wait collapse (before torch)

import numpy as np  # noqa: E402


def make_camera_store(path: Path, frames: int, hw: int, length: int = 200) -> float:
    """Episodes of ``length`` steps with one ``hw`` x ``hw`` RGB camera: a blocky random scene per episode that
    scrolls a pixel per step, plus pixel noise of +-4 levels that lz4 cannot compress (rendered frames shrink 3-5x:
    this is the worst case for the bytes read from disk). Returns seconds taken."""
    from genctl.datasets import StoreWriter
    from genctl.datasets.testing import random_episode

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with StoreWriter(path, {"source": {"kind": "collect"}}) as w:
        for i in range(0, frames, length):
            t = min(length, frames - i)
            ep = random_episode(rng, t, obs_dim=9, act_dim=7, terminated=True)
            block = -(-hw // 12)
            scene = np.kron(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), np.ones((block, block, 1), np.uint8))
            video = np.stack([np.roll(scene, s, axis=1)[:hw, :hw] for s in range(t)])
            ep["image/front"] = video | rng.integers(0, 8, video.shape, dtype=np.uint8)
            w.add_episode(ep)
    return time.perf_counter() - t0


@contextmanager
def page_cache_evicted(folder: Path) -> Iterator[None]:
    """Keep evicting ``folder``'s files from the page cache (POSIX_FADV_DONTNEED every 50 ms), so the loader's
    reads come from the disk as they would for a store larger than memory."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    stop = threading.Event()

    def evict() -> None:
        while not stop.wait(0.05):
            for f in files:
                fd = os.open(f, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)

    os.sync()
    thread = threading.Thread(target=evict, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ooc_rate(args: argparse.Namespace, rate: Callable[..., float]) -> None:
    """``rate(fn, seconds)``: calls per second (benchmarks/datasets.py's)."""
    import torch

    from genctl.apps.train import Trainer
    from genctl.config import TrainConfig, build_config

    b, hw, device = args.ooc_batch, args.ooc_hw, args.ooc_device
    # A CUDA step returns before its kernels ran: synchronise after each call, or the rates count launches.
    on_cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)

    def synced(fn: Callable[[], object]) -> Callable[[], None]:
        return lambda: (fn(), sync())[1]

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "cam.zarr"
        dt = make_camera_store(store, args.ooc_frames, hw)
        raw_mb = args.ooc_frames * hw * hw * 3 / 1e6
        disk_mb = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 1e6
        print(f"\nout of core: made a camera store of {args.ooc_frames:,} frames {hw}x{hw} RGB in {dt:.1f} s "
              f"({raw_mb:,.0f} MB of frames, {disk_mb:,.0f} MB on disk); torch threads {torch.get_num_threads()}; "
              f"training step on {torch.cuda.get_device_name() if on_cuda else 'cpu'}")
        common = [f"data.store={store}", f"out_dir={tmp}", "data.obs_keys=[obs, image/front]", "data.val_frac=0",
                  "policy.algo=bc", "critic.steps=0", f"policy.batch_size={b}", f"model.vision.encoder={args.ooc_encoder}",
                  f"device={device}"]
        rss0 = peak_rss_mb()
        t0 = time.perf_counter()
        ooc = Trainer(build_config(TrainConfig, overrides=[*common, f"data.cache_gb={args.ooc_cache_gb}"]),
                      Path(tmp) / "ooc", progress=False)
        for _ in range(20):
            ooc.data.sample()
        print(f"  out-of-core trainer built in {time.perf_counter() - t0:.1f} s: {ooc.data.describe()}")
        rss_ooc = peak_rss_mb()
        t0 = time.perf_counter()
        mem = Trainer(build_config(TrainConfig, overrides=common), Path(tmp) / "mem", progress=False)
        print(f"  in-memory trainer built in {time.perf_counter() - t0:.1f} s")
        rss_mem = peak_rss_mb()
        update = mem.updates["policy"]
        fixed = mem.data.sample(b)
        figures: dict[str, list[float]] = {k: [] for k in ("mem", "disk", "warm", "step", "loop_mem", "loop_disk")}
        waited = 0.0
        for _ in range(args.reps):
            figures["mem"].append(rate(synced(lambda: mem.data.sample(b)), args.seconds))
            figures["warm"].append(rate(synced(lambda: ooc.data.sample(b)), args.seconds))
            with page_cache_evicted(store):
                figures["disk"].append(rate(synced(lambda: ooc.data.sample(b)), args.seconds))
            figures["step"].append(rate(synced(lambda: update.update(fixed)), args.seconds))
            figures["loop_mem"].append(rate(synced(lambda: update.update(mem.data.sample(b))), args.seconds))
            with page_cache_evicted(store):
                w0, t0 = ooc.data.wait_s, time.perf_counter()
                figures["loop_disk"].append(rate(synced(lambda: update.update(ooc.data.sample(b))), args.seconds))
                waited += (ooc.data.wait_s - w0) / (time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in figures.items()}

        def ratio(a: str, c: str) -> str:
            per = [x / y for x, y in zip(figures[a], figures[c], strict=True)]
            return f"{statistics.median(per):.2f}x (range {min(per):.2f}-{max(per):.2f})"

        print(f"  batches of {b} transitions ({hw}x{hw} RGB obs + next obs), median of {args.reps} alternated reps:")
        print(f"    in memory, TransitionBatcher (reference)   {med['mem']:8.1f} batches/s {med['mem'] * b:9,.0f} "
              "samples/s   1.00x")
        print(f"    out of core, page cache warm              {med['warm']:8.1f} batches/s {med['warm'] * b:9,.0f} "
              f"samples/s   {ratio('warm', 'mem')}")
        print(f"    out of core, from disk                    {med['disk']:8.1f} batches/s {med['disk'] * b:9,.0f} "
              f"samples/s   {ratio('disk', 'mem')}   (goal >= 0.5x)")
        print(f"  training step, BC, {args.ooc_encoder} encoder, batch {b} on {device}  {med['step']:8.1f} steps/s")
        print(f"    loader from disk / training step          {ratio('disk', 'step')}   (goal >= 2x)")
        print(f"    training loop, in memory                  {med['loop_mem']:8.1f} steps/s")
        print(f"    training loop, out of core from disk      {med['loop_disk']:8.1f} steps/s   "
              f"{ratio('loop_disk', 'loop_mem')} of in memory; waited for a batch {100 * waited / args.reps:.1f} % "
              "of the time")
        table_mb = mem.data.table.numel() * 4 / 1e6
        low_mb = ooc.data._low.nbytes / 1e6
        print(f"  memory held: in memory {table_mb:,.0f} MB (float32 table); out of core {ooc.data.cache_nbytes / 1e6:,.0f}"
              f" MB of frames (cache_gb={args.ooc_cache_gb}) + {low_mb:.1f} MB low-dim table")
        print(f"  peak RSS: {rss0:,.0f} MB before the trainers, {rss_ooc:,.0f} MB after the out-of-core one "
              f"(+{rss_ooc - rss0:,.0f}), {rss_mem:,.0f} MB after the in-memory one (+{rss_mem - rss_ooc:,.0f})")
        ooc.data.close()
