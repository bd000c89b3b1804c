"""Using the better episodes. data.top_frac ("x % BC"): the kept episodes are the best by return among the training
episodes (known answers), the trainer trains on exactly those rows, validation episodes stay as they were, and a
store without rewards is refused with one clear line. data.return_weight (return-weighted sampling): known weights,
rows drawn in proportion to them, the same refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genctl.cli import main
from genctl.config import TrainConfig, build_config
from genctl.datasets import EpisodeStore, StoreWriter, TransitionBatcher, best_episodes, return_weights
from genctl.datasets.testing import random_episode
from genctl.errors import DataError

TINY = ["model.hidden=[8]", "policy.batch_size=8", "device=cpu", "threads=1", "log_every=1000",
        "ckpt_every=1000", "policy.algo=bc", "critic.steps=0", "policy.steps=2"]


def test_best_episodes_known_answers() -> None:
    rets = np.array([5.0, 1.0, 9.0, 3.0, 9.0, -2.0])
    every = np.arange(6)
    assert best_episodes(rets, every, 1.0).tolist() == [0, 1, 2, 3, 4, 5]
    assert best_episodes(rets, every, 0.34).tolist() == [0, 2, 4]  # ceil(0.34 * 6 = 2.04) = 3
    assert best_episodes(rets, every, 1 / 3).tolist() == [2, 4]  # exactly 2 (no float round-up to 3)
    assert best_episodes(rets, every, 0.5).tolist() == [0, 2, 4]
    assert best_episodes(rets, every, 0.01).tolist() == [2]  # at least one; a tie keeps the lower index
    assert best_episodes(rets, np.array([1, 3, 5]), 0.5).tolist() == [1, 3]  # ranked among the given ones only
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(DataError, match="0 < frac <= 1"):
            best_episodes(rets, every, bad)


def test_return_weights_known_answers() -> None:
    rets = np.array([0.0, 5.0, 10.0, 10.0, 100.0])
    w = return_weights(rets, np.arange(4), 0.1)  # the range of the given episodes (0..10) sets the scale
    np.testing.assert_allclose(w, [np.exp(-10.0), np.exp(-5.0), 1.0, 1.0])
    np.testing.assert_allclose(return_weights(rets * 1000 + 7, np.arange(4), 0.1), w)  # reward units do not matter
    np.testing.assert_allclose(return_weights(rets, np.array([1, 2]), 1.0), [np.exp(-1.0), 1.0])
    assert return_weights(rets, np.array([2, 3]), 0.1).tolist() == [1.0, 1.0]  # equal returns: uniform
    with pytest.raises(DataError, match="temperature > 0"):
        return_weights(rets, np.arange(4), 0.0)


def test_batcher_draws_rows_in_proportion_to_their_weights() -> None:
    rows = {"x": np.arange(4, dtype=np.float32)[:, None]}
    b = TransitionBatcher(rows, 40000, seed=1, row_weights=np.array([1.0, 0.0, 3.0, 0.0]))
    counts = np.bincount(b.sample()["x"][:, 0].long().numpy(), minlength=4) / 40000
    assert counts[1] == counts[3] == 0.0
    assert abs(counts[2] - 0.75) < 0.01  # binomial sd 0.002
    again = TransitionBatcher(rows, 40000, seed=1, row_weights=np.array([1.0, 0.0, 3.0, 0.0]))
    assert np.array_equal(again.sample()["x"].numpy(), TransitionBatcher(rows, 40000, seed=1, row_weights=np.array(
        [1.0, 0.0, 3.0, 0.0])).sample()["x"].numpy())  # a seeded stream, as the uniform one
    for bad in ([1.0, 2.0], [1.0, -1.0, 1.0, 1.0], [0.0] * 4, [np.nan, 1.0, 1.0, 1.0]):
        with pytest.raises(DataError, match="row_weights"):
            TransitionBatcher(rows, 4, row_weights=np.array(bad))


def write_store(path: Path, returns: list[float], *, reward: bool = True) -> Path:
    """Episodes of 10 steps whose rewards sum to ``returns`` (so the ranking is known)."""
    rng = np.random.default_rng(0)
    attrs = {"source": {"kind": "collect"}, **({} if reward else {"has_reward": False})}  # BC-only demos
    with StoreWriter(path, attrs) as w:
        for r in returns:
            ep = random_episode(rng, 10)
            ep["reward"] = np.full(10, r / 10, np.float32)
            if not reward:
                del ep["reward"]
            w.add_episode(ep)
    return path


def test_trainer_keeps_the_best_training_episodes(tmp_path: Path) -> None:
    from genctl.apps.train import Trainer

    returns = [3.0, 8.0, 1.0, 7.0, 5.0, 2.0, 6.0, 4.0, 9.0, 0.0]
    store = write_store(tmp_path / "d.zarr", returns)
    over = [f"data.store={store}", *TINY, "data.val_frac=0.2", "seed=3"]
    (tmp_path / "top").mkdir()
    full = Trainer(build_config(TrainConfig, overrides=over), tmp_path / "full", progress=False)
    top = Trainer(build_config(TrainConfig, overrides=[*over, "data.top_frac=0.25"]), tmp_path / "top",
                  progress=False)
    assert top.val_episodes == full.val_episodes  # the held-out episodes do not move
    assert len(full.train_episodes) == 8
    by_return = sorted(full.train_episodes.tolist(), key=lambda e: -returns[e])
    assert top.train_episodes.tolist() == sorted(by_return[:2])  # ceil(0.25 * 8) = 2 best training episodes
    # the batches come from those episodes' rows only: their observations, nothing else
    s = EpisodeStore.open(store)
    kept = np.concatenate([s.episode(int(e))["obs"] for e in top.train_episodes])
    assert top.data.n == len(kept) == 20
    obs = top.obs_norm.unnormalize(top.data.sample(200)["obs"].cpu().numpy())
    dist = np.abs(obs[:, None, :] - kept[None, :, :]).max(-1).min(1)  # each sampled row's nearest kept row
    assert dist.max() < 1e-4
    assert top.run()


def test_trainer_draws_the_better_episodes_more_often(tmp_path: Path) -> None:
    from genctl.apps.train import Trainer

    returns = [0.0, 10.0, 5.0, 10.0]  # episodes of 10 rows; a training row's reward is its episode's return / 10
    store = write_store(tmp_path / "d.zarr", returns)
    over = [f"data.store={store}", *TINY, "data.val_frac=0", "data.reward_scale=1", "data.return_weight=0.2"]
    (tmp_path / "w").mkdir()
    tr = Trainer(build_config(TrainConfig, overrides=over), tmp_path / "w", progress=False)
    drawn = np.round(tr.data.sample(20000)["reward"].cpu().numpy().reshape(-1) * 10).astype(int)
    share = {r: float((drawn == r).mean()) for r in (0, 5, 10)}
    # weights 1 (two episodes of return 10), e^-2.5 (return 5), e^-5 (return 0); every episode has 10 rows
    z = 2 + np.exp(-2.5) + np.exp(-5.0)
    assert abs(share[10] - 2 / z) < 0.01 and abs(share[5] - np.exp(-2.5) / z) < 0.006
    assert abs(share[0] - np.exp(-5.0) / z) < 0.003
    assert tr.run()


def test_return_weight_needs_single_step_data() -> None:
    with pytest.raises(Exception, match="data.return_weight draws single transitions"):
        build_config(TrainConfig, overrides=["data.store=x.zarr", "data.return_weight=0.1", "data.horizon=4"])


def test_store_without_rewards_is_refused(tmp_path: Path, capsys) -> None:
    store = write_store(tmp_path / "d.zarr", [1.0, 2.0, 3.0], reward=False)
    args = ["--quiet", "train", f"data.store={store}", f"out_dir={tmp_path}", "name=r", *TINY]
    assert main([*args, "data.top_frac=0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "data.top_frac" in err[0] and "d.zarr" in err[0]
    assert not (tmp_path / "r" / "checkpoints").exists()
    assert main([*args, "data.return_weight=0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.return_weight" in err[0] and "d.zarr" in err[0]
    assert main(args) == 0  # the same run with every episode trains
