"""genctl core: config loading/overrides, atomic writes, checkpoints round-trip, CLI error handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from genctl.config import TrainConfig, build_config, dump_yaml
from genctl.errors import ConfigError, DataError
from genctl.fsutil import atomic_dir, atomic_write_json, cleanup_stale
from genctl.run import Checkpoint, latest_checkpoint, list_checkpoints, load_module, save_checkpoint


def test_config_overrides_and_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("policy:\n  algo: gmpg\n  beta: 2.0\nmodel:\n  hidden: [64, 64]\n")
    cfg = build_config(TrainConfig, file=f, overrides=["policy.beta=5", "critic.lr=1e-4", "eval.solver=heun"])
    assert cfg.policy.algo == "gmpg" and cfg.policy.beta == 5.0 and cfg.critic.lr == 1e-4
    assert cfg.model.hidden == [64, 64] and cfg.eval.solver == "heun"
    again = build_config(TrainConfig, base=__import__("yaml").safe_load(dump_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("override, needle", [
    ("policy.bogus=1", "policy.bogus: unknown field"),
    ("policy.betta=3", "policy.betta: unknown field; did you mean policy.beta?"),
    ("crtic.steps=3", "crtic: unknown field; did you mean critic?"),
    ("eval.tempreature=0.5", "did you mean eval.temperature?"),
    ("critic.lr=abc", "critic.lr"),
    ("policy.algo=ppo", "policy.algo"),
    ("data.val_frac=1.5", "data.val_frac"),
    ("nokeyvalue", "expected key=value"),
])
def test_config_errors_name_the_field(override, needle):
    with pytest.raises(ConfigError) as e:
        build_config(TrainConfig, overrides=[override])
    assert needle in str(e.value)


def test_each_algorithm_owns_its_policy_fields():
    with pytest.raises(ConfigError) as e:
        build_config(TrainConfig, overrides=["policy.algo=bc", "policy.beta=3"])
    assert "policy.beta: unknown field for policy.algo=bc (a field of policy.algo=gmpo|gmpg)" in str(e.value)
    with pytest.raises(ConfigError, match="policy.kl_batch: unknown field for policy.algo=gmpo"):
        build_config(TrainConfig, overrides=["policy.kl_batch=4"])  # gmpo is the default algorithm
    with pytest.raises(ConfigError, match="did you mean policy.behaviour_steps"):
        build_config(TrainConfig, overrides=["policy.algo=gmpg", "policy.behavior_steps=4"])
    bc = build_config(TrainConfig, overrides=["policy.algo=bc", "critic.steps=0"]).policy
    assert bc.resolved_beta() is None and not hasattr(bc, "adv_norm")
    gmpg = build_config(TrainConfig, overrides=["policy.algo=gmpg", "policy.kl_batch=4"]).policy
    assert (gmpg.resolved_beta(), gmpg.kl_batch) == (1.0, 4)


FLAT_POLICY = {  # a policy section as genctl wrote it before the per-algorithm configs: every field, every algo
    "steps": 20, "batch_size": 64, "lr": 3e-4, "adv_norm": "std", "beta": None, "clamp": 100.0, "grad_clip": None,
    "ema_decay": 0.995, "behaviour_steps": 2000, "behaviour_lr": 1e-4, "sample_steps": 10, "solver": "euler",
    "exact_trace": None, "kl_batch": None}


@pytest.mark.parametrize("algo", ["bc", "gmpo", "gmpg"])
def test_saved_flat_config_still_loads(tmp_path, algo):
    from genctl.config import load_saved_config

    old = TrainConfig().model_dump(mode="json")
    old["policy"] = {"algo": algo, **FLAT_POLICY}
    f = tmp_path / "config.yaml"
    f.write_text(__import__("yaml").safe_dump(old))
    with pytest.raises(ConfigError, match="unknown field"):  # as user input the flat section is refused ...
        build_config(TrainConfig, file=f)
    cfg = load_saved_config(f)  # ... a run folder's saved config is migrated
    assert cfg.policy.algo == algo and cfg.policy.steps == 20 and cfg.policy.lr == 3e-4
    # a GMPG run saved with beta null trained with the default of its time (0.5), not today's (1.0)
    assert cfg.policy.resolved_beta() == {"bc": None, "gmpo": 10.0, "gmpg": 0.5}[algo]
    added_since = set(cfg.policy.model_dump()) - {"algo", *FLAT_POLICY}  # fields newer than the flat format ...
    fresh = build_config(TrainConfig, overrides=[f"policy.algo={algo}"]).policy
    assert {k: getattr(cfg.policy, k) for k in added_since} == {k: getattr(fresh, k) for k in added_since}  # ... default
    assert load_saved_config(f) == build_config(TrainConfig, base=__import__("yaml").safe_load(dump_yaml(cfg)))


def test_gmpo_needs_critic():
    with pytest.raises(ConfigError, match="critic.steps"):
        build_config(TrainConfig, overrides=["policy.algo=gmpo", "critic.steps=0"])


def test_atomic_dir_keeps_old_on_error(tmp_path):
    target = tmp_path / "thing"
    with atomic_dir(target) as d:
        (d / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(target) as d:
        (d / "a.txt").write_text("v2")
        raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["thing"]
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


def test_cleanup_stale_removes_dead_temp_dirs(tmp_path):
    dead = tmp_path / ".store.zarr.tmp-999999999-abcd"
    dead.mkdir()
    removed = cleanup_stale(tmp_path, "store.zarr")
    assert dead in removed and not dead.exists()


def test_checkpoint_roundtrip_with_optimizer(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"policy": net.state_dict()}, {"policy.opt": opt},
                        {"config": {"x": 1}, "note": "hi"})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000020", "step-000000030"]
    ck = Checkpoint(latest_checkpoint(tmp_path))
    assert ck.meta["step"] == 30 and ck.meta["note"] == "hi"
    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-3)
    load_module(net2, ck.group("policy"), "ck")
    ck.load_optimizers({"policy.opt": opt2})
    for p1, p2 in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(p1, p2)
        s1, s2 = opt.state[p1], opt2.state[p2]
        assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and float(s1["step"]) == float(s2["step"])


def test_checkpoint_shape_mismatch_is_clear(tmp_path):
    save_checkpoint(tmp_path, 1, {"policy": torch.nn.Linear(3, 2).state_dict()}, {}, {"config": {}})
    ck = Checkpoint(latest_checkpoint(tmp_path))
    with pytest.raises(DataError, match=r"shape of weight: checkpoint \(2, 3\) vs model \(4, 3\)"):
        load_module(torch.nn.Linear(3, 4), ck.group("policy"), f"checkpoint {ck.path}")


def test_checkpoint_missing_meta_and_corrupt_weights(tmp_path):
    d = save_checkpoint(tmp_path, 1, {"policy": torch.nn.Linear(3, 2).state_dict()}, {}, {"config": {}})
    (d / "policy.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DataError, match="policy.safetensors"):
        Checkpoint(d).group("policy")
    (d / "meta.json").unlink()
    with pytest.raises(DataError, match="meta.json is missing"):
        Checkpoint(d)


def _cli(*args, cwd=None):
    env = dict(os.environ, MUJOCO_GL="egl")
    return subprocess.run([sys.executable, "-m", "genctl", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_cli_help_lists_subcommands_and_each_has_help():
    r = _cli("--help")
    assert r.returncode == 0
    cmds = ["demo", "collect", "ingest", "export", "info", "train", "eval", "view", "run", "plot", "envs", "serve",
            "robot-sim"]
    for c in cmds:
        assert c in r.stdout
    for c in cmds:
        rc = _cli(c, "--help")
        assert rc.returncode == 0 and "usage: genctl " + c in rc.stdout, c


def test_cli_bad_config_one_line_no_traceback(tmp_path):
    r = _cli("train", "data.store=x.zarr", "policy.nope=1")
    assert r.returncode == 2
    assert "policy.nope: unknown field" in r.stderr and "Traceback" not in r.stderr
    r = _cli("train", f"data.store={tmp_path / 'missing.zarr'}", f"out_dir={tmp_path}")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "missing.zarr" in r.stderr
    assert not any(tmp_path.iterdir()) or all(p.name != "checkpoints" for p in tmp_path.rglob("*"))
