"""genctl.envs registry: every id builds, resets, steps and renders; flat obs layout; env_info round trip."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from genctl.envs import (
    EVAL_SEED_BASE,
    TRAIN_SEED_BASE,
    env_family,
    env_ids,
    env_info,
    eval_seeds,
    make_env,
    make_env_from_info,
    make_vector_env,
    reference_scores,
    train_seeds,
)
from genctl.errors import DataError, GenctlError

# One cheap representative per family runs in CI; the full sweep (and FrankaKitchen, ~2 s a frame) is slow.
FAST_IDS = ["Hopper-v5", "PointMaze_UMaze-v3", "AntMaze_UMaze-v5", "FetchReach-v4", "AdroitHandDoor-v1",
            "dmc/cartpole-swingup"]
REQUIRED = ["Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Ant-v5", "PointMaze_UMaze-v3", "PointMaze_Medium-v3",
            "PointMaze_Large-v3", "AntMaze_UMaze-v5", "AntMaze_Large_Diverse_GR-v5", "FetchReach-v4", "FetchPush-v4",
            "FetchPickAndPlace-v4", "FrankaKitchen-v1", "AdroitHandPen-v1", "AdroitHandRelocate-v1",
            "dmc/cartpole-swingup", "dmc/walker-walk", "dmc/cheetah-run", "dmc/reacher-easy"]


def _smoke(env_id: str) -> None:
    env = make_env(env_id, render_mode="rgb_array", width=64, height=48)
    try:
        obs, info = env.reset(seed=0)
        assert isinstance(env.observation_space, gym.spaces.Box) and env.observation_space.dtype == np.float32
        assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
        assert isinstance(info["success"], bool)
        keys = env.get_wrapper_attr("obs_keys") if isinstance(env.unwrapped.observation_space, gym.spaces.Dict) \
            else None
        assert keys is None or keys == sorted(keys)  # the documented flat order
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs.shape == env.observation_space.shape and np.isfinite(obs).all()
        assert isinstance(info["success"], bool) and isinstance(terminated, bool) and isinstance(truncated, bool)
        frame = env.render()
        assert frame.dtype == np.uint8 and frame.shape == (48, 64, 3)
        assert frame.max() > 0, f"{env_id} rendered a black frame"
        assert env.unwrapped.data.qpos.ndim == 1  # collect stores state/qpos from here
    finally:
        env.close()


def test_required_ids_registered() -> None:
    ids = env_ids()
    assert not [i for i in REQUIRED if i not in ids]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("env_id", FAST_IDS)
def test_family_representative_builds_and_renders(env_id: str) -> None:
    _smoke(env_id)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", [i for i in env_ids() if i not in FAST_IDS])
def test_every_env_builds_and_renders(env_id: str) -> None:
    _smoke(env_id)


def test_unknown_id_suggests() -> None:
    with pytest.raises(GenctlError, match="PointMaze_UMaze-v3"):
        make_env("PointMaze_Umaze-v3")
    with pytest.raises(GenctlError):
        env_family("Hopper-v3")  # needs mujoco_py: not supported


def test_dict_obs_flattened_in_sorted_key_order() -> None:
    """Flat obs == gymnasium.spaces.flatten of the raw dict obs, and obs_keys are sorted."""
    env = make_env("FetchPush-v4")
    raw = gym.make("FetchPush-v4", disable_env_checker=True)
    try:
        obs, _ = env.reset(seed=3)
        raw_obs, _ = raw.reset(seed=3)
        keys = env.get_wrapper_attr("obs_keys")
        assert keys == sorted(keys) == ["achieved_goal", "desired_goal", "observation"]
        want = gym.spaces.flatten(raw.observation_space, raw_obs).astype(np.float32)
        np.testing.assert_array_equal(obs, want)
        last = env.get_wrapper_attr("last_obs_dict")
        np.testing.assert_array_equal(np.concatenate([last[k].ravel() for k in keys]).astype(np.float32), obs)
    finally:
        env.close()
        raw.close()


def test_env_info_round_trip() -> None:
    info = env_info("PointMaze_Medium-v3", max_episode_steps=123)
    info = json.loads(json.dumps(info))
    assert info["kwargs"] == {"continuing_task": False}  # genctl's default, recorded for rebuilding
    assert info["max_episode_steps"] == 123 and info["obs_dim"] == 8 and info["action_dim"] == 2
    assert (info["ref_min_score"], info["ref_max_score"]) == (0.0, 1.0)
    a, b = make_env("PointMaze_Medium-v3", max_episode_steps=123), make_env_from_info(info)
    try:
        np.testing.assert_array_equal(a.reset(seed=5)[0], b.reset(seed=5)[0])
        assert b.spec.max_episode_steps == 123
        assert b.unwrapped.continuing_task is False
    finally:
        a.close()
        b.close()
    with pytest.raises(DataError, match="obs_dim"):
        make_env_from_info({**info, "obs_dim": 99})


def test_caller_kwargs_recorded_and_change_ref_scores() -> None:
    info = env_info("PointMaze_UMaze-v3", continuing_task=True, reset_target=True)
    assert info["kwargs"] == {"continuing_task": True, "reset_target": True}
    assert info["ref_min_score"] is None
    assert reference_scores("Hopper-v5") == (-20.272305, 3234.3)
    assert reference_scores("Walker2d-v5") == (1.629008, 4592.3)
    assert reference_scores("FetchPush-v4") == (None, None)


def test_dmc_adapter_sorted_keys_and_seeding() -> None:
    info = env_info("dmc/walker-walk")
    assert info["obs_keys"] == ["height", "orientations", "velocity"] and info["obs_dim"] == 24
    assert info["max_episode_steps"] == 1000 and info["ref_max_score"] == 1000.0
    env = make_env("dmc/reacher-easy", max_episode_steps=5)
    try:
        a, _ = env.reset(seed=7)
        b, _ = env.reset(seed=7)
        c, _ = env.reset(seed=8)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
        for _ in range(5):
            *_, terminated, truncated, _ = env.step(env.action_space.sample())
        assert truncated and not terminated
    finally:
        env.close()


def test_seed_ranges_disjoint() -> None:
    assert train_seeds(3) == [TRAIN_SEED_BASE, TRAIN_SEED_BASE + 1, TRAIN_SEED_BASE + 2]
    assert eval_seeds(2, start=5) == [EVAL_SEED_BASE + 5, EVAL_SEED_BASE + 6]
    assert max(train_seeds(10, start=EVAL_SEED_BASE - 10)) < min(eval_seeds(1))
    with pytest.raises(GenctlError):
        train_seeds(2, start=EVAL_SEED_BASE - 1)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_vector_env_seeded_reset(asynchronous: bool) -> None:
    seeds = eval_seeds(2)
    venv = make_vector_env("PointMaze_UMaze-v3", 2, seeds=seeds, asynchronous=asynchronous)
    try:
        obs, info = venv.reset()
        assert obs.shape == (2, 8) and obs.dtype == np.float32 and venv.seeds == seeds
        for i, s in enumerate(seeds):
            single = make_env("PointMaze_UMaze-v3")
            np.testing.assert_array_equal(obs[i], single.reset(seed=s)[0])
            single.close()
        obs, reward, terminated, truncated, info = venv.step(np.zeros((2, 2), np.float32))
        assert obs.shape == (2, 8) and "success" in info
    finally:
        venv.close()
