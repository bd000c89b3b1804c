"""BC: generative behaviour cloning (the matching loss on logged actions). No critic needed; with one
(critic.steps > 0 or critic.from_run) the critic is still trained/loaded, for eval.select=q."""

from __future__ import annotations

from typing import Any, Literal

from genctl.algos.base import AlgoSpec, BuildContext, Built, PolicyBase


class BCPolicyConfig(PolicyBase):
    algo: Literal["bc"] = "bc"


class BCSpec(AlgoSpec):
    name = "bc"
    config = BCPolicyConfig

    def build(self, p: BCPolicyConfig, ctx: BuildContext) -> Built:
        from genctl.policies import BC

        return Built({"policy": BC(ctx.policy, lr=p.lr, grad_clip=p.grad_clip, amp=ctx.amp)})


SPEC: Any = BCSpec()
