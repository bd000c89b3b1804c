"""critic.ensemble=K: K independently initialised IQL critics trained side by side, read as their mean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_policies_algorithms import toy_batch
from test_scale_free import bandit_store

from genctl.apps.policy import LoadedPolicy
from genctl.apps.train import train
from genctl.config import TrainConfig, build_config
from genctl.errors import ConfigError
from genctl.policies import IQLCritic


def members_as_ensemble(singles: list[IQLCritic]) -> IQLCritic:
    """An ensemble whose member k holds critic k's weights (twins -> rows 2k, 2k+1; V's Linear -> member k)."""
    k = len(singles)
    ens = IQLCritic(3, 2, hidden=(16, 16), tau=0.5, lr=1e-2, ensemble=k)
    with torch.no_grad():
        for name in ("q_net", "q_target"):
            for i in range(len(ens.q_net.weights)):
                getattr(ens, name).weights[i].copy_(torch.cat([getattr(c, name).weights[i] for c in singles]))
                getattr(ens, name).biases[i].copy_(torch.cat([getattr(c, name).biases[i] for c in singles]))
        linears = [[m for m in c.v_net if isinstance(m, torch.nn.Linear)] for c in singles]
        for i in range(len(ens.v_net.weights)):
            ens.v_net.weights[i].copy_(torch.stack([lin[i].weight.T for lin in linears]))
            ens.v_net.biases[i].copy_(torch.stack([lin[i].bias[None] for lin in linears]))
    return ens


def test_an_ensemble_trains_each_member_exactly_as_it_would_train_alone() -> None:
    """Known answer: member k of the ensemble after N updates == critic k trained alone on the same batches
    (its own TD targets from its own V, its own gradient scale), and Q / V are the members' means."""
    torch.manual_seed(0)
    singles = [IQLCritic(3, 2, hidden=(16, 16), tau=0.5, lr=1e-2) for _ in range(3)]
    ens = members_as_ensemble(singles)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        b = {"obs": torch.randn(64, 3, generator=gen), "action": torch.randn(64, 2, generator=gen),
             "reward": torch.randn(64, generator=gen), "next_obs": torch.randn(64, 3, generator=gen),
             "terminal": (torch.rand(64, generator=gen) < 0.2).float()}
        losses = [c.update(b) for c in singles]
        m = ens.update(b)
    assert m["q_loss"] == pytest.approx(sum(x["q_loss"] for x in losses) / 3, rel=1e-4)
    obs, act = torch.randn(32, 3), torch.randn(32, 2)
    q_k = torch.stack([c.q(obs, act) for c in singles])
    v_k = torch.stack([c.v(obs) for c in singles])
    torch.testing.assert_close(ens.q_members(obs, act), q_k, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ens.v_members(obs), v_k, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ens.q(obs, act), q_k.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ens.v(obs), v_k.mean(0), rtol=1e-4, atol=1e-5)
    assert (q_k[0] - q_k[1]).abs().max() > 1e-3  # the members are really different critics


def test_ensemble_learns_the_toy_values_and_one_member_keeps_the_old_layout() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    critic = IQLCritic(1, 1, hidden=(64, 64), lr=3e-3, ensemble=3)
    for _ in range(400):
        critic.update(toy_batch(256, gen))
    s = torch.zeros(3, 1)
    q = critic.q(s, torch.tensor([[-1.0], [0.0], [1.0]]))
    assert abs(q[0].item() + 1) < 0.15 and abs(q[2].item() - 1) < 0.15 and q[0] < q[1] < q[2]
    assert (critic.v(s) - 0.4).abs().max() < 0.15
    # ensemble=1 is the plain critic: saved checkpoints keep loading
    assert {k for k in IQLCritic(1, 1, hidden=(8, 8)).state_dict() if k.startswith("v_net")} == {
        "v_net.0.weight", "v_net.0.bias", "v_net.2.weight", "v_net.2.bias", "v_net.4.weight", "v_net.4.bias"}
    with pytest.raises(ValueError, match="ensemble"):
        IQLCritic(1, 1, ensemble=0)


def test_ensemble_critic_through_train_load_and_from_run(tmp_path: Path) -> None:
    store = bandit_store(tmp_path / "b.zarr", 1.0, n=300)
    base = [f"data.store={store}", f"out_dir={tmp_path / 'runs'}", "threads=1", "device=cpu", "model.hidden=[32,32]",
            "model.t_cond_hidden=32", "critic.hidden=[32,32]", "critic.batch_size=64", "critic.steps=30",
            "policy.batch_size=64", "data.val_frac=0", "ckpt_every=10000", "log_every=10"]
    src = train(build_config(TrainConfig, overrides=[*base, "name=ens", "policy.steps=0", "critic.ensemble=3"]),
                progress=False)
    critic = LoadedPolicy.from_run(src).critic
    ens = json.loads((src / "critic.json").read_text())["ensemble"]  # do the members agree on the advantage?
    assert ens["members"] == 3 and -1 <= ens["adv_pairwise_pearson"] <= 1 and len(ens["member_adv_mc_pearson"]) == 3
    assert critic is not None and critic.ensemble == 3 and critic.q_net.weights[0].shape[0] == 6
    run = train(build_config(TrainConfig, overrides=[*base, "name=gmpo", "policy.steps=10", "critic.ensemble=3",
                                                     f"critic.from_run={src}"]), progress=False)
    assert torch.equal(LoadedPolicy.from_run(run).critic.v_net.weights[0], critic.v_net.weights[0])
    with pytest.raises(ConfigError, match="critic.ensemble"):
        train(build_config(TrainConfig, overrides=[*base, "name=x", f"critic.from_run={src}"]), progress=False)
