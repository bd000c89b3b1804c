"""data.obs_keys slices: a policy can see part of a store key (e.g. the robot's own state without the object's
pose), in training (the store side) and in closed loop (the env side) alike."""

from __future__ import annotations

import numpy as np
import pytest

from genctl.datasets import EpisodeStore, StoreWriter
from genctl.datasets.obs_spec import ObsSpec, key_ranges, parse_key
from genctl.datasets.testing import random_episode
from genctl.errors import DataError


@pytest.fixture()
def store(tmp_path) -> EpisodeStore:
    rng = np.random.default_rng(0)
    with StoreWriter(tmp_path / "d.zarr", {"source": {"kind": "collect"}}) as w:
        for _ in range(3):
            w.add_episode(random_episode(rng, 6, dict_obs=True))  # obs/a_goal (2 values), obs/b_pos (3)
    return EpisodeStore.open(tmp_path / "d.zarr")


def test_slices_select_the_same_values_from_store_and_env(store: EpisodeStore) -> None:
    full = store.flat_obs()  # the env's flat order: a_goal (cols 0-1), b_pos (cols 2-4)
    spec = ObsSpec.from_store(store, ["obs/b_pos[0:1,-1:]", "obs/a_goal"])  # listed out of order
    assert spec.low_keys == ("obs/a_goal", "obs/b_pos[0:1,-1:]") and spec.low_dims == (2, 2)
    assert spec.env_slices == ((0, 2), (2, 3), (4, 5)) and not spec.is_default
    want = full[:, [0, 1, 2, 4]]
    np.testing.assert_array_equal(spec.select_low(full), want)  # closed loop: from the env's observation
    store.select_obs(spec)
    np.testing.assert_array_equal(store.flat_obs(), want)  # training: from the store's keys
    np.testing.assert_array_equal(store.flat_obs(next=True)[:, 2:], store.load(["next_obs/b_pos"])["next_obs/b_pos"][:, [0, 2]])
    st = spec.stats_from_store(store.attrs["stats"])
    b = store.attrs["stats"]["obs/b_pos"]["mean"]
    assert st["mean"][2:] == [b[0], b[2]]
    same = ObsSpec.from_store(store, ["obs/a_goal[:]", "obs/b_pos[0:3]"])
    assert same.is_default  # every value in the env's order is the default spec
    swapped = ObsSpec.from_store(store, ["obs/a_goal[1:2,0:1]", "obs/b_pos"])
    assert not swapped.is_default and swapped.low_dim == 5
    np.testing.assert_array_equal(swapped.select_low(full)[:, :2], full[:, [1, 0]])
    assert ObsSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("keys, match", [
    (["obs/b_pos[5:9]"], r"slice '5:9' selects nothing of the 3 values of obs/b_pos"),
    (["obs/b_pos[0:2,1:3]"], r"slices overlap"),
    (["obs/b_pos[1]"], r"bad slice '1' \(expected a:b"),
    (["obs/b_pos[0:1]", "obs/b_pos[2:3]"], r"lists a key twice"),
    (["obs/c_vel[0:1]"], r"not one of its observation keys"),
])
def test_bad_slices_are_one_clear_error(store: EpisodeStore, keys: list[str], match: str) -> None:
    with pytest.raises(DataError, match=match):
        ObsSpec.from_store(store, keys)


def test_parse_and_ranges() -> None:
    assert parse_key("obs/observation[0:3, 9:11]") == ("obs/observation", "0:3, 9:11")
    assert parse_key("image/top") == ("image/top", None)
    assert key_ranges("obs/observation[0:3, 9:11,-5:]", 25) == ((0, 3), (9, 11), (20, 25))
    assert key_ranges("obs", 7) == ((0, 7),)


def test_override_with_slices_needs_no_quotes() -> None:
    from genctl.config import parse_value

    assert parse_value("[obs/observation[0:3,9:11], image/top]") == ["obs/observation[0:3,9:11]", "image/top"]
    assert parse_value("[512, 256]") == [512, 256] and parse_value("gmpo") == "gmpo"
