"""One registry that builds every simulation genctl supports, by name, with the same interface.

Families (see :func:`env_family`):

* ``mujoco``    gymnasium ``Hopper/HalfCheetah/Walker2d/Ant-v5``
* ``pointmaze`` gymnasium-robotics ``PointMaze_*-v3``  (default ``continuing_task=False``)
* ``antmaze``   gymnasium-robotics ``AntMaze_*-v5``    (default ``continuing_task=False``)
* ``fetch``     gymnasium-robotics ``Fetch{Reach,Push,PickAndPlace}[Dense]-v4``
* ``kitchen``   gymnasium-robotics ``FrankaKitchen-v1``
* ``adroit``    gymnasium-robotics ``AdroitHand{Pen,Door,Hammer,Relocate}[Sparse]-v1``
* ``dmc``       dm_control suite through :class:`genctl.envs.dmc.DMCEnv`, ids ``dmc/<domain>-<task>``

Every env from :func:`make_env` has a flat ``Box(float32)`` observation (dict observations flattened in
sorted-key order = ``gymnasium.spaces.flatten`` order; nested keys joined with ``/``, spaces in key names
replaced by ``_``), ``info["success"]`` on every reset and step, and renders offscreen as ``rgb_array``.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import io
import json
import logging
import re
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from genctl.envs.dmc import DMC_TASKS, DMCEnv, parse_dmc_id
from genctl.envs.wrappers import (
    CameraView,
    DefaultSeed,
    FastRender,
    FlatDictObservation,
    Float32Observation,
    SuccessInfo,
)
from genctl.errors import DataError, GenctlError

# PyOpenGL logs "No OpenGL_accelerate module loaded" at INFO on import; it is noise for our users.
logging.getLogger("OpenGL").setLevel(logging.WARNING)

_FAMILIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("mujoco", re.compile(r"(Hopper|HalfCheetah|Walker2d|Ant)-v5")),
    ("pointmaze", re.compile(r"PointMaze_\w+-v3")),
    ("antmaze", re.compile(r"AntMaze_\w+-v5")),
    ("fetch", re.compile(r"Fetch(Reach|Push|PickAndPlace)(Dense)?-v4")),
    ("kitchen", re.compile(r"FrankaKitchen-v1")),
    ("adroit", re.compile(r"AdroitHand(Pen|Door|Hammer|Relocate)(Sparse)?-v1")),
    ("dmc", re.compile(r"dmc/[a-z_]+-[a-z_]+")),
)

# D4RL reference returns (random / expert policy), used for normalised scores.
_D4RL_REF: dict[str, tuple[float, float]] = {
    "Hopper-v5": (-20.272305, 3234.3),
    "HalfCheetah-v5": (-280.178953, 12135.0),
    "Walker2d-v5": (1.629008, 4592.3),
    "Ant-v5": (-325.6, 3879.7),
}

# Defaults genctl applies on top of gymnasium's (recorded in env_info, so stores rebuild faithfully):
# an episodic maze terminates with reward 1 at the goal, so the return is the success (0/1).
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "pointmaze": {"continuing_task": False},
    "antmaze": {"continuing_task": False},
}


@functools.cache
def _gym_registry() -> frozenset[str]:
    """All ids gymnasium knows once gymnasium-robotics is registered (its import notice is silenced)."""
    with contextlib.redirect_stderr(io.StringIO()):
        import gymnasium_robotics
    gym.register_envs(gymnasium_robotics)
    return frozenset(gym.registry)


def sim_data(env: Any) -> Any | None:
    """The MuJoCo ``MjData`` (qpos, qvel, warnings) of a registered env, or None for a non-MuJoCo env.

    Every env the registry builds exposes it as ``env.unwrapped.data`` (the dm_control adapter forwards
    ``physics.data`` there), so callers need no per-family lookup."""
    return getattr(env.unwrapped, "data", None)


def env_family(env_id: str) -> str:
    """The family of a supported id; ``GenctlError`` (with close matches) for anything else."""
    for family, pattern in _FAMILIES:
        if pattern.fullmatch(env_id):
            if family != "dmc" and env_id not in _gym_registry():
                break
            return family
    close = difflib.get_close_matches(env_id, env_ids(), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See `genctl.envs.env_ids()`."
    raise GenctlError(f"unknown environment id {env_id!r}.{hint}")


@functools.cache
def _env_ids() -> tuple[str, ...]:
    gym_ids = sorted(i for i in _gym_registry()
                     if any(p.fullmatch(i) for f, p in _FAMILIES if f != "dmc"))
    return tuple(gym_ids) + tuple(f"dmc/{t}" for t in DMC_TASKS)


def env_ids() -> list[str]:
    """Every registered id (other dm_control suite tasks also build, as ``dmc/<domain>-<task>``)."""
    return list(_env_ids())


def _jsonable(value: Any, where: str) -> Any:
    """kwargs must survive a JSON round trip into store attrs; convert numpy, refuse the rest."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, where) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise GenctlError(f"env kwarg {where!r} is not JSON-serialisable ({type(value).__name__}); "
                      "stores must be able to rebuild the env from its attrs")


def effective_kwargs(env_id: str, **kwargs: Any) -> dict[str, Any]:
    """The caller's env kwargs merged over genctl's family defaults (what env_info records)."""
    merged = {**_FAMILY_DEFAULTS.get(env_family(env_id), {}), **kwargs}
    return {k: _jsonable(v, k) for k, v in merged.items()}


def _success_fn(family: str) -> Any:
    if family in ("pointmaze", "antmaze", "adroit"):
        return lambda env, info: bool(info.get("success", False))
    if family == "fetch":
        return lambda env, info: float(info.get("is_success", 0.0)) > 0.5
    if family == "kitchen":
        return lambda env, info: (len(info.get("episode_task_completions", ()))
                                  >= len(env.unwrapped.goal) > 0)
    return None


def make_env(env_id: str, *, render_mode: str | None = None, width: int = 240, height: int = 240,
             max_episode_steps: int | None = None, fast_render: bool = True, seed: int | None = None,
             camera: str = "default", **kwargs: Any) -> gym.Env:
    """Build ``env_id`` with genctl's uniform interface (see the module docstring).

    ``kwargs`` go to the env constructor (over genctl's family defaults); ``fast_render`` turns off
    shadows/reflections/MSAA (about 9x faster frames on the CPU); ``seed`` is used on the first
    ``reset()`` without a seed (vector envs); ``camera`` is what ``render()`` shows: ``"default"`` (the env's
    own view), ``"top"`` (overhead) or a camera named in the MuJoCo model.
    """
    family = env_family(env_id)
    if render_mode not in (None, "rgb_array"):
        raise GenctlError(f"render_mode must be None or 'rgb_array' (offscreen), got {render_mode!r}")
    kw = effective_kwargs(env_id, **kwargs)
    if family == "dmc":
        domain, task = parse_dmc_id(env_id)
        if camera == "top":
            raise GenctlError(f"camera 'top' is for gymnasium MuJoCo envs; for {env_id} name a camera of its model "
                              "(dm_control cameras, e.g. 'cam0' or a number)")
        if camera != "default":
            kw["camera_id"] = int(camera) if camera.isdigit() else camera
        try:
            env: gym.Env = DMCEnv(domain, task, render_mode=render_mode, width=width, height=height,
                                  fast_render=fast_render, **kw)
        except (ValueError, KeyError) as exc:
            raise GenctlError(f"cannot build dm_control task {env_id!r}: {exc}") from exc
        if max_episode_steps is not None:
            env = gym.wrappers.TimeLimit(env, max_episode_steps=max_episode_steps)
    else:
        _gym_registry()
        extra = {"max_episode_steps": max_episode_steps} if max_episode_steps is not None else {}
        env = gym.make(env_id, render_mode=render_mode, width=width, height=height,
                       disable_env_checker=True, **extra, **kw)
    if isinstance(env.observation_space, spaces.Dict):
        env = FlatDictObservation(env)
    else:
        env = Float32Observation(env)
    env = SuccessInfo(env, _success_fn(family))
    if camera != "default" and family != "dmc":
        env = CameraView(env, camera)
    if fast_render and render_mode == "rgb_array" and family != "dmc":
        env = FastRender(env)
    if seed is not None:
        env = DefaultSeed(env, seed)
    return env


def _max_steps(env: gym.Env) -> int | None:
    if env.spec is not None and env.spec.max_episode_steps is not None:
        return int(env.spec.max_episode_steps)
    try:
        limit = env.get_wrapper_attr("_max_episode_steps")
    except AttributeError:
        limit = getattr(env.unwrapped, "step_limit", None)
    return int(limit) if limit is not None else None


def reference_scores(env_id: str, **kwargs: Any) -> tuple[float | None, float | None]:
    """(min, max) reference returns for normalised scores, or (None, None) where none is meaningful.

    D4RL's random/expert returns for the locomotion envs; 0/1 for episodic sparse mazes (return =
    success); 0/n_tasks for FrankaKitchen (one reward per completed task); 0/step-limit for dm_control
    (reward in [0, 1] per step). Fetch (−1 per step) and Adroit (rewards changed in gymnasium-robotics
    1.2.1, so D4RL's numbers no longer apply) have none.
    """
    family = env_family(env_id)
    kw = effective_kwargs(env_id, **kwargs)
    if family == "mujoco":
        return _D4RL_REF[env_id]
    if family in ("pointmaze", "antmaze"):
        sparse = "Dense" not in env_id and kw.get("reward_type", "sparse") == "sparse"
        return (0.0, 1.0) if sparse and not kw.get("continuing_task", True) else (None, None)
    if family == "kitchen":
        from gymnasium_robotics.envs.franka_kitchen.kitchen_env import OBS_ELEMENT_GOALS

        if kw.get("remove_task_when_completed", True):
            return 0.0, float(len(kw.get("tasks_to_complete", OBS_ELEMENT_GOALS)))
    return None, None


def _box_dict(box: spaces.Box) -> dict[str, Any]:
    return {"shape": list(box.shape), "dtype": str(box.dtype),
            "low": box.low.astype(np.float64).tolist(), "high": box.high.astype(np.float64).tolist()}


_MAKE_ENV_KEYS = frozenset({"render_mode", "width", "height", "max_episode_steps", "fast_render", "seed"})


def describe_env(env: gym.Env, env_id: str, **kwargs: Any) -> dict[str, Any]:
    """env_info for an env already built by :func:`make_env` with these kwargs (avoids a second build)."""
    kwargs = {k: v for k, v in kwargs.items() if k not in _MAKE_ENV_KEYS}
    obs_keys = _try_attr(env, "obs_keys")
    shapes = _try_attr(env, "obs_shapes")
    act = env.action_space
    lo, hi = reference_scores(env_id, **kwargs)
    if env_family(env_id) == "dmc" and _max_steps(env) is not None:
        lo, hi = 0.0, float(_max_steps(env))  # reward in [0, 1] per control step
    info = {
        "id": env_id,
        "family": env_family(env_id),
        "kwargs": effective_kwargs(env_id, **kwargs),
        "obs_keys": list(obs_keys) if obs_keys is not None else None,
        "obs_shapes": {k: list(v) for k, v in shapes.items()} if shapes is not None else None,
        "obs_dim": int(np.prod(env.observation_space.shape)),
        "action_dim": int(np.prod(act.shape)),
        "action_low": act.low.astype(np.float64).tolist(),
        "action_high": act.high.astype(np.float64).tolist(),
        "max_episode_steps": _max_steps(env),
        "ref_min_score": lo,
        "ref_max_score": hi,
        "observation_space": _box_dict(env.observation_space),
        "action_space": _box_dict(act),
    }
    json.dumps(info)  # fail here, not when a store writes its attrs
    return info


def _try_attr(env: gym.Env, name: str) -> Any:
    try:
        return env.get_wrapper_attr(name)
    except AttributeError:
        return None


def env_info(env_id: str, *, max_episode_steps: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """JSON-serialisable description that :func:`make_env_from_info` rebuilds the env from."""
    env = make_env(env_id, max_episode_steps=max_episode_steps, **kwargs)
    try:
        return describe_env(env, env_id, **kwargs)
    finally:
        env.close()


def make_env_from_info(info: dict[str, Any], **overrides: Any) -> gym.Env:
    """Rebuild the env a store was made with. ``overrides`` (render_mode, width, kwargs...) win.

    Raises ``DataError`` if the rebuilt env's observation/action sizes differ from the recorded ones.
    """
    try:
        env_id = info["id"]
        kwargs = dict(info.get("kwargs") or {})
    except (KeyError, TypeError) as exc:
        raise DataError(f"env info has no 'id'/'kwargs' field: {info!r}") from exc
    make_kw: dict[str, Any] = {"max_episode_steps": info.get("max_episode_steps"), **kwargs, **overrides}
    env = make_env(env_id, **make_kw)
    for field, got in (("obs_dim", int(np.prod(env.observation_space.shape))),
                       ("action_dim", int(np.prod(env.action_space.shape)))):
        want = info.get(field)
        if want is not None and int(want) != got:
            env.close()
            raise DataError(f"env info field {field!r}: recorded {want}, but {env_id!r} now gives {got}")
    return env
