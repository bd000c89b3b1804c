"""What every algorithm spec shares: the strict config base, the policy fields common to all algorithms, the
advantage fields of the critic-weighted ones, and the ``AlgoSpec`` interface the trainer drives.

Torch-free at import (``genctl.config`` imports this); the update objects are built lazily in ``build``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo is never silently ignored); assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PolicyBase(StrictModel):
    """``policy.*`` fields every algorithm has. Subclasses add ``algo: Literal[name]`` and their own fields."""

    algo: str
    steps: int = Field(2000, ge=0)
    batch_size: int = Field(4096, ge=1)
    lr: float = 1e-4
    grad_clip: float | None = Field(None, description="max grad norm; None = no clipping (reference)")
    ema_decay: float | None = Field(0.995, description="EMA of policy weights used for eval; None = off")
    # constant by default: cosine-to-0 (IQL's actor schedule) was measured on hopper medium_replay at the 12000-step
    # budget and lifted neither BC nor GMPO, nor steadied GMPO's seeds, and cost the demo 3 points (results §3g)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant (the reference) or cosine: the lr decays to 0 over each policy stage, as "
        "IQL's actor (measured, not better on hopper medium_replay: docs/results.md §3g)")

    def resolved_beta(self) -> float | None:
        """The beta the algorithm trains with (None: the algorithm has no beta)."""
        return None


class AdvantagePolicy(PolicyBase):
    """Fields of the algorithms that read the critic's advantage (GMPO, GMPG)."""

    default_beta: ClassVar[float] = 1.0  # the algorithm's beta with adv_norm=std
    adv_norm: Literal["std", "none"] = Field(
        "std", description="std: the advantage (GMPO) / Q (GMPG) enters in units of the advantage's spread over the "
        "training data, measured once from the frozen critic, so beta means the same on every dataset; none: raw "
        "Q - V as the reference (beta then depends on the reward scale)")
    beta: float | None = None

    def resolved_beta(self) -> float:
        return float(self.beta) if self.beta is not None else self.default_beta

    @model_validator(mode="after")
    def _beta_with_raw_advantages(self) -> AdvantagePolicy:
        if self.adv_norm == "none" and self.beta is None:
            raise ValueError("policy.adv_norm=none uses raw advantages, whose scale follows the rewards: set "
                             "policy.beta explicitly (docs/results.md lists the values tuned per dataset)")
        return self


@dataclass
class BuildContext:
    """What an algorithm is built from: the policy network, the critic as the policy reads it (wrapped for
    chunked windows), a factory for more networks of the policy's shape, and the training precision."""

    policy: Any
    critic: Any | None
    new_model: Callable[[], Any]
    amp: bool = False


@dataclass
class Built:
    """``updates``: stage -> update object (``update(batch, sync=)``, ``optimizers()``, ``model``), in stage order;
    ``models``: networks the algorithm owns besides the policy (checkpointed under their name, e.g. GMPG's
    ``behaviour``)."""

    updates: dict[str, Any]
    models: dict[str, Any] = field(default_factory=dict)


class AlgoSpec:
    """One algorithm: its config class, whether it needs a critic, its stages after the critic stage, how its
    update objects are built and what happens when a stage starts. ``run`` in ``enter_stage`` is the trainer
    (it offers ``updates``, ``models``, ``policy``, ``ema``, ``stage_step`` and ``advantage_stats()``)."""

    name: ClassVar[str]
    config: ClassVar[type[PolicyBase]]
    needs_critic: ClassVar[bool] = False

    def stages(self, p: Any) -> list[tuple[str, int]]:
        return [("policy", p.steps)]

    def build(self, p: Any, ctx: BuildContext) -> Built:
        raise NotImplementedError

    def enter_stage(self, stage: str, p: Any, run: Any) -> None:
        """Called whenever the loop (re)enters ``stage`` (also on resume, mid-stage)."""


def set_advantage_scale(update: Any, p: AdvantagePolicy, stats: dict[str, float]) -> None:
    """adv_norm=std: the advantage enters in units of its spread over the training data (``stats`` from the
    frozen critic); adv_norm=none keeps the raw Q - V (the reference)."""
    if p.adv_norm == "std":
        update.set_advantage_scale(stats["mean"], max(stats["std"], 1e-8 * max(abs(stats["mean"]), 1.0)))
