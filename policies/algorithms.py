"""Policy-extraction algorithms: BC, GMPO (advantage-weighted matching) and GMPG (generative policy gradient).

Each algorithm owns the policy's Adam optimizer and does one gradient step per ``update(batch)``; the
training loop, EMA, checkpoints and logging live in ``genctl.apps``. The critic (and GMPG's behaviour model)
is trained beforehand by the caller and only read here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .critic import IQLCritic
from .generative import GenerativeModel
from .optim import bf16_autocast, clip_and_step, make_adam, metrics_out
from .solvers import check_solver


def gmpo_weights(q: Tensor, v: Tensor, beta: float, clamp: float) -> Tensor:
    """min(exp(beta (Q - V)), clamp), computed as exp(min(beta (Q - V), log clamp)) so it never overflows."""
    return torch.exp(torch.clamp(beta * (q - v), max=math.log(clamp)))


@contextlib.contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Temporarily stop parameter gradients (gradients still flow *through* the modules to their inputs)."""
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class Algorithm:
    """Base: one Adam on the policy, optional grad-norm clipping, ``update`` -> metrics (floats; with
    ``sync=False`` detached 0-dim tensors, so a GPU loop is not stalled by a host sync every step).

    ``amp``: run the generative networks under bfloat16 autocast (matmuls in bf16; weights, optimizer, solver
    state, log-determinants, critic values and loss reductions stay fp32). On CPUs with AVX512-BF16 a bf16
    matmul is several times faster than fp32. Off by default (the reference trains in fp32)."""

    name = ""

    def __init__(self, model: GenerativeModel, *, lr: float = 1e-4, grad_clip: float | None = None,
                 amp: bool = False):
        self.model = model
        self.lr, self.grad_clip, self.amp = float(lr), grad_clip, bool(amp)
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._opt = make_adam(self._params, self.lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self._opt}

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def _autocast(self) -> contextlib.AbstractContextManager:
        return bf16_autocast(self._params[0].device.type if self._params else "cpu", self.amp)

    def update(self, batch: dict[str, Tensor], *, sync: bool = True) -> dict[str, Any]:
        loss, stats = self.loss(batch)
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        return self._step(loss, stats, sync)

    def _step(self, loss: Tensor, stats: dict[str, Tensor], sync: bool) -> dict[str, Any]:
        """Clip (optionally), take the optimiser step and report the metrics."""
        norm = clip_and_step(self._opt, self._params, self.grad_clip)
        out = {"loss": loss, **stats}
        if norm is not None:
            out["grad_norm"] = norm
        return metrics_out(out, sync)


class BC(Algorithm):
    """Plain generative behaviour cloning: mean matching loss on dataset actions."""

    name = "bc"

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        with self._autocast():
            per_sample = self.model.loss(batch["action"], batch["obs"])
        return per_sample.float().mean(), {}


class AdvantageScale:
    """How the critic's values enter an algorithm: A_n = (A - shift) / scale.

    The reference uses raw Q - V (shift 0, scale 1), so the useful beta moves with the reward units (0.03 on one
    Hopper set, 30 on PointMaze). ``set_advantage_scale(mean, std)`` — measured once over the training data from
    the frozen critic — makes beta unit-free: beta = 1 weights an action one advantage-std better by e."""

    adv_shift, adv_scale = 0.0, 1.0

    def set_advantage_scale(self, shift: float, scale: float) -> None:
        if not (math.isfinite(shift) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"advantage scale must be finite and > 0, got shift {shift}, scale {scale}")
        self.adv_shift, self.adv_scale = float(shift), float(scale)


class GMPO(AdvantageScale, Algorithm):
    """mean(w * matching loss), w = min(exp(beta A_n), clamp), A_n = (Q - V - shift) / scale from the frozen
    critic (shift 0, scale 1 = the reference's raw advantage); no per-batch normalisation."""

    name = "gmpo"

    def __init__(self, model: GenerativeModel, critic: IQLCritic, *, beta: float = 1.0, clamp: float = 100.0,
                 lr: float = 1e-4, grad_clip: float | None = None, amp: bool = False):
        super().__init__(model, lr=lr, grad_clip=grad_clip, amp=amp)
        if critic is None:
            raise ValueError("gmpo needs a trained critic")
        self.critic, self.beta, self.clamp = critic, float(beta), float(clamp)

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        obs, act = batch["obs"], batch["action"]
        with torch.no_grad():  # fp32 always: exp(beta * A) amplifies any rounding of Q - V
            # a precomputed per-row advantage (policy.advantage=gae) replaces the critic's Q - V
            raw = batch["adv"] if "adv" in batch else self.critic.q(obs, act) - self.critic.v(obs)
            adv = (raw - self.adv_shift) / self.adv_scale
            w = gmpo_weights(adv, torch.zeros_like(adv), self.beta, self.clamp)
        with self._autocast():
            per_sample = self.model.loss(act, obs)
        loss = (w * per_sample.float()).mean()
        clamped = (self.beta * adv >= math.log(self.clamp)).float().mean()
        return loss, {"weight_mean": w.mean(), "clamped_frac": clamped, "adv_mean": adv.mean()}


class GMPG(AdvantageScale, Algorithm):
    """Pathwise policy gradient through the ODE sampler with a reverse-KL penalty towards mu.

    loss = mean[-beta Q(s, a) / scale + (log pi(a|s) - log mu(a|s)) / (D ln 2)], a = ODESolve_theta(z; s);
    scale = the advantage spread (``set_advantage_scale``; 1 = the reference), so beta trades one
    advantage-std of Q against one bit per dimension of KL on every dataset.
    log pi comes from the generation trajectory itself (no second solve); log mu needs a reverse solve of mu,
    under frozen mu parameters but differentiable w.r.t. a. The term is then the exact KL(p_theta || q_mu) between
    two proper densities: the policy's sampler and mu's reverse-flow density. Its floor is not at pi = mu
    (KL(p_mu || q_mu) = 0.20 bits/dim at 10 Euler steps for a hopper BC policy, docs/results.md 3r), but it is
    bounded below. Scoring log pi by the reverse flow as well (the reference's choice, at 1000 steps) gives 0 at
    pi = mu but is not a KL of two samplers: on the bimodal toy of the tests (8 steps, beta 20, lr 1e-3) it fell
    to -2e15 within 80 updates (the optimiser folds its own reverse Euler map under its samples), so it is not
    offered. ``exact_trace=None`` picks exact for D <= 8.
    ``checkpoint`` recomputes each solver step in backward: memory O(steps * B * D) + one step's activations
    (None = automatic, on when keeping all activations would take more than ~1 GiB).
    ``kl_batch``: estimate the KL term on the first ``kl_batch`` rows only (None = whole batch, as the
    reference). The batch rows are i.i.d., so this is still an unbiased estimate of the same objective, with
    more variance in the KL gradient; the density tangents and mu's reverse solve then cost kl_batch rows.
    ``amp``: bf16 autocast of both solves (~2.5-3.5x faster on AVX512-BF16; on an untrained net log-densities
    moved by ~1e-3 nats, samples by ~5e-3). Off by default.
    ``q_lcb``: ascend mean - q_lcb * std of Q over the critic ensemble's members instead of their mean. The
    pathwise gradient seeks the actions where Q is highest, which off the data are where Q is most wrong; the
    members disagree there, so the penalty is the usual pessimism of ensemble offline RL (SAC-N, EDAC, PBRL).
    0 = the reference objective.
    """

    name = "gmpg"

    def __init__(self, model: GenerativeModel, critic: IQLCritic, behaviour: GenerativeModel, *,
                 beta: float = 1.0, sample_steps: int = 10, solver: str = "euler", exact_trace: bool | None = None,
                 n_probes: int = 1, checkpoint: bool | None = None, kl_batch: int | None = None,
                 init_from_behaviour: bool = True, lr: float = 1e-4, grad_clip: float | None = None,
                 amp: bool = False, q_lcb: float = 0.0):
        if critic is None or behaviour is None:
            raise ValueError("gmpg needs a trained critic and a pretrained behaviour model")
        if q_lcb and critic.ensemble < 2:
            raise ValueError(f"q_lcb={q_lcb} penalises the disagreement of a critic ensemble: it needs "
                             f"critic.ensemble >= 2 (got {critic.ensemble})")
        check_solver(solver, sample_steps)
        if init_from_behaviour:
            model.load_state_dict(behaviour.state_dict())
        super().__init__(model, lr=lr, grad_clip=grad_clip, amp=amp)
        self.critic, self.behaviour = critic, behaviour
        self.beta, self.steps, self.solver = float(beta), int(sample_steps), solver
        self.exact = model.action_dim <= 8 if exact_trace is None else bool(exact_trace)
        self.n_probes, self.checkpoint = int(n_probes), checkpoint
        self.kl_batch = None if kl_batch is None else int(kl_batch)
        self.q_lcb = float(q_lcb)

    def _use_checkpoint(self, rows: int) -> bool:
        """``checkpoint=None``: recompute steps in backward only when storing every step's activations would
        exceed ~1 GiB (rough count: steps x (batch rows + (1 + 2K) density rows) x ~6 floats per hidden
        unit, K = tangents per row)."""
        if self.checkpoint is not None:
            return bool(self.checkpoint)
        bb = self.model.backbone
        width = sum(getattr(bb, "widths", [512])) + 2 * self.model.action_dim
        k = self.model.action_dim if self.exact else self.n_probes
        m = rows if self.kl_batch is None else min(rows, self.kl_batch)
        return self.steps * (rows + (1 + 2 * k) * m) * width * 6 * 4 > 2**30

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        raise RuntimeError("GMPG.loss must run inside update() (critic and mu are frozen there)")

    def _loss(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        kw: dict[str, Any] = dict(steps=self.steps, solver=self.solver, exact_trace=self.exact,
                                  n_probes=self.n_probes, checkpoint=self._use_checkpoint(obs.shape[0]))
        m = obs.shape[0] if self.kl_batch is None else min(obs.shape[0], self.kl_batch)
        with self._autocast():
            a, log_pi = self.model.sample_with_log_prob(obs, density_rows=m, **kw)
            log_mu = self.behaviour.log_prob(a[:m], obs[:m], with_grad=True, **kw)
        members = self.critic.q_members(obs, a)  # (K, B), fp32: Q can be large, bf16 would round it to ~0.4 %
        q = members.mean(0)
        spread = members.std(0) if self.critic.ensemble > 1 else torch.zeros_like(q)
        target = q - self.q_lcb * spread if self.q_lcb else q
        kl_bits = (log_pi - log_mu) / (self.model.action_dim * math.log(2.0))
        loss = -self.beta * target.mean() / self.adv_scale + kl_bits.mean()
        with torch.no_grad():  # the policy's own actions' A_n: what beta buys against the KL (q_mean is V-dominated)
            adv = (q.detach() - self.critic.v(obs) - self.adv_shift) / self.adv_scale
        stats = {"q_mean": q.detach().mean(), "adv_mean": adv.mean(), "kl_bits_per_dim": kl_bits.detach().mean(),
                 "log_pi": log_pi.detach().mean(), "log_mu": log_mu.detach().mean()}
        if self.critic.ensemble > 1:  # the members' disagreement at the policy's actions, in advantage spreads
            stats["q_spread"] = spread.detach().mean() / self.adv_scale
        return loss, stats

    def update(self, batch: dict[str, Tensor], *, sync: bool = True) -> dict[str, Any]:
        with frozen(self.critic, self.behaviour):  # backward (and checkpoint recompute) inside
            loss, stats = self._loss(batch["obs"])
            self._opt.zero_grad(set_to_none=True)
            loss.backward()
        return self._step(loss, stats, sync)


ALGORITHMS = ("bc", "gmpo", "gmpg")


def make_algorithm(name: str, model: GenerativeModel, *, critic: IQLCritic | None = None,
                   behaviour: GenerativeModel | None = None, **hparams: Any) -> Algorithm:
    """bc(lr, grad_clip, amp) | gmpo(beta, clamp, lr, grad_clip, amp) | gmpg(beta, sample_steps, solver,
    exact_trace, n_probes, checkpoint, kl_batch, init_from_behaviour, lr, grad_clip, amp)."""
    if name == "bc":
        return BC(model, **hparams)
    if name == "gmpo":
        return GMPO(model, critic, **hparams)  # type: ignore[arg-type]
    if name == "gmpg":
        return GMPG(model, critic, behaviour, **hparams)  # type: ignore[arg-type]
    raise ValueError(f"unknown algorithm {name!r}; expected one of {ALGORITHMS}")
