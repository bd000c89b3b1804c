"""Small LeRobotDataset folders written the way LeRobot's own recorder writes them, for tests and benchmarks.

Mirrors ``lerobot.datasets.dataset_writer`` / ``video_utils`` (v3.0) and the v2.1 layout of the conversion
script: each episode's camera frames are encoded to their own mp4 (libsvtav1, yuv420p, g=2, crf 30 by default,
frames without explicit timestamps), then appended to the chunk's file with the ffconcat demuxer and a packet
remux; ``from_timestamp`` is the summed ``stream.duration * time_base`` of the episodes before. Data parquet has
one row group per episode, vector features as fixed-size lists, and the frame bookkeeping columns last.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from genctl.datasets.lerobot_meta import arrow_column, feature_stats, merge_stats, stats_json, write_tasks
from genctl.datasets.lerobot_video import FrameConverter

TASKS = ("pick up the cube", "push the cube to the goal")


def frame_image(ep: int, t: int, h: int, w: int, cam: int = 0) -> np.ndarray:
    """A smooth, moving test picture (codecs keep it well: PSNR shows codec loss, not noise)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // w + 10 * t) % 256, (y * 255 // h + 20 * ep) % 256,
                    np.full_like(x, (60 * cam + 5 * t) % 256)], axis=-1).astype(np.uint8)
    cy, cx = (t * 2) % (h - 8), (t * 3 + ep) % (w - 8)
    img[cy:cy + 8, cx:cx + 8] = 255
    return img


def encode_episode(path: Path, frames: np.ndarray, fps: int, vcodec: str = "libsvtav1") -> None:
    import av

    opts = {"g": "2", "crf": "30"} | ({"preset": "12"} if vcodec == "libsvtav1" else {})
    if vcodec == "libx265":
        opts["x265-params"] = "log-level=error"
    with av.open(str(path), "w") as out:
        s = out.add_stream(vcodec, fps, options=opts)
        s.pix_fmt, s.width, s.height = "yuv420p", frames.shape[2], frames.shape[1]
        yuv = FrameConverter()
        for img in frames:
            out.mux(s.encode(yuv.convert(av.VideoFrame.from_ndarray(img, format="rgb24"), "yuv420p")))
        out.mux(s.encode())


def duration_s(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return float(s.duration * s.time_base) if s.duration is not None else float(c.duration / av.time_base)


def concatenate(inputs: list[Path], output: Path) -> None:
    """ffconcat demuxer + remux without re-encoding, as LeRobot's ``concatenate_video_files``."""
    import av

    with tempfile.TemporaryDirectory() as tmp:
        lst = Path(tmp) / "list.ffconcat"
        lst.write_text("ffconcat version 1.0\n" + "".join(f"file '{p.resolve()}'\n" for p in inputs))
        tmp_out = Path(tmp) / "out.mp4"
        src = av.open(str(lst), "r", format="concat", options={"safe": "0"})
        dst = av.open(str(tmp_out), "w", options={"movflags": "faststart"})
        streams = {}
        for s in src.streams:
            if s.type == "video":
                streams[s.index] = dst.add_stream_from_template(template=s, opaque=True)
                streams[s.index].time_base = s.time_base
        for pkt in src.demux():
            if pkt.stream.index not in streams or pkt.dts is None:
                continue
            pkt.stream = streams[pkt.stream.index]
            dst.mux(pkt)
        src.close()
        dst.close()
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(tmp_out, output)


def make_lerobot_dataset(root: Path, *, version: str = "v3.0", lengths: tuple[int, ...] = (6, 8, 5),
                         cameras: dict[str, str] | None = None, vcodec: str = "libsvtav1", hw: tuple[int, int] = (32, 32),
                         fps: int = 10, reward: bool = True, env_state: bool = False, seed: int = 0) -> Path:
    """Write a dataset; ``cameras`` maps camera name -> ``video`` or ``image`` (feature dtype)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cameras = cameras or {}
    rng = np.random.default_rng(seed)
    h, w = hw
    features: dict[str, dict[str, Any]] = {
        "observation.state": {"dtype": "float32", "shape": [4], "names": [f"q{i}" for i in range(4)]},
        "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]}}
    if env_state:
        features["observation.environment_state"] = {"dtype": "float32", "shape": [3], "names": None}
    for cam, kind in cameras.items():
        features[f"observation.images.{cam}"] = {"dtype": kind, "shape": [h, w, 3],
                                                 "names": ["height", "width", "channels"]}
    if reward:
        features["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
        features["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
    features.update({k: {"dtype": d, "shape": [1], "names": None} for k, d in (
        ("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"),
        ("task_index", "int64"))})
    v3 = version == "v3.0"
    tmp = Path(tempfile.mkdtemp(prefix="lerobot-episodes-"))
    writer = None
    episodes, ep_stats, clips, frames_total = [], [], {c: [] for c in cameras}, 0
    for e, n in enumerate(lengths):
        task = e % 2
        cols: dict[str, np.ndarray] = {"observation.state": rng.normal(size=(n, 4)).astype(np.float32),
                                       "action": rng.uniform(-1, 1, (n, 2)).astype(np.float32)}
        if env_state:
            cols["observation.environment_state"] = rng.normal(size=(n, 3)).astype(np.float32)
        imgs = {c: np.stack([frame_image(e, t, h, w, i) for t in range(n)]) for i, c in enumerate(cameras)}
        if reward:
            cols["next.reward"] = rng.normal(size=n).astype(np.float32)
            cols["next.done"] = np.arange(n) == n - 1
        cols.update({"timestamp": (np.arange(n) / fps).astype(np.float32), "frame_index": np.arange(n),
                     "episode_index": np.full(n, e), "index": np.arange(frames_total, frames_total + n),
                     "task_index": np.full(n, task)})
        arrays = {}
        for name in features:
            if name in cols:
                arrays[name] = arrow_column(cols[name])
            elif features[name]["dtype"] == "image":
                arrays[name] = pa.array([{"bytes": _png(img), "path": None} for img in imgs[name.split(".")[-1]]],
                                        pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        table = pa.table(arrays)
        meta: dict[str, Any] = {"episode_index": e, "tasks": [TASKS[task]], "length": n}
        if v3:
            path = root / "data/chunk-000/file-000.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = writer or pq.ParquetWriter(path, table.schema, compression="snappy", use_dictionary=True)
            writer.write_table(table)
            meta.update({"data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": frames_total,
                         "dataset_to_index": frames_total + n})
        else:
            path = root / f"data/chunk-000/episode_{e:06d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
        for cam, kind in cameras.items():
            if kind != "video":
                continue
            key = f"observation.images.{cam}"
            clip = tmp / f"{cam}_{e:03d}.mp4" if v3 else root / f"videos/chunk-000/{key}/episode_{e:06d}.mp4"
            clip.parent.mkdir(parents=True, exist_ok=True)
            encode_episode(clip, imgs[cam], fps, vcodec)
            if v3:
                start = sum(duration_s(p) for p in clips[cam])
                clips[cam].append(clip)
                meta.update({f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                             f"videos/{key}/from_timestamp": start,
                             f"videos/{key}/to_timestamp": start + duration_s(clip)})
        st = {k: feature_stats(v) for k, v in cols.items()}
        st.update({f"observation.images.{c}": feature_stats(imgs[c], image=True) for c in cameras})
        ep_stats.append(st)
        if v3:
            meta.update({f"stats/{f}/{k}": np.asarray(v).tolist() for f, s in st.items() for k, v in s.items()})
            meta.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        episodes.append(meta)
        frames_total += n
    if writer is not None:
        writer.close()
    for cam, paths in clips.items():
        if paths:
            concatenate(paths, root / f"videos/observation.images.{cam}/chunk-000/file-000.mp4")
    shutil.rmtree(tmp, ignore_errors=True)
    _write_meta(root, version, features, episodes, ep_stats, frames_total, fps, bool(cameras))
    return root


def _write_meta(root: Path, version: str, features: dict, episodes: list[dict], ep_stats: list[dict],
                frames: int, fps: int, videos: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    stats = stats_json({f: merge_stats([s[f] for s in ep_stats]) for f in ep_stats[0]})
    info: dict[str, Any] = {"codebase_version": version, "robot_type": "so101_follower",
                            "total_episodes": len(episodes), "total_frames": frames, "total_tasks": len(TASKS),
                            "chunks_size": 1000, "fps": fps, "splits": {"train": f"0:{len(episodes)}"},
                            "features": features}
    if version == "v3.0":
        info.update({"data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
                     "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                     "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
                     if videos else None})
        pq.write_table(pa.Table.from_pylist(episodes), _mk(meta / "episodes/chunk-000/file-000.parquet"))
        write_tasks(meta / "tasks.parquet", list(TASKS))
    else:
        info.update({"total_chunks": 1, "total_videos": 0,
                     "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                     "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
                     if videos else None})
        (meta / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
        (meta / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                  for i, t in enumerate(TASKS)))
        (meta / "episodes_stats.jsonl").write_text("".join(
            json.dumps({"episode_index": i, "stats": stats_json(s)}) + "\n" for i, s in enumerate(ep_stats)))
    (meta / "stats.json").write_text(json.dumps(stats, indent=4))
    (meta / "info.json").write_text(json.dumps(info, indent=4))


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _png(img: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()
