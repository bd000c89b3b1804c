"""Optimizer helpers shared by the critic and the algorithms."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def make_adam(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where available (one kernel for all params; CPU supports it since 2.4)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


def clip_and_step(opt: torch.optim.Optimizer, params: list[nn.Parameter], grad_clip: float | None) -> float | None:
    """Optional global grad-norm clipping, then the optimizer step. Returns the pre-clip norm when clipping."""
    norm = None
    if grad_clip is not None:
        norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True))
    opt.step()
    return norm
