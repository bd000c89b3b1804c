"""Fixed-grid ODE solvers (Euler, Heun, midpoint) for dx/dt = v(t, x), with log-density bookkeeping.

The grid over [t0, t1] has ``steps`` intervals of width h; every time a solver can evaluate (grid points and
midpoints) is a *half-step index* j in 0..2*steps, so time-dependent features are computed once per grid
(the model's grid cache) and the loop only indexes a table: no per-step tensor creation, no host sync.

The same routine integrates forwards (noise -> data, sampling) and backwards (data -> noise, likelihood).
For densities it either accumulates I = integral of div v dt with the solver's own quadrature ("trace":
log p(x(t1)) = log p0(x(t0)) - I, for Hutchinson estimates), or carries the D tangent columns of the
discrete map's Jacobian ("jacobian": exact change of variables of the solver's map, for small D).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

SOLVERS = ("euler", "heun", "midpoint")

# field(x, tangents, j) -> (velocity, extra) at half-step index j, where ``extra`` is
#   None                         (plain sampling; tangents is None),
#   the divergence (m,)          ("trace" mode; tangents is None, the field owns its probes),
#   J_v @ tangents (K, m, D)     ("jacobian" mode; tangents are the current columns of dx/dx_start).
# Densities may be tracked for the first m <= B rows only.
Field = Callable[[Tensor, Tensor | None, int], tuple[Tensor, Tensor | None]]
MODES = ("none", "trace", "jacobian")


def check_solver(solver: str, steps: int) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def half_step_times(t0: float, t1: float, steps: int) -> Tensor:
    """Times of half-step indices 0..2*steps on [t0, t1] (float64 for an exact grid, cast by the caller)."""
    return torch.linspace(t0, t1, 2 * steps + 1, dtype=torch.float64)


def _step(field: Field, x: Tensor, aux: Tensor | None, j: int, h: float, d: int, solver: str, mode: str,
          inplace: bool) -> tuple[Tensor, Tensor | None]:
    """One solver step from half-index j to j + 2d with signed step h (negative when integrating back).

    trace mode: ``aux`` accumulates |h| * divergence (the solver's quadrature of div v dt).
    jacobian mode: ``aux`` holds the tangents (K, B, D) and takes exactly the solver's own linearised update,
    so at the end it is the Jacobian of the *discrete* map, whose log-determinant is the exact density change
    of the sampler as implemented (not an O(h) quadrature of the trace)."""
    jac = mode == "jacobian"
    v1, g1 = field(x, aux if jac else None, j)
    if solver == "euler":
        v, g = v1, g1
    elif solver == "heun":
        v2, g2 = field(x + h * v1, aux + h * g1 if jac else None, j + 2 * d)
        v = 0.5 * (v1 + v2)
        g = None if g1 is None else 0.5 * (g1 + g2)
    else:  # midpoint
        v, g = field(x + (0.5 * h) * v1, aux + (0.5 * h) * g1 if jac else None, j + d)
    if inplace:
        x.add_(v, alpha=h)
    else:
        x = x + h * v
    if jac:
        aux = aux + h * g
    elif mode == "trace":
        aux = aux + abs(h) * g
    return x, aux


def integrate(field: Field, x: Tensor, *, steps: int, t0: float, t1: float, solver: str = "euler",
              reverse: bool = False, mode: str = "none", aux: Tensor | None = None, inplace: bool = False,
              checkpoint: bool = False) -> tuple[Tensor, Tensor | None]:
    """Integrate from t0 to t1 (``reverse=False``) or from t1 back to t0 (``reverse=True``).

    Returns (x at the far end, aux): aux is None, the integral of div v dt ("trace", started from ``aux``,
    default zeros(B)), or the final tangents ("jacobian", started from ``aux``). ``inplace`` updates ``x`` in place (only when no gradient is
    tracked); ``checkpoint`` recomputes each step in backward, so memory is O(steps * B * D * (1 + K)) plus
    one step's activations instead of every step's activations.
    """
    check_solver(solver, steps)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    h = (t1 - t0) / steps
    if mode == "none":
        aux = None
    elif mode == "trace" and aux is None:
        aux = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    elif mode == "jacobian" and aux is None:
        raise ValueError("jacobian mode needs the initial tangents as aux")
    d, h = (-1, -h) if reverse else (1, h)
    for k in range(steps):
        j = 2 * (steps - k) if reverse else 2 * k
        if checkpoint and torch.is_grad_enabled():
            if aux is None:
                x = _checkpoint(lambda x_, j_=j: _step(field, x_, None, j_, h, d, solver, mode, False)[0],
                                x, use_reentrant=False)
            else:
                x, aux = _checkpoint(lambda x_, a_, j_=j: _step(field, x_, a_, j_, h, d, solver, mode, False),
                                     x, aux, use_reentrant=False)
        else:
            x, aux = _step(field, x, aux, j, h, d, solver, mode, inplace)
    return x, aux
