"""Generative models = probability path + network output type (noise | velocity) + backbone.

Time convention: t=0 noise, t=1 data (see ``paths``). Whatever the network predicts, sampling and likelihood
use the probability-flow ODE dx/dt = v(t, x): a velocity network gives v directly, an eps-prediction
network gives v = (a'/a) x + (b' - a' b / a) eps_hat, which is the exact PF-ODE of the VP-SDE.

``log_prob`` integrates the same ODE backwards from the data end. Two estimators:
* exact (small action dims): the D tangent columns of the solver map's Jacobian are carried along, and
  log p = log N(x(0)) + log|det dx(0)/dx(t_end)| is the exact change of variables of the discretised flow
  (converging to the ODE density as steps grow; for ``sample_with_log_prob`` it is the exact density of
  the sampler as run);
* Hutchinson: log p = log N(x(0)) - integral of div v dt with Rademacher probes fixed along the trajectory.
With a backbone that has the sampler fast path (``nets.SamplerBackbone``, e.g. the residual MLP) the tangents
are forward-mode JVPs computed beside the primal in the same pass; any other backbone falls back to autograd VJPs.

No-grad samples go through the model's ``solve_backend`` first (``fast_solve``: TorchScript trace, CUDA graph,
compiled step; on the CPU ``cpu_solve``), which runs this same fixed-grid solve faster and gives way to the
eager solve when it cannot. ``bf16_sampler`` (off by default) runs the CPU trace in bfloat16: faster, not exact.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .fast_solve import SolveBackend
from .nets import ResidualMLPBackbone, is_sampler_backbone
from .paths import PATHS, ProbabilityPath
from .solvers import Field, check_solver, half_step_times, integrate

PREDICTIONS = ("velocity", "noise")


class _Grid:
    """Everything time-dependent for one (steps, device, dtype): computed once, then only indexed."""

    def __init__(self, model: GenerativeModel, steps: int, device: torch.device, dtype: torch.dtype):
        ts64 = half_step_times(0.0, model.path.t_end, steps)
        self.ts = ts64.to(device=device, dtype=dtype)
        self.A: list[float] = []
        self.B: list[float] = []
        if model.prediction == "noise":
            a_, b_ = model.path.noise_to_velocity_coeffs(ts64)
            self.A, self.B = a_.tolist(), b_.tolist()
        bb = model.backbone
        self.temb = bb.time_embed(self.ts) if is_sampler_backbone(bb) else None


class GenerativeModel(nn.Module):
    """See module docstring. Build with ``make_generative_model``; ``config()`` gives its kwargs back."""

    def __init__(self, path: ProbabilityPath, backbone: nn.Module, prediction: str = "velocity", *,
                 action_dim: int, cond_dim: int, build_config: dict[str, Any] | None = None):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if prediction == "noise" and not path.supports_noise:
            raise ValueError(f"path {path.name!r} supports only velocity prediction")
        self.path, self.backbone, self.prediction = path, backbone, prediction
        self.action_dim, self.cond_dim = int(action_dim), int(cond_dim)
        self._build_config = dict(build_config or {})
        self._grids: dict[tuple, tuple[int, _Grid]] = {}
        self.obs_encoder: nn.Module | None = None  # cameras: flat observation -> features, once per call (encode)
        self.solve_backend = SolveBackend()  # no-grad solves: traced (CPU), CUDA graph (GPU); see fast_solve

    def __getstate__(self) -> dict[str, Any]:
        # caches are per-object (a graph references *this* backbone's tensors): never copy or pickle them
        state = dict(super().__getstate__())
        state["_grids"], state["solve_backend"] = {}, self.solve_backend.fresh()
        return state

    # switches of the fast no-grad solves (each falls back to the eager solve, same numbers, when unavailable)
    @property
    def trace_sampler(self) -> bool:
        """No-grad solves run as TorchScript traces (CPU, and GPU when no graph is captured)."""
        return self.solve_backend.trace

    @trace_sampler.setter
    def trace_sampler(self, on: bool) -> None:
        self.solve_backend.trace = bool(on)

    @property
    def graph_sampler(self) -> bool:
        """No-grad CUDA solves replay a captured CUDA graph."""
        return self.solve_backend.graph

    @graph_sampler.setter
    def graph_sampler(self, on: bool) -> None:
        self.solve_backend.graph = bool(on)

    @property
    def compile_sampler(self) -> bool:
        """... the graph of a torch.compile'd network step (fewer kernels, seconds to build)."""
        return self.solve_backend.compile

    @compile_sampler.setter
    def compile_sampler(self, on: bool) -> None:
        self.solve_backend.compile = bool(on)

    @property
    def bf16_sampler(self) -> bool:
        """The traced CPU solve runs its network in bfloat16 (fp32 state; batch >= 8, CPUs with native bf16)."""
        return self.solve_backend.bf16

    @bf16_sampler.setter
    def bf16_sampler(self, on: bool) -> None:
        self.solve_backend.bf16 = bool(on)

    def config(self) -> dict[str, Any]:
        """Keyword arguments of ``make_generative_model`` that rebuild this model (JSON-serialisable)."""
        return dict(self._build_config)

    def encode(self, cond: Tensor | None) -> Tensor | None:
        """The backbone's conditioning: ``cond`` itself, or its image features with an ``obs_encoder``."""
        return cond if self.obs_encoder is None or cond is None else self.obs_encoder(cond)

    # -- training ------------------------------------------------------------------------------------------
    def loss(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Per-sample matching loss (B,): 1/2 ||net - target||^2 summed over action dims, t ~ U(0, t_max)."""
        cond = self.encode(cond)
        t = torch.rand(x.shape[0], device=x.device, dtype=x.dtype) * self.path.train_t_max
        eps = torch.randn_like(x)
        xt, v_target = self.path.training_pair(x, t, eps)
        out = self.backbone(xt, t, cond)
        target = eps if self.prediction == "noise" else v_target
        return 0.5 * (out - target).square().sum(-1)

    def velocity(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """PF-ODE velocity at per-row times t (B,) (a convenience/reference path, not the sampler's)."""
        out = self.backbone(x, t, self.encode(cond))
        if self.prediction == "velocity":
            return out
        a_, b_ = self.path.noise_to_velocity_coeffs(t)
        return a_[:, None] * x + b_[:, None] * out

    # -- shared ODE machinery ------------------------------------------------------------------------------
    def _grid(self, steps: int, ref: Tensor) -> _Grid:
        bb = self.backbone
        # load_state_dict bumps the time embedding's buffer versions: the cached grid is then rebuilt
        version = sum(b._version for b in bb.time_embed.buffers()) if is_sampler_backbone(bb) else 0
        key = (int(steps), ref.device, ref.dtype)
        hit = self._grids.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        # normal (non-inference) tensors, so one cache serves acting and differentiable GMPG sampling
        with torch.inference_mode(False), torch.no_grad():
            grid = _Grid(self, int(steps), ref.device, ref.dtype)
        self._grids[key] = (version, grid)
        return grid

    def _field(self, cond: Tensor | None, grid: _Grid, probes: Tensor | None = None,
               scale: float = 1.0) -> Field:
        """Velocity field on the grid. ``probes`` (K, B, D): Hutchinson "trace" mode (fixed probes, mean over
        K with ``scale`` = 1/K); otherwise tangents passed per call give J_v @ tangents ("jacobian" mode)."""
        noise = self.prediction == "noise"
        A, B = grid.A, grid.B
        bb = self.backbone
        if is_sampler_backbone(bb):
            ctx = bb.prepare(grid.temb, cond)

            def fast(x: Tensor, tang: Tensor | None, j: int) -> tuple[Tensor, Tensor | None]:
                tin = probes if probes is not None else tang
                out, out_t = bb.evaluate(x, ctx, j, tin)
                if noise:
                    if torch.is_grad_enabled() or out.dtype != x.dtype:  # (autocast: keep fp32 state)
                        out = A[j] * x + B[j] * out
                    else:
                        out = out.mul_(B[j]).add_(x, alpha=A[j])
                    if tin is not None:
                        out_t = A[j] * tin + B[j] * out_t
                if probes is not None:
                    return out, (probes * out_t).sum(-1).sum(0) * scale
                return out, out_t

            return fast

        def generic(x: Tensor, tang: Tensor | None, j: int) -> tuple[Tensor, Tensor | None]:
            t = grid.ts[j].expand(x.shape[0])

            def vel(x_: Tensor) -> Tensor:
                out = bb(x_, t, cond)
                return A[j] * x_ + B[j] * out if noise else out

            if probes is None and tang is None:
                return vel(x), None
            graph = torch.is_grad_enabled()
            with torch.enable_grad():
                xg = x if x.requires_grad else x.detach().requires_grad_(True)
                v = vel(xg)
                m = (probes if probes is not None else tang).shape[1]  # rows whose density is tracked
                vm = v[:m]
                if probes is not None:  # VJP p^T J, dotted with p: p^T J p
                    extra = torch.zeros(m, dtype=x.dtype, device=x.device)
                    for p in probes:
                        (g,) = torch.autograd.grad(vm, xg, p, create_graph=graph, retain_graph=True)
                        extra = extra + (g[:m] * p).sum(-1) * scale
                else:  # full Jacobian from D VJPs (rows), then J @ tangents
                    eye = torch.eye(self.action_dim, dtype=x.dtype, device=x.device)
                    rows = [torch.autograd.grad(vm, xg, eye[i].expand_as(vm), create_graph=graph,
                                                retain_graph=True)[0][:m] for i in range(self.action_dim)]
                    jac = torch.stack(rows, dim=1)  # (m, D_out, D_in)
                    extra = torch.einsum("boi,kbi->kbo", jac, tang)
            if not graph:
                v, extra = v.detach(), extra.detach()
            return v, extra

        return generic

    def _density_args(self, rows: int, ref: Tensor, exact: bool, n_probes: int,
                      generator: torch.Generator | None) -> dict[str, Any]:
        """Integrator arguments for a log-density: identity tangents (exact) or Rademacher probes."""
        D = self.action_dim
        if exact:
            eye = torch.eye(D, dtype=ref.dtype, device=ref.device)
            return {"mode": "jacobian", "aux": eye[:, None, :].expand(D, rows, D).contiguous()}
        r = torch.randint(0, 2, (n_probes, rows, D), generator=generator, device=ref.device)
        return {"mode": "trace", "probes": r.to(ref.dtype).mul_(2).sub_(1), "scale": 1.0 / n_probes,
                "aux": torch.zeros(rows, dtype=ref.dtype, device=ref.device)}

    @staticmethod
    def _logdet(tangents: Tensor) -> Tensor:
        """log |det| of the Jacobian whose columns are the K = D tangents (K, B, D)."""
        if tangents.shape[0] == 1:
            return tangents[0, :, 0].abs().log()
        return torch.linalg.slogdet(tangents.transpose(0, 1))[1]

    def _log_prior(self, z: Tensor) -> Tensor:
        s2 = self.path.prior_std**2
        return -0.5 * z.square().sum(-1) / s2 - 0.5 * self.action_dim * math.log(2 * math.pi * s2)

    def _rows(self, cond: Tensor | None, n: int | None) -> tuple[Tensor | None, int, tuple[int, ...]]:
        D = self.action_dim
        if cond is None:
            if n is None:
                raise ValueError("an unconditional sample needs n")
            return None, n, (n, D)
        if n is None:
            return cond, cond.shape[0], (cond.shape[0], D)
        return cond.repeat_interleave(n, dim=0), cond.shape[0] * n, (cond.shape[0], n, D)

    def _initial(self, rows: int, ref: Tensor, noise: Tensor | None, generator: torch.Generator | None,
                 ) -> Tensor:
        if noise is None:
            z = torch.randn(rows, self.action_dim, generator=generator, device=ref.device, dtype=ref.dtype)
        else:
            z = noise.reshape(rows, self.action_dim).to(device=ref.device, dtype=ref.dtype)
        return z * self.path.prior_std if self.path.prior_std != 1.0 else z.clone()

    def _ref(self) -> Tensor:
        """A tensor giving the model's device and dtype (a backbone may have no parameters, e.g. in tests)."""
        for t in self.backbone.parameters():
            return t
        for t in self.backbone.buffers():
            return t
        return torch.zeros(())

    # -- public API ----------------------------------------------------------------------------------------
    def sample(self, cond: Tensor | None, *, n: int | None = None, solver: str = "euler", steps: int = 32,
               generator: torch.Generator | None = None, noise: Tensor | None = None,
               with_grad: bool = False) -> Tensor:
        """Draw actions: (B, D) for cond (B, S), (B, n, D) with ``n``; (n, D) for an unconditional model.

        ``steps`` = number of solver steps (intervals of the time grid; Heun/midpoint cost 2 network
        evaluations per step). ``noise``: optional standard-normal starting points. Without ``with_grad`` the
        solve runs under ``torch.inference_mode`` and returns an ordinary tensor.
        """
        check_solver(solver, steps)
        ref = self._ref()
        if with_grad:
            cond_r, rows, shape = self._rows(self.encode(cond), n)
            return self._solve(cond_r, rows, ref, solver, steps, generator, noise, inplace=False).view(shape)
        with torch.inference_mode():
            cond_r, rows, shape = self._rows(self.encode(cond), n)  # encoded once, before the n copies
            x = self._solve(cond_r, rows, ref, solver, steps, generator, noise, inplace=True)
        return x.view(shape).clone()

    def _solve(self, cond: Tensor | None, rows: int, ref: Tensor, solver: str, steps: int,
               generator: torch.Generator | None, noise: Tensor | None, inplace: bool) -> Tensor:
        grid = self._grid(steps, ref)
        x = self._initial(rows, ref, noise, generator)
        if inplace:  # no grad: a replayed CUDA graph (GPU) or the traced solve (CPU), when available
            out = self.solve_backend.solve(self, cond, grid, x, solver, steps)
            if out is not None:
                return out
        return self._eager_solve(cond, grid, x, solver, steps, inplace)

    def _eager_solve(self, cond: Tensor | None, grid: _Grid, x: Tensor, solver: str, steps: int,
                     inplace: bool = True) -> Tensor:
        return integrate(self._field(cond, grid), x, steps=steps, t0=0.0, t1=self.path.t_end, solver=solver,
                         inplace=inplace)[0]

    def _density_solve(self, start: Tensor, cond: Tensor | None, grid: _Grid, solver: str, steps: int,
                       exact: bool, n_probes: int, generator: torch.Generator | None, reverse: bool,
                       checkpoint: bool, m: int | None = None) -> tuple[Tensor, Tensor]:
        """Solve from ``start`` and return (far end, log-density of the *data* end for the first m rows)."""
        m = start.shape[0] if m is None else min(int(m), start.shape[0])
        args = self._density_args(m, start, exact, n_probes, generator)
        field = self._field(cond, grid, args.pop("probes", None), args.pop("scale", 1.0))
        end, aux = integrate(field, start, steps=steps, t0=0.0, t1=self.path.t_end, solver=solver,
                             reverse=reverse, checkpoint=checkpoint, **args)
        z = (end if reverse else start)[:m]
        if args["mode"] == "trace":
            return end, self._log_prior(z) - aux
        # exact: aux = d(end)/d(start); forward log p(x) = log N(z) - log|det dx/dz|, reverse + log|det dz/dx|
        logdet = self._logdet(aux)
        return end, self._log_prior(z) + (logdet if reverse else -logdet)

    def sample_with_log_prob(self, cond: Tensor | None, *, n: int | None = None, solver: str = "euler",
                             steps: int = 32, exact_trace: bool = True, n_probes: int = 1,
                             generator: torch.Generator | None = None, noise: Tensor | None = None,
                             checkpoint: bool = False, density_rows: int | None = None) -> tuple[Tensor, Tensor]:
        """Differentiable sample and its log-density from the *same* trajectory (no second solve).

        ``exact_trace``: the D tangent columns of d(sample)/dz are carried through the solver's own steps, so
        log pi = log N(z) - log|det dx/dz| is the exact density of this discrete sampler (no O(h) trace
        quadrature error for an optimiser to exploit). Otherwise log N(z) - integral of a Hutchinson divergence.
        Returns (actions (rows, D), log_prob (m,)) where the density is tracked for the first
        m = ``density_rows`` rows only (default: all; tangents then cost K*m rows instead of K*rows).
        Gradients flow into the parameters.
        """
        check_solver(solver, steps)
        cond_r, rows, _ = self._rows(self.encode(cond), n)
        ref = self._ref()
        z = self._initial(rows, ref, noise, generator)
        return self._density_solve(z, cond_r, self._grid(steps, ref), solver, steps, exact_trace, n_probes,
                                   generator, reverse=False, checkpoint=checkpoint, m=density_rows)

    def log_prob(self, x: Tensor, cond: Tensor | None = None, *, steps: int = 32, solver: str = "euler",
                 exact_trace: bool = False, n_probes: int = 1, generator: torch.Generator | None = None,
                 with_grad: bool = False, checkpoint: bool = False) -> Tensor:
        """log density (B,) of actions x under the model, by the reverse probability-flow ODE.

        ``exact_trace``: exact change of variables of the discretised reverse flow via D tangents (use for
        D <= ~8; converges to the ODE density as steps grow); otherwise Hutchinson with ``n_probes``
        Rademacher probes (unbiased for the trace integral; average repeated calls to reduce variance).
        ``with_grad``: keep the graph (gradients w.r.t. x and any parameter that requires grad).
        """
        check_solver(solver, steps)
        ref = self._ref()
        grid = self._grid(steps, ref)
        with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
            x = x.to(ref.dtype)
            return self._density_solve(x, self.encode(cond), grid, solver, steps, exact_trace, n_probes, generator,
                                       reverse=True, checkpoint=checkpoint)[1]


def make_generative_model(kind: str, action_dim: int, cond_dim: int, *, hidden: list[int] | tuple[int, ...] = (
        512, 256, 128), t_dim: int = 32, cond_hidden: int = 32, t_cond_hidden: int = 128,
        fourier_scale: float = 30.0, vpsde_target: str = "noise", beta_min: float = 0.1,
        beta_max: float = 20.0, sigma: float = 0.1, obs_encoder: dict[str, Any] | None = None) -> GenerativeModel:
    """kind: vpsde (``vpsde_target`` noise = eps-prediction, the GMPO default; velocity = flow matching on the
    VP path, the GMPG default), gvp (velocity) or icfm (velocity, ``sigma``). ``cond_dim=0``: unconditional.
    ``obs_encoder``: ``FlatObsEncoder`` arguments for observations with cameras (``cond_dim`` is then the flat
    observation history's width; the backbone sees the encoder's features)."""
    if kind not in PATHS:
        raise ValueError(f"unknown generative model kind {kind!r}; expected one of {sorted(PATHS)}")
    path: ProbabilityPath
    cfg: dict[str, Any] = dict(kind=kind, action_dim=int(action_dim), cond_dim=int(cond_dim),
                               hidden=[int(h) for h in hidden], t_dim=int(t_dim), cond_hidden=int(cond_hidden),
                               t_cond_hidden=int(t_cond_hidden), fourier_scale=float(fourier_scale))
    if kind == "vpsde":
        path, prediction = PATHS[kind](beta_min, beta_max), vpsde_target
        cfg["vpsde_target"] = vpsde_target
    elif kind == "icfm":
        path, prediction = PATHS[kind](sigma), "velocity"
    else:
        path, prediction = PATHS[kind](), "velocity"
    cfg.update(path.config())
    encoder, feat_dim = None, cond_dim
    if obs_encoder is not None:
        from .obs_encoder import FlatObsEncoder

        encoder = FlatObsEncoder(**obs_encoder)
        if encoder.in_dim != cond_dim:
            raise ValueError(f"obs_encoder reads {encoder.in_dim} values per row, cond_dim is {cond_dim}")
        feat_dim, cfg["obs_encoder"] = encoder.out_dim, encoder.config()
    backbone = ResidualMLPBackbone(action_dim, feat_dim, hidden, t_dim, cond_hidden, t_cond_hidden, fourier_scale)
    model = GenerativeModel(path, backbone, prediction, action_dim=action_dim, cond_dim=cond_dim, build_config=cfg)
    model.obs_encoder = encoder
    return model
