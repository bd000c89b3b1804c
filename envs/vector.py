"""Vectorised envs and the train/eval seed ranges.

Training data (demo collection) draws seeds from ``[0, 1_000_000)`` and evaluation from
``[1_000_000, ...)``, so an evaluation episode never replays an initial state seen in the demos.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym

from genctl.envs.registry import make_env
from genctl.errors import GenctlError

TRAIN_SEED_BASE = 0
EVAL_SEED_BASE = 1_000_000


def train_seeds(n: int, start: int = 0) -> list[int]:
    """Seeds for the ``start``-th to ``start+n-1``-th training episodes (disjoint from eval seeds)."""
    if n < 0 or start < 0 or start + n > EVAL_SEED_BASE - TRAIN_SEED_BASE:
        raise GenctlError(f"train seeds must lie in [0, {EVAL_SEED_BASE}); got start={start}, n={n}")
    return [TRAIN_SEED_BASE + start + i for i in range(n)]


def eval_seeds(n: int, start: int = 0) -> list[int]:
    """Seeds for evaluation episodes, starting at ``EVAL_SEED_BASE``."""
    if n < 0 or start < 0:
        raise GenctlError(f"eval seeds need n >= 0 and start >= 0; got start={start}, n={n}")
    return [EVAL_SEED_BASE + start + i for i in range(n)]


class _EnvFn:
    """Picklable env factory (AsyncVectorEnv may use spawn, which cannot pickle lambdas)."""

    def __init__(self, env_id: str, seed: int, make_kwargs: dict[str, Any]) -> None:
        self.env_id, self.seed, self.make_kwargs = env_id, seed, make_kwargs

    def __call__(self) -> gym.Env:
        return make_env(self.env_id, seed=self.seed, **self.make_kwargs)


def make_vector_env(env_id: str, n: int, *, seeds: Sequence[int], asynchronous: bool = False,
                    vector_kwargs: dict[str, Any] | None = None, **make_kwargs: Any) -> gym.vector.VectorEnv:
    """``n`` copies of ``make_env(env_id, **make_kwargs)`` in a Sync- or AsyncVectorEnv.

    Sub-env ``i`` uses ``seeds[i]`` on the first ``reset()`` that passes no seed (later episodes continue
    its RNG), so ``venv.reset()`` alone is reproducible. ``vector_kwargs`` go to the VectorEnv
    (e.g. ``context="spawn"``, ``autoreset_mode``). The seeds are kept as ``venv.seeds``.
    """
    seeds = [int(s) for s in seeds]
    if n < 1 or len(seeds) != n:
        raise GenctlError(f"make_vector_env needs n >= 1 and one seed per env; got n={n}, {len(seeds)} seeds")
    fns = [_EnvFn(env_id, s, dict(make_kwargs)) for s in seeds]
    cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    venv = cls(fns, **(vector_kwargs or {}))
    venv.seeds = seeds
    return venv
