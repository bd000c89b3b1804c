"""Defaults that travel: the advantage enters GMPO/GMPG in units of its own spread, rewards are scaled by the
return span, so multiplying a dataset's rewards by 1000 changes nothing. Plus the critic report and the
deployment-time action selection (best-of-N by Q, deterministic)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from genctl.apps.critic_report import critic_report, discounted_returns, policy_advantage
from genctl.apps.policy import LoadedPolicy
from genctl.apps.train import resume, train
from genctl.config import TrainConfig, build_config
from genctl.datasets import StoreWriter
from genctl.errors import ConfigError
from genctl.policies import IQLCritic, make_algorithm, make_generative_model


def bandit_store(path: Path, reward_unit: float, n: int = 1500, seed: int = 0) -> Path:
    """One-step episodes: state ~ N(0, 1), action -1 or +1 (50/50, spread 0.1), reward = unit * action."""
    rng = np.random.default_rng(seed)
    with StoreWriter(path, {"source": {"kind": "collect"}}) as w:
        for _ in range(n):
            a = (1.0 if rng.random() < 0.5 else -1.0) + 0.1 * rng.normal()
            o = rng.normal(size=(2, 1)).astype(np.float32)
            w.add_episode({"obs": o[:1], "next_obs": o[1:], "action": np.array([[a]], np.float32),
                           "reward": np.array([reward_unit * a], np.float32),
                           "terminated": np.array([True]), "truncated": np.array([False])})
    return path


def _train_bandit(tmp: Path, unit: float, algo: str = "gmpo") -> Path:
    store = bandit_store(tmp / f"bandit{unit:g}.zarr", unit)
    over = [f"data.store={store}", f"out_dir={tmp / 'runs'}", f"name={algo}-{unit:g}", f"policy.algo={algo}",
            "threads=1", "device=cpu", "model.hidden=[64,32]", "model.t_cond_hidden=64", "critic.steps=400",
            "critic.batch_size=256", "critic.hidden=[64,64]", "policy.steps=500", "policy.batch_size=256",
            "policy.lr=3e-3", "data.val_frac=0", "log_every=100", "ckpt_every=10000", "eval.steps=16"]
    return train(build_config(TrainConfig, overrides=over), progress=False)


def _frac_good(run: Path) -> float:
    pol = LoadedPolicy.from_run(run)
    gen = torch.Generator().manual_seed(0)
    a = pol.act(np.random.default_rng(1).normal(size=(2000, 1)).astype(np.float32), generator=gen)
    return float((a > 0).mean())


def _own_advantage(run: Path, critic_json: dict) -> dict[str, float]:
    pol = LoadedPolicy.from_run(run)
    states = np.random.default_rng(2).normal(size=(2000, 1)).astype(np.float32)
    return policy_advantage(pol, pol, states, critic_json["advantage"])


def test_default_gmpo_is_invariant_to_reward_units(tmp_path: Path) -> None:
    """Defaults only (beta, clamp, reward scale, critic schedule): the better mode wins, identically for
    rewards in units and in thousandths."""
    r1, r1000 = _train_bandit(tmp_path, 1.0), _train_bandit(tmp_path, 1000.0)
    c1 = json.loads((r1 / "critic.json").read_text())
    c1000 = json.loads((r1000 / "critic.json").read_text())
    # the scaled rewards are the same numbers, so the critic and its advantage spread are too
    assert c1000["advantage"]["std"] == pytest.approx(c1["advantage"]["std"], rel=1e-3)
    f1, f1000 = _frac_good(r1), _frac_good(r1000)
    assert f1 >= 0.9 and f1000 >= 0.9
    assert abs(f1 - f1000) <= 0.02
    # the policy's own actions, judged by its critic in units of the logged actions' spread: the two modes sit
    # at about -1 and +1 spread (a 50/50 two-point advantage), so mostly-good actions score near +1, in either unit
    a1, a1000 = (_own_advantage(r, c) for r, c in ((r1, c1), (r1000, c1000)))
    assert 0.6 <= a1["adv_n_mean"] <= 1.2 and a1["above_v"] >= 0.85
    assert a1000["adv_n_mean"] == pytest.approx(a1["adv_n_mean"], abs=0.1)


def test_advantage_normalisation_makes_weights_unit_free() -> None:
    """The same critic with Q and V in units x1000 (last layers scaled): raw weights saturate the clamp,
    normalised weights are identical."""
    torch.manual_seed(0)
    critic = IQLCritic(3, 2, hidden=(16, 16))
    big = IQLCritic(3, 2, hidden=(16, 16))
    big.load_state_dict(critic.state_dict())
    with torch.no_grad():  # output layers x1000 -> Q and V x1000 exactly
        last_v = [m for m in big.v_net.modules() if isinstance(m, torch.nn.Linear)][-1]
        for p in [big.q_net.weights[-1], big.q_net.biases[-1], last_v.weight, last_v.bias]:
            p.mul_(1000.0)
    obs, act = torch.randn(512, 3), torch.rand(512, 2) * 2 - 1
    weights = []
    for c in (critic, big):
        model = make_generative_model("gvp", 2, 3, hidden=[16, 16], t_cond_hidden=16)
        algo = make_algorithm("gmpo", model, critic=c, beta=1.0, clamp=100.0)
        a = (c.q(obs, act) - c.v(obs)).detach().numpy()
        algo.set_advantage_scale(float(a.mean()), float(a.std()))
        weights.append(algo.loss({"obs": obs, "action": act})[1]["weight_mean"].item())
    assert weights[0] == pytest.approx(weights[1], rel=1e-4)


def test_beta_defaults_and_reference_mode() -> None:
    cfg = build_config(TrainConfig, overrides=["policy.algo=gmpo"])
    assert cfg.policy.adv_norm == "std" and cfg.policy.resolved_beta() == 10.0
    assert build_config(TrainConfig, overrides=["policy.algo=gmpg"]).policy.resolved_beta() == 1.0
    with pytest.raises(ConfigError, match="policy.beta explicitly"):
        build_config(TrainConfig, overrides=["policy.algo=gmpo", "policy.adv_norm=none"])
    ref = build_config(TrainConfig, overrides=["policy.adv_norm=none", "policy.beta=3", "data.reward_scale=return_range"])
    assert ref.policy.resolved_beta() == 3.0


def test_discounted_returns_known_answer() -> None:
    g = discounted_returns(np.array([1.0, 0.0, 2.0, 1.0, 1.0]), np.array([3, 2]), 0.5)
    assert np.allclose(g, [1.5, 1.0, 2.0, 1.5, 1.0])


def test_critic_report_correlations() -> None:
    rng = np.random.default_rng(0)
    g = rng.normal(size=1000)
    v = g + 0.1 * rng.normal(size=1000)
    rep = critic_report(g.copy(), v, g, np.ones(1000, bool))
    assert rep["q_mc_pearson"] == pytest.approx(1.0) and rep["v_mc_pearson"] > 0.99
    assert rep["advantage"]["std"] == pytest.approx(np.std(g - v))


def test_q_selection_and_deterministic_sampling(tmp_path: Path) -> None:
    """select=q executes the best-Q candidate (the better mode at every state, even under BC-like data);
    temperature 0 gives one repeatable action per state."""
    run = _train_bandit(tmp_path, 1.0)
    pol = LoadedPolicy.from_run(run)
    obs = np.random.default_rng(2).normal(size=(200, 1)).astype(np.float32)
    pol.configure(select="q", candidates=8)
    a = pol.act(obs, generator=torch.Generator().manual_seed(0))
    sel = pol.last_selection
    assert sel is not None and sel["candidates"].shape == (200, 8, 1)
    assert np.array_equal(sel["chosen"], sel["q"].argmax(1))
    assert np.allclose(a, sel["candidates"][np.arange(200), sel["chosen"]])
    assert (a > 0).mean() >= 0.99
    pol.configure(select="sample", temperature=0.0)
    d1 = pol.act(obs, generator=torch.Generator().manual_seed(0))
    d2 = pol.act(obs, generator=torch.Generator().manual_seed(5))
    assert np.array_equal(d1, d2)
    assert pol.deployment() == {"select": "sample", "candidates": 1, "temperature": 0.0, "bf16_sampler": False}


def test_critic_from_run_is_reused_not_retrained(tmp_path: Path) -> None:
    """critic.from_run: the policy run starts from the other run's critic (identical weights, no critic steps),
    writes its own critic.json naming the source, and refuses a critic trained on other inputs."""
    store = bandit_store(tmp_path / "b.zarr", 1.0, n=300)
    base = [f"data.store={store}", f"out_dir={tmp_path / 'runs'}", "threads=1", "device=cpu", "model.hidden=[32,32]",
            "model.t_cond_hidden=32", "critic.hidden=[32,32]", "critic.batch_size=64", "critic.steps=30",
            "policy.batch_size=64", "data.val_frac=0", "ckpt_every=10000", "log_every=10"]
    src = train(build_config(TrainConfig, overrides=[*base, "name=critic", "policy.steps=0"]), progress=False)
    assert (src / "critic.json").exists()
    run = train(build_config(TrainConfig, overrides=[*base, "name=gmpo", "policy.steps=20",
                                                     f"critic.from_run={src}"]), progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"policy"}
    mine, theirs = LoadedPolicy.from_run(run).critic, LoadedPolicy.from_run(src).critic
    for k, t in theirs.state_dict().items():
        assert torch.equal(mine.state_dict()[k], t), k
    rep = json.loads((run / "critic.json").read_text())
    assert rep["from_run"].startswith(str(src.resolve()))
    assert rep["advantage"] == json.loads((src / "critic.json").read_text())["advantage"]
    other = bandit_store(tmp_path / "b1000.zarr", 1000.0, n=300)
    with pytest.raises(ConfigError, match="store"):
        train(build_config(TrainConfig, overrides=[*base, f"data.store={other}", "name=x", f"critic.from_run={src}"]),
              progress=False)
    with pytest.raises(ConfigError, match="critic.gamma"):
        train(build_config(TrainConfig, overrides=[*base, "name=y", "critic.gamma=0.9", f"critic.from_run={src}"]),
              progress=False)
    # a resumed run needs only its own checkpoint, not the source run
    cut = train(build_config(TrainConfig, overrides=[*base, "name=cut", "policy.steps=20", f"critic.from_run={src}"]),
                progress=False, stop_after=8)
    shutil.copytree(src, tmp_path / "src-moved")
    shutil.rmtree(src)
    resume(cut, progress=False)
    assert json.loads(sorted((cut / "checkpoints").glob("step-*/meta.json"))[-1].read_text())["finished"]
    src = tmp_path / "src-moved"
    bc = train(build_config(TrainConfig, overrides=[*base, "name=bc", "policy.algo=bc", "critic.steps=0",
                                                    "policy.steps=5"]), progress=False)
    with pytest.raises(ConfigError, match="no critic"):
        train(build_config(TrainConfig, overrides=[*base, "name=z", f"critic.from_run={bc}"]), progress=False)
