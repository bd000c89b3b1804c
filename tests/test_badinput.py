"""Bad input through the real CLI: every malformed file, store, config or checkpoint gives exit code 2, one
``error: ...`` line naming the file/field, no traceback, and nothing written or overwritten.

Each case is a function ``(tmp_path, shared) -> (argv, needles)``: it builds its broken input under
``tmp_path`` (copies of the shared store/run when it needs to damage them), the test snapshots ``tmp_path``
(every file's bytes), runs ``genctl.cli.main(argv)`` in-process and checks the error and the snapshot.
Anything other than a clean ``GenctlError`` escapes ``main`` and fails the test (that is the traceback case).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from cli_helpers import tiny_maze_run

from genctl.cli import main
from genctl.datasets import ingest
from genctl.datasets.testing import make_d4rl_file, make_robomimic_file

pytestmark = pytest.mark.e2e

TINY = ["model.hidden=[32,32,32]", "critic.hidden=[32,32]", "critic.steps=20", "policy.steps=20",
        "critic.batch_size=256", "policy.batch_size=256", "threads=1", "eval.steps=4", "log_every=10"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """One small collected PointMaze store, one tiny trained run on it, and a Hopper-shaped D4RL store."""
    root = tmp_path_factory.mktemp("shared")
    store, run = tiny_maze_run(root, seed=1, episodes=4, collect=["--noise", "0.3"], train=TINY)
    hopper = ingest(make_d4rl_file(root / "hopper.hdf5", n=120, episode_len=60), root / "hopper.zarr").path
    return {"store": store, "run": run, "hopper": Path(hopper), "root": root}


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(["--quiet", *argv])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


# --- helpers that make damaged copies --------------------------------------------------------------------
def store_copy(tmp: Path, shared) -> Path:
    dst = tmp / "copy.zarr"
    shutil.copytree(shared["store"], dst)
    return dst


def run_copy(tmp: Path, shared) -> tuple[Path, Path]:
    """A copy of the trained run and its latest checkpoint folder."""
    dst = tmp / "run"
    shutil.copytree(shared["run"], dst)
    latest = (dst / "checkpoints" / "LATEST").read_text().strip()
    return dst, dst / "checkpoints" / latest


def edit_meta(ck: Path, fn) -> None:
    meta = json.loads((ck / "meta.json").read_text())
    fn(meta)
    (ck / "meta.json").write_text(json.dumps(meta))


def first_chunk(store: Path, key: str) -> Path:
    return next(p for p in sorted((store / "data" / key / "c").rglob("*")) if p.is_file())


def train_on(store: Path, tmp: Path) -> list[str]:
    return ["train", f"data.store={store}", f"out_dir={tmp / 'runs'}", "name=x", *TINY]


# --- ingest ----------------------------------------------------------------------------------------------
def _d4rl(tmp, **kw):
    src = make_d4rl_file(tmp / "src.hdf5", n=120, episode_len=60, **kw)
    return src


def ingest_missing_src(tmp, s):
    return ["ingest", str(tmp / "nope.hdf5"), "-o", str(tmp / "o.zarr")], ["nope.hdf5"]


def ingest_not_hdf5(tmp, s):
    (tmp / "notes.hdf5").write_text("not hdf5 at all")
    return ["ingest", str(tmp / "notes.hdf5"), "-o", str(tmp / "o.zarr")], ["notes.hdf5", "HDF5"]


def ingest_truncated_hdf5(tmp, s):
    p = make_d4rl_file(tmp / "t.hdf5", n=4000, chunked=True)
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size // 2)
    return ["ingest", str(p), "--format", "d4rl", "-o", str(tmp / "o.zarr")], ["t.hdf5"]


def ingest_missing_key(tmp, s):
    return ["ingest", str(_d4rl(tmp, drop=("actions",))), "-o", str(tmp / "o.zarr")], ["src.hdf5", "actions"]


def ingest_nan_obs(tmp, s):
    obs = np.zeros((120, 11), np.float32)
    obs[7, 2] = np.nan
    return (["ingest", str(_d4rl(tmp, override={"observations": obs})), "-o", str(tmp / "o.zarr")],
            ["src.hdf5", "observations", "NaN"])


def ingest_inf_reward(tmp, s):
    r = np.ones(120, np.float32)
    r[3] = np.inf
    return ["ingest", str(_d4rl(tmp, override={"rewards": r})), "-o", str(tmp / "o.zarr")], ["src.hdf5", "rewards"]


def ingest_string_actions(tmp, s):
    src = _d4rl(tmp, override={"actions": np.array([b"x"] * 120)})
    return ["ingest", str(src), "-o", str(tmp / "o.zarr")], ["src.hdf5", "actions", "dtype"]


def ingest_length_mismatch(tmp, s):
    src = _d4rl(tmp, override={"rewards": np.zeros(117, np.float32)})
    return ["ingest", str(src), "-o", str(tmp / "o.zarr")], ["src.hdf5", "rewards"]


def ingest_reward_2d(tmp, s):
    src = _d4rl(tmp, override={"rewards": np.zeros((120, 2), np.float32)})
    return ["ingest", str(src), "-o", str(tmp / "o.zarr")], ["src.hdf5", "rewards"]


def ingest_empty_file(tmp, s):
    src = make_d4rl_file(tmp / "src.hdf5", n=0, episode_len=60, infos=False)
    return ["ingest", str(src), "-o", str(tmp / "o.zarr")], ["src.hdf5"]


def ingest_empty_episode(tmp, s):
    src = make_robomimic_file(tmp / "rm.hdf5", image=False, bad={
        "data/demo_1/actions": np.zeros((0, 7)), "data/demo_1/rewards": np.zeros(0),
        "data/demo_1/dones": np.zeros(0, np.int64), "data/demo_1/states": np.zeros((0, 9)),
        "data/demo_1/obs/object": np.zeros((0, 4)), "data/demo_1/obs/robot0_eef_pos": np.zeros((0, 3)),
        "data/demo_1/next_obs/object": np.zeros((0, 4)), "data/demo_1/next_obs/robot0_eef_pos": np.zeros((0, 3))})
    return ["ingest", str(src), "-o", str(tmp / "o.zarr")], ["rm.hdf5", "demo_1"]


def ingest_robomimic_unknown_obs_key(tmp, s):
    src = make_robomimic_file(tmp / "rm.hdf5", image=False)
    return ["ingest", str(src), "--obs-keys", "nope", "-o", str(tmp / "o.zarr")], ["rm.hdf5", "nope"]


def ingest_robomimic_bad_actions(tmp, s):
    src = make_robomimic_file(tmp / "rm.hdf5", image=False, bad={"data/demo_0/actions": np.array([b"a"] * 10)})
    return ["ingest", str(src), "-o", str(tmp / "o.zarr")], ["rm.hdf5", "actions"]


def ingest_existing_out(tmp, s):
    out = store_copy(tmp, s)
    return ["ingest", str(_d4rl(tmp)), "-o", str(out)], ["copy.zarr", "already exists"]


def ingest_bad_over_existing(tmp, s):
    out = store_copy(tmp, s)
    obs = np.zeros((120, 11), np.float32)
    obs[5, 0] = np.inf
    return (["ingest", str(_d4rl(tmp, override={"observations": obs})), "--overwrite", "-o", str(out)],
            ["src.hdf5", "observations"])


# --- collect ---------------------------------------------------------------------------------------------
def _collect(tmp, *extra, env="PointMaze_UMaze-v3", expert="maze", episodes="2"):
    return ["collect", env, "--expert", expert, "--episodes", episodes, *extra, "-o", str(tmp / "c.zarr")]


def collect_unknown_env(tmp, s):
    return _collect(tmp, env="NoSuchEnv-v0"), ["NoSuchEnv-v0"]


def collect_unknown_expert(tmp, s):
    return _collect(tmp, expert="wizard"), ["wizard"]


def collect_zero_episodes(tmp, s):
    return _collect(tmp, episodes="0"), ["--episodes"]


def collect_nan_noise(tmp, s):
    return _collect(tmp, "--noise", "nan"), ["--noise"]


def collect_random_frac(tmp, s):
    return _collect(tmp, "--random-frac", "2"), ["--random-frac"]


def collect_existing_out(tmp, s):
    shutil.copytree(s["store"], tmp / "c.zarr")
    return _collect(tmp), ["c.zarr", "already exists"]


# --- train: config ---------------------------------------------------------------------------------------
def train_unknown_field(tmp, s):
    return [*train_on(s["store"], tmp), "policy.bogus=1"], ["policy.bogus", "unknown field"]


def train_ill_typed(tmp, s):
    return [*train_on(s["store"], tmp), "critic.lr=abc"], ["critic.lr", "abc"]


def train_ill_typed_list(tmp, s):
    return [*train_on(s["store"], tmp), "model.hidden=wide"], ["model.hidden"]


def train_config_file_unknown(tmp, s):
    (tmp / "c.yaml").write_text(yaml.safe_dump({"polcy": {"algo": "gmpo"}}))
    return [*train_on(s["store"], tmp), "-c", str(tmp / "c.yaml")], ["c.yaml", "polcy", "unknown field", "did you mean policy?"]


def train_config_file_ill_typed(tmp, s):
    (tmp / "c.yaml").write_text(yaml.safe_dump({"policy": {"beta": "strong"}}))
    return [*train_on(s["store"], tmp), "-c", str(tmp / "c.yaml")], ["c.yaml", "policy.beta"]


def train_config_file_not_mapping(tmp, s):
    (tmp / "c.yaml").write_text("- 1\n- 2\n")
    return [*train_on(s["store"], tmp), "-c", str(tmp / "c.yaml")], ["c.yaml", "mapping"]


def train_config_file_bad_yaml(tmp, s):
    (tmp / "c.yaml").write_text("policy: {algo: [gmpo\n")
    return [*train_on(s["store"], tmp), "-c", str(tmp / "c.yaml")], ["c.yaml", "YAML"]


def train_config_file_missing(tmp, s):
    return [*train_on(s["store"], tmp), "-c", str(tmp / "none.yaml")], ["none.yaml"]


def train_bad_override_syntax(tmp, s):
    return [*train_on(s["store"], tmp), "policy.beta"], ["policy.beta", "key=value"]


# --- train: stores ---------------------------------------------------------------------------------------
def train_missing_store(tmp, s):
    return train_on(tmp / "missing.zarr", tmp), ["missing.zarr", "does not exist"]


def train_store_is_a_run(tmp, s):
    return train_on(s["run"], tmp), ["is a training run", "not a store"]


def info_on_a_run(tmp, s):
    return ["info", str(s["run"])], ["is a training run", "not a store"]


def train_store_is_file(tmp, s):
    (tmp / "file.zarr").write_text("{}")
    return train_on(tmp / "file.zarr", tmp), ["file.zarr"]


def train_empty_store_dir(tmp, s):
    (tmp / "empty.zarr").mkdir()
    return train_on(tmp / "empty.zarr", tmp), ["empty.zarr"]


def train_store_nan_obs(tmp, s):
    st = store_copy(tmp, s)
    zarr.open_group(st, mode="a")["data/obs/observation"][3, 1] = np.nan
    return train_on(st, tmp), ["copy.zarr", "obs"]


def train_store_inf_reward(tmp, s):
    st = store_copy(tmp, s)
    zarr.open_group(st, mode="a")["data/reward"][2] = np.inf
    return train_on(st, tmp), ["copy.zarr", "reward"]


def train_store_truncated_chunk(tmp, s):
    st = store_copy(tmp, s)
    c = first_chunk(st, "action")
    c.write_bytes(c.read_bytes()[:10])
    return train_on(st, tmp), ["copy.zarr", "data/action"]


def train_store_deleted_chunk(tmp, s):
    st = store_copy(tmp, s)
    first_chunk(st, "reward").unlink()
    return train_on(st, tmp), ["copy.zarr", "data/reward", "missing"]


def train_store_garbage_zarr_json(tmp, s):
    st = store_copy(tmp, s)
    (st / "zarr.json").write_text("{not json")
    return train_on(st, tmp), ["copy.zarr"]


def train_store_no_format_version(tmp, s):
    st = store_copy(tmp, s)
    root = zarr.open_group(st, mode="a")
    root.attrs["format_version"] = None
    return train_on(st, tmp), ["copy.zarr", "format_version"]


def train_store_wrong_dtype(tmp, s):
    st = store_copy(tmp, s)
    root = zarr.open_group(st, mode="a")
    r = root["data/reward"][:]
    del root["data/reward"]
    root["data"].create_array("reward", data=r.astype(np.float64))
    return train_on(st, tmp), ["copy.zarr", "data/reward", "float64", "float32"]


def train_store_wrong_rows(tmp, s):
    st = store_copy(tmp, s)
    root = zarr.open_group(st, mode="a")
    a = root["data/action"]
    a.resize((a.shape[0] - 1, *a.shape[1:]))
    return train_on(st, tmp), ["copy.zarr", "data/action", "rows"]


def train_store_bad_episode_ends(tmp, s):
    st = store_copy(tmp, s)
    root = zarr.open_group(st, mode="a")
    ends = root["meta/episode_ends"][:]
    ends[0] = ends[1] + 5
    root["meta/episode_ends"][:] = ends
    return train_on(st, tmp), ["copy.zarr", "episode_ends"]


def train_store_missing_key(tmp, s):
    st = store_copy(tmp, s)
    del zarr.open_group(st, mode="a")["data/action"]
    return train_on(st, tmp), ["copy.zarr", "action"]


def train_existing_run(tmp, s):
    shutil.copytree(s["run"], tmp / "runs" / "x")
    return train_on(s["store"], tmp), ["already exists", "--resume"]


# --- train --resume --------------------------------------------------------------------------------------
def resume_not_a_run(tmp, s):
    (tmp / "folder").mkdir()
    return ["train", "--resume", str(tmp / "folder")], ["folder", "config.yaml"]


def resume_with_overrides(tmp, s):
    run, _ = run_copy(tmp, s)
    return ["train", "--resume", str(run), "policy.beta=2"], ["--resume"]


def resume_corrupt_meta(tmp, s):
    run, ck = run_copy(tmp, s)
    (ck / "meta.json").write_text('{"step": 4')
    return ["train", "--resume", str(run)], ["meta.json", "JSON"]


def resume_corrupt_config(tmp, s):
    run, _ = run_copy(tmp, s)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["policy"]["lr"] = "fast"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return ["train", "--resume", str(run)], ["config.yaml", "policy.lr"]


def resume_checkpoint_from_other_env(tmp, s):
    run, _ = run_copy(tmp, s)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["store"] = str(s["hopper"])  # the run's checkpoint is PointMaze (8/2), the store is Hopper (11/3)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return ["train", "--resume", str(run)], ["checkpoint", "obs/action dims"]


# --- eval ------------------------------------------------------------------------------------------------
def _eval(run, *extra):
    return ["eval", str(run), "--episodes", "1", "--max-episode-steps", "5", *extra]


def eval_missing_run(tmp, s):
    return _eval(tmp / "nope"), ["nope", "does not exist"]


def eval_no_checkpoint(tmp, s):
    run, _ = run_copy(tmp, s)
    shutil.rmtree(run / "checkpoints")
    return _eval(run), ["run", "no checkpoint"]


def eval_a_store(tmp, s):
    return _eval(s["store"]), ["is a dataset", "not a run", "genctl train data.store="]


def eval_corrupt_weights(tmp, s):
    run, ck = run_copy(tmp, s)
    (ck / "ema.safetensors").write_bytes(b"\x00garbage" * 32)
    return _eval(run), ["ema.safetensors", "safetensors"]


def eval_truncated_weights(tmp, s):
    run, ck = run_copy(tmp, s)
    f = ck / "ema.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return _eval(run), ["ema.safetensors"]


def eval_missing_weights(tmp, s):
    run, ck = run_copy(tmp, s)
    (ck / "ema.safetensors").unlink()
    (ck / "policy.safetensors").unlink()
    return _eval(run), ["policy.safetensors", "missing"]


def eval_meta_missing_field(tmp, s):
    run, ck = run_copy(tmp, s)
    edit_meta(ck, lambda m: m.pop("config"))
    return _eval(run), ["meta.json", "config"]


def eval_meta_ill_typed(tmp, s):
    run, ck = run_copy(tmp, s)
    edit_meta(ck, lambda m: m.update(obs_dim="eight"))
    return _eval(run), ["meta.json", "obs_dim"]


def eval_meta_missing_norm(tmp, s):
    run, ck = run_copy(tmp, s)
    edit_meta(ck, lambda m: m.pop("obs_norm"))
    return _eval(run), ["meta.json", "obs_norm"]


def eval_weights_shape_mismatch(tmp, s):
    run, ck = run_copy(tmp, s)
    edit_meta(ck, lambda m: m["model"].update(hidden=[16, 16, 16]))
    return _eval(run), ["checkpoint", "weights do not match"]


def eval_checkpoint_from_other_env(tmp, s):
    from genctl.envs import env_info

    run, ck = run_copy(tmp, s)
    info = env_info("Hopper-v5")
    edit_meta(ck, lambda m: m.update(env=info))
    (run / "eval.json").write_text('{"previous": true}\n')  # a pre-existing output must stay byte-identical
    return _eval(run), ["checkpoint", "Hopper-v5", "obs 8"]


def eval_env_size_mismatch(tmp, s):
    run, ck = run_copy(tmp, s)
    edit_meta(ck, lambda m: m["env"].update(obs_dim=7))
    return _eval(run), ["obs_dim", "7"]


def eval_unknown_env_id(tmp, s):
    run, ck = run_copy(tmp, s)
    edit_meta(ck, lambda m: m["env"].update(id="NoSuchEnv-v0"))
    return _eval(run), ["NoSuchEnv-v0"]


def eval_zero_episodes(tmp, s):
    run, _ = run_copy(tmp, s)
    return ["eval", str(run), "--episodes", "0"], ["--episodes"]


def eval_zero_steps(tmp, s):
    run, _ = run_copy(tmp, s)
    return _eval(run, "--steps", "-3"), ["--steps"]


def eval_bad_rerun_mode(tmp, s):
    run, _ = run_copy(tmp, s)
    return _eval(run, "--rerun", "teleport"), ["--rerun", "teleport"]


def eval_unknown_device(tmp, s):
    run, _ = run_copy(tmp, s)
    return _eval(run, "--device", "tpu"), ["--device", "tpu"]


def eval_bad_cuda_index(tmp, s):
    run, _ = run_copy(tmp, s)
    return _eval(run, "--device", "cuda:x"), ["--device", "cuda:x"]


# --- view / info -----------------------------------------------------------------------------------------
def view_missing_store(tmp, s):
    return ["view", str(tmp / "none.zarr")], ["none.zarr", "does not exist"]


def view_bad_episode_spec(tmp, s):
    st = store_copy(tmp, s)
    return ["view", str(st), "--episodes", "a:b"], ["--episodes"]


def view_empty_episode_range(tmp, s):
    st = store_copy(tmp, s)
    return ["view", str(st), "--episodes", "5:2"], ["--episodes '5:2' selects no episode"]


def view_episode_out_of_range(tmp, s):
    st = store_copy(tmp, s)
    return ["view", str(st), "--episodes", "99"], ["--episodes", "99"]


def view_corrupt_store(tmp, s):
    st = store_copy(tmp, s)
    c = first_chunk(st, "action")
    c.write_bytes(b"\x00" * 7)
    return ["view", str(st), "--episodes", "0:2"], ["copy.zarr", "data/action"]


def view_nan_store(tmp, s):
    st = store_copy(tmp, s)
    zarr.open_group(st, mode="a")["data/action"][1, 0] = np.nan
    return ["view", str(st), "--episodes", "0"], ["copy.zarr", "data/action", "NaN"]


def info_deleted_chunk(tmp, s):
    st = store_copy(tmp, s)
    first_chunk(st, "reward").unlink()
    return ["info", str(st)], ["copy.zarr", "data/reward"]


CASES = [
    ingest_missing_src, ingest_not_hdf5, ingest_truncated_hdf5, ingest_missing_key, ingest_nan_obs,
    ingest_inf_reward, ingest_string_actions, ingest_length_mismatch, ingest_reward_2d, ingest_empty_file,
    ingest_empty_episode, ingest_robomimic_unknown_obs_key, ingest_robomimic_bad_actions, ingest_existing_out,
    ingest_bad_over_existing,
    collect_unknown_env, collect_unknown_expert, collect_zero_episodes, collect_nan_noise, collect_random_frac,
    collect_existing_out,
    train_unknown_field, train_ill_typed, train_ill_typed_list, train_config_file_unknown,
    train_config_file_ill_typed, train_config_file_not_mapping, train_config_file_bad_yaml,
    train_config_file_missing, train_bad_override_syntax,
    train_missing_store, train_store_is_a_run, info_on_a_run, train_store_is_file, train_empty_store_dir, train_store_nan_obs, train_store_inf_reward,
    train_store_truncated_chunk, train_store_deleted_chunk, train_store_garbage_zarr_json,
    train_store_no_format_version, train_store_wrong_dtype, train_store_wrong_rows, train_store_bad_episode_ends,
    train_store_missing_key, train_existing_run,
    resume_not_a_run, resume_with_overrides, resume_corrupt_meta, resume_corrupt_config,
    resume_checkpoint_from_other_env,
    eval_missing_run, eval_no_checkpoint, eval_a_store, eval_corrupt_weights, eval_truncated_weights, eval_missing_weights,
    eval_meta_missing_field, eval_meta_ill_typed, eval_meta_missing_norm, eval_weights_shape_mismatch,
    eval_checkpoint_from_other_env, eval_env_size_mismatch, eval_unknown_env_id, eval_zero_episodes,
    eval_zero_steps, eval_bad_rerun_mode, eval_unknown_device, eval_bad_cuda_index,
    view_missing_store, view_bad_episode_spec, view_empty_episode_range, view_episode_out_of_range, view_corrupt_store, view_nan_store,
    info_deleted_chunk,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_one_clear_error_nothing_written(case, tmp_path, shared, capsys):
    shared_before = snapshot(shared["root"])
    argv, needles = case(tmp_path, shared)
    before = snapshot(tmp_path)
    rc, out, err = run_cli(capsys, argv)
    assert rc == 2, f"exit code {rc}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err
    error_lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(error_lines) == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"
    assert snapshot(tmp_path) == before, "the failing command wrote or changed files"
    assert snapshot(shared["root"]) == shared_before


def test_count_of_cases():
    assert len(CASES) >= 30


def test_debug_shows_traceback(tmp_path):
    """Only ``--debug`` lets the exception (and so a traceback) through."""
    from genctl.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        main(["--debug", "--quiet", "info", str(tmp_path / "none.zarr")])


def test_single_step_episodes_are_valid_input(tmp_path, capsys):
    """Single-step episodes are legal data (T >= 1): ingest keeps them and training runs on them."""
    src = make_d4rl_file(tmp_path / "one.hdf5", n=6, episode_len=1, infos=False)
    rc, out, err = run_cli(capsys, ["ingest", str(src), "-o", str(tmp_path / "one.zarr")])
    assert rc == 0, err
    assert "6 episodes" in out
    rc, out, err = run_cli(capsys, ["train", f"data.store={tmp_path / 'one.zarr'}", f"out_dir={tmp_path}",
                                    "name=one", *TINY, "critic.steps=2", "policy.steps=2"])
    assert rc == 0, err


@pytest.mark.parametrize("case", [train_store_truncated_chunk, eval_corrupt_weights, ingest_not_hdf5],
                         ids=lambda c: c.__name__)
def test_real_process_stderr_is_one_line(case, tmp_path, shared):
    """The same through ``python -m genctl`` in a fresh process: stderr is exactly the one error line."""
    import os
    import subprocess
    import sys

    argv, needles = case(tmp_path, shared)
    before = snapshot(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "genctl", "--quiet", *argv], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert all(n in lines[0] for n in needles), r.stderr
    assert snapshot(tmp_path) == before
