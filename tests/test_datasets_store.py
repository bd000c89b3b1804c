"""Store writer/reader: round trip, streaming stats, validation of bad episodes and of damaged stores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from genctl.datasets import EpisodeStore, StoreWriter
from genctl.datasets.testing import random_episode
from genctl.errors import DataError


def write(path: Path, eps: list[dict], **kw) -> EpisodeStore:
    with StoreWriter(path, {"source": {"kind": "collect"}}, **kw) as w:
        for ep in eps:
            w.add_episode(ep)
    return EpisodeStore.open(path)


def test_round_trip_blocks_and_stats(tmp_path, rng):
    eps = [random_episode(rng, int(t), terminated=bool(i % 2)) for i, t in enumerate(rng.integers(1, 40, 57))]
    store = write(tmp_path / "s.zarr", eps, block_rows=100)  # many small blocks -> many resizes
    assert store.n_episodes == 57 and store.n_transitions == sum(len(e["action"]) for e in eps)
    assert store.keys == ["action", "next_obs", "obs", "reward", "terminated", "truncated"]
    assert store.obs_keys is None and store.attrs["format_version"] == 1
    for i in (0, 13, 56):
        got = store.episode(i)
        for k in eps[i]:
            np.testing.assert_array_equal(got[k], eps[i][k])
    full = store.load()
    cat = {k: np.concatenate([e[k] for e in eps]) for k in eps[0]}
    for k in cat:
        np.testing.assert_array_equal(full[k], cat[k])
    sub = store.load(["reward"], episodes=[5, 2, 3])
    np.testing.assert_array_equal(sub["reward"], np.concatenate([eps[i]["reward"] for i in (5, 2, 3)]))
    stats = store.attrs["stats"]
    np.testing.assert_allclose(stats["obs"]["mean"], cat["obs"].mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["obs"]["std"], cat["obs"].std(0), rtol=1e-4)
    np.testing.assert_allclose(stats["action"]["min"], cat["action"].min(0))
    np.testing.assert_allclose(stats["reward"]["max"], [cat["reward"].max()])
    returns = np.array([e["reward"].sum(dtype=np.float64) for e in eps])
    np.testing.assert_allclose(store.episode_returns(), returns, rtol=1e-6)
    assert stats["episode_return"]["mean"] == pytest.approx(returns.mean())
    json.dumps(dict(store.attrs))  # attrs are plain JSON
    store.validate(deep=True)


def test_dict_obs_flatten_in_sorted_order(tmp_path, rng):
    eps = [random_episode(rng, 7, dict_obs=True) for _ in range(3)]
    store = write(tmp_path / "d.zarr", eps)
    assert store.obs_keys == ["a_goal", "b_pos"]
    flat = store.flat_obs()
    assert flat.shape == (21, 5) and flat.dtype == np.float32
    np.testing.assert_array_equal(flat[:7], np.concatenate([eps[0]["obs/a_goal"], eps[0]["obs/b_pos"]], 1))
    np.testing.assert_array_equal(store.flat_obs(next=True, episodes=[2])[:, :2], eps[2]["next_obs/a_goal"])
    assert len(store.attrs["stats"]["obs"]["mean"]) == 5


def test_images_chunked_across_episodes(tmp_path, rng, monkeypatch):
    """Image chunks hold several frames and span episode boundaries; the last one is partial (zero-padded)."""
    from genctl.datasets import writer

    monkeypatch.setattr(writer, "FRAME_CHUNK_MAX", 3)  # 3 frames per chunk, episodes of 4: chunks straddle them
    eps = []
    for _ in range(7):  # more episodes than the frame threads keep in flight: the writer waits, order holds
        ep = random_episode(rng, 4)
        ep["image/front"] = rng.integers(0, 255, (4, 6, 8, 3), dtype=np.uint8)
        eps.append(ep)
    store = write(tmp_path / "i.zarr", eps, block_rows=3)  # frames written by several flushes at offsets
    arr = store.array_info("image/front")
    assert arr.chunks == (3, 6, 8, 3) and arr.dtype == np.uint8 and arr.shape[0] == 28
    for i in range(7):  # chunks are encoded by the writer itself (not zarr's slice write): zarr reads them back
        np.testing.assert_array_equal(store.episode(i)["image/front"], eps[i]["image/front"])
        np.testing.assert_array_equal(zarr.open_array(store.path / "data" / "image" / "front", mode="r")[4 * i:4 * i + 4],
                                      eps[i]["image/front"])
    assert len([p for p in (store.path / "data" / "image" / "front").rglob("*") if p.is_file()]) == 10 + 1
    store.validate(deep=True)
    assert writer.frames_per_chunk((96, 96, 3)) == 3
    monkeypatch.setattr(writer, "FRAME_CHUNK_MAX", 64)
    assert writer.frames_per_chunk((96, 96, 3)) == 37 and writer.frames_per_chunk((224, 224, 3)) == 6


@pytest.mark.parametrize("codec, name", [("lz4", "blosc"), ("zstd", "zstd")])
def test_image_codecs_round_trip(tmp_path, rng, codec, name):
    eps = []
    for _ in range(3):
        ep = random_episode(rng, 5)
        ep["image/front"] = np.repeat(rng.integers(0, 255, (5, 1, 8, 3), dtype=np.uint8), 6, axis=1)
        eps.append(ep)
    with StoreWriter(tmp_path / "c.zarr", image_codec=codec) as w:
        for ep in eps:
            w.add_episode(ep)
    store = EpisodeStore.open(tmp_path / "c.zarr")
    meta = json.loads((store.path / "data" / "image" / "front" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]][-1] == name  # what zarr declares is what the writer wrote
    for i, ep in enumerate(eps):
        np.testing.assert_array_equal(store.episode(i)["image/front"], ep["image/front"])
    with pytest.raises(DataError, match="image codec 'png'"):
        StoreWriter(tmp_path / "d.zarr", image_codec="png")


def test_failed_image_write_leaves_nothing(tmp_path, rng):
    """An error after frames were handed to the frame thread: the thread is drained, no store, no temp dir."""
    import threading

    with pytest.raises(RuntimeError, match="stop"), StoreWriter(tmp_path / "i.zarr") as w:
        for _ in range(6):
            ep = random_episode(rng, 5)
            ep["image/front"] = rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
            w.add_episode(ep)
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("genctl-frames")]


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda ep: ep.pop("reward"), "reward"),
        (lambda ep: ep.update(action=ep["action"][:-1]), "action"),
        (lambda ep: ep["obs"].__setitem__((1, 2), np.nan), "obs"),
        (lambda ep: ep.update(action=ep["action"].astype(str)), "action"),
        (lambda ep: ep.update(terminated=np.full(len(ep["reward"]), 3)), "terminated"),
        (lambda ep: ep.update(bogus=ep["reward"]), "bogus"),
    ],
    ids=["missing", "length", "nan", "dtype", "flags", "unknown-key"],
)
def test_bad_episode_is_rejected_and_nothing_written(tmp_path, rng, mutate, field):
    target = tmp_path / "bad.zarr"
    with pytest.raises(DataError, match=field) as info, StoreWriter(target, {}) as w:
        w.add_episode(random_episode(rng, 5))
        ep = random_episode(rng, 5)
        mutate(ep)
        w.add_episode(ep)
    assert str(target) in str(info.value)
    assert not target.exists() and os.listdir(tmp_path) == []


def test_episode_must_match_first(tmp_path, rng):
    with pytest.raises(DataError, match="obs"), StoreWriter(tmp_path / "x.zarr", {}) as w:
        w.add_episode(random_episode(rng, 5, obs_dim=5))
        w.add_episode(random_episode(rng, 5, obs_dim=6))
    assert os.listdir(tmp_path) == []


def test_existing_store_protected_and_overwrite(tmp_path, rng):
    target = tmp_path / "s.zarr"
    write(target, [random_episode(rng, 5)])
    with pytest.raises(DataError, match="already exists"):
        StoreWriter(target, {})
    with pytest.raises(RuntimeError), StoreWriter(target, {}, overwrite=True) as w:  # error mid-write
        w.add_episode(random_episode(rng, 9))
        raise RuntimeError("boom")
    assert EpisodeStore.open(target).n_transitions == 5  # previous version intact
    assert write(target, [random_episode(rng, 9)], overwrite=True).n_transitions == 9
    assert sorted(os.listdir(tmp_path)) == ["s.zarr"]  # no temp leftovers


def test_empty_writer_writes_nothing(tmp_path):
    with pytest.raises(DataError, match="no episodes"), StoreWriter(tmp_path / "e.zarr", {}):
        pass
    assert os.listdir(tmp_path) == []


def test_open_rejects_damaged_stores(tmp_path, rng):
    target = tmp_path / "s.zarr"
    write(target, [random_episode(rng, 5), random_episode(rng, 3)])
    with pytest.raises(DataError, match="does not exist"):
        EpisodeStore.open(tmp_path / "nope.zarr")
    root = zarr.open_group(target, mode="a")
    root.attrs["format_version"] = 99
    with pytest.raises(DataError, match="format_version"):
        EpisodeStore.open(target)
    root.attrs["format_version"] = 1
    root["data/reward"].resize((7,))
    with pytest.raises(DataError, match="data/reward.*7 rows"):
        EpisodeStore.open(target)
    root["data/reward"].resize((8,))
    del root["data/action"]
    with pytest.raises(DataError, match="action"):
        EpisodeStore.open(target)


def test_wrong_dtype_in_store(tmp_path, rng):
    target = tmp_path / "s.zarr"
    write(target, [random_episode(rng, 5)])
    root = zarr.open_group(target, mode="a")
    del root["data/reward"]
    root["data"].create_array("reward", data=np.zeros(5, np.int32))
    with pytest.raises(DataError, match=r"data/reward.*int32.*float32"):
        EpisodeStore.open(target)


def test_deleted_and_corrupt_chunks(tmp_path, rng):
    target = tmp_path / "s.zarr"
    write(target, [random_episode(rng, 5)])
    chunk = target / "data" / "obs" / "c" / "0" / "0"
    assert chunk.is_file()
    saved = chunk.read_bytes()
    chunk.unlink()
    store = EpisodeStore.open(target)  # structure is fine; the data is not
    with pytest.raises(DataError, match=r"data/obs.*missing 1 of 1 chunk"):
        store.validate(deep=True)
    with pytest.raises(DataError, match="data/obs"):
        EpisodeStore.open(target).load()
    with pytest.raises(DataError, match="data/obs"):
        EpisodeStore.open(target, deep=True)
    chunk.write_bytes(saved[: len(saved) // 2])  # truncated chunk file
    with pytest.raises(DataError, match=r"store .*s\.zarr: cannot read field 'data/obs'"):
        EpisodeStore.open(target).flat_obs()


def test_info_shows_provenance_and_survives_a_closed_pipe(tmp_path, rng):
    """`genctl info` prints what made the store (expert, noise, expert success), not only its kind; and a reader
    that stops early (`| head -1`) ends it quietly, without a BrokenPipeError traceback."""
    import subprocess
    import sys

    path = tmp_path / "s.zarr"
    src = {"kind": "collect", "id": "PointMaze_UMaze-v3", "expert": "maze", "noise": 0.5, "random_frac": 0.3,
           "expert_success_rate": 0.95, "seeds": list(range(40))}
    with StoreWriter(path, {"source": src}) as w:
        for t in rng.integers(5, 30, 40):
            w.add_episode(random_episode(rng, int(t)))
    cmd = [sys.executable, "-m", "genctl", "info", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("source"))
    assert all(s in line for s in ("expert maze", "noise 0.5", "random_frac 0.3", "expert_success_rate 0.95"))
    assert "seeds" not in line  # per-episode lists stay in the attributes
    for extra in ([], ["--json"]):
        p = subprocess.Popen([*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        p.stdout.close()  # the reader goes away before genctl (still importing) writes its first line
        err = p.stderr.read().decode()
        p.wait(timeout=60)
        assert "Traceback" not in err and "BrokenPipe" not in err, err
