"""Exponential moving average of a model's weights (used by apps for evaluation)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """``module`` holds avg <- decay * avg + (1 - decay) * current after each ``update(model)``.

    Buffers (e.g. the fixed Fourier frequencies) are copied, not averaged. The copy is frozen and in eval mode.
    """

    def __init__(self, model: nn.Module, decay: float = 0.995):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p = list(self.module.parameters())
        cur_p = [p.detach() for p in model.parameters()]
        if len(ema_p) != len(cur_p):
            raise ValueError("EMA.update: model does not match the averaged copy")
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            if not torch.equal(b_ema, b):  # copy only on change: a write would invalidate sampler caches
                b_ema.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)
