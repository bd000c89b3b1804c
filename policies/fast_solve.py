"""Accelerated no-grad solves of ``GenerativeModel``: a TorchScript trace (CPU), a replayed CUDA graph (GPU),
optionally of a ``torch.compile``'d network step. The maths lives in ``generative``; this module only runs the
same fixed-grid solve faster.

One interface: ``SolveBackend.solve(model, cond, grid, x, solver, steps)`` returns the solved ``x`` or ``None``
when no fast path applies (the model then runs its eager solve, which gives the same numbers). Each model owns
one ``SolveBackend`` (its switches ``trace`` / ``graph`` / ``compile`` and its CUDA-graph cache); every path is
an optimisation only, so a failure to trace or capture switches that path off for the model, never fails a
solve. The traced and compiled paths need a backbone with the sampler fast path (``nets.SamplerBackbone``).
On the CPU the residual MLP's trace is ``cpu_solve.HoistedSolve`` (conditioning out of the step loop, oneDNN
packed linears at batch >= 8, optional bf16); other backbones and devices trace ``TracedSolve``.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
import weakref
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from . import cpu_solve
from .nets import InferenceStep, ResidualMLPBackbone, SamplerBackbone, is_sampler_backbone
from .solvers import integrate

if TYPE_CHECKING:
    from .generative import GenerativeModel, _Grid

# torch.jit.trace registers every traced graph in TorchScript's process-wide compilation unit, which is never
# freed (~1 MB per unrolled solver step, e.g. ~36 MB for a 32-step solve). Traces are therefore shared by every
# model of one architecture (see _SharedTrace), so a long-lived process that builds many models (evaluation
# during training, soak runs, notebooks) traces each (architecture, steps, solver) once; as a last bound, no new
# trace is made once this many solver steps have been traced (later solves run eagerly: same results, slower).
MAX_TRACED_STEPS_PER_PROCESS = 256
_traced_steps = 0
_shared_traces: dict[tuple, _SharedTrace] = {}
_trace_tokens = itertools.count(1)
_backbone_tokens: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()  # never copied


def step_inputs(backbone: SamplerBackbone, grid: _Grid, cond: Tensor | None, rows: int) -> tuple[Tensor, Tensor]:
    """(time table (T, H), state projection (rows, H)): what ``TracedSolve`` takes besides x."""
    ttab, sproj = backbone.prepare(grid.temb, cond)
    return ttab, (sproj.expand(rows, -1) if sproj.dim() == 1 else sproj)


class SolveBackend:
    """A model's fast no-grad solves: ``trace`` (TorchScript, CPU and GPU), ``graph`` (replay a captured CUDA
    graph), ``compile`` (... of a ``torch.compile``'d network step: fewer kernels, seconds to build), ``bf16``
    (the traced CPU solve of the residual MLP in bfloat16 at batch >= ``cpu_solve.PACKED_MIN_ROWS``, on CPUs
    with native bf16 matmuls; not exact: ~1e-3 action error on the reference net, see benchmarks/policies.py).
    ``hoist``: CPU traces of the residual MLP use ``cpu_solve`` (off: the generic ``TracedSolve``, for A/B)."""

    def __init__(self, trace: bool = True, graph: bool = True, compile: bool = False, bf16: bool = False,
                 hoist: bool = True):
        self.trace, self.graph, self.compile, self.bf16, self.hoist = trace, graph, compile, bf16, hoist
        self.graphs: dict[tuple, GraphedSolve] = {}

    def fresh(self) -> SolveBackend:
        """The same switches with empty caches (a copy or pickle of the model must not share captured graphs)."""
        return SolveBackend(self.trace, self.graph, self.compile, self.bf16, self.hoist)

    def solve(self, model: GenerativeModel, cond: Tensor | None, grid: _Grid, x: Tensor, solver: str,
              steps: int) -> Tensor | None:
        """The solve of ``x`` by the fastest available path, or None (use the eager solve)."""
        out = self._graphed(model, cond, grid, x, solver, steps) if x.is_cuda else None
        if out is None:
            out = self._traced(model, cond, grid, x, solver, steps)
        return out

    def _graphed(self, model: GenerativeModel, cond: Tensor | None, grid: _Grid, x: Tensor, solver: str,
                 steps: int) -> Tensor | None:
        """Replay the whole no-grad solve as one captured CUDA graph (None: not available, use the other paths).

        On a GPU the eager solve is launch-bound at small batches (a few hundred kernels of microseconds
        each); a replay issues them all at once with no Python and no host work per step. One graph per
        (rows, cond width, steps, solver, dtype), captured on first use; the inputs are copied into the graph's
        static buffers, the output is a static buffer the caller copies. The graph reads the parameters by
        address, so in-place updates (optimiser, EMA, load_state_dict) are seen; new storage (``.to``) recaptures."""
        if not self.graph:
            return None
        w = model._ref()
        key = (x.shape[0], None if cond is None else cond.shape[-1], steps, solver, x.dtype, x.device,
               w.data_ptr(), self.compile)
        g = self.graphs.get(key)
        if g is None:
            try:
                with torch.inference_mode(False), torch.no_grad():
                    g = GraphedSolve(model, cond, grid, x, solver, steps, compiled=self.compile)
            except Exception:  # capture is an optimisation only: fall back for good
                self.graph = False
                return None
            if len(self.graphs) >= 8:
                self.graphs.pop(next(iter(self.graphs)))
            self.graphs[key] = g
        return g(x, cond)

    def _traced(self, model: GenerativeModel, cond: Tensor | None, grid: _Grid, x: Tensor, solver: str,
                steps: int) -> Tensor | None:
        """Run a whole no-grad solve as one TorchScript trace (None: not available, use eager).

        At batch 1 a step is ~50 tiny ops whose eager dispatch (~3-5 us each) is the whole cost; the trace
        unrolls the loop (grid indices and velocity coefficients become constants) and runs it from C++,
        ~3-4x faster. One trace serves every model of the same architecture (``_SharedTrace``, or on the CPU
        ``_HoistedTrace``); in-place weight updates (optimiser, EMA, load_state_dict) are picked up before the
        next solve."""
        bb = model.backbone
        if not (self.trace and is_sampler_backbone(bb)):
            return None
        ttab, sproj = step_inputs(bb, grid, cond, x.shape[0])
        w = model._ref()
        mode = cpu_solve.mode_for(bb, x, self.bf16) if self.hoist else None  # residual MLP on CPU: cpu_solve
        key = (type(bb).__name__, tuple(tuple(p.shape) for p in bb.parameters()), model.prediction,
               json.dumps(model.path.config(), sort_keys=True), steps, solver, w.device, w.dtype, mode)
        shared = _shared_traces.get(key)
        if shared is None:
            global _traced_steps
            if _traced_steps + steps > MAX_TRACED_STEPS_PER_PROCESS:
                self.trace = False
                return None
            _traced_steps += steps
            try:
                with torch.inference_mode(False), torch.no_grad():
                    if mode is None:
                        shared = _SharedTrace(model, grid, solver, steps, x.clone(), ttab.clone(), sproj.clone())
                    else:
                        shared = _HoistedTrace(model, grid, solver, steps, mode, x.clone(), ttab.clone(),
                                               sproj.clone())
            except Exception:  # tracing is an optimisation only
                self.trace = False
                return None
            _shared_traces[key] = shared
        return shared(bb, x, ttab, sproj)


class GraphedSolve:
    """A captured CUDA graph of the model's eager solve (or, ``compiled``, of a ``TracedSolve`` whose network
    step is ``torch.compile``'d) with static input and output buffers."""

    def __init__(self, model: GenerativeModel, cond: Tensor | None, grid: _Grid, x: Tensor, solver: str,
                 steps: int, compiled: bool = False):
        self.x_in = x.clone()
        self.cond_in = None if cond is None else cond.clone()
        bb = model.backbone
        if compiled and is_sampler_backbone(bb):
            fixed = TracedSolve(model, grid, solver, steps)
            fixed.step = torch.compile(fixed.step, dynamic=False)  # one compiled network step for every grid time

            def solve() -> Tensor:
                return fixed(self.x_in.clone(), *step_inputs(bb, grid, self.cond_in, x.shape[0]))
        else:
            def solve() -> Tensor:
                return model._eager_solve(self.cond_in, grid, self.x_in.clone(), solver, steps)

        side = torch.cuda.Stream(device=x.device)  # warm-up off the default stream, as capture requires
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                solve()
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = solve()

    def __call__(self, x: Tensor, cond: Tensor | None) -> Tensor:
        self.x_in.copy_(x)
        if self.cond_in is not None and cond is not None:
            self.cond_in.copy_(cond)
        self.graph.replay()
        return self.out


class _SharedTrace:
    """One traced no-grad solve per (architecture, path, steps, solver, dtype, device) in the process.

    The trace runs on its own copy of the weights. Before each solve the calling backbone is compared with the
    one whose weights the copy holds (a per-object token, never reused nor copied, and the parameters' version
    counters, which every in-place write through the parameter bumps: optimiser steps, EMA, load_state_dict; a
    write through ``p.data`` is not seen); if it differs, its weights are copied in (one fused copy, ~6.5 MB for
    the reference net). A deployed policy or an eval loop therefore copies once and then only runs the trace."""

    def __init__(self, model: GenerativeModel, grid: _Grid, solver: str, steps: int, x: Tensor, ttab: Tensor,
                 sproj: Tensor):
        self.backbone = copy.deepcopy(model.backbone).requires_grad_(False)
        self.params = list(self.backbone.parameters())
        self.fn = torch.jit.trace(TracedSolve(model, grid, solver, steps, backbone=self.backbone),
                                  (x, ttab, sproj), check_trace=False)
        self.stamp: tuple | None = None
        self.lock = threading.Lock()  # two threads sampling two models must not swap weights mid-solve

    def __call__(self, bb: nn.Module, x: Tensor, ttab: Tensor, sproj: Tensor) -> Tensor:
        src = list(bb.parameters())
        with self.lock:
            token = _backbone_tokens.get(bb)
            if token is None:
                token = _backbone_tokens[bb] = next(_trace_tokens)
            stamp = (token, tuple(p._version for p in src))
            if stamp != self.stamp:
                with torch.inference_mode(False), torch.no_grad():
                    torch._foreach_copy_(self.params, [p.detach() for p in src])
                self.stamp = stamp
            return self.fn(x, ttab, sproj)


class _HoistedTrace:
    """One traced ``cpu_solve.HoistedSolve`` per (architecture, path, steps, solver, dtype, mode) in the process.
    The weights are inputs of the trace (the live parameters, or their oneDNN-packed copies), so nothing is
    copied into the trace and every model of the architecture shares it."""

    def __init__(self, model: GenerativeModel, grid: _Grid, solver: str, steps: int, mode: str, x: Tensor,
                 ttab: Tensor, sproj: Tensor):
        bb = model.backbone
        assert isinstance(bb, ResidualMLPBackbone)
        self.mode = mode
        solve = cpu_solve.HoistedSolve(bb, model.prediction == "noise", grid.A, grid.B, model.path.t_end, solver,
                                       steps, mode)
        self.fn = torch.jit.trace(solve, (x, ttab, sproj, self.weights(bb, x.shape[0])), check_trace=False)

    def weights(self, bb: ResidualMLPBackbone, rows: int) -> list[Tensor]:
        if self.mode == "plain":
            return cpu_solve.weight_list(bb)
        dtype = torch.bfloat16 if self.mode == "packed-bf16" else torch.float32
        return cpu_solve.packed_weights(bb, dtype, rows)

    def __call__(self, bb: nn.Module, x: Tensor, ttab: Tensor, sproj: Tensor) -> Tensor:
        assert isinstance(bb, ResidualMLPBackbone)
        return self.fn(x, ttab, sproj, self.weights(bb, x.shape[0]))


class TracedSolve(nn.Module):
    """A no-grad fixed-grid solve, written for ``torch.jit.trace`` (the loop is unrolled into the graph); on a GPU
    it also runs inside a CUDA graph with its network step compiled, and ``onnx_export`` exports it."""

    def __init__(self, model: GenerativeModel, grid: _Grid, solver: str, steps: int,
                 backbone: SamplerBackbone | None = None):
        super().__init__()
        self.step = InferenceStep(backbone if backbone is not None else model.backbone)
        self.noise = model.prediction == "noise"
        self.A, self.B, self.t_end = grid.A, grid.B, model.path.t_end
        self.solver, self.steps = solver, steps

    def forward(self, x: Tensor, ttab: Tensor, sproj: Tensor) -> Tensor:
        def field(x_: Tensor, _tang: Tensor | None, j: int) -> tuple[Tensor, None]:
            out = self.step(x_, ttab[j], sproj)
            return (self.A[j] * x_ + self.B[j] * out if self.noise else out), None

        return integrate(field, x, steps=self.steps, t0=0.0, t1=self.t_end, solver=self.solver)[0]
