"""genctl.algos: one module per policy algorithm (bc, gmpo, gmpg), each owning its ``policy.*`` config section,
its stage plan and its initialisation. Adding an algorithm = one module here plus its line in ``SPECS``.

``PolicyConfig`` is the discriminated union of the algorithms' configs keyed by ``policy.algo``, so a field
means one thing per algorithm and a field another algorithm owns is an unknown-field error. Torch-free at import.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from genctl.algos import bc, gmpg, gmpo
from genctl.algos.base import AlgoSpec, BuildContext, Built, PolicyBase, StrictModel

SPECS: dict[str, AlgoSpec] = {s.name: s for s in (bc.SPEC, gmpo.SPEC, gmpg.SPEC)}
ALGORITHMS = tuple(SPECS)
DEFAULT_ALGO = "gmpo"

PolicyConfig = Annotated[
    bc.BCPolicyConfig | gmpo.GMPOPolicyConfig | gmpg.GMPGPolicyConfig, Field(discriminator="algo")]


def spec_for(policy: Any) -> AlgoSpec:
    """The spec of a policy config (or of an algorithm name)."""
    return SPECS[policy if isinstance(policy, str) else policy.algo]


def stage_plan(policy: Any, critic_steps: int) -> list[tuple[str, int]]:
    """[(stage, steps)] with steps > 0: the critic stage (``critic_steps``, 0 when the critic is reused or
    absent), then the algorithm's stages."""
    plan = [("critic", critic_steps), *spec_for(policy).stages(policy)]
    return [(s, n) for s, n in plan if n > 0]


def migrate_policy_section(section: Any) -> Any:
    """A saved ``policy`` section (config.yaml / checkpoint meta of an older genctl, which wrote every
    algorithm's fields) reduced to the fields its algorithm has. For saved configs only, never user input."""
    if not isinstance(section, dict):
        return section
    spec = SPECS.get(section.get("algo", DEFAULT_ALGO))
    if spec is None:
        return section
    keep = spec.config.model_fields
    return {k: v for k, v in section.items() if k in keep or k == "algo"}


__all__ = ["ALGORITHMS", "DEFAULT_ALGO", "SPECS", "AlgoSpec", "BuildContext", "Built", "PolicyBase",
           "PolicyConfig", "StrictModel", "migrate_policy_section", "spec_for", "stage_plan"]
