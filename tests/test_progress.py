"""Progress and summaries when output goes to a file (clusters, CI): plain lines, not a silent tqdm."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genctl.progress import PlainProgress, progress_bar


def test_plain_progress_lines_carry_step_values_rate_and_eta() -> None:
    out = io.StringIO()
    with PlainProgress(10, desc="policy   ", every=0.0, stream=out) as bar:
        for _ in range(3):
            bar.set_postfix({"loss": "0.5"})
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("policy  1/10 (10%)  loss 0.5") and "it/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("policy  3/10 (30%)") and len(lines) == 4  # 3 updates + the closing line
    out = io.StringIO()
    with PlainProgress(2, desc="eval", every=3600.0, stream=out, unit="ep") as bar:
        bar.update(2)
    assert out.getvalue().count("\n") == 1 and "2/2 (100%)" in out.getvalue() and "done in" in out.getvalue()


def test_progress_bar_is_plain_without_a_terminal_and_silent_when_off() -> None:
    assert isinstance(progress_bar(5, stream=io.StringIO()), PlainProgress)  # StringIO is not a tty
    off = progress_bar(5, enabled=False)
    off.update(3)
    off.close()


@pytest.mark.e2e
def test_collect_and_train_report_to_a_file(tmp_path: Path) -> None:
    env = dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1", GENCTL_PROGRESS_EVERY="0")
    store, run = tmp_path / "m.zarr", tmp_path / "runs" / "r"

    def genctl(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "genctl", *args], capture_output=True, text=True, env=env,
                           timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    r = genctl("collect", "PointMaze_UMaze-v3", "--expert", "maze", "--episodes", "6", "--random-frac", "0.34",
               "-o", str(store))
    assert f"wrote {store}: 6 episodes" in r.stdout and "transitions" in r.stdout
    assert "expert maze succeeded in" in r.stdout and "2 random-action episodes" in r.stdout
    assert "collect PointMaze_UMaze-v3  6/6 (100%)" in r.stdout
    r = genctl("train", f"data.store={store}", f"out_dir={run.parent}", "name=r", "critic.steps=12",
               "policy.steps=12", "policy.batch_size=100000", "model.hidden=[16,16]", "critic.hidden=[16,16]",
               "log_every=4", "ckpt_every=100")
    lines = r.stdout.splitlines()
    assert any(x.startswith("critic") and "12/12 (100%)" in x and "done in" in x for x in lines), r.stdout
    assert any(x.startswith("policy") and "/12 (" in x and "loss" in x and "ETA" in x for x in lines), r.stdout
    assert f"run: {run}" in lines and any(x.startswith(f"next: genctl eval {run}") for x in lines)
    assert "policy.batch_size 100000 is larger than the" in r.stderr + r.stdout


@pytest.mark.e2e
def test_view_and_export_are_quiet(tmp_path: Path) -> None:
    """No third-party noise on stderr: rerun's application-id migration warning (view), PyOpenGL's accelerate
    notice and gymnasium-robotics' Adroit notice (export)."""
    env = dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1", MINARI_DATASETS_PATH=str(tmp_path / "minari"))
    store = tmp_path / "m.zarr"

    def genctl(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "genctl", "--quiet", *args], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    genctl("collect", "PointMaze_UMaze-v3", "--expert", "maze", "--episodes", "3", "-o", str(store))
    r = genctl("view", str(store), "--episodes", "0:2", "--rerun", "save", str(tmp_path / "v.rrd"))
    assert r.stderr.strip() == "", r.stderr
    r = genctl("export", str(store), "--minari", "gen/umaze-v0")
    assert r.stderr.strip() == "", r.stderr
    assert "wrote Minari dataset gen/umaze-v0" in r.stdout
