"""Generative models: fits with known answers, exact log-densities, sampler API."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from genctl.policies import GenerativeModel, make_algorithm, make_generative_model
from genctl.policies.paths import PATHS

KINDS = [("gvp", "velocity"), ("icfm", "velocity"), ("vpsde", "noise"), ("vpsde", "velocity")]

# ------------------------------------------------------------------ 2-D mixture of Gaussians: moments, modes
CENTERS = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
WEIGHTS = torch.tensor([0.4, 0.3, 0.2, 0.1])
STD = 0.3


def mog(n: int, gen: torch.Generator) -> Tensor:
    k = torch.multinomial(WEIGHTS, n, replacement=True, generator=gen)
    return CENTERS[k] + STD * torch.randn(n, 2, generator=gen)


@pytest.mark.parametrize("kind,target", KINDS)
def test_fits_mixture_moments_and_mode_weights(kind: str, target: str) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = make_generative_model(kind, 2, 0, hidden=[64, 32], t_cond_hidden=64, vpsde_target=target)
    algo = make_algorithm("bc", model, lr=3e-3)
    opt = algo.optimizers()["policy"]
    steps = 1500
    for i in range(steps):
        for g in opt.param_groups:
            g["lr"] = 3e-3 * (1 - 0.9 * i / steps)
        algo.update({"action": mog(256, gen), "obs": None})
    s = model.sample(None, n=4000, steps=32, solver="heun", generator=torch.Generator().manual_seed(1))
    assert s.shape == (4000, 2) and torch.isfinite(s).all()
    mode = torch.cdist(s, CENTERS).argmin(1)
    frac = torch.bincount(mode, minlength=4).float() / len(s)
    assert torch.allclose(frac, WEIGHTS, atol=0.05), frac
    true_mean = (WEIGHTS[:, None] * CENTERS).sum(0)
    true_std = ((WEIGHTS[:, None] * CENTERS**2).sum(0) + STD**2 - true_mean**2).sqrt()
    assert torch.allclose(s.mean(0), true_mean, atol=0.15), s.mean(0)
    assert torch.allclose(s.std(0), true_std, atol=0.12), s.std(0)
    # I-CFM's data end is the data smoothed by N(0, sigma^2): its within-mode spread is sqrt(0.3^2 + 0.1^2)
    within_true = math.hypot(STD, 0.1) if kind == "icfm" else STD
    for i in range(4):
        within = (s[mode == i] - CENTERS[i]).std().item()
        assert abs(within - within_true) < 0.07, (i, within)


# ------------------------------------------------------------------ exact log-density with a closed-form field
class GaussianOracle(nn.Module):
    """The exact network output for data N(m, R diag(s^2) R^T) on ``path``: the velocity
    a' m + (a a' Sigma + b b')(a^2 Sigma + b^2)^-1 (x - a m), or E[eps | x] = b (a^2 Sigma + b^2)^-1 (x - a m).
    It has no ``prepare``/``evaluate``, so the model uses its generic autograd (VJP) divergence path."""

    def __init__(self, path, prediction: str, mean: Tensor, rot: Tensor, var: Tensor):
        super().__init__()
        self.path, self.prediction = path, prediction
        self.register_buffer("mean", mean)
        self.register_buffer("rot", rot)
        self.register_buffer("var", var)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        a, b, da, db = (c[:, None] for c in self.path.coeffs(t.expand(x.shape[0]).to(x.dtype)))
        y = (x - a * self.mean) @ self.rot  # eigen-coordinates of Sigma
        v = a * a * self.var + b * b
        if self.prediction == "noise":
            return (b * y / v) @ self.rot.T
        return da * self.mean + ((a * da * self.var + b * db) * y / v) @ self.rot.T


def analytic_logpdf(path, mean: Tensor, rot: Tensor, var: Tensor, x: Tensor) -> Tensor:
    """log N(x; a m, a^2 Sigma + b^2 I) at the sampler's data end t_end (what the model's density is)."""
    a, b, _, _ = path.coeffs(torch.tensor(path.t_end, dtype=torch.float64))
    y = (x - a * mean) @ rot
    v = a * a * var + b * b
    return -0.5 * (y * y / v).sum(-1) - 0.5 * torch.log(2 * math.pi * v).sum()


def _oracle_model(kind: str, target: str) -> tuple[GenerativeModel, Tensor, Tensor, Tensor]:
    path = PATHS[kind]()
    mean = torch.tensor([0.5, -0.3], dtype=torch.float64)
    ang = torch.tensor(0.6, dtype=torch.float64)
    rot = torch.stack([torch.stack([ang.cos(), -ang.sin()]), torch.stack([ang.sin(), ang.cos()])])
    var = torch.tensor([0.36, 1.44], dtype=torch.float64)
    oracle = GaussianOracle(path, target, mean, rot, var)
    model = GenerativeModel(path, oracle, target, action_dim=2, cond_dim=0)
    return model, mean, rot, var


@pytest.mark.parametrize("kind,target", KINDS)
def test_log_prob_exact_for_analytic_gaussian_field(kind: str, target: str) -> None:
    model, mean, rot, var = _oracle_model(kind, target)
    gen = torch.Generator().manual_seed(0)
    x = (mean + (torch.randn(200, 2, generator=gen, dtype=torch.float64) * var.sqrt()) @ rot.T)
    truth = analytic_logpdf(model.path, mean, rot, var, x)
    lp = model.log_prob(x, None, steps=100, solver="heun", exact_trace=True)
    assert (lp - truth).abs().max() < 0.02, (lp - truth).abs().max()
    # Hutchinson: unbiased, noisy per point (Sigma is not diagonal, so the probes matter); average probes.
    lp_h = model.log_prob(x, None, steps=100, solver="heun", exact_trace=False, n_probes=32, generator=gen)
    assert (lp_h - truth).abs().mean() < 0.1 and abs((lp_h - truth).mean()) < 0.03
    # sampling the oracle reproduces the Gaussian's moments
    s = model.sample(None, n=4000, steps=100, solver="heun", generator=gen)
    cov = torch.cov(s.T)
    a, b, _, _ = model.path.coeffs(torch.tensor(model.path.t_end, dtype=torch.float64))
    assert torch.allclose(s.mean(0), a * mean, atol=0.06)
    assert torch.allclose(cov, a * a * (rot * var) @ rot.T + b * b * torch.eye(2, dtype=torch.float64), atol=0.08)


def test_sample_with_log_prob_matches_reverse_log_prob() -> None:
    """log pi along the generation trajectory equals the reverse-ODE density of the produced sample."""
    model, mean, rot, var = _oracle_model("gvp", "velocity")
    x, lp = model.sample_with_log_prob(None, n=300, steps=100, solver="heun", exact_trace=True,
                                       generator=torch.Generator().manual_seed(2))
    truth = analytic_logpdf(model.path, mean, rot, var, x)
    assert (lp - truth).abs().max() < 0.02


def test_trained_model_log_prob_loosely_matches_gaussian() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    L = torch.tensor([[0.8, 0.0], [0.5, 0.6]])
    model = make_generative_model("gvp", 2, 0, hidden=[64, 32], t_cond_hidden=64)
    algo = make_algorithm("bc", model, lr=3e-3)
    for _ in range(1000):
        algo.update({"action": torch.randn(256, 2, generator=gen) @ L.T, "obs": None})
    x = torch.randn(500, 2, generator=gen) @ L.T
    truth = torch.distributions.MultivariateNormal(torch.zeros(2), scale_tril=L).log_prob(x)
    lp = model.log_prob(x, None, steps=32, solver="heun", exact_trace=True)
    lp_h = torch.stack([model.log_prob(x, None, steps=32, solver="heun", generator=gen) for _ in range(8)]).mean(0)
    for est in (lp, lp_h):
        assert abs((est - truth).mean()) < 0.15
        assert torch.corrcoef(torch.stack([est, truth]))[0, 1] > 0.95


# ------------------------------------------------------------------ API
def test_sample_shapes_noise_and_grad_modes() -> None:
    model = make_generative_model("vpsde", 3, 5, hidden=[16, 8])
    cond = torch.randn(4, 5)
    assert model.sample(cond).shape == (4, 3)
    assert model.sample(cond, n=6, steps=4, solver="midpoint").shape == (4, 6, 3)
    z = torch.randn(4, 3)
    z0 = z.clone()
    a1 = model.sample(cond, noise=z, steps=5)
    assert torch.equal(z, z0)  # the caller's noise is not overwritten by the in-place sampler
    assert torch.equal(a1, model.sample(cond, noise=z, steps=5))
    assert not a1.requires_grad and not a1.is_inference()
    a2 = model.sample(cond, noise=z, steps=5, with_grad=True)
    assert a2.requires_grad and torch.allclose(a1, a2, atol=1e-5)
    with pytest.raises(ValueError):
        model.sample(cond, solver="rk45")


def test_config_rebuilds_model() -> None:
    model = make_generative_model("icfm", 3, 5, hidden=[16, 8], sigma=0.2)
    clone = make_generative_model(**model.config())
    clone.load_state_dict(model.state_dict())
    cond, z = torch.randn(2, 5), torch.randn(2, 3)
    assert torch.equal(model.sample(cond, noise=z, steps=3), clone.sample(cond, noise=z, steps=3))
    with pytest.raises(ValueError):
        make_generative_model("gvp", 3, 5, vpsde_target="noise").__class__(
            PATHS["gvp"](), nn.Linear(1, 1), "noise", action_dim=3, cond_dim=5)


@pytest.mark.parametrize("solver", ["euler", "heun", "midpoint"])
def test_exact_log_prob_is_the_density_of_the_discrete_sampler(solver: str) -> None:
    """exact mode carries d(sample)/dz through the solver's own steps: log pi = log N(z) - log|det dT/dz|."""
    torch.manual_seed(0)
    model = make_generative_model("vpsde", 2, 3, hidden=[16, 8], vpsde_target="noise").double()
    cond = torch.randn(3, 3, dtype=torch.float64)
    z = torch.randn(3, 2, dtype=torch.float64)
    x, lp = model.sample_with_log_prob(cond, noise=z, steps=5, solver=solver, exact_trace=True)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(
            lambda z_, i=i: model.sample(cond[i:i + 1], noise=z_[None], steps=5, solver=solver, with_grad=True)[0],
            z[i])
        expect = -0.5 * z[i].square().sum() - math.log(2 * math.pi) - torch.linalg.slogdet(jac)[1]
        assert torch.isclose(lp[i], expect), (i, lp[i], expect)


def test_traced_sampler_matches_eager_and_follows_weight_updates() -> None:
    model = make_generative_model("vpsde", 3, 4, hidden=[16, 8])
    cond, z = torch.randn(5, 4), torch.randn(5, 3)
    with torch.inference_mode():  # as the deployed policy calls it
        traced = model.sample(cond, noise=z, steps=6, solver="heun")
    model.trace_sampler = False
    eager = model.sample(cond, noise=z, steps=6, solver="heun")
    assert torch.allclose(traced, eager, atol=1e-5)
    model.trace_sampler = True
    with torch.no_grad():
        model.backbone.out.bias.add_(0.5)  # an optimiser / EMA / load_state_dict writes in place
    model.trace_sampler = False
    eager2 = model.sample(cond, noise=z, steps=6, solver="heun")
    model.trace_sampler = True
    assert torch.allclose(model.sample(cond, noise=z, steps=6, solver="heun"), eager2, atol=1e-5)


def test_models_of_one_architecture_share_one_trace_and_each_gets_its_own_weights(monkeypatch) -> None:
    from genctl.policies import fast_solve

    # the process-wide trace budget is shared with every earlier in-process test: start this one with it unused
    # (what is checked here is one trace per architecture, below, not the budget)
    monkeypatch.setattr(fast_solve, "_traced_steps", 0)
    models = [make_generative_model("gvp", 2, 3, hidden=[16, 8]) for _ in range(3)]
    models.append(copy.deepcopy(models[0]))  # as EMA copies the policy: must not be mistaken for the original
    with torch.no_grad():
        models[3].backbone.out.bias.add_(1.0)
    cond, z = torch.randn(4, 3), torch.randn(4, 2)
    before = fast_solve._traced_steps
    for _ in range(2):  # alternate between the models: the shared trace must switch weights every time
        for m in models:
            m.trace_sampler = False
            eager = m.sample(cond, noise=z, steps=5)
            m.trace_sampler = True
            with torch.inference_mode():
                traced = m.sample(cond, noise=z, steps=5)
            assert torch.allclose(traced, eager, atol=1e-5)
    assert fast_solve._traced_steps - before <= 5, "one trace per architecture, not per model"
    assert all(m.trace_sampler for m in models)
