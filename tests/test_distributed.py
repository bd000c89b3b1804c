"""torchrun with 2 CPU processes (gloo): replicas stay identical, data is sharded per rank, rank 0 alone
writes checkpoints, resume works, and evaluation episodes are spread over the processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

TINY = ["model.hidden=[32,32,32]", "critic.hidden=[64,64]", "critic.batch_size=128", "policy.batch_size=128",
        "critic.steps=10", "policy.steps=12", "log_every=5", "threads=1", "ckpt_every=4"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL="egl")
    r = subprocess.run([exe, "--standalone", "--nproc-per-node", "2", "-m", "genctl", "--quiet", *args],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "umaze.zarr"
    r = subprocess.run([sys.executable, "-m", "genctl", "--quiet", "collect", "PointMaze_UMaze-v3", "--expert", "maze",
                        "--episodes", "12", "--noise", "0.3", "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def test_two_process_training_resume_and_eval(store: Path, tmp_path: Path) -> None:
    r = torchrun("train", f"data.store={store}", f"out_dir={tmp_path}", "name=ddp", *TINY, "--stop-after", "14")
    assert r.stdout.count("run: ") == 1  # only rank 0 speaks
    run = tmp_path / "ddp"
    torchrun("train", "--resume", str(run))
    metas = [json.loads(p.read_text()) for p in sorted((run / "checkpoints").glob("step-*/meta.json"))]
    assert metas and metas[-1]["finished"] and metas[-1]["step"] == 22
    for m in metas:
        assert m["world_size"] == 2
        assert m["replica_divergence"] == 0.0, "replicas drifted apart: gradients not averaged"
        a, b = m["data_rng_ranks"]
        assert a != b, "both ranks sampled the same data stream"
    assert not list(run.glob("checkpoints/.*"))  # no temp leftovers from a second writer
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len({r["step"] for r in rows}) == len(rows)  # one writer: no duplicated rows

    torchrun("eval", str(run), "--episodes", "3", "--max-episode-steps", "20")
    rep = json.loads((run / "eval.json").read_text())
    assert rep["processes"] == 2
    assert [e["seed"] for e in rep["episodes"]] == [1_000_000, 1_000_001, 1_000_002]
