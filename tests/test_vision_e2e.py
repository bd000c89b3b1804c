"""Policies that see a camera, end to end through the CLI: collect --images -> train (obs_keys) -> eval; and the
one-line errors of bad image input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import genctl_ok as cli

from genctl.datasets import EpisodeStore
from genctl.datasets.obs_spec import CameraSpec, ObsSpec, check_frames
from genctl.errors import DataError

pytestmark = pytest.mark.e2e

TINY = ["model.hidden=[32,32]", "policy.batch_size=32", "critic.batch_size=32", "critic.hidden=[32,32]",
        "model.vision.features=8", "model.vision.keypoints=8", "eval.steps=4", "threads=1", "log_every=5"]
SEES = "data.obs_keys=[obs/observation, image/top]"  # ball position/velocity + the overhead camera; no goal


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vis") / "top.zarr"
    cli("collect", "PointMaze_UMaze-v3", "--expert", "maze", "--episodes", "4", "--noise", "0.1", "--images",
        "--camera", "top", "--image-size", "32", "-o", str(out))
    return out


def test_vision_policy_collect_train_eval(store: Path, tmp_path: Path) -> None:
    cli("train", f"data.store={store}", f"out_dir={tmp_path}", "name=v", "policy.algo=gmpo", "critic.steps=6",
        "policy.steps=6", SEES, *TINY)
    run = tmp_path / "v"
    meta = json.loads(sorted((run / "checkpoints").iterdir())[-1].joinpath("meta.json").read_text())
    spec = ObsSpec.from_dict(meta["obs_spec"])
    assert spec.low_keys == ("obs/observation",) and spec.cameras == (CameraSpec("image/top", 32, 32, 3),)
    assert meta["obs_dim"] == 4 + 32 * 32 * 3 and meta["model"]["obs_encoder"]["kind"] == "small"
    assert meta["critic_encoder"] is not None  # the critic has its own encoder
    assert meta["images"] == {"camera": "top", "height": 32, "width": 32}
    rrd = tmp_path / "v.rrd"
    cli("eval", str(run), "--episodes", "2", "--max-episode-steps", "15", "--rerun", "save", str(rrd),
        "--candidates", "4")
    report = json.loads((run / "eval.json").read_text())
    assert len(report["episodes"]) == 2 and all(e["length"] <= 15 for e in report["episodes"])

    from genctl.apps.viz import first_image, rrd_contents

    ents = rrd_contents(rrd)
    frame = first_image(ents["/ep_000/camera"])  # what the policy saw: the overhead view at the trained size
    assert frame.size == 32 * 32 * 3 and frame.std() > 5
    assert "/ep_000/action_space/candidates" in ents
    cli("plot", str(run), "--states", "2", "--samples", "16")  # states as the policy sees them (camera pixels)
    assert (run / "plots" / "action_samples.png").stat().st_size > 1000


def test_vision_policy_with_history_and_gmpg_runs(store: Path, tmp_path: Path) -> None:
    cli("train", f"data.store={store}", f"out_dir={tmp_path}", "name=g", "policy.algo=gmpg", "critic.steps=4",
        "policy.steps=3", "policy.behaviour_steps=3", "policy.sample_steps=2", "data.n_obs_steps=2", SEES, *TINY)
    r = cli("run", str(tmp_path / "g"), "--hz", "50", "--max-steps", "10")  # real time renders the camera too
    assert json.loads((tmp_path / "g" / "realtime.json").read_text())["ticks"] == 10, r.stdout
    from genctl.apps.policy import LoadedPolicy
    from genctl.envs import make_env

    pol = LoadedPolicy.from_run(tmp_path / "g")
    env = make_env("PointMaze_UMaze-v3", **pol.env_overrides())
    obs, _ = env.reset(seed=0)
    x = pol.observe(obs, env)
    assert x.shape == (pol.obs_dim,) and x[4:].max() <= 255 and x[4:].std() > 5
    assert pol.act(np.stack([x, x])[None]).shape == (1, 2)
    env.close()
    small = make_env("PointMaze_UMaze-v3", **{**pol.env_overrides(), "width": 24, "height": 24})
    obs, _ = small.reset(seed=0)
    with pytest.raises(DataError, match=r"frames are 24x24, the policy was trained on 32x32"):
        pol.observe(obs, small)
    small.close()


def _genctl(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "genctl", "--quiet", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_bad_image_input_is_one_clear_line(store: Path, tmp_path: Path) -> None:
    r = _genctl("train", f"data.store={store}", f"out_dir={tmp_path}", "name=x", "policy.algo=bc", "critic.steps=0",
                "data.obs_keys=[obs/observation, image/wrist]", *TINY)
    assert r.returncode == 2 and not (tmp_path / "x").exists()
    err = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(err) == 1 and "'image/wrist'" in err[0] and "image/top" in err[0]
    r = _genctl("train", f"data.store={store}", f"out_dir={tmp_path}", "name=y", "policy.algo=bc", "critic.steps=0",
                "data.obs_keys=[obs/goal]", *TINY)
    assert r.returncode == 2 and "obs/goal" in r.stderr and "obs/observation" in r.stderr
    cam = CameraSpec("image/top", 32, 32, 3)
    with pytest.raises(DataError, match=r"expects RGB frames \(32x32x3\), got grey-scale \(32x32x1\)"):
        check_frames(np.zeros((2, 32, 32, 1), np.uint8), cam, 2)
    with pytest.raises(DataError, match="uint8"):
        check_frames(np.zeros((2, 32, 32, 3), np.float32), cam, 2)


def test_selected_obs_and_next_frames(store: Path) -> None:
    st = EpisodeStore.open(store)
    spec = ObsSpec.from_store(st, ["image/top", "obs/observation"])  # listed in any order: env order kept
    st.select_obs(spec)
    obs, nxt = st.flat_obs(episodes=[1]), st.flat_obs(next=True, episodes=[1])
    raw = st.load(["obs/observation", "next_obs/observation", "image/top"], episodes=[1])
    np.testing.assert_array_equal(obs[:, :4], raw["obs/observation"])
    np.testing.assert_array_equal(nxt[:, :4], raw["next_obs/observation"])
    frames = raw["image/top"].reshape(len(obs), -1).astype(np.float32)
    np.testing.assert_array_equal(obs[:, 4:], frames)
    np.testing.assert_array_equal(nxt[:-1, 4:], frames[1:])  # next frame = the next row; the last repeats
    np.testing.assert_array_equal(nxt[-1, 4:], frames[-1])
    env_obs = np.concatenate([st.load(["obs/achieved_goal", "obs/desired_goal"], episodes=[1])[k]
                              for k in ("obs/achieved_goal", "obs/desired_goal")] + [raw["obs/observation"]], 1)
    np.testing.assert_array_equal(spec.select_low(env_obs), raw["obs/observation"])
