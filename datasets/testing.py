"""Small source files in each supported format, made with the real libraries (h5py, minari), for tests of
this layer and of the layers above it (e.g. a tiny store for an end-to-end training test)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def random_episode(rng: np.random.Generator, t: int, obs_dim: int = 5, act_dim: int = 2, *,
                   dict_obs: bool = False, terminated: bool = False) -> dict[str, np.ndarray]:
    """One episode in store keys (flat ``obs`` or ``obs/a``+``obs/b``), with ``next_obs``."""
    ep: dict[str, np.ndarray] = {}
    if dict_obs:
        for name, d in (("b_pos", 3), ("a_goal", 2)):
            o = rng.normal(size=(t + 1, d)).astype(np.float32)
            ep[f"obs/{name}"], ep[f"next_obs/{name}"] = o[:-1], o[1:]
    else:
        o = rng.normal(size=(t + 1, obs_dim)).astype(np.float32)
        ep["obs"], ep["next_obs"] = o[:-1], o[1:]
    ep["action"] = rng.uniform(-1, 1, size=(t, act_dim)).astype(np.float32)
    ep["reward"] = rng.normal(size=t).astype(np.float32)
    ep["terminated"] = np.zeros(t, bool)
    ep["truncated"] = np.zeros(t, bool)
    (ep["terminated"] if terminated else ep["truncated"])[-1] = True
    return ep


def make_d4rl_file(path: str | os.PathLike, n: int = 500, obs_dim: int = 11, act_dim: int = 3, *,
                   episode_len: int = 60, seed: int = 0, next_obs: bool = True, infos: bool = True,
                   tail: int = 0, attrs: dict[str, Any] | None = None, drop: tuple[str, ...] = (),
                   override: dict[str, np.ndarray] | None = None, chunked: bool = False) -> Path:
    """A D4RL-layout HDF5 file: episodes of ``episode_len`` ending alternately in terminal/timeout, plus an
    unterminated ``tail`` of that many extra steps. ``drop``/``override`` make deliberately bad files."""
    import h5py

    rng = np.random.default_rng(seed)
    total = n + tail
    obs = rng.normal(size=(total + 1, obs_dim)).astype(np.float32)
    fields: dict[str, np.ndarray] = {
        "observations": obs[:-1], "actions": rng.uniform(-1, 1, (total, act_dim)).astype(np.float32),
        "rewards": rng.normal(1.0, 0.5, total).astype(np.float32),
        "terminals": np.zeros(total, bool), "timeouts": np.zeros(total, bool)}
    ends = np.arange(episode_len, n + 1, episode_len) - 1
    fields["terminals"][ends[::2]] = True
    fields["timeouts"][ends[1::2]] = True
    if next_obs:
        fields["next_observations"] = obs[1:]
    if infos:
        fields["infos/qpos"] = rng.normal(size=(total, 4))
        fields["infos/goal"] = rng.normal(size=(total, 2)).astype(np.float32)
    fields.update(override or {})
    path = Path(path)
    with h5py.File(path, "w") as f:
        for k, v in fields.items():
            if k not in drop:
                f.create_dataset(k, data=v, chunks=True if chunked else None)
        for k, v in (attrs if attrs is not None else
                     {"env_id": "Hopper-v5", "ref_min_score": -20.27, "ref_max_score": 3234.3}).items():
            f.attrs[k] = v
    return path


def make_robomimic_file(path: str | os.PathLike, n_demos: int = 3, *, seed: int = 0, image: bool = True,
                        hw: int = 8, bad: dict[str, np.ndarray] | None = None) -> Path:
    """A robomimic-layout HDF5 file with two low-dim obs keys and (optionally) one uint8 camera."""
    import json

    import h5py

    rng = np.random.default_rng(seed)
    path = Path(path)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}})
        total = 0
        for i in range(n_demos):
            t = 10 + 3 * i
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = t
            obs = {"robot0_eef_pos": rng.normal(size=(t + 1, 3)), "object": rng.normal(size=(t + 1, 4))}
            if image:
                obs["agentview_image"] = rng.integers(0, 255, (t + 1, hw, hw, 3), dtype=np.uint8)
            for k, v in obs.items():
                g.create_dataset(f"obs/{k}", data=v[:-1])
                g.create_dataset(f"next_obs/{k}", data=v[1:])
            g.create_dataset("actions", data=rng.uniform(-1, 1, (t, 7)))
            g.create_dataset("rewards", data=np.r_[np.zeros(t - 1), 1.0])
            g.create_dataset("dones", data=np.r_[np.zeros(t - 1, np.int64), int(i != 1)])
            g.create_dataset("states", data=rng.normal(size=(t, 9)))
            total += t
        data.attrs["total"] = total
        for k, v in (bad or {}).items():
            if k in f:
                del f[k]
            f.create_dataset(k, data=v)
    return path


def make_minari_dataset(dataset_id: str, n_episodes: int = 3, *, dict_obs: bool = True, seed: int = 0,
                        nan_in_episode: int | None = None) -> Any:
    """A local Minari dataset (under ``$MINARI_DATASETS_PATH``) built with Minari's own jax-free path:
    hand-made ``EpisodeBuffer``s + ``create_dataset_from_buffers``. dict obs: PointMaze_UMaze-v3; else Hopper-v5."""
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(seed)
    if dict_obs:
        import gymnasium_robotics

        gym.register_envs(gymnasium_robotics)
        env_id, act_dim = "PointMaze_UMaze-v3", 2
    else:
        env_id, act_dim = "Hopper-v5", 3
    buffers = []
    for i in range(n_episodes):
        t = 6 + 2 * i
        if dict_obs:
            obs: Any = {"observation": rng.normal(size=(t + 1, 4)), "achieved_goal": rng.normal(size=(t + 1, 2)),
                        "desired_goal": rng.normal(size=(t + 1, 2))}
            if nan_in_episode == i:
                obs["observation"][2, 1] = np.nan
        else:
            obs = rng.normal(size=(t + 1, 11))
            if nan_in_episode == i:
                obs[2, 1] = np.nan
        buffers.append(EpisodeBuffer(
            id=i, observations=obs, actions=rng.uniform(-1, 1, (t, act_dim)).astype(np.float32),
            rewards=rng.normal(size=t), terminations=np.r_[np.zeros(t - 1, bool), i % 2 == 0],
            truncations=np.r_[np.zeros(t - 1, bool), i % 2 == 1],
            infos={"success": np.r_[np.zeros(t, bool), i % 2 == 0]}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return minari.create_dataset_from_buffers(
            dataset_id, buffers, env=env_id, algorithm_name="random", ref_min_score=-1.5, ref_max_score=2.5)
