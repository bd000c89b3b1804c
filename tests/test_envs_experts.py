"""Scripted experts: success rates (small in CI, the full >=95% / >=90% measurement slow), multimodal routes."""

from __future__ import annotations

import numpy as np
import pytest

from genctl.apps.collect import expert_success_rate, run_expert
from genctl.envs import expert_descriptions, expert_names, make_env, make_expert
from genctl.errors import GenctlError


@pytest.mark.parametrize(("env_id", "expert", "episodes", "minimum"), [
    ("PointMaze_UMaze-v3", "maze", 10, 0.9),
    ("PointMaze_Medium-v3", "maze", 8, 0.85),
    ("FetchReach-v4", "fetch", 5, 0.8),
    ("FetchPickAndPlace-v4", "fetch", 8, 0.75),
])
def test_expert_success_small(env_id: str, expert: str, episodes: int, minimum: float) -> None:
    r = run_expert(env_id, expert, episodes, seed=100)
    print(f"{env_id} {expert}: success {r['success_rate']:.2f} over {episodes} episodes")
    assert r["success_rate"] >= minimum


@pytest.mark.slow
@pytest.mark.parametrize(("env_id", "expert", "episodes", "minimum"), [
    ("PointMaze_UMaze-v3", "maze", 100, 0.95),
    ("PointMaze_Medium-v3", "maze", 200, 0.95),
    ("PointMaze_Large-v3", "maze", 200, 0.95),
    ("PointMaze_Large_Diverse_GR-v3", "maze", 100, 0.95),
    ("FetchPickAndPlace-v4", "fetch", 200, 0.90),
    ("FetchPush-v4", "fetch", 100, 0.80),
    ("FetchReach-v4", "fetch", 100, 0.99),
])
def test_expert_success_full(env_id: str, expert: str, episodes: int, minimum: float) -> None:
    rate = expert_success_rate(env_id, expert, episodes, seed=0)
    print(f"{env_id} {expert}: success {rate:.3f} over {episodes} episodes")
    assert rate >= minimum


def test_maze_terminates_with_reward_one() -> None:
    """genctl's PointMaze default is episodic: reaching the goal ends the episode with reward 1."""
    r = run_expert("PointMaze_UMaze-v3", "maze", 3, seed=0)
    assert r["success_rate"] == 1.0 and r["mean_return"] == 1.0 and r["mean_length"] < 300


def test_maze_routes_are_multimodal() -> None:
    env = make_env("PointMaze_Medium-v3")
    try:
        expert = make_expert("maze", env)
        obs, info = env.reset(seed=0, options={"reset_cell": np.array([1, 1]), "goal_cell": np.array([6, 6])})
        routes = set()
        for k in range(20):
            expert.reset(obs, info, np.random.default_rng(k))
            routes.add(tuple(map(tuple, np.round(expert.waypoints, 3))))
        assert len(routes) >= 2
    finally:
        env.close()


def test_expert_names_and_errors() -> None:
    names = expert_names()
    assert {"maze", "fetch", "random", "auto"} <= set(names)
    assert "AntMaze" in names["maze"] and any("antmaze" in k for k in expert_descriptions())
    ant = make_env("AntMaze_UMaze-v5")
    fetch = make_env("FetchReach-v4")
    try:
        for name in ("auto", "maze", "antmaze"):
            with pytest.raises(GenctlError, match="no scripted"):
                make_expert(name, ant)
        with pytest.raises(GenctlError, match="PointMaze"):
            make_expert("maze", fetch)
        with pytest.raises(GenctlError, match="unknown expert"):
            make_expert("nope", fetch)
        assert make_expert("pointmaze", make_env("PointMaze_Open-v3")).name == "maze"
        rnd = make_expert("random", ant)
        rnd.reset(None, {}, np.random.default_rng(0))
        a = rnd.act(None, {})
        assert a.shape == ant.action_space.shape and ant.action_space.contains(a)
    finally:
        ant.close()
        fetch.close()
