"""Check genctl's LeRobot importer and exporter against LeRobot's own library (not a test: it needs lerobot).

lerobot needs Python >= 3.12 and its own torch, so it lives in a separate environment, e.g.

    python3.12 -m venv /tmp/lrvenv && /tmp/lrvenv/bin/pip install "lerobot[dataset]" av
    .venv/bin/python scripts/lerobot_compat.py --lerobot-python /tmp/lrvenv/bin/python

1. LeRobot records a dataset (LeRobotDataset.create / add_frame / save_episode / finalize: v3.0, AV1 video,
   a PNG image camera, two tasks); genctl ingests it; vectors must match what was recorded exactly and the
   camera frames must equal LeRobot's own decode of them, bit for bit.
2. genctl exports a store with every kind of key; LeRobot's reader loads it; every value must match the store
   (float32 where LeRobot returns float32) and its frames must equal genctl's re-ingest of the export.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RECORD = r'''
import sys, numpy as np
from lerobot.datasets import LeRobotDataset
root, H, W = sys.argv[1], 48, 64
img = {"dtype": "video", "shape": (H, W, 3), "names": ["height", "width", "channels"]}
features = {"observation.state": {"dtype": "float32", "shape": (4,), "names": None},
            "action": {"dtype": "float32", "shape": (2,), "names": None},
            "observation.images.top": img, "observation.images.wrist": dict(img, dtype="image"),
            "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
            "next.done": {"dtype": "bool", "shape": (1,), "names": None}}
ds = LeRobotDataset.create("genctl/compat", fps=15, features=features, root=root, robot_type="so101_follower")
rng, truth = np.random.default_rng(0), {"state": [], "action": [], "reward": []}
for e, n in enumerate([12, 9, 15, 7]):
    for t in range(n):
        y, x = np.mgrid[0:H, 0:W]
        im = np.stack([(x * 4 + 10 * t) % 256, (y * 5 + 20 * e) % 256, np.full_like(x, 5 * t)], -1).astype(np.uint8)
        s, a, r = rng.normal(size=4).astype(np.float32), rng.normal(size=2).astype(np.float32), np.float32(rng.normal())
        ds.add_frame({"observation.state": s, "action": a, "observation.images.top": im,
                      "observation.images.wrist": im[::-1].copy(), "next.reward": np.array([r]),
                      "next.done": np.array([t == n - 1]), "task": ["pick the cube", "place the cube"][e % 2]})
        truth["state"].append(s); truth["action"].append(a); truth["reward"].append(r)
    ds.save_episode()
ds.finalize()
np.savez(sys.argv[2], **{k: np.stack(v) for k, v in truth.items()})
'''

LOAD = r'''
import sys, numpy as np
from lerobot.datasets import LeRobotDataset
ds = LeRobotDataset("genctl/compat", root=sys.argv[1], video_backend="pyav", return_uint8=True)
cols = {}
for i in range(len(ds)):
    for k, v in ds[i].items():
        if hasattr(v, "numpy"):
            a = v.numpy()
            if k in ds.meta.camera_keys:  # (C, H, W); image features come as float in [0, 1] even with uint8
                a = np.transpose(a, (1, 2, 0))
                a = a if a.dtype == np.uint8 else np.round(a * 255).astype(np.uint8)
            cols.setdefault(k, []).append(a)
np.savez(sys.argv[2], **{k: np.stack(v) for k, v in cols.items()})
print(f"LeRobot loaded {sys.argv[1]}: {ds.num_episodes} episodes, {ds.num_frames} frames, tasks {list(ds.meta.tasks.index)}")
'''


def lerobot(python: str, code: str, *args: str) -> None:
    # cwd: "-c" puts the working directory on sys.path, and genctl's datasets/ folder would shadow HF datasets
    r = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, cwd=tempfile.gettempdir(),
                       env=dict(os.environ, SVT_LOG="1"))
    if r.returncode:
        sys.exit(f"lerobot failed:\n{r.stdout}\n{r.stderr}")
    if r.stdout.strip():
        print(r.stdout.strip())


def check(ok: bool, what: str) -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        check.failed = True  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lerobot-python", required=True, help="python of an environment with lerobot installed")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from genctl.datasets import EpisodeStore, ingest
    from genctl.datasets.export_lerobot import export_lerobot
    from tests.test_lerobot import _native_store, psnr

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        print("1. LeRobot writes, genctl reads")
        lerobot(args.lerobot_python, RECORD, str(t / "rec"), str(t / "truth.npz"))
        s = ingest(t / "rec", t / "rec.zarr")
        d, truth = s.load(), np.load(t / "truth.npz")
        check(s.episode_ends.tolist() == [12, 21, 36, 43], f"episode ends {s.episode_ends.tolist()}")
        for k, n in (("obs", "state"), ("action", "action"), ("reward", "reward")):
            check(np.array_equal(d[k], truth[n]), f"{k} equals what was recorded")
        lerobot(args.lerobot_python, LOAD, str(t / "rec"), str(t / "rec_lr.npz"))
        lr = np.load(t / "rec_lr.npz")
        for cam in ("top", "wrist"):
            check(np.array_equal(d[f"image/{cam}"], lr[f"observation.images.{cam}"]),
                  f"image/{cam} equals LeRobot's own decode (bit-exact)")
        check(s.attrs["tasks"] == {"0": "pick the cube", "1": "place the cube"}, f"tasks {s.attrs['tasks']}")

        print("2. genctl writes, LeRobot reads")
        store = _native_store(t / "native.zarr")
        export_lerobot(store, t / "exp")
        lerobot(args.lerobot_python, LOAD, str(t / "exp"), str(t / "exp_lr.npz"))
        lr, d = np.load(t / "exp_lr.npz"), EpisodeStore.open(store).load()
        back = EpisodeStore.open(ingest(t / "exp", t / "back.zarr").path).load()
        names = {"obs/a_goal": "observation.a_goal", "obs/b_pos": "observation.b_pos", "action": "action",
                 "next_obs/b_pos": "next.observation.b_pos", "reward": "next.reward", "terminated": "next.done",
                 "truncated": "next.truncated", "state/qpos": "state.qpos", "info/success": "info.success"}
        for k, n in names.items():
            got = lr[n].reshape(d[k].shape)
            check(np.array_equal(got, d[k].astype(got.dtype)), f"{n} equals store {k}")
        check(np.array_equal(lr["observation.images.cam"], back["image/cam"]),
              "LeRobot's decode of the exported mp4 equals genctl's re-ingest")
        print(f"  PSNR store -> mp4 -> LeRobot: {psnr(d['image/cam'], lr['observation.images.cam']):.1f} dB")
    if getattr(check, "failed", False):
        sys.exit(1)


if __name__ == "__main__":
    main()
