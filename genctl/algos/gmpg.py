"""GMPG: pathwise policy gradient through the ODE sampler with a KL penalty towards a behaviour model mu.

Stages after the critic: ``behaviour`` (BC of mu for behaviour_steps) then ``policy``, which starts as a copy of
the trained mu (the one policy-from-behaviour copy, made when the policy stage starts fresh). With
``behaviour_from_run`` mu is a finished BC run's deployed (EMA) weights instead and the behaviour stage is skipped:
the KL then anchors GMPG to the BC policy it is compared against, fitted at BC's own budget."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from genctl.algos.base import AdvantagePolicy, AlgoSpec, BuildContext, Built, set_advantage_scale


class GMPGPolicyConfig(AdvantagePolicy):
    default_beta: ClassVar[float] = 1.0
    algo: Literal["gmpg"] = "gmpg"
    beta: float | None = Field(
        None, description="weight of Q against the KL (bits per dimension); None = 1 with adv_norm=std "
        "(required with adv_norm=none)")
    behaviour_steps: int = Field(2000, ge=0, description="BC steps for the behaviour model mu")
    behaviour_lr: float = 1e-4
    behaviour_from_run: str | None = Field(
        None, description="take mu from this finished BC run (its EMA weights) instead of training it here: the "
        "behaviour stage is skipped. Same store, model and normalisation (checked). GMPG then starts from, and "
        "is held near, the BC policy it is compared against")
    sample_steps: int = Field(10, ge=1, description="sampler steps through which gradients flow")
    solver: Literal["euler", "heun", "midpoint"] = "euler"
    exact_trace: bool | None = Field(
        None, description="exact log-density of the discrete sampler vs Hutchinson; None = exact for D <= 8")
    ema_decay: float | None = Field(
        0.995, description="EMA of policy weights used for eval; None = off. For GMPG it is also a trust region: "
        "after 200 steps 37 % of the deployed weights are still mu's; the optimiser's last weights climbed past the "
        "critic's reliable range on hopper (score 10 against the EMA's 48, docs/results.md 3q), so more steps or "
        "a lower decay let the deployed policy follow them")
    q_lcb: float = Field(
        0.0, ge=0.0, description="ascend mean - q_lcb x std of Q over the critic ensemble's members (pessimism "
        "where the members disagree, i.e. off the data); needs critic.ensemble >= 2. 0 = the mean (reference). "
        "Not a default: with 5 members and q_lcb 1 it scored below one critic on the replay sets' held-out seed, "
        "the members disagreeing about as much everywhere GMPG went (docs/results.md 3t)")
    kl_batch: int | None = Field(
        None, ge=1, description="estimate the KL term on this many rows of each batch (None = all, as the "
        "reference); unbiased, cheaper, noisier")


class GMPGSpec(AlgoSpec):
    name = "gmpg"
    config = GMPGPolicyConfig
    needs_critic = True

    def stages(self, p: GMPGPolicyConfig) -> list[tuple[str, int]]:
        return [("behaviour", 0 if p.behaviour_from_run else p.behaviour_steps), ("policy", p.steps)]

    def build(self, p: GMPGPolicyConfig, ctx: BuildContext) -> Built:
        from genctl.policies import BC, GMPG

        mu = ctx.new_model()
        behaviour = BC(mu, lr=p.behaviour_lr, grad_clip=p.grad_clip, amp=ctx.amp)
        policy = GMPG(ctx.policy, ctx.critic, mu, beta=p.resolved_beta(), sample_steps=p.sample_steps,
                      solver=p.solver, exact_trace=p.exact_trace, kl_batch=p.kl_batch, q_lcb=p.q_lcb,
                      init_from_behaviour=False, lr=p.lr, grad_clip=p.grad_clip, amp=ctx.amp)
        return Built({"behaviour": behaviour, "policy": policy}, {"behaviour": mu})

    def enter_stage(self, stage: str, p: GMPGPolicyConfig, run: Any) -> None:
        if stage != "policy":
            return
        set_advantage_scale(run.updates["policy"], p, run.advantage_stats())
        if run.stage_step == 0:  # a fresh policy stage (not a resume inside it) starts as the trained mu
            if p.behaviour_from_run:  # a resume inside the stage restores mu from its own checkpoint instead
                run.load_behaviour(p.behaviour_from_run)
            mu = run.models["behaviour"].state_dict()
            run.policy.load_state_dict(mu)
            if run.ema is not None:
                run.ema.module.load_state_dict(mu)


SPEC: Any = GMPGSpec()
