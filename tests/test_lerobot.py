"""LeRobotDataset in and out: folders written like LeRobot's recorder (pyarrow + PyAV, nothing downloaded),
ingested and exported through the CLI, round-tripped with image PSNR, and each kind of bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from genctl.cli import main
from genctl.datasets import EpisodeStore, StoreWriter, detect_format
from genctl.datasets.lerobot_testing import TASKS, encode_episode, frame_image, make_lerobot_dataset
from genctl.datasets.lerobot_video import codec_support
from genctl.datasets.testing import random_episode
from tests.cli_helpers import genctl_ok

pytestmark = pytest.mark.e2e
os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its configuration otherwise
SUPPORT = codec_support()
AV1 = "libsvtav1" if "libsvtav1" in SUPPORT["av1"]["encode"] else None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def truth(lengths, cam: int, hw=(32, 32)) -> np.ndarray:
    return np.stack([frame_image(e, t, *hw, cam) for e, n in enumerate(lengths) for t in range(n)])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".zarr" or p.name.startswith("."))


def parquet_column(root: Path, name: str) -> np.ndarray:
    import pyarrow.parquet as pq

    tables = [pq.read_table(p, columns=[name]) for p in sorted((root / "data").rglob("*.parquet"))]
    return np.concatenate([np.asarray(tb.column(name).to_pylist()) for tb in tables])


# --- ingest ---------------------------------------------------------------------------------------------------
@pytest.mark.skipif(AV1 is None, reason="this PyAV build cannot encode AV1")
def test_v3_concatenated_av1_video_and_png_images_via_cli(tmp_path):
    lengths = (6, 8, 5)
    src = make_lerobot_dataset(tmp_path / "ds", lengths=lengths, cameras={"top": "video", "wrist": "image"})
    assert detect_format(src) == "lerobot"
    r = genctl_ok("ingest", str(src), "-o", str(tmp_path / "s.zarr"))
    assert "3 episodes, 19 transitions" in r.stdout
    s = EpisodeStore.open(tmp_path / "s.zarr")
    assert sorted(s.keys) == ["action", "image/top", "image/wrist", "info/task", "obs", "reward", "terminated",
                              "truncated"]
    np.testing.assert_array_equal(s.episode_ends, np.cumsum(lengths))
    d = s.load()
    np.testing.assert_array_equal(d["obs"], parquet_column(src, "observation.state"))
    np.testing.assert_array_equal(d["action"], parquet_column(src, "action"))
    np.testing.assert_array_equal(d["reward"], parquet_column(src, "next.reward"))
    assert d["terminated"][np.cumsum(lengths) - 1].all() and d["terminated"].sum() == 3 and not d["truncated"].any()
    assert d["image/top"].shape == (19, 32, 32, 3) and d["image/top"].dtype == np.uint8
    assert psnr(d["image/top"], truth(lengths, 0)) > 24  # AV1 crf 30 on 32x32 frames: ~27 dB
    np.testing.assert_array_equal(d["image/wrist"], truth(lengths, 1))  # PNG: lossless
    genctl_ok("ingest", str(src), "-o", str(tmp_path / "z.zarr"), "--image-codec", "zstd")  # the archival codec
    z = EpisodeStore.open(tmp_path / "z.zarr")
    assert z.array_info("image/top").compressors[0].to_dict()["name"] == "zstd"
    np.testing.assert_array_equal(z.load(["image/top"])["image/top"], d["image/top"])
    assert [s.attrs["tasks"][str(i)] for i in d["info/task"][[0, 6, 14]]] == [TASKS[0], TASKS[1], TASKS[0]]
    a = s.attrs
    assert a["fps"] == 10 and a["robot_type"] == "so101_follower" and a["has_reward"] is True
    assert a["source"]["kind"] == "lerobot" and a["source"]["codebase_version"] == "v3.0"
    assert a["lerobot"]["features"]["observation.images.top"]["dtype"] == "video"
    assert a["lerobot"]["keys"]["observation.images.top"] == "image/top"


@pytest.mark.parametrize("family", ["h264", "hevc"])
def test_v3_decodes_h264_and_hevc(tmp_path, family):
    enc = SUPPORT[family]["encode"]
    if not enc:
        pytest.skip(f"this PyAV build cannot encode {family}")
    lengths = (4, 7)
    # 64x64: this wheel's libx265 corrupts the heap on frames under one 64-pixel CTU (two encoders, then abort)
    src = make_lerobot_dataset(tmp_path / "ds", lengths=lengths, cameras={"front": "video"}, vcodec=enc[0],
                               hw=(64, 64))
    assert main(["--quiet", "ingest", str(src), "-o", str(tmp_path / "s.zarr")]) == 0
    img = EpisodeStore.open(tmp_path / "s.zarr").load(["image/front"])["image/front"]
    assert psnr(img, truth(lengths, 0, (64, 64))) > 24


@pytest.mark.parametrize("video", [True, False])
def test_v21_per_episode_files_and_dict_observations(tmp_path, video):
    lengths = (5, 6, 4)
    src = make_lerobot_dataset(tmp_path / "ds", version="v2.1", lengths=lengths, env_state=True,
                               cameras={"top": "video"} if video else {}, vcodec=AV1 or "libx264")
    assert main(["--quiet", "ingest", str(src), "-o", str(tmp_path / "s.zarr")]) == 0
    s = EpisodeStore.open(tmp_path / "s.zarr")
    assert s.obs_keys == ["environment_state", "state"] and s.attrs["source"]["codebase_version"] == "v2.1"
    np.testing.assert_array_equal(s.load(["obs/state"])["obs/state"], parquet_column(src, "observation.state"))
    np.testing.assert_array_equal(s.episode_ends, np.cumsum(lengths))
    assert ("image/top" in s.keys) == video
    if video:
        assert psnr(s.load(["image/top"])["image/top"], truth(lengths, 0)) > 24
    assert s.attrs["tasks"] == {"0": TASKS[0], "1": TASKS[1]}


def test_bc_only_data_without_video(tmp_path, capsys):
    src = make_lerobot_dataset(tmp_path / "ds", lengths=(5, 6), reward=False)
    store = tmp_path / "s.zarr"
    assert main(["--quiet", "ingest", str(src), "-o", str(store)]) == 0
    s = EpisodeStore.open(store)
    assert "reward" not in s.keys and s.attrs["has_reward"] is False and not s.has_reward
    assert s.episode(0)["truncated"][-1] and not s.load(["terminated"])["terminated"].any()
    assert main(["--quiet", "info", str(store)]) == 0
    assert "no rewards" in capsys.readouterr().out
    for extra in ([], ["policy.algo=gmpg"], ["policy.algo=bc"]):  # gmpo (default), gmpg, bc with a critic
        assert main(["--quiet", "train", f"data.store={store}", f"out_dir={tmp_path}", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "policy.algo=bc critic.steps=0" in err[0]
    assert main(["--quiet", "train", f"data.store={store}", f"out_dir={tmp_path}", "name=bc", "policy.algo=bc",
                 "critic.steps=0", "policy.steps=5", "policy.batch_size=8", "model.hidden=[16,16]"]) == 0
    assert (tmp_path / "bc" / "checkpoints").is_dir()


# --- export and round trip --------------------------------------------------------------------------------------
def _native_store(path: Path) -> Path:
    """A genctl store with every kind of key: dict obs + next_obs, a camera, state, info, flags."""
    rng = np.random.default_rng(3)
    attrs = {"source": {"kind": "collect", "expert": "maze", "noise": 0.3}, "fps": 20,
             "env": {"id": "PointMaze_UMaze-v3", "family": "maze"}, "ref_min_score": 1.5, "ref_max_score": 9.0}
    with StoreWriter(path, attrs) as w:
        for e, t in enumerate((7, 9, 6)):
            ep = random_episode(rng, t, dict_obs=True, terminated=e == 1)
            ep["image/cam"] = np.stack([frame_image(e, i, 32, 48) for i in range(t)])
            ep["state/qpos"] = rng.normal(size=(t, 3))
            ep["info/success"] = (np.arange(t) == t - 1).astype(np.int64)
            w.add_episode(ep)
    return path


def test_export_then_ingest_round_trip_via_cli(tmp_path):
    store = _native_store(tmp_path / "a.zarr")
    out = tmp_path / "lr"
    r = genctl_ok("export", str(store), "--lerobot", str(out))
    assert "3 episodes, 22 frames, 1 camera(s)" in r.stdout
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == 22 and info["fps"] == 20
    assert info["features"]["observation.images.cam"]["info"]["video.codec"] in ("av1", "h264")
    assert {"observation.b_pos", "next.observation.a_goal", "state.qpos", "info.success", "next.reward",
            "next.done", "next.truncated", "task_index"} <= set(info["features"])
    stats = json.loads((out / "meta/stats.json").read_text())
    assert np.asarray(stats["observation.images.cam"]["mean"]).shape == (3, 1, 1)
    assert stats["action"]["count"] == [22] and "q99" in stats["action"]
    genctl_ok("ingest", str(out), "-o", str(tmp_path / "b.zarr"))
    a, b = EpisodeStore.open(store), EpisodeStore.open(tmp_path / "b.zarr")
    assert sorted(a.keys) == sorted(b.keys)
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    da, db = a.load(), b.load()
    for k in a.keys:
        if k.startswith("image/"):
            assert psnr(da[k], db[k]) > 24, k  # AV1 crf 30 (LeRobot's default) on 32x48 frames: ~26 dB
        else:
            np.testing.assert_array_equal(da[k], db[k], err_msg=k)
    for k in ("env", "ref_min_score", "ref_max_score", "fps"):
        assert b.attrs[k] == a.attrs[k], k
    assert b.attrs["source"]["origin"] == a.attrs["source"]


def test_export_is_atomic_and_refuses_existing(tmp_path, capsys):
    store = _native_store(tmp_path / "a.zarr")
    (tmp_path / "lr").mkdir()
    assert main(["--quiet", "export", str(store), "--lerobot", str(tmp_path / "lr")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr", "lr"]


# --- bad input ----------------------------------------------------------------------------------------------------
def _break(root: Path, kind: str) -> Path:
    """Damage a dataset in one way; returns the file the error must name."""
    video = root / "videos/observation.images.top/chunk-000/file-000.mp4"
    data = root / "data/chunk-000/file-000.parquet"
    info = root / "meta/info.json"
    if kind == "no_info":
        info.unlink()
        return info
    if kind == "version":
        d = json.loads(info.read_text())
        d["codebase_version"] = "v1.6"
        info.write_text(json.dumps(d))
        return info
    if kind == "truncated_parquet":
        raw = data.read_bytes()
        data.write_bytes(raw[: len(raw) // 2])
        return data
    if kind == "corrupt_parquet":
        raw = bytearray(data.read_bytes())
        raw[4:-8] = bytes(len(raw) - 12)  # magic bytes intact, pages and footer zeroed
        data.write_bytes(bytes(raw))
        return data
    if kind == "no_video":
        video.unlink()
        return video
    if kind == "bad_video":
        video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
        return video
    if kind == "frame_count":  # the video of the chunk loses its last episode's last frame
        frames = truth((4, 5), 0)[:-1]
        encode_episode(tmp := root / "short.mp4", frames, 10, AV1 or "libx264")
        shutil.move(tmp, video)
        return video
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["no_info", "version", "truncated_parquet", "corrupt_parquet", "no_video",
                                  "bad_video", "frame_count"])
def test_bad_input_one_error_line_exit_2_no_store(tmp_path, capsys, kind):
    src = make_lerobot_dataset(tmp_path / "ds", lengths=(4, 5), cameras={"top": "video"},
                               vcodec=AV1 or "libx264")
    named = _break(src, kind)
    out = tmp_path / "s.zarr"
    assert main(["--quiet", "ingest", str(src), "--format", "lerobot", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert str(named) in err[0], err[0]
    expect = {"no_info": "missing", "version": "expected one of", "frame_count": "frame counts disagree"}
    assert expect.get(kind, "") in err[0]
    assert leftovers(tmp_path) == []


def test_parquet_and_metadata_lengths_disagree(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = make_lerobot_dataset(tmp_path / "ds", lengths=(4, 5))
    path = src / "meta/episodes/chunk-000/file-000.parquet"
    t = pq.read_table(path)
    t = t.set_column(t.column_names.index("length"), "length", pa.array([4, 6], pa.int64()))
    pq.write_table(t, path)
    assert main(["--quiet", "ingest", str(src), "-o", str(tmp_path / "s.zarr")]) == 2
    err = capsys.readouterr().err
    assert "frame counts disagree" in err and "data/chunk-000/file-000.parquet" in err
    assert leftovers(tmp_path) == []


def test_video_reader_seeks_back_and_into_a_concatenated_file(tmp_path):
    from genctl.datasets.lerobot_video import VideoReader

    lengths = (4, 6, 5)
    src = make_lerobot_dataset(tmp_path / "ds", lengths=lengths, cameras={"top": "video"}, vcodec=AV1 or "libx264")
    video = src / "videos/observation.images.top/chunk-000/file-000.mp4"
    starts = np.cumsum((0, *lengths)) / 10
    direct = np.stack([frame_image(e, t, 32, 32) for e, n in enumerate(lengths) for t in range(n)])
    reader = VideoReader(10)
    for e in (2, 0, 1):  # out of order: each one re-opens and seeks to the keyframe before its start
        frames = reader.episode(video, np.arange(lengths[e]) / 10, starts[e], starts[e + 1], "test")
        a = int(sum(lengths[:e]))
        assert psnr(frames, direct[a:a + lengths[e]]) > 24
    reader.close()


def test_bad_feature_schema(tmp_path, capsys):
    src = make_lerobot_dataset(tmp_path / "ds", lengths=(3,))
    info = json.loads((src / "meta/info.json").read_text())
    del info["features"]["action"]["shape"]
    (src / "meta/info.json").write_text(json.dumps(info))
    assert main(["--quiet", "ingest", str(src), "-o", str(tmp_path / "s.zarr")]) == 2
    err = capsys.readouterr().err
    assert "info.json" in err and "'action'" in err and leftovers(tmp_path) == []


def test_export_rolls_files_and_reads_them_back(tmp_path, monkeypatch):
    """Size limits of 0 MB: every episode starts a new data parquet and a new mp4 (file-001, ...)."""
    import genctl.datasets.export_lerobot as ex

    monkeypatch.setattr(ex, "DATA_MB", 0)
    monkeypatch.setattr(ex, "VIDEO_MB", 0)
    store = _native_store(tmp_path / "a.zarr")
    ex.export_lerobot(store, tmp_path / "lr")
    assert len(list((tmp_path / "lr/data").rglob("file-*.parquet"))) == 3
    assert len(list((tmp_path / "lr/videos").rglob("file-*.mp4"))) == 3
    b = EpisodeStore.open(store)
    assert main(["--quiet", "ingest", str(tmp_path / "lr"), "-o", str(tmp_path / "b.zarr")]) == 0
    back = EpisodeStore.open(tmp_path / "b.zarr")
    np.testing.assert_array_equal(back.episode_ends, b.episode_ends)
    np.testing.assert_array_equal(back.load(["action"])["action"], b.load(["action"])["action"])
    assert psnr(back.load(["image/cam"])["image/cam"], b.load(["image/cam"])["image/cam"]) > 24
