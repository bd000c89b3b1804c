"""GMPO: advantage-weighted matching, w = min(exp(beta A_n), clamp) from the frozen IQL critic."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from genctl.algos.base import AdvantagePolicy, AlgoSpec, BuildContext, Built, set_advantage_scale


class GMPOPolicyConfig(AdvantagePolicy):
    # With adv_norm=std the advantage is in units of its spread over the data. 10 is the reference's tuned
    # hopper-medium-replay beta (6 at its 1000/return-span reward scale, where A has std ~1.8) in those units, and
    # was the best of 3/10/30 on our hopper_v5_medium_replay (seed 0, docs/results.md §3): weights reach the clamp
    # 100 at A ~ +0.46 std, so GMPO regresses mostly on the better actions of each state.
    default_beta: ClassVar[float] = 10.0
    algo: Literal["gmpo"] = "gmpo"
    beta: float | None = Field(
        None, description="temperature of the weights exp(beta A); None = 10 with adv_norm=std (required with "
        "adv_norm=none)")
    clamp: float = Field(100.0, gt=0.0, description="upper bound of the weights")
    advantage: Literal["q", "gae"] = Field(
        "q", description="q: A = Q(s, a) - V(s) from the frozen IQL critic (the reference); gae: the generalised "
        "advantage estimate over V along each logged episode (what the logged action led to; in-memory, single-step "
        "data only)")
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0, description="lambda of advantage=gae (0: one-step TD, 1: "
                              "Monte-Carlo return - V)")


class GMPOSpec(AlgoSpec):
    name = "gmpo"
    config = GMPOPolicyConfig
    needs_critic = True

    def build(self, p: GMPOPolicyConfig, ctx: BuildContext) -> Built:
        from genctl.policies import GMPO

        return Built({"policy": GMPO(ctx.policy, ctx.critic, beta=p.resolved_beta(), clamp=p.clamp, lr=p.lr,
                                     grad_clip=p.grad_clip, amp=ctx.amp)})

    def enter_stage(self, stage: str, p: GMPOPolicyConfig, run: Any) -> None:
        if stage == "policy":
            stats = run.gae_advantage(p.gae_lambda) if p.advantage == "gae" else run.advantage_stats()
            set_advantage_scale(run.updates["policy"], p, stats)


SPEC: Any = GMPOSpec()
