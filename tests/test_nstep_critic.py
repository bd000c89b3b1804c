"""critic.nstep: the n-step TD columns against hand-computed answers, and an n-step IQL critic that recovers
the exact Q of a chain whose reward depends on the action; critic.json reports held-out correlations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from genctl.apps.nstep import nstep_columns
from genctl.apps.policy import LoadedPolicy
from genctl.apps.train import train
from genctl.config import TrainConfig, build_config
from genctl.datasets import StoreWriter
from genctl.errors import ConfigError


def test_nstep_known_answers() -> None:
    """Two episodes: the first terminates after 3 rows, the second is cut by a time limit after 2."""
    r = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    nxt = np.arange(5, dtype=np.float32)[:, None] + 10.0
    term = np.array([0, 0, 1, 0, 0])
    g = 0.5
    c = nstep_columns(r, nxt, term, np.array([3, 2]), g, 2)
    np.testing.assert_allclose(c["reward_n"], [1 + g * 2, 2 + g * 3, 3, 4 + g * 5, 5])
    # the window reaching a terminated row does not bootstrap; one reaching a time-limit cut does (gamma^k)
    np.testing.assert_allclose(c["discount_n"], [g ** 2, 0, 0, g ** 2, g])
    np.testing.assert_array_equal(c["next_obs_n"][:, 0], [11, 12, 12, 14, 14])
    one = nstep_columns(r, nxt, term, np.array([3, 2]), g, 1)  # n = 1 is IQL's one-step target
    np.testing.assert_allclose(one["reward_n"], r)
    np.testing.assert_allclose(one["discount_n"], g * (1 - term))
    np.testing.assert_array_equal(one["next_obs_n"], nxt)
    far = nstep_columns(r, nxt, term, np.array([3, 2]), g, 50)  # n beyond the episode: the Monte-Carlo return
    np.testing.assert_allclose(far["reward_n"][:3], [1 + g * 2 + g * g * 3, 2 + g * 3, 3])
    with pytest.raises(ValueError, match="lengths sum"):
        nstep_columns(r, nxt, term, np.array([3, 3]), g, 2)


T, GAMMA = 8, 0.9


def chain_store(path: Path, episodes: int = 400, seed: int = 0) -> Path:
    """Episodes of T steps; obs = one-hot of the step, action ~ U(-1, 1), reward = 1 + action, terminated at T.
    Under the behaviour policy with expectile 0.5: Q(t, a) = a + sum_{j < T - t} gamma^j exactly."""
    rng = np.random.default_rng(seed)
    eye = np.eye(T + 1, dtype=np.float32)
    with StoreWriter(path, {"source": {"kind": "collect"}}) as w:
        for _ in range(episodes):
            a = rng.uniform(-1, 1, size=(T, 1)).astype(np.float32)
            w.add_episode({"obs": eye[:T], "next_obs": eye[1:], "action": a, "reward": 1.0 + a[:, 0],
                           "terminated": np.r_[np.zeros(T - 1, bool), True], "truncated": np.zeros(T, bool)})
    return path


def test_nstep_critic_recovers_the_chain_q(tmp_path: Path) -> None:
    store = chain_store(tmp_path / "chain.zarr")
    over = [f"data.store={store}", f"out_dir={tmp_path / 'runs'}", "name=n3", "policy.algo=bc", "policy.steps=0",
            "threads=1", "device=cpu", "data.reward_scale=1", "data.val_frac=0.1", "critic.nstep=3",
            "critic.expectile=0.5", f"critic.gamma={GAMMA}", "critic.steps=1500", "critic.batch_size=256",
            "critic.hidden=[64,64]", "log_every=500", "ckpt_every=10000"]
    run = train(build_config(TrainConfig, overrides=over), progress=False)
    pol = LoadedPolicy.from_run(run)
    t = np.repeat(np.arange(T), 3)
    a = np.tile([-0.8, 0.0, 0.8], T)[:, None].astype(np.float32)
    q, _ = pol.q_v(np.eye(T + 1, dtype=np.float32)[t], a)
    want = a[:, 0] + (1 - GAMMA ** (T - t)) / (1 - GAMMA)
    np.testing.assert_allclose(q, want, atol=0.2)
    slope = np.polyfit(a[:, 0], q - want + a[:, 0], 1)[0]  # Q ranks actions: dQ/da = 1
    assert slope == pytest.approx(1.0, abs=0.1)
    rep = json.loads((run / "critic.json").read_text())
    assert rep["heldout"]["n_mc"] == 40 * T  # 10 % of 400 episodes, never trained on
    assert rep["heldout"]["q_mc_pearson"] > 0.8


def test_nstep_refuses_out_of_core() -> None:
    with pytest.raises(ConfigError, match="critic.nstep"):
        build_config(TrainConfig, overrides=["data.store=x.zarr", "critic.nstep=3", "data.cache_gb=1",
                                             "data.obs_keys=[image/top]"])


def test_nstep_default_and_saved_configs() -> None:
    """10 by default, 1 for out-of-core camera data; a config saved before the field existed keeps its one-step
    critic (a resume must not change the critic's target)."""
    from genctl.config import migrate_saved

    assert build_config(TrainConfig, overrides=["data.store=x.zarr"]).critic_nstep == 10
    ooc = build_config(TrainConfig, overrides=["data.store=x.zarr", "data.cache_gb=1", "data.obs_keys=[image/top]"])
    assert ooc.critic_nstep == 1
    cam = build_config(TrainConfig, overrides=["data.store=x.zarr", "data.obs_keys=[obs/observation,image/top]"])
    assert cam.critic_nstep == 1
    old = build_config(TrainConfig, base=migrate_saved({"data": {"store": "x.zarr"}, "critic": {"steps": 100}}))
    assert old.critic_nstep == 1
