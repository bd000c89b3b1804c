"""Timing helpers shared by the benchmark scripts: median wall time of a call (synchronised on CUDA), its FLOPs,
and the dense-matmul rate every ratio is measured against. ``set_device`` once from the script's ``--device``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

_device = torch.device("cpu")


def set_device(device: str | torch.device) -> torch.device:
    global _device
    _device = torch.device(device)
    return _device


def sync() -> None:
    if _device.type == "cuda":
        torch.cuda.synchronize(_device)


def timeit(fn: Callable[[], object], repeat: int, warmup: int = 2) -> float:
    """Median seconds of ``repeat`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def flops_of(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def dense_matmul(dtype: torch.dtype = torch.float32, onednn: bool = False) -> tuple[Callable[[], object], int]:
    """(a call, its FLOPs): a dense n^3 matmul (n = 1024 on the CPU, 8192 on a GPU) on the current device,
    torch's own ``a @ b`` (MKL sgemm for fp32 on the CPU), or with ``onednn`` oneDNN's linear on a pre-packed
    weight (CPU only: what the packed sampler runs; MKL's fp32 kernels need not use AVX-512 on every CPU)."""
    n = 8192 if _device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=_device).to(dtype) for _ in range(2))
    if onednn:
        w = torch.ops.mkldnn._reorder_linear_weight(b, n)
        return (lambda: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")), 2 * n**3
    return (lambda: a @ b), 2 * n**3


def matmul_rate(repeat: int, dtype: torch.dtype = torch.float32, onednn: bool = False) -> float:
    """FLOP/s of ``dense_matmul``."""
    fn, flops = dense_matmul(dtype, onednn)
    return flops / timeit(fn, max(repeat, 5))


def interleaved(fns: dict[str, Callable[[], object]], repeat: int, rounds: int = 5) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternating rounds (``repeat`` calls each, after one
    warm-up) so that load from other processes on a shared machine hits every variant alike."""
    per: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            per[k].append(timeit(fn, repeat, warmup=1))
    return {k: statistics.median(v) for k, v in per.items()}
