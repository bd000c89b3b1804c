"""apps.collect: store contents, recorded attrs, and reproducibility from a seed across worker counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genctl.apps.collect import collect
from genctl.datasets import EpisodeStore
from genctl.envs import make_env_from_info, train_seeds
from genctl.errors import GenctlError


def _arrays(path: Path) -> dict[str, np.ndarray]:
    store = EpisodeStore.open(path)
    out = store.load()
    out["episode_ends"] = np.asarray(store.episode_ends)
    return out


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def maze_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("c") / "w1.zarr"
    return collect("PointMaze_UMaze-v3", expert="maze", episodes=6, noise=0.3, random_frac=0.34, seed=4,
                   out=out, progress=False)


def test_store_contents_and_attrs(maze_store: Path) -> None:
    store = EpisodeStore.open(maze_store)
    assert store.n_episodes == 6
    keys = set(store.keys)
    for k in ("obs/observation", "obs/achieved_goal", "obs/desired_goal", "next_obs/observation", "action",
              "reward", "terminated", "truncated", "state/qpos", "state/qvel"):
        assert k in keys, k
    assert not any(k.startswith("image/") for k in keys)
    src = store.attrs["source"]
    assert src["kind"] == "collect" and src["expert"] == "maze" and src["noise"] == 0.3
    assert src["seeds"] == train_seeds(6, start=4) and len(src["random_episodes"]) == 2
    assert 0.0 <= src["expert_success_rate"] <= 1.0
    assert store.attrs["obs_keys"] == ["achieved_goal", "desired_goal", "observation"]
    assert store.attrs["ref_max_score"] == 1.0 and store.attrs["env"]["kwargs"] == {"continuing_task": False}
    ep = store.episode(0)
    assert ep["action"].dtype == np.float32 and np.abs(ep["action"]).max() <= 1.0
    # next_obs[t] == obs[t+1] within an episode, and the stored state re-renders the recorded obs
    np.testing.assert_array_equal(ep["next_obs/observation"][:-1], ep["obs/observation"][1:])
    np.testing.assert_allclose(ep["state/qpos"][:, :2], ep["obs/observation"][:, :2], atol=1e-6)
    env = make_env_from_info(store.attrs["env"])
    env.close()


def test_collect_reproducible_across_workers(maze_store: Path, tmp_path: Path) -> None:
    again = collect("PointMaze_UMaze-v3", expert="maze", episodes=6, noise=0.3, random_frac=0.34, seed=4,
                    out=tmp_path / "w1b.zarr", progress=False)
    two = collect("PointMaze_UMaze-v3", expert="maze", episodes=6, noise=0.3, random_frac=0.34, seed=4,
                  workers=2, out=tmp_path / "w2.zarr", progress=False)
    ref = _arrays(maze_store)
    _assert_same(ref, _arrays(again))
    _assert_same(ref, _arrays(two))
    other = collect("PointMaze_UMaze-v3", expert="maze", episodes=6, noise=0.3, random_frac=0.34, seed=5,
                    out=tmp_path / "s5.zarr", progress=False)
    assert not np.array_equal(ref["action"][:50], _arrays(other)["action"][:50])


def test_collect_images_flat_obs_env(tmp_path: Path) -> None:
    out = collect("dmc/cartpole-swingup", expert="random", episodes=2, noise=0.0, out=tmp_path / "d.zarr",
                  images=True, env_kwargs={"max_episode_steps": 5}, progress=False)
    store = EpisodeStore.open(out)
    assert store.n_transitions == 10 and store.attrs["env"]["max_episode_steps"] == 5
    img = store.load(keys=["image/default"])["image/default"]
    assert img.dtype == np.uint8 and img.shape == (10, 240, 240, 3) and img.max() > 0
    assert "max_episode_steps" not in store.attrs["env"]["kwargs"]


def test_collect_images_top_camera_and_size(tmp_path: Path) -> None:
    out = collect("PointMaze_UMaze-v3", expert="maze", episodes=1, noise=0.0, out=tmp_path / "t.zarr", images=True,
                  camera="top", image_size=32, env_kwargs={"max_episode_steps": 4}, progress=False)
    store = EpisodeStore.open(out)
    img = store.load(keys=["image/top"])["image/top"]
    assert img.shape == (4, 32, 32, 3) and img.dtype == np.uint8
    assert store.attrs["source"]["images"] == {"camera": "top", "height": 32, "width": 32}
    # the goal marker is red in the overhead view: some pixel is clearly red
    r, g, b = (img[0, ..., c].astype(int) for c in range(3))
    assert ((r > 150) & (g < 80) & (b < 80)).any()
    with pytest.raises(GenctlError, match="camera 'nope' is not in this env's model"):
        collect("PointMaze_UMaze-v3", expert="maze", episodes=1, noise=0.0, out=tmp_path / "n.zarr", images=True,
                camera="nope", progress=False)
    with pytest.raises(GenctlError, match="image-size"):
        collect("PointMaze_UMaze-v3", expert="maze", episodes=1, noise=0.0, out=tmp_path / "n.zarr", images=True,
                image_size=2, progress=False)


def test_collect_fetch_dict_obs(tmp_path: Path) -> None:
    out = collect("FetchPickAndPlace-v4", expert="fetch", episodes=2, noise=0.05, out=tmp_path / "f.zarr",
                  progress=False)
    store = EpisodeStore.open(out)
    assert store.n_transitions == 100 and store.flat_obs().shape == (100, 31)


def test_collect_errors(tmp_path: Path, maze_store: Path) -> None:
    with pytest.raises(GenctlError, match="AntMaze"):
        collect("AntMaze_UMaze-v5", expert="auto", episodes=1, noise=0.0, out=tmp_path / "a.zarr", progress=False)
    with pytest.raises(GenctlError, match="exists"):
        collect("PointMaze_UMaze-v3", expert="maze", episodes=1, noise=0.0, out=maze_store, progress=False)
    with pytest.raises(GenctlError, match="random-frac"):
        collect("PointMaze_UMaze-v3", expert="maze", episodes=1, noise=0.0, random_frac=2.0,
                out=tmp_path / "b.zarr", progress=False)
    assert not (tmp_path / "a.zarr").exists()
