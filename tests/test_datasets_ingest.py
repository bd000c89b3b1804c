"""Ingest from D4RL-HDF5, robomimic-HDF5 and Minari (files made with h5py / minari), export back to Minari."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from genctl.datasets import detect_format, export_minari, ingest, load_transitions
from genctl.datasets.testing import make_d4rl_file, make_minari_dataset, make_robomimic_file
from genctl.errors import DataError


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def leftovers(folder) -> list[str]:
    return sorted(p for p in os.listdir(folder) if not p.endswith((".hdf5", ".h5")))


# --- D4RL --------------------------------------------------------------------------------------------------
def test_d4rl_episodes_tail_infos_and_attrs(tmp_path):
    src = make_d4rl_file(tmp_path / "d.hdf5", n=300, episode_len=60, tail=25)
    store = ingest(src, tmp_path / "s.zarr")
    assert detect_format(src) == "d4rl"
    assert store.n_episodes == 6 and store.n_transitions == 325
    np.testing.assert_array_equal(store.episode_ends, [60, 120, 180, 240, 300, 325])
    d = store.load()
    with h5py.File(src) as f:
        np.testing.assert_array_equal(d["obs"], f["observations"][()])
        np.testing.assert_array_equal(d["next_obs"], f["next_observations"][()])
        np.testing.assert_array_equal(d["terminated"], f["terminals"][()])
        np.testing.assert_array_equal(d["state/qpos"], f["infos/qpos"][()])
        np.testing.assert_array_equal(d["info/goal"], f["infos/goal"][()])
    assert d["state/qpos"].dtype == np.float64
    last = store.episode(5)
    assert last["truncated"][-1] and not last["terminated"].any()  # the unterminated tail is truncated
    assert store.episode(1)["truncated"][-1] and store.episode(0)["terminated"][-1]
    a = store.attrs
    assert a["source"]["kind"] == "d4rl" and a["source"]["unterminated_tail"] is True
    assert a["env"]["id"] == "Hopper-v5" and a["ref_min_score"] == pytest.approx(-20.27)
    assert a["ref_max_score"] == pytest.approx(3234.3) and a["observation_space"]["shape"] == [11]


def test_d4rl_without_next_observations(tmp_path):
    src = make_d4rl_file(tmp_path / "d.hdf5", n=120, episode_len=30, next_obs=False, infos=False)
    store = ingest(src, tmp_path / "s.zarr")
    assert "next_obs" not in store.keys
    tr = load_transitions(store)
    # episodes 1 and 3 end in a timeout: their last step has no known successor and is left out
    assert len(tr["obs"]) == 118
    obs = store.flat_obs()
    np.testing.assert_array_equal(tr["next_obs"][:29], obs[1:30])
    assert tr["terminal"][29] == 1.0


def _bad_d4rl(tmp_path, kind):
    n = 100
    p = tmp_path / f"{kind}.hdf5"
    if kind == "missing":
        return make_d4rl_file(p, n=n, drop=("actions",)), "actions"
    if kind == "length":
        return make_d4rl_file(p, n=n, override={"rewards": np.zeros(n - 3, np.float32)}), "rewards"
    if kind == "nan":
        obs = np.zeros((n, 11), np.float32)
        obs[42, 3] = np.inf
        return make_d4rl_file(p, n=n, override={"observations": obs}), "observations"
    if kind == "dtype":
        return make_d4rl_file(p, n=n, override={"actions": np.array([b"x"] * n)}), "actions"
    if kind == "truncated":
        make_d4rl_file(p, n=4000, chunked=True)
        size = p.stat().st_size
        with open(p, "r+b") as f:
            f.truncate(size // 2)
        return p, str(p)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "length", "nan", "dtype", "truncated"])
def test_d4rl_bad_input(tmp_path, kind):
    src, field = _bad_d4rl(tmp_path, kind)
    with pytest.raises(DataError) as info:
        ingest(src, tmp_path / "s.zarr", fmt="d4rl")
    msg = str(info.value)
    assert str(src) in msg and field in msg, msg
    assert leftovers(tmp_path) == []  # nothing written, no temp folder


def test_existing_target_is_not_touched(tmp_path):
    src = make_d4rl_file(tmp_path / "d.hdf5", n=120)
    ingest(src, tmp_path / "s.zarr")
    with pytest.raises(DataError, match="already exists"):
        ingest(src, tmp_path / "s.zarr")
    bad, _ = _bad_d4rl(tmp_path, "nan")
    with pytest.raises(DataError):
        ingest(bad, tmp_path / "s.zarr", overwrite=True)
    from genctl.datasets import EpisodeStore

    assert EpisodeStore.open(tmp_path / "s.zarr", deep=True).n_transitions == 120
    assert leftovers(tmp_path) == ["s.zarr"]


def test_detect_format_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        detect_format(tmp_path / "missing.hdf5")
    p = tmp_path / "odd.hdf5"
    with h5py.File(p, "w") as f:
        f.create_dataset("foo", data=np.zeros(3))
    with pytest.raises(DataError, match="unknown HDF5 layout"):
        ingest(p, tmp_path / "s.zarr")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a readable HDF5"):
        detect_format(tmp_path / "notes.txt")


# --- robomimic ---------------------------------------------------------------------------------------------
def test_robomimic_images_and_obs_keys(tmp_path):
    src = make_robomimic_file(tmp_path / "r.hdf5", n_demos=3)
    assert detect_format(src) == "robomimic"
    store = ingest(src, tmp_path / "s.zarr")
    assert store.obs_keys == ["object", "robot0_eef_pos"]
    assert "image/agentview_image" in store.keys and "next_obs/agentview_image" not in store.keys
    assert store.array_info("image/agentview_image").chunks == (64, 8, 8, 3)  # 39 frames: one partial chunk
    assert store.n_episodes == 3 and list(store.episode_lengths()) == [10, 13, 16]
    with h5py.File(src) as f:
        np.testing.assert_array_equal(store.episode(2)["image/agentview_image"], f["data/demo_2/obs/agentview_image"])
        np.testing.assert_allclose(store.episode(0)["next_obs/object"], f["data/demo_0/next_obs/object"], rtol=1e-6)
        np.testing.assert_array_equal(store.episode(1)["state/sim"], f["data/demo_1/states"])
    assert store.flat_obs().shape == (39, 7)
    e1 = store.episode(1)  # demo_1 ends without done -> truncated
    assert e1["truncated"][-1] and not e1["terminated"][-1]
    assert store.attrs["env"]["id"] == "Lift" and store.attrs["source"]["kind"] == "robomimic"
    only = ingest(src, tmp_path / "o.zarr", obs_keys=["object"])
    assert only.obs_keys == ["object"] and not any(k.startswith("image/") for k in only.keys)


@pytest.mark.parametrize("bad, field", [
    ({"data/demo_1/actions": np.zeros((3, 7))}, "data/demo_1/actions"),
    ({"data/demo_2/obs/object": np.full((16, 4), b"a")}, "data/demo_2/obs/object"),
])
def test_robomimic_bad_input(tmp_path, bad, field):
    src = make_robomimic_file(tmp_path / "r.hdf5", bad=bad)
    with pytest.raises(DataError, match=field) as info:
        ingest(src, tmp_path / "s.zarr")
    assert str(src) in str(info.value) and leftovers(tmp_path) == []


def test_robomimic_missing_field_and_unknown_key(tmp_path):
    src = make_robomimic_file(tmp_path / "r.hdf5", image=False)
    with h5py.File(src, "r+") as f:
        del f["data/demo_1/rewards"]
    with pytest.raises(DataError, match="missing field 'data/demo_1/rewards'"):
        ingest(src, tmp_path / "s.zarr")
    with pytest.raises(DataError, match="obs_keys"):
        ingest(src, tmp_path / "s.zarr", obs_keys=["nope"])
    assert leftovers(tmp_path) == []


# --- Minari ------------------------------------------------------------------------------------------------
def test_minari_dict_obs_round_trip(tmp_path, minari_root):
    import minari

    src = make_minari_dataset("test/pointmaze-v0", n_episodes=3, dict_obs=True)
    store = ingest("test/pointmaze-v0", tmp_path / "s.zarr")
    assert store.obs_keys == ["achieved_goal", "desired_goal", "observation"]
    assert {"obs/observation", "next_obs/observation", "info/success"} <= set(store.keys)
    episodes = list(src.iterate_episodes())
    ep = store.episode(1)
    np.testing.assert_allclose(ep["obs/observation"], episodes[1].observations["observation"][:-1], rtol=1e-6)
    np.testing.assert_allclose(ep["next_obs/desired_goal"], episodes[1].observations["desired_goal"][1:],
                               rtol=1e-6)
    np.testing.assert_array_equal(ep["truncated"], episodes[1].truncations)
    a = store.attrs
    assert a["env"]["id"] == "PointMaze_UMaze-v3" and a["env"]["max_episode_steps"] == 300
    assert a["ref_min_score"] == -1.5 and a["ref_max_score"] == 2.5 and a["observation_space"]["shape"] == [8]
    assert a["action_space"]["low"] == [-1.0, -1.0]

    out = export_minari(store.path, "exp/pointmaze-v0")
    assert out == minari_root / "exp/pointmaze-v0"
    back = minari.load_dataset("exp/pointmaze-v0")
    assert back.total_episodes == 3 and back.env_spec.id == "PointMaze_UMaze-v3"
    assert back.storage.metadata["ref_max_score"] == 2.5
    for orig, new in zip(episodes, back.iterate_episodes(), strict=True):
        for k in orig.observations:
            np.testing.assert_allclose(new.observations[k], orig.observations[k], rtol=1e-6)
        np.testing.assert_allclose(new.actions, orig.actions)
        np.testing.assert_array_equal(new.terminations, orig.terminations)
    with pytest.raises(DataError, match="already exists"):
        export_minari(store.path, "exp/pointmaze-v0")


def test_minari_flat_obs_by_path(tmp_path, minari_root):
    make_minari_dataset("test/hopper-v0", n_episodes=2, dict_obs=False)
    path = minari_root / "test" / "hopper-v0"
    assert detect_format(path) == "minari"
    store = ingest(path, tmp_path / "s.zarr")
    assert store.obs_keys is None and store.flat_obs().shape == (14, 11)
    assert store.attrs["env"]["id"] == "Hopper-v5" and store.attrs["source"]["id"] == "test/hopper-v0"
    tr = load_transitions(store)
    assert tr["terminal"].sum() == 1  # episode 0 terminated, episode 1 truncated


def test_minari_nan_writes_nothing(tmp_path, minari_root):
    make_minari_dataset("test/bad-v0", n_episodes=3, dict_obs=True, nan_in_episode=2)
    with pytest.raises(DataError, match=r"episode 2.*observations/obs/observation.*NaN"):
        ingest("test/bad-v0", tmp_path / "s.zarr")
    assert leftovers(tmp_path) == ["minari"]
    with pytest.raises(DataError, match="no Minari dataset"):
        ingest("test/none-v0", tmp_path / "s.zarr", fmt="minari")


def test_d4rl_store_exports_to_minari_with_env_spec(tmp_path, minari_root):
    import minari

    src = make_d4rl_file(tmp_path / "d.hdf5", n=120, episode_len=60, infos=False)
    store = ingest(src, tmp_path / "s.zarr")
    export_minari(store.path, "exp/hopper-v0")
    back = minari.load_dataset("exp/hopper-v0")
    assert back.env_spec.id == "Hopper-v5" and back.storage.metadata["ref_min_score"] == pytest.approx(-20.27)
    ep = next(iter(back.iterate_episodes()))
    with h5py.File(src) as f:  # T+1 observations = obs followed by the last next_obs
        np.testing.assert_array_equal(ep.observations[:-1], f["observations"][:60])
        np.testing.assert_array_equal(ep.observations[-1], f["next_observations"][59])
    again = ingest("exp/hopper-v0", tmp_path / "again.zarr")
    np.testing.assert_array_equal(again.load()["next_obs"], store.load()["next_obs"])


def test_minari_export_keeps_sim_state_and_infos_and_says_what_it_leaves_out(tmp_path, minari_root, caplog):
    """export --minari then ingest keeps state/qpos, state/qvel (needed to re-render) and info/*; camera frames
    are not exported, and the export says so instead of dropping them quietly."""
    from genctl.datasets import StoreWriter
    from genctl.datasets.testing import random_episode

    rng = np.random.default_rng(0)
    eps = []
    for t in (7, 4, 9):
        ep = random_episode(rng, t)
        ep["state/qpos"] = rng.normal(size=(t, 3))
        ep["state/qvel"] = rng.normal(size=(t, 3))
        ep["info/success"] = (rng.uniform(size=t) > 0.5).astype(np.float32)
        ep["image/front"] = rng.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8)
        eps.append(ep)
    with StoreWriter(tmp_path / "s.zarr", {"source": {"kind": "collect"}}) as w:
        for ep in eps:
            w.add_episode(ep)
    with caplog.at_level("WARNING", logger="genctl.export"):
        export_minari(tmp_path / "s.zarr", "exp/state-v0")
    assert "image/front not exported" in caplog.text
    back = ingest("exp/state-v0", tmp_path / "back.zarr")
    assert {"state/qpos", "state/qvel", "info/success"} <= set(back.keys)
    for i, ep in enumerate(eps):
        got = back.episode(i)
        for k in ("state/qpos", "state/qvel", "info/success", "obs", "action", "reward"):
            np.testing.assert_allclose(got[k], ep[k], rtol=1e-6, err_msg=k)
