"""GPU paths: the CUDA-graph sampler against the eager solve, training and eval on the device (skipped without one).

CI has no GPU, so these run where one is lent (``pytest tests/test_cuda.py`` on that machine); they are
collected everywhere so a CUDA regression cannot hide behind a missing file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import genctl_ok as cli

from genctl.policies import IQLCritic, make_algorithm, make_generative_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def _pair(model, cond, steps, solver, noise):
    """(fast sample, eager sample) of the same noise."""
    model.graph_sampler = model.trace_sampler = True
    fast = model.sample(cond, steps=steps, solver=solver, noise=noise)
    model.graph_sampler = model.trace_sampler = False
    slow = model.sample(cond, steps=steps, solver=solver, noise=noise)
    model.graph_sampler = model.trace_sampler = True
    return fast, slow


@needs_cuda
@pytest.mark.parametrize("kind", ["gvp", "vpsde", "icfm"])
@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("rows", [1, 64])
def test_graph_sampler_equals_eager_solve(kind: str, solver: str, rows: int) -> None:
    torch.manual_seed(0)
    model = make_generative_model(kind, 3, 11, hidden=[64, 32, 16]).to(CUDA)
    cond = torch.randn(rows, 11, device=CUDA)
    for _ in range(3):  # fresh inputs into the same captured graph each time
        noise = torch.randn(rows, 3, device=CUDA)
        fast, slow = _pair(model, cond, 12, solver, noise)
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
        cond = torch.randn(rows, 11, device=CUDA)
    assert len(model.solve_backend.graphs) == 1 and model.graph_sampler, "the solve was not captured as a graph"


@needs_cuda
def test_graph_sampler_sees_in_place_weight_updates_and_outputs_are_not_aliased() -> None:
    torch.manual_seed(1)
    model = make_generative_model("gvp", 3, 11, hidden=[64, 32, 16]).to(CUDA)
    cond, noise = torch.randn(8, 11, device=CUDA), torch.randn(8, 3, device=CUDA)
    first = model.sample(cond, steps=10, noise=noise)
    bc = make_algorithm("bc", model, lr=1e-2)
    batch = {"obs": torch.randn(256, 11, device=CUDA), "action": torch.rand(256, 3, device=CUDA)}
    for _ in range(3):
        bc.update(batch)
    fast, slow = _pair(model, cond, 10, "euler", noise)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert (fast - first).abs().max() > 1e-3, "the graph replayed stale weights"
    again = model.sample(cond, steps=10, noise=noise)
    torch.testing.assert_close(fast, again)  # the earlier result is a copy, not the graph's output buffer


@needs_cuda
def test_cuda_matches_cpu_density_and_gmpg_runs_in_bf16() -> None:
    torch.manual_seed(2)
    cpu = make_generative_model("vpsde", 3, 11, hidden=[64, 32, 16], vpsde_target="velocity")
    gpu = make_generative_model("vpsde", 3, 11, hidden=[64, 32, 16], vpsde_target="velocity").to(CUDA)
    gpu.load_state_dict(cpu.state_dict())
    obs, z = torch.randn(128, 11), torch.randn(128, 3)
    a_c, lp_c = cpu.sample_with_log_prob(obs, steps=10, noise=z)
    a_g, lp_g = gpu.sample_with_log_prob(obs.to(CUDA), steps=10, noise=z.to(CUDA))
    torch.testing.assert_close(a_g.cpu(), a_c, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lp_g.cpu(), lp_c, rtol=1e-4, atol=1e-3)

    critic = IQLCritic(11, 3).to(CUDA)
    behaviour = make_generative_model("vpsde", 3, 11, hidden=[64, 32, 16], vpsde_target="velocity").to(CUDA)
    gmpg = make_algorithm("gmpg", gpu, critic=critic, behaviour=behaviour, beta=1.0, sample_steps=6,
                          kl_batch=64, amp=True)
    batch = {"obs": torch.randn(512, 11, device=CUDA)}
    stats = [gmpg.update(batch) for _ in range(3)]
    assert all(np.isfinite(v) for s in stats for v in s.values())
    assert all(p.device.type == "cuda" and torch.isfinite(p).all() for p in gpu.parameters())


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "hopper.zarr"
    cli("collect", "Hopper-v5", "--expert", "random", "--episodes", "6", "--seed", "0", "-o", str(out))
    return out


@needs_cuda
def test_train_and_eval_on_cuda_through_the_cli(store: Path, tmp_path: Path) -> None:
    """``genctl train device=cuda`` (compiled backbone, bf16 autocast), eval on the GPU, and the checkpoint gives
    the same actions when loaded on the CPU."""
    cli("train", f"data.store={store}", f"out_dir={tmp_path}", "name=g", "device=cuda", "compile=true", "amp=true",
        "critic.steps=30", "policy.steps=30", "policy.algo=gmpo", "model.hidden=[64,64,64]", "critic.batch_size=512",
        "policy.batch_size=512", "log_every=10", "eval.steps=8")
    run = tmp_path / "g"
    meta = json.loads(next(run.glob("checkpoints/*/meta.json")).read_text())
    assert meta["config"]["device"] == "cuda"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"critic", "policy"}
    cli("eval", str(run), "--episodes", "2", "--envs", "2", "--max-episode-steps", "30", "--device", "cuda")
    report = json.loads((run / "eval.json").read_text())
    assert len(report["episodes"]) == 2 and report["control_rate_hz"] > 0

    from genctl.apps.policy import LoadedPolicy

    on_gpu, on_cpu = LoadedPolicy.from_run(run, device="cuda"), LoadedPolicy.from_run(run, device="cpu")
    obs = np.random.default_rng(0).standard_normal((4, on_cpu.obs_dim)).astype(np.float32)
    noise = torch.randn(4, on_cpu.action_dim)
    a_g = on_gpu.model.sample(on_gpu._cond(obs), steps=8, noise=noise.to(CUDA)).cpu()
    a_c = on_cpu.model.sample(on_cpu._cond(obs), steps=8, noise=noise)
    torch.testing.assert_close(a_g, a_c, rtol=1e-4, atol=1e-4)


@needs_cuda
def test_nan_on_cuda_stops_the_run_and_no_checkpoint_holds_nan_cli(store: Path, tmp_path: Path) -> None:
    """On the GPU the metrics stay on the device and are checked at log/checkpoint steps only."""
    import subprocess
    import sys

    from safetensors.numpy import load_file

    args = [sys.executable, "-m", "genctl", "--quiet", "train", f"data.store={store}", f"out_dir={tmp_path}",
            "name=nan", "device=cuda", "compile=false", "critic.steps=5", "policy.steps=300", "policy.lr=1e12",
            "policy.algo=bc", "ckpt_every=7", "log_every=5", "policy.ema_decay=null", "model.hidden=[32,32]",
            "critic.batch_size=256", "policy.batch_size=256"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)  # MUJOCO_GL: the caller's, else egl
    assert r.returncode == 2, r.stderr
    assert "became NaN/Inf" in r.stderr and "checked every 5 steps on the GPU" in r.stderr, r.stderr
    for ck in sorted((tmp_path / "nan" / "checkpoints").glob("step-*")):
        for k, v in load_file(str(ck / "policy.safetensors")).items():
            assert np.all(np.isfinite(v)), f"{ck.name}/{k} holds NaN/Inf"


@needs_cuda
def test_graph_of_compiled_step_equals_eager_solve() -> None:
    torch.manual_seed(3)
    model = make_generative_model("vpsde", 3, 11, hidden=[64, 32, 16]).to(CUDA)  # noise prediction
    model.compile_sampler = True
    cond, noise = torch.randn(4, 11, device=CUDA), torch.randn(4, 3, device=CUDA)
    fast, slow = _pair(model, cond, 8, "heun", noise)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    assert model.graph_sampler and any(k[-1] for k in model.solve_backend.graphs), "no graph of the compiled step was made"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_eval_on_cuda_without_a_gpu_is_one_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "genctl", "eval", str(tmp_path), "--device", "cuda"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "torch sees no CUDA device" in r.stderr and "Traceback" not in r.stderr
