"""Optimizer helpers shared by the critic and the algorithms."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


def make_adam(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where available (one kernel for all params; CPU supports it since 2.4)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


def clip_and_step(opt: torch.optim.Optimizer, params: list[nn.Parameter], grad_clip: float | None
                  ) -> Tensor | None:
    """Optional global grad-norm clipping, then the optimizer step. Returns the pre-clip norm (a 0-dim tensor on
    the parameters' device, so no host sync) when clipping."""
    norm = None
    if grad_clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True).detach()
    opt.step()
    return norm


def bf16_autocast(device_type: str, enabled: bool) -> torch.autocast:
    """bfloat16 autocast on ``device_type`` ("cpu"/"cuda"), a no-op unless ``enabled`` (the ``amp`` switches)."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has native bf16 matmul instructions (AVX512-BF16 or AMX). Only there does bf16
    autocast pay on the CPU (~1.3-3x on our training steps); elsewhere it is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:  # not Linux: do not guess
        pass
    return False


def metrics_out(values: dict[str, Tensor], sync: bool) -> dict[str, Any]:
    """An update's metrics: Python floats (``sync``, one host sync) or detached 0-dim tensors (no sync: a GPU
    training loop reads them only when it logs)."""
    out = {k: v.detach() for k, v in values.items()}
    if not sync:
        return out
    host = torch.stack([v.float() for v in out.values()]).tolist() if out else []
    return dict(zip(out, host, strict=True))
