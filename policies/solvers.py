"""Fixed-grid ODE solvers (Euler, Heun, midpoint) for dx/dt = v(t, x) with an optional divergence integral.

The grid over [t0, t1] has ``steps`` intervals of width h; every time a solver can evaluate (grid points and
midpoints) is a *half-step index* j in 0..2*steps, so time-dependent features are computed once per grid
(``GridCache``) and the loop only indexes a table: no per-step tensor creation, no host sync.

The same routine integrates forwards (noise -> data, sampling) and backwards (data -> noise, likelihood). It
also accumulates I = integral of div v dt over the path with the solver's own quadrature, so both
directions give log p(x(t1)) = log p0(x(t0)) - I.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

SOLVERS = ("euler", "heun", "midpoint")

# field(x, j) -> (velocity, divergence or None) at half-step index j
Field = Callable[[Tensor, int], tuple[Tensor, Tensor | None]]


def check_solver(solver: str, steps: int) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def half_step_times(t0: float, t1: float, steps: int) -> Tensor:
    """Times of half-step indices 0..2*steps on [t0, t1] (float64 for an exact grid, cast by the caller)."""
    return torch.linspace(t0, t1, 2 * steps + 1, dtype=torch.float64)


def _step(field: Field, x: Tensor, acc: Tensor | None, j: int, h: float, d: int, solver: str,
          inplace: bool) -> tuple[Tensor, Tensor | None]:
    """One solver step from half-index j to j + 2d, with signed step h (negative when integrating back).

    ``acc`` accumulates |h|-weighted divergence (the quadrature of div v over the time interval)."""
    v1, g1 = field(x, j)
    if solver == "euler":
        v, g = v1, g1
    elif solver == "heun":
        v2, g2 = field(x + h * v1, j + 2 * d)
        v = 0.5 * (v1 + v2)
        g = None if g1 is None else 0.5 * (g1 + g2)
    else:  # midpoint
        v, g = field(x + (0.5 * h) * v1, j + d)
    if inplace:
        x.add_(v, alpha=h)
    else:
        x = x + h * v
    if acc is not None:
        acc = acc + abs(h) * g
    return x, acc


def integrate(field: Field, x: Tensor, *, steps: int, t0: float, t1: float, solver: str = "euler",
              reverse: bool = False, with_div: bool = False, inplace: bool = False,
              checkpoint: bool = False) -> tuple[Tensor, Tensor | None]:
    """Integrate from t0 to t1 (``reverse=False``) or from t1 back to t0 (``reverse=True``).

    Returns (x at the far end, integral of div v dt or None). ``inplace`` updates ``x`` in place (only when no
    gradient is tracked); ``checkpoint`` recomputes each step in backward so memory is O(steps * B * D)
    plus one step's activations instead of all steps' activations.
    """
    check_solver(solver, steps)
    h = (t1 - t0) / steps
    acc = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device) if with_div else None
    d, h = (-1, -h) if reverse else (1, h)
    for k in range(steps):
        j = 2 * (steps - k) if reverse else 2 * k
        if checkpoint and torch.is_grad_enabled():
            if acc is None:
                x = _checkpoint(lambda x_, j_=j: _step(field, x_, None, j_, h, d, solver, False)[0],
                                x, use_reentrant=False)
            else:
                x, acc = _checkpoint(lambda x_, a_, j_=j: _step(field, x_, a_, j_, h, d, solver, False),
                                     x, acc, use_reentrant=False)
        else:
            x, acc = _step(field, x, acc, j, h, d, solver, inplace)
    return x, acc
