"""Simulator faults during closed-loop evaluation end only the affected episode, with the reason recorded.

A tiny PointMaze run is evaluated through the CLI while a wrapper makes chosen episodes' real MuJoCo
simulation diverge at step 3: a NaN state, a huge applied force (MuJoCo's own BADQACC warning and reset),
a NaN qpos (BADQPOS), and a simulator exception. The other episodes, including ones running side by side in
the same batched policy call, must complete normally.
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from cli_helpers import tiny_maze_run

import genctl.apps.evaluate as evaluate_mod
from genctl.cli import main
from genctl.envs import EVAL_SEED_BASE

pytestmark = pytest.mark.e2e

FAULT_STEP = 3
FAULTS = {1: "nan_state", 2: "huge_force", 3: "nan_qpos", 4: "exception"}  # episode index -> fault
EXPECTED_END = {1: "nan_state", 2: "mujoco_warning: bad_qacc", 3: "mujoco_warning: bad_qpos",
                4: "sim_error: RuntimeError: injected simulator failure"}


class FaultInjector(gym.Wrapper):
    """Breaks the real simulator state (``env.unwrapped.data``) of selected episodes at FAULT_STEP."""

    def reset(self, *, seed=None, options=None):
        self.fault = FAULTS.get(int(seed) - EVAL_SEED_BASE) if seed is not None else None
        self.t = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        self.t += 1
        data = self.env.unwrapped.data
        hit = self.t == FAULT_STEP
        if hit and self.fault == "huge_force":
            data.qfrc_applied[:] = 1e20
        if hit and self.fault == "nan_qpos":
            data.qpos[:] = np.nan
        if hit and self.fault == "exception":
            raise RuntimeError("injected simulator failure")
        obs, r, term, trunc, info = self.env.step(action)
        data.qfrc_applied[:] = 0.0
        if hit and self.fault == "nan_state":  # the state diverged to NaN and the observation shows it
            data.qvel[:] = np.nan
            obs = np.full_like(obs, np.nan)
        return obs, r, term, trunc, info


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_maze_run(tmp_path_factory.mktemp("faults"), seed=4, episodes=3, train=[
        "model.hidden=[32,32,32]", "critic.hidden=[32,32]", "critic.steps=8", "policy.steps=8",
        "critic.batch_size=64", "policy.batch_size=64", "threads=1", "eval.steps=2"])[1]


@pytest.mark.parametrize("envs", [1, 2])
def test_diverging_episodes_end_with_reason_others_complete(run, monkeypatch, capsys, envs, tmp_path):
    monkeypatch.chdir(tmp_path)  # MuJoCo appends its warnings to ./MUJOCO_LOG.TXT
    real = evaluate_mod.make_env_from_info
    monkeypatch.setattr(evaluate_mod, "make_env_from_info", lambda info, **kw: FaultInjector(real(info, **kw)))
    out = run / f"eval-{envs}.json"
    rc = main(["--quiet", "eval", str(run), "--episodes", "6", "--envs", str(envs), "--max-episode-steps", "10",
               "-o", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "4 episode(s) ended by the simulator" in printed
    report = json.loads(out.read_text())
    eps = {e["index"]: e for e in report["episodes"]}
    assert sorted(eps) == list(range(6))
    for i, want in EXPECTED_END.items():
        assert eps[i]["end"] == want, (i, eps[i])
        assert eps[i]["length"] == FAULT_STEP, (i, eps[i])
        assert np.isfinite(eps[i]["return"])
    for i in (0, 5):  # untouched episodes run to the time limit (or the goal)
        assert eps[i]["end"] in ("truncated", "terminated"), eps[i]
        assert eps[i]["end"] == "terminated" or eps[i]["length"] == 10, eps[i]
    assert report["faults"] == 4
    assert np.isfinite(report["return"]["mean"])
