"""Crash consistency with real process kills (SIGKILL) during collect, training and checkpointing.

A child process runs the real CLI (``genctl.cli.main``) and is killed either after a random delay (several
seeds) or by a hook that SIGKILLs the process itself at an exact moment inside a write: before/after a
checkpoint file, before/after the rename of a checkpoint or store into place, before/after LATEST is
replaced, and halfway through deleting an old checkpoint. Afterwards:

- every store is absent or opens and validates deeply;
- every ``checkpoints/step-*`` folder is complete (meta.json + every safetensors file loads) and LATEST, when
  present, names one of them;
- ``genctl train --resume RUN`` continues and finishes, with final weights equal to an uninterrupted run's.

(ingest kills are covered by tests/test_datasets_atomic.py.) The CI part tries a few kill points per phase;
``-m slow`` sweeps every hook and more random seeds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from genctl.cli import main
from genctl.datasets import EpisodeStore
from genctl.fsutil import cleanup_stale
from genctl.run import CKPT_RE, Checkpoint

pytestmark = pytest.mark.e2e

TINY = ["model.hidden=[32,32,32]", "critic.hidden=[32,32]", "critic.steps=20", "policy.steps=20",
        "critic.batch_size=256", "policy.batch_size=256", "threads=1", "log_every=5", "ckpt_every=3"]
FINAL_STEP = 40


def collect_argv(episodes: int = 12) -> list[str]:
    return ["collect", "PointMaze_UMaze-v3", "--expert", "maze", "--episodes", str(episodes), "--noise", "0.3"]

# The child: optional self-kill hook (GENCTL_KILL="module.attr:N:when", when in before|after|partial),
# prints "ready" once imports are done, then runs the CLI.
CHILD = r"""
import os, signal, sys, importlib, shutil
def _die():
    os.kill(os.getpid(), signal.SIGKILL)
spec = os.environ.get("GENCTL_KILL")
import genctl.cli, genctl.run, genctl.fsutil, genctl.apps.train, genctl.apps.collect, genctl.datasets.writer
if spec:
    target, n, when = spec.split(":")
    n = int(n)
    modname, attr = target.rsplit(".", 1)
    mod = importlib.import_module(modname)
    orig = getattr(mod, attr)
    calls = [0]
    def hooked(*a, **k):
        if when == "partial" and "step-" not in os.path.basename(str(a[0])):
            return orig(*a, **k)
        calls[0] += 1
        if calls[0] == n:
            if when == "before":
                _die()
            if when == "partial":  # delete half of the folder's files, then die
                files = sorted(p.path for p in os.scandir(a[0]) if p.is_file())
                for p in files[: max(1, len(files) // 2)]:
                    os.unlink(p)
                _die()
        out = orig(*a, **k)
        if calls[0] == n and when == "after":
            _die()
        return out
    setattr(mod, attr, hooked)
print("ready", flush=True)
sys.exit(genctl.cli.main(["--quiet"] + sys.argv[1:]))
"""


def child(argv: list[str], *, kill: str | None = None, delay: float | None = None,
          timeout: float = 120) -> tuple[int, float]:
    """Run the CLI in a child; SIGKILL it ``delay`` s after "ready" (or let a hook kill it).
    Returns (exit code, seconds from ready to exit); -9 means it was killed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    env.pop("GENCTL_KILL", None)
    if kill:
        env["GENCTL_KILL"] = kill
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline().strip()
        assert line == "ready", f"child did not start: {line!r} {proc.stderr.read()}"
        t0 = time.perf_counter()
        if delay is not None:
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -signal.SIGKILL), f"child failed ({proc.returncode}): {err}"
    return proc.returncode, time.perf_counter() - t0


# --- checks ----------------------------------------------------------------------------------------------
def check_store(path: Path) -> str:
    """Absent, or a complete store that validates deeply. Removes the dead writer's temp sibling."""
    cleanup_stale(path.parent, path.name)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}")], "temp leftovers"
    if not path.exists():
        return "absent"
    store = EpisodeStore.open(path)
    store.validate(deep=True)
    return f"complete({store.n_episodes} episodes)"


def check_checkpoints(run: Path) -> list[str]:
    """Every visible checkpoint folder is complete; LATEST names one of them. Returns their names."""
    ckdir = run / "checkpoints"
    if not ckdir.exists():
        return []
    names = []
    for p in sorted(ckdir.iterdir()):
        if not (p.is_dir() and CKPT_RE.match(p.name)):
            continue
        ck = Checkpoint(p)  # meta.json present and valid JSON with step/groups/config
        assert ck.meta["step"] == int(p.name.split("-")[1])
        expected = set(ck.meta["groups"]) | ({"optim"} if ck.meta.get("optimizers") else set())
        present = {f.stem for f in p.glob("*.safetensors")}
        assert expected <= present, f"{p}: missing {expected - present}"
        for g in present:
            ck.group(g)  # loads as safetensors
        names.append(p.name)
    latest = ckdir / "LATEST"
    if latest.exists():
        assert latest.read_text().strip() in names, f"LATEST -> {latest.read_text()!r}, have {names}"
    return names


def final_weights(run: Path) -> dict[str, np.ndarray]:
    ck = run / "checkpoints" / f"step-{FINAL_STEP:09d}"
    meta = json.loads((ck / "meta.json").read_text())
    assert meta["finished"], meta["stage"]
    out = {}
    for g in ("policy", "ema", "critic"):
        out.update({f"{g}/{k}": v for k, v in load_file(str(ck / f"{g}.safetensors")).items()})
    return out


def finish(run: Path, train_argv: list[str], capsys) -> str:
    """After a kill: resume (or, if the run folder never got its config, start again) and finish."""
    if (run / "config.yaml").exists():
        how, argv = "resumed", ["train", "--resume", str(run)]
    else:
        assert not (run / "checkpoints").exists()
        how, argv = "restarted", train_argv
    rc = main(["--quiet", *argv])
    capsys.readouterr()
    assert rc == 0
    check_checkpoints(run)
    hidden = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not hidden, f"leftovers of the killed process were not swept: {hidden}"
    return how


# --- fixtures --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A store, and a reference (uninterrupted) run made by the same child script, timed for random kills."""
    root = tmp_path_factory.mktemp("crash")
    store = root / "maze.zarr"
    rc, collect_s = child([*collect_argv(), "--seed", "5", "-o", str(store)])
    assert rc == 0
    ref = root / "ref"
    rc, train_s = child(["train", f"data.store={store}", f"out_dir={root}", "name=ref", *TINY])
    assert rc == 0
    return {"root": root, "store": store, "ref": final_weights(ref), "train_s": train_s, "collect_s": collect_s}


def train_argv(setup, out: Path) -> list[str]:
    return ["train", f"data.store={setup['store']}", f"out_dir={out}", "name=r", *TINY]


def kill_train_and_resume(setup, tmp_path, capsys, *, kill=None, delay=None) -> str:
    argv = train_argv(setup, tmp_path)
    rc, _ = child(argv, kill=kill, delay=delay)
    run = tmp_path / "r"
    names = check_checkpoints(run) if run.exists() else []
    how = finish(run, argv, capsys) if rc != 0 else "finished before the kill"
    got = final_weights(run)
    assert got.keys() == setup["ref"].keys()
    for k, v in setup["ref"].items():
        np.testing.assert_array_equal(got[k], v, err_msg=f"{k} differs from the uninterrupted run")
    return f"killed={rc != 0} checkpoints_after_kill={len(names)} {how}"


# Exact kill points inside checkpointing (each is a real SIGKILL of the training process).
CKPT_HOOKS = [
    "genctl.run.save_file:2:before",        # mid-checkpoint: some group files written, no meta.json
    "genctl.run.save_file:7:after",         # second checkpoint, after its first file
    "genctl.fsutil.replace_dir:1:before",   # temp folder complete, not renamed
    "genctl.fsutil.replace_dir:2:after",    # renamed into place, LATEST still names the previous one
    "genctl.run.atomic_write_text:3:before",  # LATEST about to be replaced
    "shutil.rmtree:1:partial",              # halfway through deleting the oldest checkpoint
    "shutil.rmtree:4:partial",
]
CI_HOOKS = ["genctl.run.save_file:2:before", "genctl.fsutil.replace_dir:2:after", "shutil.rmtree:1:partial"]


@pytest.mark.parametrize("hook", CI_HOOKS)
def test_kill_inside_checkpointing(setup, tmp_path, capsys, hook):
    print(hook, kill_train_and_resume(setup, tmp_path, capsys, kill=hook))


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_training_at_random_time(setup, tmp_path, capsys, seed):
    delay = float(np.random.default_rng(seed).uniform(0.1, 0.9)) * setup["train_s"]
    print(f"delay {delay:.2f}s", kill_train_and_resume(setup, tmp_path, capsys, delay=delay))


COLLECT_HOOKS = ["genctl.datasets.writer.replace_dir:1:before",
                 "genctl.datasets.writer.replace_dir:1:after"]


def kill_collect(setup, tmp_path, *, kill=None, delay=None, over_existing=False) -> str:
    out = tmp_path / "c.zarr"
    argv = [*collect_argv(), "--seed", "9", "-o", str(out)]
    if over_existing:
        rc, _ = child([*collect_argv(3), "--seed", "9", "-o", str(out)])  # a previous, 3-episode version
        assert rc == 0
        argv.append("--overwrite")
    rc, _ = child(argv, kill=kill, delay=delay)
    state = check_store(out)
    if over_existing:
        assert state in ("complete(3 episodes)", "complete(12 episodes)"), state
    else:
        assert state in ("absent", "complete(12 episodes)"), state
    if state != "complete(12 episodes)":  # the user reruns the command and it completes
        again, _ = child([*argv, "--overwrite"] if out.exists() and "--overwrite" not in argv else argv)
        assert again == 0 and check_store(out) == "complete(12 episodes)"
    return f"killed={rc != 0} store after kill: {state}"


@pytest.mark.parametrize("hook", COLLECT_HOOKS)
def test_kill_collect_at_store_rename(setup, tmp_path, hook):
    print(hook, kill_collect(setup, tmp_path, kill=hook, over_existing=True))


def test_kill_collect_at_random_time(setup, tmp_path):
    delay = float(np.random.default_rng(3).uniform(0.2, 0.9)) * setup["collect_s"]
    print(f"delay {delay:.2f}s", kill_collect(setup, tmp_path, delay=delay))


# --- the larger sweep ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("hook", [h for h in CKPT_HOOKS if h not in CI_HOOKS])
def test_kill_inside_checkpointing_sweep(setup, tmp_path, capsys, hook):
    print(hook, kill_train_and_resume(setup, tmp_path, capsys, kill=hook))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 10))
def test_kill_training_at_random_time_sweep(setup, tmp_path, capsys, seed):
    delay = float(np.random.default_rng(seed).uniform(0.05, 1.0)) * setup["train_s"]
    print(f"delay {delay:.2f}s", kill_train_and_resume(setup, tmp_path, capsys, delay=delay))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4, 10))
def test_kill_collect_at_random_time_sweep(setup, tmp_path, seed):
    delay = float(np.random.default_rng(seed).uniform(0.05, 1.0)) * setup["collect_s"]
    print(f"delay {delay:.2f}s", kill_collect(setup, tmp_path, delay=delay, over_existing=seed % 2 == 0))
