"""Scripted experts for demo collection: ``make_expert(name, env)`` and ``expert_names()``.

An expert sees what a policy sees (the flat observation from :func:`genctl.envs.make_env`) plus static
task structure from ``env.unwrapped`` (e.g. the maze layout). It is reset with its own ``rng`` so that
demos are reproducible from a seed and multimodal where the task allows (maze routes).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from genctl.errors import GenctlError


class Expert:
    """Base class: ``reset(obs, info, rng)`` at the start of each episode, then ``act(obs, info)``."""

    name = "expert"

    def __init__(self, env: gym.Env) -> None:
        self.action_space = env.action_space
        self.rng = np.random.default_rng(0)
        self._keys, self._slices = _obs_layout(env)

    def split(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """The flat observation as the env's dict (keys as in ``obs_keys``)."""
        obs = np.asarray(obs, dtype=np.float64)
        return {k: obs[s].reshape(shape) for k, (s, shape) in self._slices.items()}

    def reset(self, obs: np.ndarray, info: dict, rng: np.random.Generator) -> None:
        self.rng = rng

    def act(self, obs: np.ndarray, info: dict) -> np.ndarray:
        raise NotImplementedError

    def clip(self, action: np.ndarray) -> np.ndarray:
        return np.clip(action, self.action_space.low, self.action_space.high).astype(np.float32)


def _obs_layout(env: gym.Env) -> tuple[list[str] | None, dict[str, tuple[slice, tuple[int, ...]]]]:
    try:
        keys = list(env.get_wrapper_attr("obs_keys"))
        shapes = env.get_wrapper_attr("obs_shapes")
    except AttributeError:
        return None, {}
    slices, start = {}, 0
    for k in keys:
        size = int(np.prod(shapes[k]))
        slices[k] = (slice(start, start + size), tuple(shapes[k]))
        start += size
    return keys, slices


class RandomExpert(Expert):
    """Uniform random actions (the 'random' part of D4RL-style mixed datasets); works for every env."""

    name = "random"

    def act(self, obs: np.ndarray, info: dict) -> np.ndarray:
        low, high = self.action_space.low, self.action_space.high
        return self.rng.uniform(low, high).astype(np.float32)


_DESCRIPTIONS: dict[str, str] = {
    "maze": "PointMaze_* (any layout): randomised Dijkstra route over the maze grid, "
                 "line-of-sight waypoint skipping, velocity-tracking PD control. Routes vary by rng "
                 "(near-shortest alternatives), so demos are multimodal. Alias: pointmaze. "
            "Not AntMaze: the ant has no scripted gait.",
    "fetch": "FetchReach/FetchPush/FetchPickAndPlace: scripted Cartesian controller from the "
             "observation (grip pos, object pos, goal): reach; push from behind; or approach, grasp, carry.",
    "random": "uniform random actions; any env.",
    "auto": "the scripted expert for the env's family (maze or fetch).",
}
_NO_EXPERT: dict[str, str] = {
    "antmaze": "AntMaze has no scripted low-level controller (walking the ant needs a learned gait); "
               "use logged demos (genctl ingest, e.g. Minari D4RL/antmaze) or the 'random' expert.",
}


_ALIASES = {"pointmaze": "maze"}


def expert_names() -> dict[str, str]:
    """Expert name -> one-line help, for :func:`make_expert` and ``genctl envs``.

    AntMaze, locomotion, kitchen, adroit and dm_control have no scripted expert (only ``random`` works
    there); :func:`expert_descriptions` adds notes saying so.
    """
    return dict(sorted(_DESCRIPTIONS.items()))


def expert_descriptions() -> dict[str, str]:
    """Help text per expert, plus ``"(none) <family>"`` entries that say where no expert exists and why."""
    notes = {f"(none) {fam}": text for fam, text in _NO_EXPERT.items()}
    return {**_DESCRIPTIONS, **notes}


def _family_of(env: gym.Env) -> str:
    from genctl.envs.registry import env_family

    spec = env.unwrapped.spec
    if spec is not None:
        try:
            return env_family(spec.id)
        except GenctlError:
            return "unknown"
    return "dmc" if hasattr(env.unwrapped, "physics") else "unknown"


def make_expert(name: str, env: gym.Env, **kwargs: Any) -> Expert:
    """A scripted expert for ``env`` (built by :func:`genctl.envs.make_env`). ``kwargs`` tune it.

    Raises ``GenctlError`` for unknown names, an expert that does not fit the env, and for AntMaze
    (no scripted controller exists; we do not fake one).
    """
    family = _family_of(env)
    name = _ALIASES.get(name, name)
    if name == "auto":
        name = {"pointmaze": "maze", "fetch": "fetch"}.get(family, "")
        if not name:
            raise GenctlError(_NO_EXPERT.get(family, f"no scripted expert for env family {family!r}; "
                                                      f"experts: {', '.join(expert_names())}"))
    if name == "random":
        return RandomExpert(env)
    if name in _NO_EXPERT or (name == "maze" and family == "antmaze"):
        raise GenctlError(_NO_EXPERT["antmaze"])
    if name == "maze":
        if family != "pointmaze":
            raise GenctlError(f"expert 'maze' needs a PointMaze_* env, got family {family!r}")
        from genctl.envs.maze_expert import PointMazeExpert

        return PointMazeExpert(env, **kwargs)
    if name == "fetch":
        if family != "fetch":
            raise GenctlError(f"expert 'fetch' needs a FetchReach/Push/PickAndPlace env, got {family!r}")
        from genctl.envs.fetch_expert import FetchExpert

        return FetchExpert(env, **kwargs)
    raise GenctlError(f"unknown expert {name!r}; choose from {', '.join(expert_names())}")
