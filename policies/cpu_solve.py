"""The CPU sampler of the residual MLP backbone: the whole no-grad solve as one TorchScript trace whose network
work is only the x-dependent trunk.

Why a second traced solve beside ``fast_solve.TracedSolve`` (which ONNX export and the CUDA paths keep using):
* the conditioning MLP ``cond_proj(SiLU(cond2(SiLU(state + time))))`` does not depend on x, so the block
  conditions of every grid time the solver visits are computed before the loop, as one matmul over
  (times x rows) rows (at batch 64: M = 1984 instead of 31 matmuls of M = 64; at batch 1 one op instead of 31);
* at batch >= ``PACKED_MIN_ROWS`` the wide linears (>= ``PACK_MIN_WEIGHTS`` weights) run through oneDNN with
  weights packed once per weight update and SiLU / the residual add fused into the matmul: on the AVX-512 CPU
  measured (AMD EPYC, 2 threads), MKL's fp32 sgemm at M = 64 reached ~66 GFLOP/s on 512x512 and oneDNN's
  packed matmul ~93 (benchmarks/policies.py prints both libraries' dense rates);
* optionally (``bf16``) the trunk and the conditioning run in bfloat16 with fp32 state and Euler updates
  (about 2x on CPUs with AVX512-BF16; the benchmark reports the action error against fp32 on the same noise).

Every weight is an *input* of the trace, never a constant: one trace serves every model of one architecture
and always sees the current weights (the live parameters, or packed copies that are refreshed when a
parameter's storage or version changes; an in-place write through ``p.data`` bumps neither and is not seen).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nets import ResidualMLPBackbone
from .solvers import integrate

# Below this many rows MKL's plain sgemm beats oneDNN's per-call overhead (measured: batch 1 26 us vs 50 us for
# 512x512, batch 64 ~0.7x the time); the small-batch trace still gets the hoisted conditions.
PACKED_MIN_ROWS = 8

# In the fp32 packed mode a linear with fewer weights than this stays on MKL's sgemm: at M = 64 oneDNN's
# per-call cost outweighs its faster kernel for the narrow layers (measured 128x128: 85 vs 58 us; 3x512: 44 vs
# 26 us; whole solve ~2-10% faster). In bf16 every linear is packed (unpacked bf16 linears measured slower).
PACK_MIN_WEIGHTS = 1 << 16

MODES = ("plain", "packed", "packed-bf16")


@functools.cache
def onednn_ok() -> bool:
    """This torch has oneDNN's fused linear (checked once: ``mode_for`` runs on every solve)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def bf16_ok() -> bool:
    """oneDNN runs bf16 matmuls natively here (AVX512-BF16 / AMX); elsewhere bf16 would be emulated, slower."""
    return onednn_ok() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def mode_for(backbone: nn.Module, x: Tensor, bf16: bool) -> str | None:
    """Which trace a CPU solve of ``x`` uses, or None (not this backbone / device / dtype: ``fast_solve``'s)."""
    if x.device.type != "cpu" or not isinstance(backbone, ResidualMLPBackbone):
        return None
    if x.dtype != torch.float32 or x.shape[0] < PACKED_MIN_ROWS or not onednn_ok():
        return "plain"  # MKL through F.linear (any dtype, and fastest at tiny batches)
    return "packed-bf16" if bf16 and bf16_ok() else "packed"


@functools.cache
def _onednn() -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """oneDNN linears as scripted functions: the tracer cannot record the op's ``Scalar?[]`` argument itself,
    but records calls into script functions."""

    def linear(x: Tensor, w: Tensor, b: Tensor, attr: str) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, attr, [], "")

    def linear_add(x: Tensor, other: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, other, w, b, "add")

    return torch.jit.script(linear), torch.jit.script(linear_add)


def weight_list(bb: ResidualMLPBackbone) -> list[Tensor]:
    """The parameters a solve reads, in trace-input order: cond2, cond_proj, each block (lin1, lin2[, skip]),
    out; weight then bias."""
    layers: list[nn.Linear] = [bb.cond2, bb.cond_proj]
    for blk in bb.blocks:
        layers += [blk.lin1, blk.lin2] + ([blk.skip] if blk.skip is not None else [])
    layers.append(bb.out)
    return [t.detach() for lin in layers for t in (lin.weight, lin.bias)]


class _Packed:
    """One backbone's oneDNN-packed weights for one dtype, and the parameters' (storage, version) they came from."""

    def __init__(self) -> None:
        self.stamp: tuple[int, ...] | None = None
        self.weights: list[Tensor] = []


_packed: weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, _Packed]] = weakref.WeakKeyDictionary()
_pack_lock = threading.Lock()


def packs(t: Tensor, k: int, dtype: torch.dtype) -> bool:
    """Whether entry k of ``weight_list`` (tensor ``t``) is packed for oneDNN in the packed mode of ``dtype``."""
    return k % 2 == 0 and (dtype == torch.bfloat16 or t.numel() >= PACK_MIN_WEIGHTS)


def packed_weights(bb: ResidualMLPBackbone, dtype: torch.dtype, rows: int) -> list[Tensor]:
    """``weight_list`` with each weight packed for oneDNN (``rows`` is the packing's batch hint) and the biases
    in ``dtype``; repacked only after a parameter changed (an optimiser step, EMA, load_state_dict)."""
    # a parameter's storage and version: in-place writes bump the version, a reassigned ``.data`` or
    # ``load_state_dict(assign=True)`` changes the storage
    stamp = tuple(v for p in bb.parameters() for v in (p.data_ptr(), p._version))
    with _pack_lock:
        per = _packed.setdefault(bb, {})
        hit = per.setdefault(dtype, _Packed())
        if hit.stamp != stamp:
            with torch.inference_mode(False), torch.no_grad():
                ws = weight_list(bb)
                hit.weights = [torch.ops.mkldnn._reorder_linear_weight(t.to(dtype), rows) if packs(t, k, dtype)
                               else t.to(dtype).contiguous() for k, t in enumerate(ws)]
            hit.stamp = stamp
        return hit.weights


def visited_indices(steps: int, solver: str, t_end: float) -> list[int]:
    """The half-step grid indices a solve evaluates the network at (Euler: 0, 2, .., 2 steps - 2)."""
    seen: set[int] = set()

    def record(x: Tensor, _tang: Tensor | None, j: int) -> tuple[Tensor, None]:
        seen.add(j)
        return x, None

    integrate(record, torch.zeros(1, 1), steps=steps, t0=0.0, t1=t_end, solver=solver)
    return sorted(seen)


class HoistedSolve(nn.Module):
    """``forward(x, ttab, sproj, weights)``: a no-grad fixed-grid solve for ``torch.jit.trace`` (the loop is
    unrolled). ``ttab`` (2 steps + 1, H) and ``sproj`` (rows, H) are ``backbone.prepare``'s; ``weights`` is
    ``weight_list`` (mode "plain") or ``packed_weights`` (the packed modes). Same maths as the eager solve."""

    def __init__(self, backbone: ResidualMLPBackbone, noise: bool, A: list[float], B: list[float], t_end: float,
                 solver: str, steps: int, mode: str):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.widths, self.n_down = list(backbone.widths), backbone.n_down
        self.skips = [blk.skip is not None for blk in backbone.blocks]
        self.noise, self.A, self.B, self.t_end = noise, A, B, t_end
        self.solver, self.steps, self.mode = solver, steps, mode
        self.dtype = torch.bfloat16 if mode == "packed-bf16" else None
        wdtype = torch.float32 if self.dtype is None else self.dtype
        self.onednn = [mode != "plain" and packs(t, k, wdtype) for k, t in enumerate(weight_list(backbone))]
        used = visited_indices(steps, solver, t_end)
        self.row = {j: k for k, j in enumerate(used)}
        self.used = torch.tensor(used)

    # -- linears: MKL (plain) or oneDNN with fused epilogues (packed) ----------------------------------------
    def _lin(self, x: Tensor, ws: list[Tensor], k: int, act: bool) -> Tensor:
        """Linear k of ``weight_list`` (weight ws[k], bias ws[k + 1]), SiLU'd with ``act``."""
        if not self.onednn[k]:
            y = F.linear(x, ws[k], ws[k + 1])
            return F.silu(y) if act else y
        return _onednn()[0](x, ws[k], ws[k + 1], "swish" if act else "none")

    def _lin_add(self, x: Tensor, other: Tensor, ws: list[Tensor], k: int) -> Tensor:
        """other + linear k (x), in that order (the eager block's residual sum)."""
        if not self.onednn[k]:
            return other + F.linear(x, ws[k], ws[k + 1])
        return _onednn()[1](x, other, ws[k], ws[k + 1])

    # -- network ---------------------------------------------------------------------------------------------
    def _conds(self, ttab: Tensor, sproj: Tensor, w: list[Tensor]) -> list[list[Tensor]]:
        """Block conditions at every visited grid time: [time][block] (rows, width), one batched pass."""
        pre = sproj.unsqueeze(0) + ttab.index_select(0, self.used).unsqueeze(1)  # (T, rows, H)
        t, rows = pre.shape[0], pre.shape[1]
        a = F.silu(pre).reshape(t * rows, -1)
        if self.dtype is not None:
            a = a.to(self.dtype)
        c = self._lin(self._lin(a, w, 0, act=True), w, 2, act=False)
        return [list(ck.split(self.widths, dim=-1)) for ck in c.view(t, rows, -1).unbind(0)]

    def _block(self, i: int, h: Tensor, cond: Tensor, w: list[Tensor], k: int) -> tuple[Tensor, int]:
        """Residual block i from weight index k: (output, next weight index)."""
        p = self._lin(h, w, k, act=True) + cond
        q = self._lin(p, w, k + 2, act=True)
        if self.skips[i]:
            return self._lin_add(h, q, w, k + 4), k + 6
        return q + h, k + 4

    def _net(self, x: Tensor, conds: list[Tensor], w: list[Tensor]) -> Tensor:
        h = x if self.dtype is None else x.to(self.dtype)
        k, skips = 4, []
        for i in range(self.n_down):
            h, k = self._block(i, h, conds[i], w, k)
            skips.append(h)
        h, k = self._block(self.n_down, h, conds[self.n_down], w, k)
        for u, i in enumerate(range(self.n_down - 1, 0, -1)):
            b = self.n_down + 1 + u
            h, k = self._block(b, torch.cat([h, skips[i]], -1), conds[b], w, k)
        out = self._lin(torch.cat([h, skips[0]], -1), w, k, act=False)
        return out if self.dtype is None else out.to(x.dtype)

    def forward(self, x: Tensor, ttab: Tensor, sproj: Tensor, weights: list[Tensor]) -> Tensor:
        conds = self._conds(ttab, sproj, weights)

        def field(x_: Tensor, _tang: Tensor | None, j: int) -> tuple[Tensor, None]:
            out = self._net(x_, conds[self.row[j]], weights)
            return (self.A[j] * x_ + self.B[j] * out if self.noise else out), None

        return integrate(field, x, steps=self.steps, t0=0.0, t1=self.t_end, solver=self.solver)[0]
