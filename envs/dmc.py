"""A small gymnasium adapter for dm_control suite tasks (ids ``dmc/<domain>-<task>``).

The adapter exposes the suite's OrderedDict observation as a ``Dict`` space with sorted keys (scalars as
shape ``(1,)``), so the registry's generic flattening wrapper gives the sorted-key flat vector and the
collector can store ``obs/<key>`` like every other dict-observation env.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# Tasks we register; any other suite task still builds through make_env("dmc/<domain>-<task>").
DMC_TASKS: tuple[str, ...] = (
    "cartpole-swingup", "cartpole-balance", "walker-walk", "walker-run", "walker-stand",
    "cheetah-run", "reacher-easy", "reacher-hard", "hopper-hop", "hopper-stand",
    "finger-spin", "ball_in_cup-catch", "pendulum-swingup",
)


def parse_dmc_id(env_id: str) -> tuple[str, str]:
    """``"dmc/ball_in_cup-catch"`` -> ``("ball_in_cup", "catch")``."""
    name = env_id.split("/", 1)[1]
    domain, _, task = name.partition("-")
    if not domain or not task:
        raise ValueError(f"dm_control ids look like 'dmc/<domain>-<task>', got {env_id!r}")
    return domain, task


def _spec_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape) if len(shape) else (1,)


class DMCEnv(gym.Env):
    """gymnasium.Env around ``dm_control.suite.load``.

    ``terminated`` is set only when the suite ends an episode with discount 0; the suite's time limit
    (1000 control steps for the registered tasks) ends an episode as ``truncated``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, domain: str, task: str, *, render_mode: str | None = None, width: int = 240,
                 height: int = 240, camera_id: int = 0, fast_render: bool = True,
                 task_kwargs: dict | None = None, environment_kwargs: dict | None = None) -> None:
        from dm_control import suite

        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"dm_control envs only render 'rgb_array', got {render_mode!r}")
        self._env = suite.load(domain, task, task_kwargs=dict(task_kwargs or {}),
                               environment_kwargs=dict(environment_kwargs or {}))
        self.render_mode = render_mode
        self.width, self.height, self.camera_id = int(width), int(height), int(camera_id)
        self._render_flags = {"shadow": False, "reflection": False} if fast_render else None
        if fast_render:  # MSAA off must happen before the first GL context of this physics
            self._env.physics.model.vis.quality.offsamples = 0

        obs_spec = self._env.observation_spec()
        self._keys = sorted(obs_spec)
        self.observation_space = spaces.Dict({
            k: spaces.Box(-np.inf, np.inf, shape=_spec_shape(obs_spec[k].shape), dtype=np.float64)
            for k in self._keys
        })
        act = self._env.action_spec()
        self.action_space = spaces.Box(np.asarray(act.minimum, np.float32) * np.ones(act.shape, np.float32),
                                       np.asarray(act.maximum, np.float32) * np.ones(act.shape, np.float32),
                                       dtype=np.float32)
        limit = self._env._step_limit  # noqa: SLF001 - the only place the suite keeps its horizon
        self.step_limit: int | None = int(limit) if np.isfinite(limit) else None

    @property
    def physics(self) -> Any:
        return self._env.physics

    @property
    def data(self) -> Any:
        """The MjData (``qpos``/``qvel``), as ``env.unwrapped.data`` in the gymnasium MuJoCo envs."""
        return self._env.physics.data

    def _obs(self, timestep: Any) -> dict[str, np.ndarray]:
        return {k: np.asarray(timestep.observation[k], dtype=np.float64).reshape(self.observation_space[k].shape)
                for k in self._keys}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if seed is not None:
            # The suite draws initial states from task.random; reseeding it makes resets reproducible.
            self._env.task._random = np.random.RandomState(seed)  # noqa: SLF001
        timestep = self._env.reset()
        return self._obs(timestep), {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        action = np.clip(np.asarray(action, dtype=np.float64), self.action_space.low, self.action_space.high)
        timestep = self._env.step(action)
        terminated = bool(timestep.last() and timestep.discount == 0.0)
        truncated = bool(timestep.last() and not terminated)
        return self._obs(timestep), float(timestep.reward or 0.0), terminated, truncated, {}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        try:
            return self._env.physics.render(self.height, self.width, camera_id=self.camera_id,
                                            render_flag_overrides=self._render_flags)
        except Exception as exc:
            from genctl.envs.wrappers import render_error

            raise render_error(exc) from exc

    def close(self) -> None:
        self._env.close()
