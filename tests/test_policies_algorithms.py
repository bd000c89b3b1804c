"""Critic, GMPO weights, EMA, and BC/GMPO/GMPG on a one-step problem with a known better mode."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genctl.policies import (
    EMA,
    IQLCritic,
    expectile_loss,
    gmpo_weights,
    make_algorithm,
    make_generative_model,
)


def test_gmpo_weights_formula() -> None:
    q = torch.tensor([0.0, 1.0, 2.0, 10.0, 1e4])
    v = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
    w = gmpo_weights(q, v, beta=2.0, clamp=100.0)
    expect = torch.tensor([1.0, math.exp(2.0), math.exp(2.0), 100.0, 100.0])
    assert torch.allclose(w, expect) and torch.isfinite(w).all()
    assert torch.allclose(gmpo_weights(q, v, beta=0.5, clamp=1e9), torch.exp(0.5 * (q - v)).clamp(max=1e9))


def test_expectile_loss_known_values() -> None:
    u = torch.tensor([1.0, -2.0])
    # 0.7 * 1 for the positive residual, 0.3 * 4 for the negative one, averaged
    assert torch.isclose(expectile_loss(u, 0.7), torch.tensor((0.7 * 1 + 0.3 * 4) / 2))
    # the minimiser over a constant is the tau-expectile: for {-1, +1}, tau (1 - m) = (1 - tau)(1 + m)
    vals = torch.tensor([-1.0, 1.0])
    m = torch.linspace(-1, 1, 2001)
    losses = torch.stack([expectile_loss(vals - mi, 0.7) for mi in m])
    assert abs(m[losses.argmin()].item() - 0.4) < 2e-3


def test_ema_tracks_average_and_copies_buffers() -> None:
    net = nn.Linear(2, 1)
    net.register_buffer("scale", torch.ones(1))
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.scale.fill_(3.0)
    ema.update(net)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.1))
    ema.update(net)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.19))
    assert ema.module.scale.item() == 3.0 and not ema.module.weight.requires_grad
    other = EMA(net, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.module.weight, ema.module.weight)


def test_critic_update_order_and_polyak() -> None:
    torch.manual_seed(0)
    critic = IQLCritic(3, 2, hidden=(16, 16), tau=0.5, lr=1e-2)
    b = {"obs": torch.randn(64, 3), "action": torch.randn(64, 2), "reward": torch.randn(64),
         "next_obs": torch.randn(64, 3), "terminal": torch.zeros(64)}
    target0 = [p.clone() for p in critic.q_target.parameters()]
    metrics = critic.update(b)
    assert set(metrics) >= {"q_loss", "v_loss"}
    for p0, pt, pq in zip(target0, critic.q_target.parameters(), critic.q_net.parameters(), strict=True):
        assert torch.allclose(pt, 0.5 * p0 + 0.5 * pq)  # Polyak after the Q step
    assert critic.q(b["obs"], b["action"]).shape == (64,) and critic.v(b["obs"]).shape == (64,)
    assert set(critic.optimizers()) == {"q", "v"}


# ------------------------------------------------------------------ one-step bimodal toy
def toy_batch(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Actions at -1 or +1 (50/50, small spread) at random states; reward = action, episode ends."""
    s = torch.randn(n, 1, generator=gen)
    a = torch.where(torch.rand(n, 1, generator=gen) < 0.5, -1.0, 1.0) + 0.1 * torch.randn(n, 1, generator=gen)
    return {"obs": s, "action": a, "reward": a[:, 0], "next_obs": torch.randn(n, 1, generator=gen),
            "terminal": torch.ones(n)}


@pytest.fixture(scope="module")
def toy() -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    critic = IQLCritic(1, 1, hidden=(64, 64), lr=3e-3)
    for _ in range(400):
        critic.update(toy_batch(256, gen))
    bc_model = make_generative_model("gvp", 1, 1, hidden=[64, 32], t_cond_hidden=64)
    bc = make_algorithm("bc", bc_model, lr=3e-3)
    for _ in range(600):
        bc.update(toy_batch(256, gen))
    return {"critic": critic, "bc": bc_model, "gen": gen}


def frac_good(model, gen: torch.Generator) -> float:
    a = model.sample(torch.randn(2000, 1, generator=gen), steps=32, generator=gen)
    return (a > 0).float().mean().item()


def test_critic_learns_toy_values(toy: dict) -> None:
    critic = toy["critic"]
    s = torch.zeros(3, 1)
    q = critic.q(s, torch.tensor([[-1.0], [0.0], [1.0]]))
    assert abs(q[0].item() + 1) < 0.15 and abs(q[2].item() - 1) < 0.15 and q[0] < q[1] < q[2]
    assert (critic.v(s) - 0.4).abs().max() < 0.15  # the 0.7-expectile of a 50/50 mix of -1 and +1


def test_critic_in_bf16_autocast_learns_the_same_toy_values() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    critic = IQLCritic(1, 1, hidden=(64, 64), lr=3e-3, amp=True)
    for _ in range(400):
        m = critic.update(toy_batch(256, gen))
    assert all(isinstance(v, float) for v in m.values())
    assert all(p.dtype == torch.float32 for p in critic.parameters())
    s = torch.zeros(3, 1)
    q = critic.q(s, torch.tensor([[-1.0], [0.0], [1.0]]))
    assert q.dtype == torch.float32
    assert abs(q[0].item() + 1) < 0.15 and abs(q[2].item() - 1) < 0.15 and q[0] < q[1] < q[2]
    assert (critic.v(s) - 0.4).abs().max() < 0.15


def test_update_without_sync_returns_device_tensors_with_the_same_values() -> None:
    gen = torch.Generator().manual_seed(1)
    b = toy_batch(64, gen)
    c1, c2 = IQLCritic(1, 1, hidden=(8, 8)), IQLCritic(1, 1, hidden=(8, 8))
    c2.load_state_dict(c1.state_dict())
    floats, lazy = c1.update(b), c2.update(b, sync=False)
    assert set(floats) == set(lazy) and all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in lazy.values())
    assert all(abs(floats[k] - lazy[k].item()) < 1e-6 for k in floats)
    model = make_generative_model("gvp", 1, 1, hidden=[8, 8])
    out = make_algorithm("bc", model, grad_clip=1.0).update(b, sync=False)
    assert set(out) == {"loss", "grad_norm"} and all(isinstance(v, torch.Tensor) for v in out.values())


def test_bc_stays_bimodal(toy: dict) -> None:
    assert 0.4 < frac_good(toy["bc"], toy["gen"]) < 0.6


def test_gmpo_prefers_better_mode(toy: dict) -> None:
    torch.manual_seed(1)
    model = make_generative_model("gvp", 1, 1, hidden=[64, 32], t_cond_hidden=64)
    algo = make_algorithm("gmpo", model, critic=toy["critic"], beta=3.0, clamp=100.0, lr=3e-3)
    for _ in range(600):
        m = algo.update(toy_batch(256, toy["gen"]))
    assert m["weight_mean"] > 0
    assert frac_good(model, toy["gen"]) >= 0.9


def test_gmpg_prefers_better_mode(toy: dict) -> None:
    """Reverse-KL to a bimodal mu: mass must cross mu's low-density gap, so beta must beat the KL barrier
    (with the exact sampler density there is no estimator error for the policy to exploit instead)."""
    torch.manual_seed(2)
    mu = toy["bc"]
    policy = make_generative_model(**mu.config())
    algo = make_algorithm("gmpg", policy, critic=toy["critic"], behaviour=mu, beta=20.0, sample_steps=8,
                          exact_trace=True, checkpoint=False, lr=1e-3, grad_clip=10.0)
    assert torch.equal(policy.backbone.out.weight, mu.backbone.out.weight)  # initialised from mu
    mu_before = [p.clone() for p in mu.parameters()]
    first = algo.update(toy_batch(128, toy["gen"]))
    for _ in range(79):
        m = algo.update(toy_batch(128, toy["gen"]))
    assert math.isfinite(m["loss"]) and m["kl_bits_per_dim"] > 0 and "grad_norm" in m
    assert all(torch.equal(a, b) for a, b in zip(mu_before, mu.parameters(), strict=True))  # mu untouched
    assert all(p.requires_grad for p in toy["critic"].q_net.parameters())  # frozen only inside update()
    assert frac_good(policy, toy["gen"]) >= 0.9
    # its own actions now sit above V in the critic's eyes; at the start (mu's mixture) they did not
    assert m["adv_mean"] > 0 > first["adv_mean"]


def test_gmpg_checkpointing_gives_same_gradients() -> None:
    torch.manual_seed(0)
    mu = make_generative_model("vpsde", 2, 3, hidden=[16, 8], vpsde_target="velocity").double()
    critic = IQLCritic(3, 2, hidden=(8, 8)).double()
    obs = torch.randn(16, 3, dtype=torch.float64)
    grads = []
    for ck, exact in [(False, True), (True, True), (False, False), (True, False)]:
        policy = make_generative_model(**mu.config()).double()
        algo = make_algorithm("gmpg", policy, critic=critic, behaviour=mu, sample_steps=3, solver="heun",
                              exact_trace=exact, checkpoint=ck)
        torch.manual_seed(5)  # same starting noise and probes
        algo.update({"obs": obs})  # one step: params change, so compare the gradients it used
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1]) and torch.allclose(grads[2], grads[3])
    assert not torch.allclose(grads[0], grads[2])


def test_gmpg_kl_subbatch_uses_same_trajectory() -> None:
    """Densities for the first m rows are those of the full computation (same samples, same log-densities)."""
    torch.manual_seed(0)
    model = make_generative_model("gvp", 2, 3, hidden=[16, 8]).double()
    cond, z = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    for exact in (True, False):
        full = model.sample_with_log_prob(cond, noise=z, steps=4, exact_trace=exact,
                                          generator=torch.Generator().manual_seed(3))
        part = model.sample_with_log_prob(cond, noise=z, steps=4, exact_trace=exact, density_rows=2,
                                          generator=torch.Generator().manual_seed(3))
        assert torch.allclose(full[0], part[0]) and part[1].shape == (2,)
        if exact:  # Hutchinson draws probes for m rows only, so only the exact mode is comparable row-wise
            assert torch.allclose(full[1][:2], part[1])
    mu = make_generative_model(**model.config()).double()
    critic = IQLCritic(3, 2, hidden=(8, 8)).double()
    algo = make_algorithm("gmpg", model, critic=critic, behaviour=mu, sample_steps=3, kl_batch=2)
    assert math.isfinite(algo.update({"obs": cond})["loss"])


def test_gmpg_q_lcb_subtracts_the_ensemble_spread() -> None:
    """q_lcb = k: the loss is the mean-Q loss plus beta * k * mean(std over members) / scale, on the same
    trajectory (same noise); the gradient then differs; a single critic is refused."""
    torch.manual_seed(0)
    mu = make_generative_model("gvp", 2, 3, hidden=[16, 8]).double()
    critic = IQLCritic(3, 2, hidden=(8, 8), ensemble=3).double()
    obs = torch.randn(32, 3, dtype=torch.float64)
    out = {}
    for k in (0.0, 1.5):
        algo = make_algorithm("gmpg", make_generative_model(**mu.config()).double(), critic=critic, behaviour=mu,
                              beta=2.0, sample_steps=3, q_lcb=k)
        algo.adv_scale = 0.5
        torch.manual_seed(5)
        with torch.no_grad():
            out[k] = algo._loss(obs)
    spread = out[0.0][1]["q_spread"]  # mean std over members, in advantage spreads
    assert spread > 0
    assert torch.allclose(out[1.5][0], out[0.0][0] + 2.0 * 1.5 * spread)
    assert torch.allclose(out[1.5][1]["adv_mean"], out[0.0][1]["adv_mean"])  # A_n reports the mean Q
    with pytest.raises(ValueError, match="critic.ensemble >= 2"):
        make_algorithm("gmpg", make_generative_model(**mu.config()).double(), critic=IQLCritic(3, 2).double(),
                       behaviour=mu, q_lcb=1.0)


def test_bf16_autocast_matching_loss_trains() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = make_generative_model("gvp", 1, 1, hidden=[32, 16], t_cond_hidden=32)
    algo = make_algorithm("bc", model, lr=3e-3, amp=True)
    losses = [algo.update(toy_batch(256, gen))["loss"] for _ in range(150)]
    assert all(math.isfinite(x) for x in losses) and sum(losses[-20:]) < sum(losses[:20])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    mu = make_generative_model(**model.config())
    critic = IQLCritic(1, 1, hidden=(8, 8))
    gmpg = make_algorithm("gmpg", make_generative_model(**model.config()), critic=critic, behaviour=mu,
                          sample_steps=4, amp=True, kl_batch=64)
    assert math.isfinite(gmpg.update(toy_batch(128, gen))["loss"])
    # the bf16 solve stays close to the fp32 one (fp32 solver state and log-determinants)
    z, s = torch.randn(256, 1, generator=gen), torch.randn(256, 1, generator=gen)
    with torch.no_grad():
        x32, lp32 = mu.sample_with_log_prob(s, noise=z, steps=8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x16, lp16 = mu.sample_with_log_prob(s, noise=z, steps=8)
    assert lp16.dtype == torch.float32 and (lp16 - lp32).abs().max() < 0.05 and (x16 - x32).abs().max() < 0.05
