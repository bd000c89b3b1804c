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


def matmul_rate(repeat: int, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a dense n^3 matmul (n = 1024 on the CPU, 8192 on a GPU) on the current device."""
    n = 8192 if _device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=_device).to(dtype) for _ in range(2))
    return 2 * n**3 / timeit(lambda: a @ b, max(repeat, 5))
