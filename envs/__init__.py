"""genctl.envs: every simulation looks the same (flat float32 obs, info["success"], offscreen rgb_array).

See ``docs/contracts.md`` (genctl.envs) for the interface other layers code against.
"""

from __future__ import annotations

from genctl.envs.experts import Expert, expert_descriptions, expert_names, make_expert
from genctl.envs.registry import (
    describe_env,
    env_family,
    env_ids,
    env_info,
    make_env,
    make_env_from_info,
    reference_scores,
    sim_data,
)
from genctl.envs.vector import EVAL_SEED_BASE, TRAIN_SEED_BASE, eval_seeds, make_vector_env, train_seeds

__all__ = [
    "EVAL_SEED_BASE",
    "TRAIN_SEED_BASE",
    "Expert",
    "describe_env",
    "env_family",
    "env_ids",
    "env_info",
    "eval_seeds",
    "expert_descriptions",
    "expert_names",
    "make_env",
    "make_env_from_info",
    "make_expert",
    "make_vector_env",
    "reference_scores",
    "sim_data",
    "train_seeds",
]
