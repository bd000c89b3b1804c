"""Per-stage learning-rate schedules, applied by the trainer before every update.

The factor depends only on (stage step, stage length), so a resumed run continues on the same curve without any
scheduler state in the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def cosine_factor(step: int, total: int, floor: float) -> float:
    """Half a cosine from 1 at step 0 to ``floor`` at ``total``."""
    frac = min(step / max(total, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def set_lr(optimizers: Iterable[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr
