"""The CPU sampler of the residual MLP (policies/cpu_solve.py): equal to the eager solve, follows weight updates,
and its optional bf16 path stays within a stated action error of fp32. No timing here: speed is
benchmarks/policies.py's (ratios against baselines of the same run)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from genctl.policies import cpu_solve, fast_solve, make_generative_model

needs_onednn = pytest.mark.skipif(not cpu_solve.onednn_ok(), reason="torch without oneDNN")
HIDDEN = [256, 64]  # has linears above cpu_solve.PACK_MIN_WEIGHTS (256x256), so the oneDNN path runs


@pytest.fixture(autouse=True, scope="module")
def _own_trace_budget():
    """These tests trace many (architecture, mode) pairs; hand the per-process budget of traced steps back so
    that later test files in the same process still get their traces."""
    before = fast_solve._traced_steps
    yield
    fast_solve._traced_steps = before


def _eager(model, cond, noise, **kw) -> torch.Tensor:
    model.trace_sampler = False
    try:
        return model.sample(cond, noise=noise, **kw)
    finally:
        model.trace_sampler = True


def _modes_traced() -> set[str | None]:
    return {k[-1] for k in fast_solve._shared_traces}


@pytest.mark.parametrize("rows", [1, 5, 16])  # plain (MKL) below PACKED_MIN_ROWS, oneDNN packed from it
@pytest.mark.parametrize("kind,solver", [("gvp", "euler"), ("vpsde", "heun"), ("icfm", "midpoint")])
def test_cpu_trace_matches_eager_solve(rows: int, kind: str, solver: str) -> None:
    torch.manual_seed(0)
    model = make_generative_model(kind, 3, 5, hidden=HIDDEN)
    cond, z = torch.randn(rows, 5), torch.randn(rows, 3)
    with torch.inference_mode():
        fast = model.sample(cond, noise=z, steps=6, solver=solver)
    eager = _eager(model, cond, z, steps=6, solver=solver)
    # the eps-prediction VP-SDE multiplies the net by up to ~1/sigma near the noise end, so the packed (oneDNN) and
    # plain (MKL) GEMMs' different summation orders grow to ~6e-5 there on CPUs with AVX-512 kernels
    tol = 1e-4 if kind == "vpsde" else 1e-5
    assert torch.allclose(fast, eager, atol=tol, rtol=tol), (fast - eager).abs().max()
    assert model.trace_sampler, "the trace failed and was switched off"
    assert cpu_solve.mode_for(model.backbone, z, False) in _modes_traced()


def test_conditions_are_computed_once_for_the_grid_times_the_solver_visits() -> None:
    assert cpu_solve.visited_indices(4, "euler", 1.0) == [0, 2, 4, 6]
    assert cpu_solve.visited_indices(2, "heun", 1.0) == [0, 2, 4]
    assert cpu_solve.visited_indices(2, "midpoint", 1.0) == [0, 1, 2, 3]


@needs_onednn
@pytest.mark.parametrize("rows", [2, 12])
def test_cpu_trace_follows_weight_updates(rows: int) -> None:
    model = make_generative_model("gvp", 3, 4, hidden=HIDDEN)
    cond, z = torch.randn(rows, 4), torch.randn(rows, 3)
    model.sample(cond, noise=z, steps=5)
    with torch.no_grad():
        model.backbone.blocks[0].lin2.weight.mul_(1.5)  # (a packed layer) an optimiser / EMA step writes in place
    assert torch.allclose(model.sample(cond, noise=z, steps=5), _eager(model, cond, z, steps=5), atol=1e-5)
    other = make_generative_model("gvp", 3, 4, hidden=HIDDEN)
    model.load_state_dict(other.state_dict())
    assert torch.allclose(model.sample(cond, noise=z, steps=5), _eager(other, cond, z, steps=5), atol=1e-5)
    # new storage (p.data reassigned, load_state_dict(assign=True)) is seen too
    model.backbone.blocks[0].lin2.weight.data = model.backbone.blocks[0].lin2.weight.data * 0.5
    assert torch.allclose(model.sample(cond, noise=z, steps=5), _eager(model, cond, z, steps=5), atol=1e-5)


def test_one_trace_serves_every_batch_size() -> None:
    model = make_generative_model("gvp", 3, 4, hidden=HIDDEN)
    before = fast_solve._traced_steps
    for rows in (9, 20, 8, 64, 1, 5):  # evaluate() with K envs calls with 1..K rows as episodes end
        cond, z = torch.randn(rows, 4), torch.randn(rows, 3)
        assert torch.allclose(model.sample(cond, noise=z, steps=4), _eager(model, cond, z, steps=4), atol=1e-5)
    assert fast_solve._traced_steps - before <= 8, "one trace per mode (plain, packed), not per batch size"


def test_models_of_one_architecture_share_the_cpu_trace() -> None:
    models = [make_generative_model("icfm", 2, 3, hidden=[24, 12]) for _ in range(3)]
    cond, z = torch.randn(9, 3), torch.randn(9, 2)
    before = fast_solve._traced_steps
    for _ in range(2):
        for m in models:
            assert torch.allclose(m.sample(cond, noise=z, steps=4), _eager(m, cond, z, steps=4), atol=1e-5)
    assert fast_solve._traced_steps - before <= 4, "one trace per architecture and mode, not per model"


def test_generic_trace_still_available_for_ab() -> None:
    model = make_generative_model("gvp", 3, 4, hidden=[16, 8])
    model.solve_backend.hoist = False
    cond, z = torch.randn(10, 4), torch.randn(10, 3)
    assert torch.allclose(model.sample(cond, noise=z, steps=3), _eager(model, cond, z, steps=3), atol=1e-5)


def test_bf16_switch_survives_copy_and_pickle() -> None:
    model = make_generative_model("gvp", 3, 4, hidden=[16, 8])
    model.bf16_sampler = True
    assert copy.deepcopy(model).bf16_sampler and pickle.loads(pickle.dumps(model)).bf16_sampler


@pytest.mark.skipif(not cpu_solve.bf16_ok(), reason="no native bf16 matmuls on this CPU")
def test_bf16_sampler_agrees_with_fp32_on_the_reference_net() -> None:
    """The reference net (512/256/128, Hopper sizes), 31 Euler steps, batch 64, same noise: the bf16 sampler's
    actions stay within 1e-2 (max) / 1e-3 (mean) of fp32 (measured: ~2e-3 / ~3e-4, action std ~0.6)."""
    torch.manual_seed(0)
    model = make_generative_model("gvp", 3, 11)
    cond, z = torch.randn(64, 11), torch.randn(64, 3)
    a32 = model.sample(cond, noise=z, steps=31)
    model.bf16_sampler = True
    a16 = model.sample(cond, noise=z, steps=31)
    assert "packed-bf16" in _modes_traced()
    err = (a16 - a32).abs()
    assert err.max() < 1e-2 and err.mean() < 1e-3, (err.max(), err.mean())
    assert err.max() > 0, "bf16 path not taken"
    assert a16.dtype == torch.float32
    model.bf16_sampler = False
    assert torch.equal(model.sample(cond, noise=z, steps=31), a32)
