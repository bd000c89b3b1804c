"""Networks: the residual U-Net-like MLP backbone for generative policies, and the critic MLPs.

The backbone reproduces GenerativeRL's ``TemporalSpatialResidualNet`` (hidden 512/256/128, Gaussian Fourier
time embedding 32-d with scale 30 that is *not* trained, state embedding 32-d, conditioning MLP 64->128->128):
1,626,883 parameters at Hopper's sizes (|A|=3, |S|=11), the ~1.6 M the reference reports.

Two things differ in layout only (same maths, same parameter count):
* the per-block conditioning projections ``Lin(SiLU(c))`` are one fused ``Linear(128, sum(block widths))``
  whose output is split, so a sampler step does one conditioning matmul instead of seven;
* the first conditioning layer ``Linear(s_emb ++ t_emb -> 128)`` is applied as two halves so the state half
  is computed once per ``sample`` call and the time half once per time grid (the sampler's hot loop then
  only runs ``SiLU -> Linear`` on the sum).

``evaluate(x, ctx, j, tangents)`` also propagates forward-mode tangents by hand (all K tangents of a layer
in one matmul over ``K*m`` rows, beside the primal's). With the ``K = D`` basis vectors this
gives the exact Jacobian diagonal, i.e. the exact divergence, at ``(1+D)x`` the forward cost, and the result
is an ordinary autograd graph, so GMPG can back-propagate through the divergence without double-backward.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Protocol, TypeGuard, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@runtime_checkable
class SamplerBackbone(Protocol):
    """The sampler fast path of a backbone (``ResidualMLPBackbone`` has it). Any module with ``forward(x, t, cond)``
    is a backbone; one that also has these members gets hand-written forward-mode tangents in place of autograd
    VJPs for densities, and the traced / CUDA-graph / compiled solves of ``fast_solve``."""

    time_embed: nn.Module  # t (T,) -> (T, t_dim); its buffers' versions invalidate the model's time-grid cache

    def prepare(self, temb_table: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """Per-solve context from the embedded time grid (T, t_dim) and the condition (B, S) or None."""
        ...

    def evaluate(self, x: Tensor, ctx: tuple[Tensor, Tensor], j: int,
                 tangents: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Output at grid index ``j`` and, with ``tangents`` (K, m, D), the JVPs of the first m rows."""
        ...

    def step(self, x: Tensor, trow: Tensor, sproj: Tensor) -> Tensor:
        """No-grad output from one row of the time table and the state projection, traceable."""
        ...


_sampler_checks: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def is_sampler_backbone(backbone: nn.Module) -> TypeGuard[SamplerBackbone]:
    """``isinstance(backbone, SamplerBackbone)``, remembered per module (a protocol check costs ~10 us, a solve
    at batch 1 a few hundred)."""
    hit = _sampler_checks.get(backbone)
    if hit is None:
        hit = _sampler_checks[backbone] = isinstance(backbone, SamplerBackbone)
    return hit


class FourierTimeEmbedding(nn.Module):
    """[sin(2*pi*W t), cos(2*pi*W t)] with W ~ N(0, scale^2) fixed at init (a buffer: saved, never trained)."""

    def __init__(self, dim: int = 32, scale: float = 30.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        self.register_buffer("freqs", torch.randn(dim // 2) * scale * 2.0 * math.pi)

    def forward(self, t: Tensor) -> Tensor:
        p = t[..., None] * self.freqs
        return torch.cat([p.sin(), p.cos()], dim=-1)


# Forward-mode tangents travel beside the primal: a pair (primal (B, F), tangents (K, m, F) or None), the
# tangents belonging to the first m <= B primal rows (GMPG may need densities for a subset of the batch only).
# Keeping them as separate tensors (not stacked rows) avoids in-place slice writes, whose backward
# (CopySlices) costs a full zero-fill and copy per layer.
Pair = tuple[Tensor, Tensor | None]


def _lin(h: Pair, layer: nn.Linear) -> Pair:
    """Linear map; the bias is part of the primal only (tangents are differences)."""
    p, t = h
    return F.linear(p, layer.weight, layer.bias), (None if t is None else F.linear(t, layer.weight))


def _silu(h: Pair) -> Pair:
    """SiLU on the primal; tangents are scaled by SiLU'(primal) = s (1 + p (1 - s)), s = sigmoid(p)."""
    p, t = h
    if t is None:
        return F.silu(p), None
    s = torch.sigmoid(p)
    out = p * s
    d = s + out * (1.0 - s)
    return out, t * d[: t.shape[1]]


def _add(a: Pair, b: Pair) -> Pair:
    return a[0] + b[0], (None if a[1] is None else a[1] + b[1])


def _cat(a: Pair, b: Pair) -> Pair:
    return torch.cat([a[0], b[0]], -1), (None if a[1] is None else torch.cat([a[1], b[1]], -1))


class ResBlock(nn.Module):
    """h1 = SiLU(Lin(x)) + cond; h2 = SiLU(Lin(h1)); out = h2 + skip(x). ``cond`` = Lin(SiLU(c)), fused upstream."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.lin1 = nn.Linear(d_in, d_out)
        self.lin2 = nn.Linear(d_out, d_out)
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else None

    def forward(self, x: Pair, cond: Tensor) -> Pair:
        p, t = _silu(_lin(x, self.lin1))
        h = _silu(_lin((p + cond, t), self.lin2))
        return _add(h, x if self.skip is None else _lin(x, self.skip))


class ResidualMLPBackbone(nn.Module):
    """U-Net-like residual MLP: (x, t, cond) -> same shape as x.

    ``hidden=[h0, ..., hL]``: block D->h0, down blocks h_{i-1}->h_i, a middle block hL->hL, up blocks on
    cat[u, d_i] (2 h_i -> h_{i-1}), and a final Linear(cat[u, d_0] = 2 h0 -> D).
    """

    def __init__(self, action_dim: int, cond_dim: int, hidden: Sequence[int] = (512, 256, 128), t_dim: int = 32,
                 cond_hidden: int = 32, t_cond_hidden: int = 128, fourier_scale: float = 30.0):
        super().__init__()
        hidden = [int(h) for h in hidden]
        if not hidden:
            raise ValueError("hidden must list at least one width")
        self.action_dim, self.cond_dim, self.t_dim = action_dim, cond_dim, t_dim
        self.time_embed = FourierTimeEmbedding(t_dim, fourier_scale)
        self.state_embed = nn.Linear(cond_dim, cond_hidden) if cond_dim > 0 else None
        in_c = t_dim + (cond_hidden if cond_dim > 0 else 0)
        self.cond1 = nn.Linear(in_c, t_cond_hidden)
        self.cond2 = nn.Linear(t_cond_hidden, t_cond_hidden)
        blocks = [ResBlock(action_dim, hidden[0])]
        blocks += [ResBlock(hidden[i - 1], hidden[i]) for i in range(1, len(hidden))]
        blocks.append(ResBlock(hidden[-1], hidden[-1]))  # middle
        blocks += [ResBlock(2 * hidden[i], hidden[i - 1]) for i in range(len(hidden) - 1, 0, -1)]
        self.blocks = nn.ModuleList(blocks)
        self.n_down = len(hidden)
        self.widths = [b.lin2.out_features for b in blocks]
        self.cond_proj = nn.Linear(t_cond_hidden, sum(self.widths))  # all blocks' Lin(SiLU(c)), fused
        self.out = nn.Linear(2 * hidden[0], action_dim)

    # -- conditioning ------------------------------------------------------------------------------------
    def time_proj(self, temb: Tensor) -> Tensor:
        """Time half of the first conditioning layer (no bias): (..., t_dim) -> (..., t_cond_hidden)."""
        return F.linear(temb, self.cond1.weight[:, -self.t_dim:])

    def state_proj(self, cond: Tensor | None) -> Tensor:
        """State half of the first conditioning layer, with its bias: (B, S) -> (B, t_cond_hidden)."""
        if self.state_embed is None:
            return self.cond1.bias
        s = F.silu(self.state_embed(cond))
        return F.linear(s, self.cond1.weight[:, : -self.t_dim], self.cond1.bias)

    def _block_conds(self, pre: Tensor) -> list[Tensor]:
        c = self.cond2(F.silu(pre))
        return list(self.cond_proj(F.silu(c)).split(self.widths, dim=-1))

    # -- trunk -------------------------------------------------------------------------------------------
    def _trunk(self, x: Pair, conds: list[Tensor]) -> Pair:
        skips = []
        h = x
        for i in range(self.n_down):
            h = self.blocks[i](h, conds[i])
            skips.append(h)
        h = self.blocks[self.n_down](h, conds[self.n_down])
        for k, i in enumerate(range(self.n_down - 1, 0, -1)):
            j = self.n_down + 1 + k
            h = self.blocks[j](_cat(h, skips[i]), conds[j])
        return _lin(_cat(h, skips[0]), self.out)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Training path: x (B, D), t (B,) or scalar, cond (B, S) or None."""
        pre = self.state_proj(cond) + self.time_proj(self.time_embed(t))
        if pre.dim() == 1:
            pre = pre.expand(x.shape[0], -1)
        return self._trunk((x, None), self._block_conds(pre))[0]

    # -- sampler fast path ---------------------------------------------------------------------------------
    def prepare(self, temb_table: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """Per-``sample``-call context: projected time table (T, H) and state projection (B, H) or (H,)."""
        return self.time_proj(temb_table), self.state_proj(cond)

    def evaluate(self, x: Tensor, ctx: tuple[Tensor, Tensor], j: int,
                 tangents: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Output at grid time index ``j``; with ``tangents`` (K, m, D) also the JVPs J @ tangent_k (K, m, D)
        of the first m rows."""
        ttab, sproj = ctx
        n = x.shape[0]
        pre = sproj + ttab[j]
        if pre.dim() == 1:
            pre = pre.expand(n, -1)
        conds = self._block_conds(pre)
        if tangents is None:
            return self._trunk((x, None), conds)[0], None
        return self._trunk((x, tangents), conds)

    def step(self, x: Tensor, trow: Tensor, sproj: Tensor) -> Tensor:
        """No-grad output from a row of the projected time table and the state projection (what a traced
        solve records per grid time)."""
        return self._trunk((x, None), self._block_conds(sproj + trow))[0]


class InferenceStep(nn.Module):
    """(x, time row, state projection) -> output: one no-grad sampler step's network work, written so that
    ``torch.jit.trace`` can record it (the generative model traces whole solves built from it)."""

    def __init__(self, backbone: SamplerBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor, trow: Tensor, sproj: Tensor) -> Tensor:
        return self.backbone.step(x, trow, sproj)


class EnsembleMLP(nn.Module):
    """E independent ReLU MLPs evaluated with batched matmuls: (B, in) -> (E, B, out). Used for twin Q."""

    def __init__(self, d_in: int, hidden: Sequence[int], d_out: int = 1, ensemble: int = 2):
        super().__init__()
        dims = [d_in, *hidden, d_out]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            bound = 1.0 / math.sqrt(a)  # nn.Linear's default init, per member
            self.weights.append(nn.Parameter(torch.empty(ensemble, a, b).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(ensemble, 1, b).uniform_(-bound, bound)))

    def forward(self, x: Tensor) -> Tensor:
        h = x.unsqueeze(0).expand(self.weights[0].shape[0], -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = F.relu(h)
        return h


def mlp(d_in: int, hidden: Sequence[int], d_out: int = 1) -> nn.Sequential:
    """Plain ReLU MLP (the IQL value network)."""
    layers: list[nn.Module] = []
    dims = [d_in, *hidden]
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], d_out))
    return nn.Sequential(*layers)


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters only (the Fourier frequencies are a buffer and do not count)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
