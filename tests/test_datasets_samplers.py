"""Samplers, split, normaliser and store_info."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genctl.datasets import (
    EpisodeStore,
    Normalizer,
    SequenceSampler,
    StoreWriter,
    TransitionBatcher,
    episode_split,
    format_info,
    load_transitions,
    store_info,
)
from genctl.datasets.testing import random_episode
from genctl.errors import DataError


@pytest.fixture
def store(tmp_path, rng) -> EpisodeStore:
    with StoreWriter(tmp_path / "s.zarr", {"source": {"kind": "collect"}, "ref_min_score": 0.0,
                                           "ref_max_score": 10.0}) as w:
        for i, t in enumerate([5, 1, 8, 3, 12]):
            w.add_episode(random_episode(rng, t, terminated=i % 2 == 0))
    return EpisodeStore.open(tmp_path / "s.zarr")


def test_episode_split():
    tr, va = episode_split(10, 0.2, seed=3)
    assert len(va) == 2 and len(tr) == 8 and sorted(np.r_[tr, va]) == list(range(10))
    assert np.array_equal(episode_split(10, 0.2, seed=3)[1], va)
    assert len(episode_split(2, 0.01, 0)[1]) == 1 and len(episode_split(1, 0.5, 0)[1]) == 0
    with pytest.raises(DataError):
        episode_split(5, 1.0, 0)


def test_load_transitions(store):
    tr = load_transitions(store, episodes=[2, 0])
    assert set(tr) == {"obs", "action", "reward", "next_obs", "terminal"}
    assert all(v.dtype == np.float32 for v in tr.values()) and len(tr["obs"]) == 13
    ep2 = store.episode(2)
    np.testing.assert_array_equal(tr["next_obs"][:8], ep2["next_obs"])
    assert tr["terminal"][7] == 1.0 and tr["terminal"][:7].sum() == 0


def test_transition_batcher(store):
    arrays = load_transitions(store)
    b = TransitionBatcher(arrays, 64, seed=1)
    batch = b.sample()
    assert batch["obs"].shape == (64, 5) and batch["reward"].shape == (64,) and batch["action"].shape == (64, 2)
    assert all(v.dtype == torch.float32 for v in batch.values())
    # every sampled row is a real transition (obs, action, reward stay aligned)
    rows = {tuple(np.r_[o, a]) for o, a in zip(arrays["obs"], arrays["action"], strict=True)}
    for o, a in zip(batch["obs"].numpy(), batch["action"].numpy(), strict=True):
        assert tuple(np.r_[o, a]) in rows
    same = TransitionBatcher(arrays, 64, seed=1).sample()
    assert torch.equal(same["obs"], batch["obs"])
    r0 = TransitionBatcher(arrays, 64, seed=1, rank=0, world_size=2).sample()
    r1 = TransitionBatcher(arrays, 64, seed=1, rank=1, world_size=2).sample()
    assert not torch.equal(r0["obs"], r1["obs"])
    state = b.state_dict()
    json.dumps(state)
    nxt = b.sample()
    b.load_state_dict(state)
    assert torch.equal(b.sample()["obs"], nxt["obs"])
    with pytest.raises(DataError):
        TransitionBatcher(arrays, 8, rank=2, world_size=2)


def test_transition_batcher_training_stream(store):
    """The training data path: batch size per call, windows from the same stream, restart for a new world size."""
    from genctl.datasets import Normalizer, SeqSpec, build_windows

    arrays = load_transitions(store)
    ident = Normalizer.fit(arrays["obs"], "identity"), Normalizer.fit(arrays["action"], "identity")
    spec = SeqSpec(2, 3, 3)
    win = build_windows(store, np.arange(store.n_episodes), *ident, spec)
    b = TransitionBatcher(arrays, 8, seed=3, windows=win)
    assert b.sample()["obs"].shape == (8, 5) and b.sample(5)["action"].shape == (5, 2)
    w = b.sample(4, windows=True)
    assert w["obs"].shape == (4, 2 * 5) and w["action"].shape == (4, 3 * 2)
    assert torch.equal(b.column("obs"), torch.as_tensor(arrays["obs"]))
    state = b.state_dict()
    nxt = [b.sample(6)["obs"], b.sample(6, windows=True)["action"]]
    b.load_state_dict(json.loads(json.dumps(state)))
    assert torch.equal(b.sample(6)["obs"], nxt[0]) and torch.equal(b.sample(6, windows=True)["action"], nxt[1])
    b.restart(offset=10)
    again = TransitionBatcher(arrays, 8, seed=3)
    again.restart(offset=10)
    assert torch.equal(b.sample()["obs"], again.sample()["obs"])


def _dp_reference(ends, horizon, pad_before, pad_after):
    """Diffusion Policy's create_indices + sample_sequence, written as the obvious loop."""
    windows, start = [], 0
    for end in ends:
        n = end - start
        for idx in range(-pad_before, n - horizon + pad_after + 1):
            rows = [start + min(max(idx + j, 0), n - 1) for j in range(horizon)]
            windows.append(rows)
        start = end
    return np.array(windows)


@pytest.mark.parametrize("horizon, n_obs, pb, pa", [(4, 2, 1, 3), (1, 1, 0, 0), (6, 3, 2, 5), (10, 2, 0, 0)])
def test_sequence_sampler_matches_diffusion_policy(horizon, n_obs, pb, pa):
    ends = np.cumsum([5, 1, 8, 3, 12])
    s = SequenceSampler(ends, horizon, n_obs, pb, pa)
    ref = _dp_reference(ends, horizon, pb, pa)
    assert len(s) == len(ref)
    np.testing.assert_array_equal(s.rows(np.arange(len(s))), ref.reshape(len(ref), horizon))
    data = {"obs": np.arange(29 * 2).reshape(29, 2).astype(np.float32), "action": np.arange(29.0)}
    if len(s):
        batch = s.sample(data, np.arange(len(s)))
        assert batch["obs"].shape == (len(s), n_obs, 2) and batch["action"].shape == (len(s), horizon)
        np.testing.assert_array_equal(batch["action"], ref)
    sub = SequenceSampler(ends, horizon, n_obs, pb, pa, episodes=[2])
    assert np.all((sub.rows(np.arange(len(sub))) >= 6) & (sub.rows(np.arange(len(sub))) < 14))


@pytest.mark.parametrize("mode", ["gaussian", "minmax", "identity"])
def test_normalizer_round_trip(mode, rng):
    x = rng.normal(3.0, 2.0, size=(200, 4)).astype(np.float32)
    x[:, 2] = 7.0  # a constant dimension must not blow up
    n = Normalizer.fit(x, mode)
    y = n.normalize(x)
    assert np.isfinite(y).all()
    if mode == "gaussian":
        np.testing.assert_allclose(y[:, [0, 1, 3]].mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(y[:, [0, 1, 3]].std(0), 1, atol=1e-3)
    if mode == "minmax":
        assert y.min() >= -1 - 1e-5 and y.max() <= 1 + 1e-5
    n2 = Normalizer.from_dict(json.loads(json.dumps(n.to_dict())))
    np.testing.assert_allclose(n2.unnormalize(n2.normalize(x)), x, rtol=1e-5, atol=1e-5)
    t = torch.from_numpy(x).reshape(20, 10, 4)
    np.testing.assert_allclose(n2.normalize(t).reshape(200, 4).numpy(), y, rtol=1e-5, atol=1e-5)


def test_normalizer_from_store_stats(store):
    obs = store.flat_obs()
    n = Normalizer.from_stats(store.attrs["stats"]["obs"], "gaussian")
    np.testing.assert_allclose(n.normalize(obs).mean(0), 0, atol=1e-5)
    with pytest.raises(DataError):
        Normalizer("bogus")
    with pytest.raises(DataError):
        n.normalize(np.zeros((3, 4)))


def test_store_info(store):
    info = store_info(store.path)
    json.dumps(info)
    assert info["episodes"] == 5 and info["transitions"] == 29
    r = store.episode_returns()
    assert info["return"]["mean"] == pytest.approx(r.mean()) and info["return"]["std"] == pytest.approx(r.std())
    assert info["return"]["p10"] == pytest.approx(np.percentile(r, 10))
    assert info["return"]["p90"] == pytest.approx(np.percentile(r, 90))
    assert info["keys"]["obs"]["shape"] == [29, 5] and info["keys"]["terminated"]["dtype"] == "bool"
    assert info["disk_bytes"] > 0 and info["compression_ratio"] > 0
    text = format_info(info)
    assert "episodes     5" in text and "obs" in text and "normalized" in text
