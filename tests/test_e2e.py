"""End to end through the CLI on tiny budgets: collect -> train -> eval (+ rerun file) and exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_helpers import genctl_ok as cli
from safetensors.numpy import load_file

pytestmark = pytest.mark.e2e

TINY = ["model.hidden=[32,32,32]", "critic.batch_size=256", "policy.batch_size=256", "critic.hidden=[64,64]",
        "log_every=10", "eval.steps=8", "threads=1"]



@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "umaze.zarr"
    cli("collect", "PointMaze_UMaze-v3", "--expert", "maze", "--episodes", "24", "--noise", "0.3",
        "--random-frac", "0.1", "--seed", "3", "-o", str(out))
    return out


def test_collect_train_eval_rerun(store: Path, tmp_path: Path) -> None:
    info = json.loads(cli("info", str(store), "--json").stdout)
    assert info["episodes"] == 24
    cli("train", f"data.store={store}", f"out_dir={tmp_path}", "name=r", "critic.steps=40", "policy.steps=40",
        "policy.algo=gmpo", *TINY)
    run = tmp_path / "r"
    assert (run / "config.yaml").exists() and (run / "metrics.jsonl").exists()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"critic", "policy"}
    rrd = tmp_path / "eval.rrd"
    r = cli("eval", str(run), "--episodes", "2", "--envs", "2", "--max-episode-steps", "40", "--candidates", "8",
            "--rerun", "save", str(rrd))
    assert "success rate" in r.stdout
    report = json.loads((run / "eval.json").read_text())
    assert len(report["episodes"]) == 2 and report["envs"] == 2
    assert [e["seed"] for e in report["episodes"]] == [1_000_000, 1_000_001]
    assert report["latency_ms"]["p50"] > 0 and report["control_rate_hz"] > 0
    assert all(e["length"] <= 40 for e in report["episodes"])

    from genctl.apps.viz import first_image, rrd_contents

    ents = rrd_contents(rrd)
    for e in ("/maze/walls", "/ep_000/camera", "/ep_000/action_space/candidates", "/ep_000/reward",
              "/ep_000/critic/q", "/ep_000/joints/qpos", "/ep_001/camera", "/maze/ep_000/path"):
        assert e in ents, f"{e} missing from {sorted(ents)}"
    frame = first_image(ents["/ep_000/camera"])
    assert frame.size > 1000 and frame.max() > 30 and frame.std() > 5, "camera frame is black or flat"


def test_eval_select_q_and_deterministic(store: Path, tmp_path: Path) -> None:
    """Deployment modes through the CLI: best-of-N by Q (recorded in eval.json, the ranked candidates and the
    chosen one in rerun) and the deterministic sampler (repeatable, smoother than sampling)."""
    cli("train", f"data.store={store}", f"out_dir={tmp_path}", "name=r", "critic.steps=40", "policy.steps=40",
        "policy.algo=gmpo", *TINY)
    run = tmp_path / "r"
    rrd = tmp_path / "q.rrd"
    r = cli("eval", str(run), "--episodes", "2", "--max-episode-steps", "30", "--select", "q", "--candidates", "6",
            "-o", str(tmp_path / "q.json"), "--rerun", "save", str(rrd), "--frame-every", "0")
    assert "best-Q of 6" in r.stdout
    q = json.loads((tmp_path / "q.json").read_text())
    assert (q["select"], q["candidates"], q["temperature"], q["bf16_sampler"]) == ("q", 6, 1.0, False)
    cli("eval", str(run), "--episodes", "2", "--envs", "2", "--max-episode-steps", "30", "--select", "q",
        "--candidates", "8", "--bf16-sampler", "-o", str(tmp_path / "q16.json"), "--frame-every", "0")
    q16 = json.loads((tmp_path / "q16.json").read_text())  # 2 envs x 8 candidates: 16 rows per sampler call
    assert q16["bf16_sampler"] is True and len(q16["episodes"]) == 2
    from genctl.apps.viz import rrd_contents

    ents = rrd_contents(rrd)
    assert "/ep_000/action_space/candidates" in ents and "/ep_000/action_space/executed" in ents
    outs = []
    for name in ("d1", "d2"):
        cli("eval", str(run), "--episodes", "2", "--max-episode-steps", "30", "--deterministic", "--seed", "0",
            "-o", str(tmp_path / f"{name}.json"))
        outs.append(json.loads((tmp_path / f"{name}.json").read_text()))
    assert outs[0]["temperature"] == 0.0 and outs[0]["select"] == "sample"
    assert [e["return"] for e in outs[0]["episodes"]] == [e["return"] for e in outs[1]["episodes"]]
    cli("eval", str(run), "--episodes", "2", "--max-episode-steps", "30", "-o", str(tmp_path / "s.json"))
    sampled = json.loads((tmp_path / "s.json").read_text())
    assert outs[0]["action_delta"]["mean"] < sampled["action_delta"]["mean"]


def test_resume_matches_uninterrupted(store: Path, tmp_path: Path) -> None:
    common = [f"data.store={store}", f"out_dir={tmp_path}", "critic.steps=12", "policy.steps=14",
              "ckpt_every=1000", *TINY]
    cli("train", *common, "name=full")
    cli("train", *common, "name=split", "--stop-after", "17")
    split = tmp_path / "split"
    latest = (split / "checkpoints" / "LATEST").read_text().strip()
    assert latest == "step-000000017"
    meta = json.loads((split / "checkpoints" / latest / "meta.json").read_text())
    assert meta["stage"] == "policy" and meta["stage_step"] == 5 and not meta["finished"]
    cli("train", "--resume", str(split))
    for group in ("policy", "ema", "critic"):
        a = load_file(str(next((tmp_path / "full" / "checkpoints").glob("step-000000026")) / f"{group}.safetensors"))
        b = load_file(str(next((split / "checkpoints").glob("step-000000026")) / f"{group}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{group}/{k}")


def test_nan_loss_stops_with_clear_message_and_keeps_good_checkpoint(store: Path, tmp_path: Path) -> None:
    env = dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "genctl", "--quiet", "train", f"data.store={store}", f"out_dir={tmp_path}",
            "name=nan", "critic.steps=5", "policy.steps=400", "policy.lr=1e12", "policy.algo=bc", "ckpt_every=1",
            "policy.ema_decay=null", *TINY]
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2, r.stderr
    assert "became NaN/Inf" in r.stderr and "Last good checkpoint" in r.stderr and "Traceback" not in r.stderr
    ckpts = sorted((tmp_path / "nan" / "checkpoints").glob("step-*"))
    assert ckpts, "no checkpoint kept"
    for ck in ckpts:
        for k, v in load_file(str(ck / "policy.safetensors")).items():
            assert np.all(np.isfinite(v)), f"{ck.name}/{k} holds NaN/Inf"


def test_demo_fast_compares_with_its_data(tmp_path: Path) -> None:
    """The quickstart's main job on smoke budgets: the embedded config's deployment (best-of-16 by Q at
    temperature 0.25) reaches eval.json, and the closing comparison with the demos is printed."""
    r = cli("demo", "--fast", "--episodes", "4", "-o", str(tmp_path))
    assert "policy vs its demos: success" in r.stdout and "|a_t - a_t-1|" in r.stdout
    rep = json.loads((tmp_path / "runs" / "demo-gmpo" / "eval.json").read_text())
    assert (rep["select"], rep["candidates"], rep["temperature"]) == ("q", 16, 0.25)
    assert rep["return"]["n"] == 4 and (tmp_path / "runs" / "demo-gmpo" / "critic.json").exists()
    # bf16 autocast exactly where the CPU has bf16 instructions, for both networks
    from genctl.policies.optim import cpu_has_fast_bf16

    cfg = yaml.safe_load((tmp_path / "runs" / "demo-gmpo" / "config.yaml").read_text())
    assert bool(cfg["amp"]) is cpu_has_fast_bf16() and cfg["critic"]["amp"] is cpu_has_fast_bf16()
    # the run records the resolved defaults, not null
    assert cfg["policy"]["beta"] == 10.0 and cfg["critic"]["nstep"] == 10
    assert ("bf16 autocast" if cpu_has_fast_bf16() else "fp32") in r.stdout
