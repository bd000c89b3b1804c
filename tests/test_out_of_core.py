"""Out-of-core camera data (data.cache_gb): batches hold the store's exact frames, the cache stays within its
budget, sampling covers every row about uniformly, batches are a function of the seed (and resume exactly),
training runs and resumes through it, and bad settings are one clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genctl.config import TrainConfig, build_config
from genctl.datasets import EpisodeStore, StoreWriter, load_transitions
from genctl.datasets.camera_rows import camera_transitions, compose_rows
from genctl.datasets.obs_spec import ObsSpec
from genctl.datasets.out_of_core import OutOfCoreBatcher
from genctl.datasets.testing import random_episode
from genctl.errors import ConfigError

# two cameras whose chunks differ (64 and 54 frames per chunk): units of 64 rows read partial chunks of the second
CAMS = {"image/front": (8, 8, 3), "image/side": (80, 80, 3)}
KEYS = ["obs/b_pos[0:1,2:3]", "obs/a_goal", "image/front", "image/side"]  # a slice of a key, a whole key
LENGTHS = (37, 5, 61, 1, 44, 29, 70, 12, 50, 33)
UNIT = 64 * (8 * 8 * 3 + 80 * 80 * 3)  # unit_bytes giving units of one 64-row chunk of the first camera


def make_store(path: Path, *, next_obs: bool = True, cams: dict = CAMS, codec: str = "lz4") -> EpisodeStore:
    rng = np.random.default_rng(0)
    with StoreWriter(path, {"source": {"kind": "collect"}}, image_codec=codec) as w:
        for i, t in enumerate(LENGTHS):
            ep = random_episode(rng, t, dict_obs=True, terminated=i % 3 == 0)
            if not next_obs:
                ep = {k: v for k, v in ep.items() if not k.startswith("next_obs")}
            for key, shape in cams.items():
                ep[key] = rng.integers(0, 256, (t, *shape), dtype=np.uint8)
            w.add_episode(ep)
    return EpisodeStore.open(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> EpisodeStore:
    return make_store(tmp_path_factory.mktemp("ooc") / "cam.zarr")


def loader(store: EpisodeStore, slots: float = 5, *, seed: int = 0, batch: int = 32, eps=None, **kw
           ) -> tuple[OutOfCoreBatcher, dict[str, np.ndarray]]:
    """A loader on the raw (unnormalised) columns with room for ``slots`` units of 65 rows (and the next frames
    of the 6 units)."""
    spec = ObsSpec.from_store(store, KEYS)
    raw = camera_transitions(store, spec, eps)
    budget = (slots * 65 + 6) * (8 * 8 * 3 + 80 * 80 * 3)
    kw = {"threads": 2, **kw}
    return OutOfCoreBatcher(raw, spec, store, budget, batch, seed=seed, unit_bytes=UNIT, **kw), raw


def reference(store: EpisodeStore, eps=None) -> dict[str, np.ndarray]:
    """What the in-memory path holds: load_transitions with the same observation spec."""
    store.select_obs(ObsSpec.from_store(store, KEYS))
    try:
        return load_transitions(store, episodes=eps)
    finally:
        store.select_obs(None)


def row_of(raw: dict[str, np.ndarray], batch: dict) -> np.ndarray:
    """Training row of each sample, found by its action (random floats: unique per row)."""
    index = {a.tobytes(): i for i, a in enumerate(raw["action"])}
    return np.array([index[a.tobytes()] for a in batch["action"].numpy()])


@pytest.mark.parametrize("next_obs, codec", [(True, "lz4"), (False, "zstd")])
def test_rows_and_frames_match_the_in_memory_path(tmp_path: Path, next_obs: bool, codec: str) -> None:
    st = make_store(tmp_path / "s.zarr", next_obs=next_obs, codec=codec)
    eps = [8, 0, 3, 2, 6]
    ref, spec = reference(st, eps), ObsSpec.from_store(st, KEYS)
    raw = camera_transitions(st, spec, eps)
    n_rows = sum(LENGTHS[e] for e in eps)
    assert len(raw["action"]) == len(ref["action"]) == (n_rows if next_obs else n_rows - 2)  # 2 unterminated ends
    for k in ("action", "reward", "terminal"):
        np.testing.assert_array_equal(raw[k], ref[k])
    np.testing.assert_array_equal(compose_rows(st, spec, raw["obs"], raw["frame_row"]), ref["obs"])
    np.testing.assert_array_equal(compose_rows(st, spec, raw["next_obs"], raw["next_frame_row"]), ref["next_obs"])
    b, _ = loader(st, eps=eps)
    assert all(r.direct for r in b.readers.values())
    if not next_obs:  # the slow paths: no remembered next frames (a budget too small for them), zarr's reads
        b._halo = None
        for r in b.readers.values():
            r._fast = None
    for _ in range(60):  # ~10 passes over the units: every slot is reused many times
        batch = b.sample()
        rows = row_of(raw, batch)
        for k in ref:
            np.testing.assert_array_equal(batch[k].numpy(), ref[k][rows], err_msg=k)
    b.close()


def test_episode_end_and_chunk_boundaries(store: EpisodeStore) -> None:
    b, raw = loader(store)
    ref = reference(store)
    ends = np.cumsum(LENGTHS) - 1  # store rows; every episode here is in the split (eps=None)
    frames = store.load(["image/side"])["image/side"]
    last = np.flatnonzero(np.isin(raw["frame_row"], ends))
    edge = np.flatnonzero(raw["frame_row"] % b.unit_rows == b.unit_rows - 1)  # next frame in the slot's halo
    edge = edge[raw["next_frame_row"][edge] != raw["frame_row"][edge]]
    assert len(last) == len(LENGTHS) and len(edge) >= 3
    np.testing.assert_array_equal(raw["next_frame_row"][last], raw["frame_row"][last])  # the last frame repeats
    seen: set[int] = set()
    side = slice(b.spec.low_dim + 8 * 8 * 3, None)
    for _ in range(80):
        batch = b.sample()
        rows = row_of(raw, batch)
        np.testing.assert_array_equal(batch["next_obs"].numpy(), ref["next_obs"][rows])
        pix = batch["next_obs"][:, side].numpy().reshape(-1, 80, 80, 3)
        np.testing.assert_array_equal(pix, frames[raw["next_frame_row"][rows]])
        seen.update(int(r) for r in rows)
    assert set(last) <= seen and set(edge) <= seen
    b.close()


def test_cache_stays_within_its_budget(store: EpisodeStore) -> None:
    b, _ = loader(store, slots=5.5)
    assert b.cache_nbytes <= (5.5 * 65 + 6) * (8 * 8 * 3 + 80 * 80 * 3)
    assert b._halo is not None and sum(a.nbytes for a in [*b.arena.values(), *b._halo.values()]) == b.cache_nbytes
    assert b.n_slots == 5 == b.schedule.window + b.schedule.ahead and b.schedule.n_units == 6
    for _ in range(50):
        b.sample()
        assert b.arena["image/side"].shape[0] == 5  # allocated once, never grown
    assert b.decoded > b.schedule.n_units  # it streamed: units left the cache and came back
    b.close()
    whole, _ = loader(store, slots=50)  # the store fits: one fill, never a second decode
    for _ in range(30):
        whole.sample()
    assert whole.schedule.ahead == 0 and whole.decoded == whole.schedule.n_units == whole.n_slots
    whole.close()
    with pytest.raises(ConfigError, match=r"holds 3 cache slot\(s\) of .* needs 4: data.cache_gb >= 0.00"):
        loader(store, slots=3)


def test_every_row_is_sampled_about_uniformly(store: EpisodeStore) -> None:
    b, raw = loader(store, slots=5)
    counts = np.zeros(len(raw["action"]))
    for _ in range(600):
        np.add.at(counts, row_of(raw, b.sample()), 1)
    mean = counts.mean()  # ~56 draws per row
    assert counts.min() > 0.35 * mean and counts.max() < 1.9 * mean
    assert counts.std() / mean < 0.3  # iid uniform draws: ~0.13; the shuffle buffer adds epoch noise
    unit = raw["frame_row"] // b.unit_rows
    per_unit = np.array([counts[unit == u].mean() for u in np.unique(unit)])
    assert per_unit.std() / mean < 0.15  # no unit favoured (a 64-row unit and the 9-row one alike)
    b.close()


def test_same_seed_same_batches_and_exact_resume(store: EpisodeStore) -> None:
    a, _ = loader(store, seed=3)
    first = [a.sample()["action"] for _ in range(12)]
    state = a.state_dict()
    later = [a.sample(16)["action"] for _ in range(5)] + [a.sample()["action"] for _ in range(5)]
    b, _ = loader(store, seed=3, threads=1)
    assert all(torch.equal(x, b.sample()["action"]) for x in first)
    other, _ = loader(store, seed=4)
    assert not torch.equal(first[0], other.sample()["action"])
    c, _ = loader(store, seed=0)
    c.load_state_dict(state)  # a fresh loader (other seed, cold cache) continues the stream exactly
    again = [c.sample(16)["action"] for _ in range(5)] + [c.sample()["action"] for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(later, again, strict=True))
    import json

    assert json.loads(json.dumps(state)) == state  # goes into a checkpoint's meta.json
    for x in (a, b, other, c):
        x.close()


TINY = ["model.hidden=[16,16]", "policy.batch_size=16", "critic.batch_size=16", "critic.hidden=[16,16]",
        "model.vision.features=4", "model.vision.keypoints=4", "threads=1", "log_every=2", "device=cpu",
        "data.val_frac=0.2", "data.obs_keys=[obs/b_pos, image/front]"]


def test_train_out_of_core_and_resume_exactly(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    from genctl.apps.train import Trainer, resume, train

    st = make_store(tmp_path / "s.zarr", cams={"image/front": (80, 80, 3)})  # 54-frame chunks, 7 units
    cache = 5 * 55 * 80 * 80 * 3 / 1e9  # 5 slots: the store streams through the cache
    common = [f"data.store={st.path}", f"out_dir={tmp_path}", "policy.algo=gmpo", "critic.steps=4",
              "policy.steps=5", f"data.cache_gb={cache}", *TINY]
    full = train(build_config(TrainConfig, overrides=[*common, "name=full"]), progress=False)
    split = train(build_config(TrainConfig, overrides=[*common, "name=split"]), progress=False, stop_after=6)
    resume(split, progress=False)
    for group in ("policy", "ema", "critic"):
        a = load_file(str(full / "checkpoints" / f"step-{9:09d}" / f"{group}.safetensors"))
        b = load_file(str(split / "checkpoints" / f"step-{9:09d}" / f"{group}.safetensors"))
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{group}/{k}")
    assert (full / "critic.json").exists()
    ooc = Trainer(build_config(TrainConfig, overrides=[*common, "name=x"]), tmp_path / "x", progress=False)
    in_memory = [c for c in common if not c.startswith("data.cache_gb")]
    mem = Trainer(build_config(TrainConfig, overrides=[*in_memory, "name=y"]), tmp_path / "y", progress=False)
    assert isinstance(ooc.data, OutOfCoreBatcher) and ooc.data.schedule.ahead > 0 and ooc.obs_dim == mem.obs_dim
    assert torch.equal(ooc.val_loss.obs, mem.val_loss.obs)  # the same held-out rows, read row by row
    np.testing.assert_array_equal(ooc.data.column("obs")[3:40].numpy(), mem.data.column("obs")[3:40].numpy())
    ooc.data.close()


@pytest.mark.parametrize("extra, match", [
    (["data.cache_gb=0"], "data.cache_gb"),
    (["data.cache_gb=-1"], "data.cache_gb"),
    (["data.cache_gb=big"], "data.cache_gb"),
    (["data.cache_gb=1", "data.obs_keys=[obs/b_pos]"], "names no image/ key"),
    (["data.cache_gb=1", "data.obs_keys=[image/front]", "data.n_obs_steps=2", "data.horizon=4"],
     "data.cache_gb .*n_obs_steps=1 and data.horizon=1"),
])
def test_bad_settings_are_clear_errors(extra: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_config(TrainConfig, overrides=["data.store=x", *extra])
