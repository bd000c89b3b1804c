"""Backbone: reference architecture size, fixed time embedding, forward-mode tangents vs autograd."""

from __future__ import annotations

import torch
from torch import nn

from genctl.policies import GenerativeModel, ResidualMLPBackbone, count_parameters, make_generative_model


def test_reference_backbone_parameter_count() -> None:
    # GenerativeRL's TemporalSpatialResidualNet, hidden 512/256/128 at Hopper's |A|=3, |S|=11: ~1.6 M
    net = ResidualMLPBackbone(3, 11, hidden=(512, 256, 128))
    assert count_parameters(net) == 1_626_883
    assert make_generative_model("gvp", 3, 11).backbone.out.in_features == 1024


def test_fourier_embedding_is_a_fixed_buffer() -> None:
    net = ResidualMLPBackbone(2, 0, hidden=(8, 4))
    names = dict(net.named_buffers())
    assert "time_embed.freqs" in names and names["time_embed.freqs"].shape == (16,)
    assert all("freqs" not in n for n, _ in net.named_parameters())
    emb = net.time_embed(torch.tensor([0.0, 0.5]))
    assert emb.shape == (2, 32) and torch.allclose(emb[0, 16:], torch.ones(16))  # cos(0) = 1


def test_forward_matches_sampler_fast_path() -> None:
    net = ResidualMLPBackbone(3, 5, hidden=(16, 8, 4)).double()
    x, c = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    ts = torch.linspace(0, 1, 5, dtype=torch.float64)
    ctx = net.prepare(net.time_embed(ts), c)
    for j in range(5):
        out, _ = net.evaluate(x, ctx, j)
        assert torch.allclose(out, net(x, ts[j].expand(6), c))


def test_tangents_equal_autograd_jacobian() -> None:
    torch.manual_seed(0)
    net = ResidualMLPBackbone(3, 5, hidden=(16, 8)).double()
    x, c = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    ts = torch.tensor([0.3], dtype=torch.float64)
    ctx = net.prepare(net.time_embed(ts), c)
    tang = torch.randn(2, 4, 3, dtype=torch.float64)
    _, jv = net.evaluate(x, ctx, 0, tang)
    jac = torch.autograd.functional.jacobian(lambda x_: net(x_, ts[0], c), x)  # (B, D, B, D)
    jac = torch.stack([jac[b, :, b, :] for b in range(4)])
    assert torch.allclose(jv, torch.einsum("boi,kbi->kbo", jac, tang))


class _Wrapped(nn.Module):
    """Hides the fast path, so the model falls back to autograd VJPs."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, t, cond):
        return self.inner(x, t, cond)


def test_log_prob_fast_tangents_equal_autograd_fallback() -> None:
    torch.manual_seed(0)
    for kind, target in [("vpsde", "noise"), ("gvp", "velocity"), ("icfm", "velocity")]:
        model = make_generative_model(kind, 3, 5, hidden=[16, 8], vpsde_target=target).double()
        slow = GenerativeModel(model.path, _Wrapped(model.backbone), model.prediction, action_dim=3, cond_dim=5)
        x, c = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
        for exact in (True, False):
            kw = dict(steps=4, solver="heun", exact_trace=exact)
            a = model.log_prob(x, c, generator=torch.Generator().manual_seed(1), **kw)
            b = slow.log_prob(x, c, generator=torch.Generator().manual_seed(1), **kw)
            assert torch.allclose(a, b), (kind, exact)


def test_density_subset_fast_equals_autograd_fallback() -> None:
    torch.manual_seed(0)
    model = make_generative_model("vpsde", 2, 3, hidden=[16, 8]).double()
    slow = GenerativeModel(model.path, _Wrapped(model.backbone), model.prediction, action_dim=2, cond_dim=3)
    cond, z = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    for exact in (True, False):
        kw = dict(noise=z, steps=3, solver="midpoint", exact_trace=exact, density_rows=3)
        a = model.sample_with_log_prob(cond, generator=torch.Generator().manual_seed(1), **kw)
        b = slow.sample_with_log_prob(cond, generator=torch.Generator().manual_seed(1), **kw)
        assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1]) and a[1].shape == (3,)
