"""Observation history and action chunking: windows and their edge padding, a chunked run trained and evaluated
through the CLI (receding horizon: one policy call per n_action_steps), and exact resume of a chunked run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import genctl_ok as cli
from safetensors.numpy import load_file

from genctl.config import TrainConfig, build_config
from genctl.datasets import SeqSpec, StoreWriter
from genctl.errors import ConfigError, GenctlError
from genctl.policies import ChunkCritic

TINY = ["model.hidden=[32,32,32]", "critic.batch_size=64", "policy.batch_size=64", "critic.hidden=[32,32]",
        "log_every=5", "eval.steps=4", "threads=1"]
CHUNK = ["data.n_obs_steps=2", "data.horizon=4", "data.n_action_steps=2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "umaze.zarr"
    cli("collect", "PointMaze_UMaze-v3", "--expert", "maze", "--episodes", "12", "--noise", "0.3", "-o", str(out))
    return out


def test_config_defaults_and_validation() -> None:
    cfg = build_config(TrainConfig)
    assert (cfg.data.n_obs_steps, cfg.data.horizon, cfg.data.n_action_steps) == (1, 1, None)
    assert SeqSpec.from_config(cfg) == SeqSpec(1, 1, 1) and not SeqSpec.from_config(cfg).chunked
    assert SeqSpec.from_config(build_config(TrainConfig, overrides=["data.horizon=8"])).n_action_steps == 8
    with pytest.raises(ConfigError, match=r"n_action_steps=5 must be <= data.horizon=4"):
        build_config(TrainConfig, overrides=["data.horizon=4", "data.n_action_steps=5"])
    with pytest.raises(ConfigError, match="n_obs_steps"):
        build_config(TrainConfig, overrides=["data.n_obs_steps=0"])
    assert SeqSpec.from_meta({}) == SeqSpec(1, 1, 1)  # checkpoints from before chunking are single-step


def test_windows_pad_first_frame_and_last_action(tmp_path: Path) -> None:
    """obs[t] = (episode, t, 1), action[t] = (episode, t): every window compared with one built by hand."""
    lengths = [1, 3, 6]
    with StoreWriter(tmp_path / "h.zarr", {"source": {"kind": "collect"}}) as w:
        for e, n in enumerate(lengths):
            t = np.arange(n, dtype=np.float32)
            obs = np.stack([np.full(n + 1, e), np.arange(n + 1), np.ones(n + 1)], 1).astype(np.float32)
            w.add_episode({"obs": obs[:-1], "next_obs": obs[1:], "action": np.stack([np.full(n, e), t], 1),
                           "reward": np.zeros(n, np.float32), "terminated": np.arange(n) == n - 1,
                           "truncated": np.zeros(n, bool)})
    from genctl.apps.train import Trainer

    n_obs, horizon = 3, 4
    cfg = build_config(TrainConfig, overrides=[
        f"data.store={tmp_path / 'h.zarr'}", "data.val_frac=0", "data.obs_norm=identity", "data.action_norm=identity",
        "policy.algo=bc", "critic.steps=0", f"data.n_obs_steps={n_obs}", f"data.horizon={horizon}", "device=cpu",
        "model.hidden=[8]", "policy.ema_decay=null"])
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    win = tr.data.windows
    assert win is not None and win.n == sum(lengths)  # one window per step
    assert (tr.policy.action_dim, tr.policy.cond_dim) == (horizon * 2, n_obs * 3)
    got = win.gather(torch.arange(win.n))
    expect_obs, expect_act = [], []
    for e, n in enumerate(lengths):
        for t in range(n):
            expect_obs.append([[e, max(t - k, 0), 1] for k in range(n_obs - 1, -1, -1)])  # oldest first
            expect_act.append([[e, min(t + h, n - 1)] for h in range(horizon)])
    np.testing.assert_array_equal(got["obs"].numpy(), np.array(expect_obs, np.float32).reshape(win.n, -1))
    np.testing.assert_array_equal(got["action"].numpy(), np.array(expect_act, np.float32).reshape(win.n, -1))
    # training batches: windows for the policy, single transitions for the critic
    b = tr.data.sample(5, windows=True)
    assert b["obs"].shape == (5, n_obs * 3) and b["action"].shape == (5, horizon * 2)
    assert tr.data.sample(5)["obs"].shape == (5, 3)
    assert tr.meta()["n_obs_steps"] == n_obs and tr.meta()["horizon"] == horizon
    assert tr.meta()["n_action_steps"] == horizon


def test_chunk_critic_reads_current_obs_and_first_action() -> None:
    class Fake(torch.nn.Module):
        def q(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return s @ torch.tensor([1.0, 10.0]) + a @ torch.tensor([100.0, 1000.0, 1e4])

        def v(self, s: torch.Tensor) -> torch.Tensor:
            return s.sum(-1)

    c = ChunkCritic(Fake(), obs_dim=2, action_dim=3)
    cond = torch.tensor([[9.0, 9.0, 1.0, 2.0]])  # history of 2 obs, current = (1, 2)
    chunk = torch.tensor([[1.0, 2.0, 3.0, 7.0, 7.0, 7.0]])  # 2 actions, first = (1, 2, 3)
    assert c.q(cond, chunk).item() == 1 + 20 + 100 + 2000 + 30000 and c.v(cond).item() == 3


def test_chunked_train_eval_receding_horizon(store: Path, tmp_path: Path) -> None:
    cli("train", f"data.store={store}", f"out_dir={tmp_path}", "name=c", "critic.steps=20", "policy.steps=20",
        "policy.algo=gmpo", *CHUNK, *TINY)
    run = tmp_path / "c"
    ck = run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip()
    meta = json.loads((ck / "meta.json").read_text())
    assert (meta["n_obs_steps"], meta["horizon"], meta["n_action_steps"]) == (2, 4, 2)
    assert (meta["model"]["action_dim"], meta["model"]["cond_dim"]) == (4 * 2, 2 * meta["obs_dim"])
    rrd = tmp_path / "c.rrd"
    cli("eval", str(run), "--episodes", "2", "--max-episode-steps", "20", "--candidates", "4", "--frame-every", "0",
        "--rerun", "save", str(rrd))
    r = json.loads((run / "eval.json").read_text())
    lengths = [e["length"] for e in r["episodes"]]
    assert r["env_steps"] == sum(lengths) and all(n <= 20 for n in lengths)
    assert r["policy_calls"] == sum(math.ceil(n / 2) for n in lengths)  # = steps / 2 for even lengths
    assert r["policy_calls"] == r["latency_ms"]["calls"] == r["chunks_predicted"]
    assert r["actions_per_call"] == pytest.approx(r["env_steps"] / r["policy_calls"]) and r["actions_per_call"] > 1.5
    assert (r["n_obs_steps"], r["horizon"], r["n_action_steps"]) == (2, 4, 2)

    from genctl.apps.viz import rrd_contents

    ents = rrd_contents(rrd)
    for e in ("/ep_000/action/predicted_chunk", "/ep_000/action/predicted_chunk/executed",
              "/ep_000/action_space/candidates", "/ep_001/action/predicted_chunk"):
        assert e in ents, f"{e} missing from {sorted(ents)}"

    # real time: each chunk is executed for n_action_steps ticks before replanning, as in eval
    cli("run", str(run), "--hz", "50", "--max-steps", "12")
    rt = json.loads((run / "realtime.json").read_text())
    assert rt["n_action_steps"] == 2 and rt["ticks"] == 12 and rt["deadline_misses"] <= 2
    assert rt["policy_calls"] in (6, 7)  # submissions at ticks 0, 2, ..., 10 (and 12, if answered before the end)
    cli("run", str(run), "--hz", "50", "--max-steps", "12", "--n-action-steps", "1")
    rt = json.loads((run / "realtime.json").read_text())
    assert rt["n_action_steps"] == 1 and rt["policy_calls"] >= 11
    bad = subprocess.run([sys.executable, "-m", "genctl", "run", str(run), "--hz", "50", "--n-action-steps", "5"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--n-action-steps must be between 1" in bad.stderr

    from genctl.apps.policy import LoadedPolicy

    pol = LoadedPolicy.from_run(run)
    d = pol.obs_dim
    assert pol.predict_chunk(np.zeros((3, 2, d), np.float32)).shape == (3, 4, 2)
    assert pol.act(np.zeros((3, d), np.float32)).shape == (3, 2)  # current obs repeated as the history
    assert pol.candidates(np.zeros((1, 2, d), np.float32), 5).shape == (5, 2)
    with pytest.raises(GenctlError, match="history"):
        pol.predict_chunk(np.zeros((1, 3, d), np.float32))


@pytest.mark.parametrize("algo", ["gmpo", "gmpg"])
def test_chunked_resume_matches_uninterrupted(store: Path, tmp_path: Path, algo: str) -> None:
    from genctl.apps.train import resume, train

    common = [f"data.store={store}", f"out_dir={tmp_path}", "critic.steps=6", "policy.steps=8", "ckpt_every=1000",
              "device=cpu", f"policy.algo={algo}", *CHUNK, *TINY]
    if algo == "gmpg":
        common += ["policy.behaviour_steps=3", "policy.sample_steps=2"]
    total = 6 + 8 + (3 if algo == "gmpg" else 0)
    train(build_config(TrainConfig, overrides=[*common, "name=full"]), progress=False)
    split = train(build_config(TrainConfig, overrides=[*common, "name=split"]), progress=False, stop_after=total - 5)
    assert (split / "checkpoints" / "LATEST").read_text().strip() == f"step-{total - 5:09d}"
    resume(split, progress=False)
    rows = [json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    groups = ("policy", "ema", "critic", "behaviour") if algo == "gmpg" else ("policy", "ema", "critic")
    for group in groups:
        a = load_file(str(tmp_path / "full" / "checkpoints" / f"step-{total:09d}" / f"{group}.safetensors"))
        b = load_file(str(split / "checkpoints" / f"step-{total:09d}" / f"{group}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{group}/{k}")
