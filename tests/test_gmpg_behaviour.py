"""GMPG's policy.behaviour_from_run: mu is a finished BC run's deployed (EMA) weights, the behaviour stage is
skipped, GMPG starts from that policy, and a run trained on other data or another network is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from genctl.apps.train import resume, train
from genctl.config import TrainConfig, build_config
from genctl.errors import ConfigError
from genctl.run import Checkpoint, latest_checkpoint
from tests.test_scale_free import bandit_store


def _base(tmp: Path, store: Path) -> list[str]:
    return [f"data.store={store}", f"out_dir={tmp / 'runs'}", "threads=1", "device=cpu", "model.hidden=[32,32]",
            "model.t_cond_hidden=32", "critic.hidden=[32,32]", "critic.batch_size=64", "policy.batch_size=64",
            "data.val_frac=0", "ckpt_every=10000", "log_every=1", "eval.steps=8"]


def _run(over: list[str], **kw: object) -> Path:
    return train(build_config(TrainConfig, overrides=over), progress=False, **kw)


def _group(run: Path, name: str) -> dict[str, torch.Tensor]:
    return Checkpoint(latest_checkpoint(run)).group(name)


def test_gmpg_takes_mu_from_a_bc_run(tmp_path: Path) -> None:
    store = bandit_store(tmp_path / "b.zarr", 1.0, n=300)
    base = _base(tmp_path, store)
    bc = _run([*base, "name=bc", "policy.algo=bc", "critic.steps=0", "policy.steps=40", "policy.lr=3e-3"])
    gmpg = [*base, "policy.algo=gmpg", "critic.steps=20", "policy.steps=4", "policy.sample_steps=4",
            f"policy.behaviour_from_run={bc}"]
    run = _run([*gmpg, "name=gmpg"])
    stages = {json.loads(x)["stage"] for x in (run / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"critic", "policy"}  # no behaviour stage: mu was not refitted
    mu, bc_ema = _group(run, "behaviour"), _group(bc, "ema")
    assert mu.keys() == bc_ema.keys()
    for k, t in bc_ema.items():
        assert torch.equal(mu[k], t), k  # frozen mu is exactly the BC policy that BC deploys
    moved = [k for k, t in _group(run, "policy").items() if not torch.equal(t, bc_ema[k])]
    assert moved, "GMPG's policy should have taken gradient steps away from mu"
    meta = Checkpoint(latest_checkpoint(run)).meta
    assert meta["behaviour_from"].startswith(str(bc.resolve()))
    assert meta["stage_idx"] == 2 and meta["finished"]

    # a resume inside the policy stage restores mu from its own checkpoint: the BC run may be gone by then
    cut = _run([*gmpg, "name=cut"], stop_after=22)
    shutil.move(bc, tmp_path / "bc-moved")
    resume(cut, progress=False)
    assert Checkpoint(latest_checkpoint(cut)).meta["finished"]
    for k, t in _group(cut, "behaviour").items():
        assert torch.equal(t, bc_ema[k]), k


def test_behaviour_from_run_refuses_other_runs(tmp_path: Path) -> None:
    store = bandit_store(tmp_path / "b.zarr", 1.0, n=300)
    base = _base(tmp_path, store)
    bc = _run([*base, "name=bc", "policy.algo=bc", "critic.steps=0", "policy.steps=5"])
    gmpg = [*base, "policy.algo=gmpg", "critic.steps=5", "policy.steps=2", "policy.sample_steps=2"]
    with pytest.raises(ConfigError, match="model"):  # another network shape
        _run([*gmpg, "name=a", "model.hidden=[16,16]", f"policy.behaviour_from_run={bc}"])
    other = bandit_store(tmp_path / "other.zarr", 1.0, n=200, seed=1)
    with pytest.raises(ConfigError, match="store"):
        _run([*gmpg, "name=b", f"data.store={other}", f"policy.behaviour_from_run={bc}"])
    gmpo = _run([*base, "name=gmpo", "critic.steps=5", "policy.steps=2"])
    with pytest.raises(ConfigError, match="must be a bc run"):
        _run([*gmpg, "name=c", f"policy.behaviour_from_run={gmpo}"])
    half = _run([*base, "name=half", "policy.algo=bc", "critic.steps=0", "policy.steps=10"], stop_after=4)
    with pytest.raises(ConfigError, match="unfinished"):
        _run([*gmpg, "name=d", f"policy.behaviour_from_run={half}"])
    with pytest.raises(ConfigError, match="no checkpoint"):
        _run([*gmpg, "name=e", f"policy.behaviour_from_run={tmp_path / 'nowhere'}"])
