"""Wrappers that make every simulation look the same to the rest of genctl.

* flat ``Box(float32)`` observations (dict observations flattened in ``gymnasium.spaces.flatten`` order),
* ``info["success"]`` on every reset and step,
* cheap offscreen rendering (no shadows / reflections / MSAA: about 9x faster on Mesa llvmpipe),
* a default seed used on the first reset, so vectorised envs are reproducible without extra plumbing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def _key(name: str) -> str:
    """Store-friendly key: FrankaKitchen has keys such as 'light switch'."""
    return str(name).replace(" ", "_")


def dict_space_leaves(space: spaces.Dict, prefix: str = "") -> list[tuple[str, spaces.Box]]:
    """(key, Box) pairs in the order ``gymnasium.spaces.flatten`` uses (a Dict space's own, sorted, order).

    Nested dicts (FrankaKitchen's goals) become ``"outer/inner"`` keys.
    """
    out: list[tuple[str, spaces.Box]] = []
    for name, sub in space.spaces.items():
        key = f"{prefix}{_key(name)}"
        if isinstance(sub, spaces.Dict):
            out.extend(dict_space_leaves(sub, prefix=key + "/"))
        elif isinstance(sub, spaces.Box):
            out.append((key, sub))
        else:
            raise TypeError(f"unsupported observation sub-space {key}: {sub}")
    return out


class FlatDictObservation(gym.ObservationWrapper):
    """Flattens a (possibly nested) Dict observation into one float32 vector.

    The last dict observation (flat keys, original dtypes) stays available as ``last_obs_dict`` so that a
    collector can store ``obs/<key>`` arrays, and ``obs_keys`` / ``obs_shapes`` describe the layout.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        assert isinstance(env.observation_space, spaces.Dict)
        leaves = dict_space_leaves(env.observation_space)
        self.obs_keys: list[str] = [k for k, _ in leaves]
        self._paths = _leaf_paths(env.observation_space)
        self.obs_shapes: dict[str, tuple[int, ...]] = {k: tuple(s.shape) for k, s in leaves}
        low = np.concatenate([np.broadcast_to(s.low, s.shape).ravel() for _, s in leaves])
        high = np.concatenate([np.broadcast_to(s.high, s.shape).ravel() for _, s in leaves])
        self.observation_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        self.last_obs_dict: dict[str, np.ndarray] | None = None

    def observation(self, observation: Mapping[str, Any]) -> np.ndarray:
        leaves = []
        for path in self._paths:
            value = observation
            for name in path:
                value = value[name]
            leaves.append(np.array(value))  # a copy: envs may reuse their buffers
        self.last_obs_dict = dict(zip(self.obs_keys, leaves, strict=True))
        return np.concatenate([v.ravel() for v in leaves]).astype(np.float32)


def _leaf_paths(space: spaces.Dict) -> list[tuple[str, ...]]:
    """Original key paths of the leaves, in the same order as :func:`dict_space_leaves`."""
    out: list[tuple[str, ...]] = []
    for name, sub in space.spaces.items():
        if isinstance(sub, spaces.Dict):
            out.extend((name, *rest) for rest in _leaf_paths(sub))
        else:
            out.append((name,))
    return out


class Float32Observation(gym.ObservationWrapper):
    """Casts an array observation to float32 (the MuJoCo envs return float64)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        box = env.observation_space
        assert isinstance(box, spaces.Box)
        self.observation_space = spaces.Box(box.low.astype(np.float32), box.high.astype(np.float32),
                                            shape=box.shape, dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation, dtype=np.float32)


class SuccessInfo(gym.Wrapper):
    """Puts a bool ``info["success"]`` into every reset/step info (False where a task has none)."""

    def __init__(self, env: gym.Env, success_fn: Callable[[gym.Env, dict], bool] | None) -> None:
        super().__init__(env)
        self._success_fn = success_fn

    def _mark(self, info: dict) -> dict:
        info = dict(info)
        info["success"] = bool(self._success_fn(self.env, info)) if self._success_fn else False
        return info

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        return obs, self._mark(info)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, float(reward), bool(terminated), bool(truncated), self._mark(info)


def find_mujoco_renderer(env: gym.Env) -> Any | None:
    """The gymnasium ``MujocoRenderer`` of an env, looking inside the maze / kitchen composites."""
    base = env.unwrapped
    for owner in (base, getattr(base, "point_env", None), getattr(base, "ant_env", None),
                  getattr(base, "robot_env", None)):
        renderer = getattr(owner, "mujoco_renderer", None)
        if renderer is not None:
            return renderer
    return None


def tune_mujoco_renderer(renderer: Any) -> bool:
    """Turns off MSAA, shadows and reflections before the first frame. Returns False if not reachable.

    Measured at 240x240 on llvmpipe: Hopper 27 -> 242 fps, FetchPickAndPlace 103 -> 166 fps,
    PointMaze 133 -> 290 fps. MSAA must be off before the GL context exists, hence "before the first frame".
    """
    import mujoco

    try:
        renderer.model.vis.quality.offsamples = 0
        viewer = renderer._get_viewer("rgb_array")  # private, but the only handle on the scene flags
        viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    except (AttributeError, TypeError, IndexError):
        return False
    return True


class FastRender(gym.Wrapper):
    """Applies :func:`tune_mujoco_renderer` lazily, on the first ``render()`` (GL contexts are costly)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._tuned = False

    def render(self) -> Any:
        if self._tuned:
            return self.env.render()
        self._tuned = True
        renderer = find_mujoco_renderer(self.env)
        try:
            if renderer is not None and self.env.render_mode == "rgb_array":
                tune_mujoco_renderer(renderer)
            return self.env.render()
        except Exception as exc:  # first GL context: turn a bare GL/EGL failure into advice
            raise render_error(exc) from exc


TOP_CAMERA = "top"  # an overhead view of the scene (mazes: the whole maze, walls, ball and goal marker; Fetch: the table)


class CameraView(gym.Wrapper):
    """Renders from ``camera``: ``"top"`` (overhead free camera), or a camera named in the MuJoCo model.

    Set at construction: the renderer's viewer (and its camera) is only created on the first ``render()``.
    """

    def __init__(self, env: gym.Env, camera: str) -> None:
        super().__init__(env)
        self.camera = camera
        set_camera(env, camera)


def set_camera(env: gym.Env, camera: str) -> None:
    """Point ``env``'s offscreen renderer at ``camera`` (see :class:`CameraView`); clear error if unknown."""
    import mujoco

    from genctl.errors import GenctlError

    renderer = find_mujoco_renderer(env)
    if renderer is None:
        raise GenctlError(f"camera {camera!r}: this env has no MuJoCo renderer genctl can point")
    if camera == TOP_CAMERA:
        cfg = dict(renderer.default_cam_config or {})
        cfg.update(elevation=-90.0, azimuth=90.0)
        maze = getattr(env.unwrapped, "maze", None)
        if maze is not None:  # fit the maze (45 degree field of view: extent / 0.83 is the distance that fills it)
            cfg["distance"] = 1.25 * max(maze.map_length, maze.map_width) * maze.maze_size_scaling
            cfg["lookat"] = np.zeros(3)
        grip = getattr(env.unwrapped, "initial_gripper_xpos", None)
        if grip is not None:  # Fetch: the table top where objects and targets are sampled (+-0.15 m), seen from
            # the far side of the table at 50 degrees, so the arm does not hide the object as it does from straight up
            cfg.update(lookat=np.array([grip[0] + 0.05, grip[1], 0.42]), distance=0.85, elevation=-50.0, azimuth=180.0)
        renderer.default_cam_config = cfg
        renderer.camera_id = -1
        return
    model = renderer.model
    cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if cam_id < 0:
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        raise GenctlError(f"camera {camera!r} is not in this env's model; expected {TOP_CAMERA!r}, 'default' or one "
                          f"of {names}")
    renderer.camera_id = cam_id


def render_error(exc: BaseException) -> Exception:
    """A GenctlError that says how to get headless rendering working."""
    import os

    from genctl.errors import GenctlError

    return GenctlError(
        f"offscreen rendering failed with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} "
        f"({type(exc).__name__}: {exc}). For EGL install libegl1 libegl-mesa0 libgl1-mesa-dri; for OSMesa "
        "install libosmesa6 and set MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa before importing genctl.")


class DefaultSeed(gym.Wrapper):
    """Uses ``seed`` for the first ``reset()`` that passes none (and seeds the action space once).

    Vector envs autoreset without seeds, so with this a vector env built from a list of seeds is
    reproducible from ``reset()`` alone; later episodes continue each env's own RNG stream.
    """

    def __init__(self, env: gym.Env, seed: int) -> None:
        super().__init__(env)
        self.default_seed = int(seed)
        self._used = False
        self.env.action_space.seed(self.default_seed)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        if seed is None and not self._used:
            seed = self.default_seed
        self._used = True
        return self.env.reset(seed=seed, options=options)
