"""Learning-rate schedules per training stage: the cosine curve's known values, the lr every stage's optimiser
actually trains with (critic to lr/10, policy stages to 0, GMPG's behaviour stage from its own lr), the constant
schedule, and a resumed run continuing on the same curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genctl.apps.lr_schedule import cosine_factor
from genctl.config import TrainConfig, build_config
from genctl.datasets import StoreWriter
from genctl.datasets.testing import random_episode

TINY = ["model.hidden=[8]", "critic.hidden=[8,8]", "critic.batch_size=16", "policy.batch_size=16", "device=cpu",
        "threads=1", "log_every=1000", "ckpt_every=1000", "data.val_frac=0"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lr") / "d.zarr"
    rng = np.random.default_rng(0)
    with StoreWriter(path, {"source": {"kind": "collect"}}) as w:
        for _ in range(3):
            w.add_episode(random_episode(rng, 20, terminated=True))
    return path


def test_cosine_factor_known_values() -> None:
    assert cosine_factor(0, 10, 0.0) == 1.0
    assert cosine_factor(5, 10, 0.0) == pytest.approx(0.5)
    assert cosine_factor(5, 10, 0.1) == pytest.approx(0.55)
    assert cosine_factor(10, 10, 0.1) == pytest.approx(0.1)
    assert cosine_factor(20, 10, 0.0) == pytest.approx(0.0)  # past the end it stays at the floor
    assert cosine_factor(0, 0, 0.3) == 1.0  # an empty stage does not divide by zero


def spy_lrs(tr, seen: dict[str, list[float]]) -> None:
    """Record the lr each stage's optimisers hold on every update of a real training run."""
    original = tr._update

    def spy(stage: str, batch):
        opts = tr.critic.optimizers() if stage == "critic" else tr.updates[stage].optimizers()
        lrs = {g["lr"] for o in opts.values() for g in o.param_groups}
        assert len(lrs) == 1, lrs  # every group of a stage on the same schedule
        seen.setdefault(stage, []).append(lrs.pop())
        return original(stage, batch)

    tr._update = spy


def trained_lrs(store: Path, tmp: Path, overrides: list[str]) -> dict[str, list[float]]:
    from genctl.apps.train import Trainer

    tmp.mkdir()
    tr = Trainer(build_config(TrainConfig, overrides=[f"data.store={store}", *TINY, *overrides]), tmp,
                 progress=False)
    seen: dict[str, list[float]] = {}
    spy_lrs(tr, seen)
    assert tr.run()
    return seen


def test_every_stage_follows_its_schedule(store: Path, tmp_path: Path) -> None:
    seen = trained_lrs(store, tmp_path / "gmpg", [
        "policy.algo=gmpg", "critic.steps=8", "critic.lr=1e-3", "policy.behaviour_steps=6",
        "policy.behaviour_lr=2e-4", "policy.steps=4", "policy.lr=5e-5", "policy.sample_steps=2",
        "policy.lr_schedule=cosine"])
    assert list(seen) == ["critic", "behaviour", "policy"]
    np.testing.assert_allclose(seen["critic"], [1e-3 * cosine_factor(i, 8, 0.1) for i in range(8)])
    np.testing.assert_allclose(seen["behaviour"], [2e-4 * cosine_factor(i, 6, 0.0) for i in range(6)])
    np.testing.assert_allclose(seen["policy"], [5e-5 * cosine_factor(i, 4, 0.0) for i in range(4)])
    assert seen["policy"][-1] < 0.2 * 5e-5  # the last steps barely move the weights


def test_constant_schedules_keep_the_configured_lr(store: Path, tmp_path: Path) -> None:
    """policy.lr_schedule defaults to constant (the reference); the critic's cosine can be turned off."""
    seen = trained_lrs(store, tmp_path / "gmpo", [
        "policy.algo=gmpo", "critic.steps=3", "critic.lr_schedule=constant", "critic.lr=1e-3",
        "policy.steps=5", "policy.lr=3e-4"])
    assert seen == {"critic": [1e-3] * 3, "policy": [3e-4] * 5}


def test_resume_continues_on_the_same_curve(store: Path, tmp_path: Path) -> None:
    """The factor depends on the stage step only: a run stopped after 4 of 10 steps and resumed from its
    checkpoint (whose optimiser state holds the decayed lr) trains steps 4..9 on the uninterrupted curve."""
    from genctl.apps.train import Trainer
    from genctl.run import Checkpoint, latest_checkpoint

    cfg = build_config(TrainConfig, overrides=[f"data.store={store}", *TINY, "policy.algo=bc", "critic.steps=0",
                                               "policy.steps=10", "policy.lr=1e-3",
                                               "policy.lr_schedule=cosine"])
    seen: dict[str, list[float]] = {}
    (tmp_path / "r").mkdir()
    first = Trainer(cfg, tmp_path / "r", progress=False)
    spy_lrs(first, seen)
    assert not first.run(stop_after=4)
    second = Trainer(cfg, tmp_path / "r", progress=False, fresh=False)
    second.restore(Checkpoint(latest_checkpoint(tmp_path / "r")))
    spy_lrs(second, seen)
    assert second.run()
    np.testing.assert_allclose(seen["policy"], [1e-3 * cosine_factor(i, 10, 0.0) for i in range(10)])
