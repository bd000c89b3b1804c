"""GMPO's policy.advantage=gae: the GAE(lambda) recursion against hand-computed answers, the row bookkeeping of
episodes whose last row has no successor, and GMPO on the bimodal bandit with it (the better mode must win)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from genctl.apps.critic_report import discounted_returns
from genctl.apps.gae import gae_advantages, training_row_lengths
from genctl.apps.train import train
from genctl.config import TrainConfig, build_config
from genctl.datasets import EpisodeStore, StoreWriter, load_transitions
from genctl.errors import ConfigError
from tests.test_scale_free import _frac_good, bandit_store


def test_gae_known_answers() -> None:
    """Two episodes: the first terminates after 3 rows, the second is cut by a time limit after 2."""
    v = np.array([1.0, 2.0, 3.0, 0.5, 0.25])
    v_next = np.array([2.0, 3.0, 9.0, 0.25, 4.0])  # row 2 terminates: its V(s') must not count
    r = np.array([0.5, 0.25, 1.0, 2.0, 1.0])
    term = np.array([0, 0, 1, 0, 0])
    g, lam = 0.9, 0.5
    d = r + g * (1 - term) * v_next - v  # one-step TD errors
    a = gae_advantages(v, v_next, r, term, np.array([3, 2]), g, lam)
    want = [d[0] + g * lam * (d[1] + g * lam * d[2]), d[1] + g * lam * d[2], d[2],
            d[3] + g * lam * d[4], d[4]]  # the second episode's last row bootstraps from V(s') = 4
    np.testing.assert_allclose(a, want, rtol=1e-12)
    np.testing.assert_allclose(gae_advantages(v, v_next, r, term, np.array([3, 2]), g, 0.0), d)
    # lambda = 1 on a terminated episode telescopes to the Monte-Carlo return minus V
    a1 = gae_advantages(v[:3], v_next[:3], r[:3], term[:3], np.array([3]), g, 1.0)
    np.testing.assert_allclose(a1, discounted_returns(r[:3], np.array([3]), g) - v[:3], rtol=1e-12)
    with pytest.raises(ValueError, match="lengths sum"):
        gae_advantages(v, v_next, r, term, np.array([3, 3]), g, lam)


def test_row_lengths_match_load_transitions(tmp_path: Path) -> None:
    """Without stored next observations the last row of a non-terminated episode is dropped by
    load_transitions; the GAE's episode lengths must drop it too."""
    with StoreWriter(tmp_path / "s.zarr", {"source": {"kind": "collect"}}) as w:
        for n, ends in ((4, True), (3, False), (5, False)):
            term = np.zeros(n, bool)
            term[-1] = ends
            w.add_episode({"obs": np.arange(n, dtype=np.float32)[:, None], "action": np.zeros((n, 1), np.float32),
                           "reward": np.ones(n, np.float32), "terminated": term,
                           "truncated": np.r_[np.zeros(n - 1, bool), not ends]})
    store = EpisodeStore.open(tmp_path / "s.zarr")
    eps = np.array([0, 1, 2])
    lengths = training_row_lengths(store, eps)
    assert lengths.tolist() == [4, 2, 4]
    assert int(lengths.sum()) == len(load_transitions(store, eps)["action"])


def test_gmpo_with_gae_picks_the_better_mode(tmp_path: Path) -> None:
    """One-step episodes, so GAE = r - V(s): GMPO with it puts >= 90 % of its actions in the rewarded mode,
    and critic.json records the GAE's spread and its correlation with the Monte-Carlo advantage (exact here)."""
    store = bandit_store(tmp_path / "bandit.zarr", 1.0)
    over = [f"data.store={store}", f"out_dir={tmp_path / 'runs'}", "name=gae", "policy.algo=gmpo",
            "policy.advantage=gae", "threads=1", "device=cpu", "model.hidden=[64,32]", "model.t_cond_hidden=64",
            "critic.steps=400", "critic.batch_size=256", "critic.hidden=[64,64]", "policy.steps=500",
            "policy.batch_size=256", "policy.lr=3e-3", "data.val_frac=0", "log_every=100", "ckpt_every=10000",
            "eval.steps=16"]
    run = train(build_config(TrainConfig, overrides=over), progress=False)
    rep = json.loads((run / "critic.json").read_text())
    assert rep["gae"]["lambda"] == 0.95
    assert rep["gae"]["adv_mc_pearson"] == pytest.approx(1.0, abs=1e-6)  # one step: GAE is G - V exactly
    assert _frac_good(run) >= 0.9


def test_gae_refuses_windows(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="advantage=gae"):
        build_config(TrainConfig, overrides=["data.store=x.zarr", "policy.algo=gmpo", "policy.advantage=gae",
                                             "data.horizon=4"])
