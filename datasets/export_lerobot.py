"""Write a store out as a LeRobotDataset v3.0 folder that LeRobot's own reader loads.

Same layout LeRobot records (``meta/info.json``, ``meta/stats.json``, ``meta/tasks.parquet``,
``meta/episodes/chunk-000/file-000.parquet``, ``data/chunk-*/file-*.parquet`` with one row group per episode,
``videos/<camera key>/chunk-*/file-*.mp4`` with all the episodes of a file back to back). Store keys become
feature names by the mapping in docs/contracts.md, or by the names the store was ingested from when it came from
LeRobot. What LeRobot has no place for (the store's source, env and spaces) goes to ``meta/genctl.json``, which
LeRobot ignores and genctl's reader restores. Episodes are exported one at a time (memory: one episode) into a
temporary folder beside the target that is renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from genctl.datasets.ingest.lerobot import PROVENANCE
from genctl.datasets.lerobot_meta import (
    DEFAULT_FEATURES,
    arrow_column,
    dtype_name,
    feature_stats,
    merge_stats,
    stats_json,
    write_tasks,
)
from genctl.datasets.lerobot_video import VideoWriter, pick_encoder, video_info
from genctl.datasets.store import EpisodeStore
from genctl.errors import DataError
from genctl.fsutil import cleanup_stale, replace_dir, temp_sibling

CHUNKS_SIZE, DATA_MB, VIDEO_MB = 1000, 100, 200  # LeRobot's defaults: files per chunk folder, file sizes
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"


def feature_name(key: str) -> str:
    """Default LeRobot name of a store key (the inverse of ``ingest.lerobot.store_key``)."""
    fixed = {"obs": "observation.state", "next_obs": "next.observation.state", "action": "action",
             "reward": "next.reward", "terminated": "next.done", "truncated": "next.truncated"}
    if key in fixed:
        return fixed[key]
    head, _, rest = key.partition("/")
    prefix = {"obs": "observation.", "next_obs": "next.observation.", "image": "observation.images.",
              "state": "state.", "info": "info."}[head]
    return prefix + rest.replace("/", ".")


def _names(store: EpisodeStore) -> dict[str, str]:
    """{store key: feature name}: the original names for a store ingested from LeRobot, defaults otherwise."""
    keys = [k for k in store.keys if not (k == "info/task" and store.attrs.get("tasks"))]
    back = {v: k for k, v in ((store.attrs.get("lerobot") or {}).get("keys") or {}).items()}
    names = {k: back.get(k) or feature_name(k) for k in keys}
    if len(set(names.values())) != len(names):  # a renamed key collides with a default: use defaults only
        names = {k: feature_name(k) for k in keys}
    return names


def _tasks(store: EpisodeStore) -> list[str]:
    table = store.attrs.get("tasks") or {}
    if table and "info/task" in store.keys:
        n = max(int(i) for i in table) + 1
        return [table.get(str(i), f"task {i}") for i in range(n)]
    env = (store.attrs.get("env") or {}).get("id")
    return [f"{env} demonstrations" if env else "genctl demonstrations"]  # LeRobot requires a task string


class _Files:
    """chunk/file index of the current data or video file, advanced when the file reaches its size limit."""

    def __init__(self, limit_mb: int) -> None:
        self.chunk, self.file, self.limit = 0, 0, limit_mb * (1 << 20)

    def full(self, nbytes: int) -> bool:
        return nbytes >= self.limit

    def next(self) -> None:
        self.chunk, self.file = (self.chunk + 1, 0) if self.file == CHUNKS_SIZE - 1 else (self.chunk, self.file + 1)


class _Exporter:
    def __init__(self, store: EpisodeStore, root: Path, codec: str) -> None:
        self.store, self.root = store, root
        self.names = _names(store)
        self.cams = [k for k in self.names if k.startswith("image/")]
        self.fps = int(round(float(store.attrs.get("fps") or 30)))
        self.family, self.encoder = pick_encoder(codec) if self.cams else ("", "")
        self.tasks = _tasks(store)
        self.features: dict[str, dict] = {}
        self.stats: dict[str, list[dict[str, np.ndarray]]] = {}
        self.episodes: list[dict[str, Any]] = []
        self.data_files, self.video_files = _Files(DATA_MB), {k: _Files(VIDEO_MB) for k in self.cams}
        self.writer: Any = None
        self.writer_bytes = 0
        self.videos: dict[str, VideoWriter] = {}
        self.frames = 0

    # --- schema ---------------------------------------------------------------------------------------------
    def _schema(self, ep: dict[str, np.ndarray]) -> None:
        old = (self.store.attrs.get("lerobot") or {}).get("features") or {}
        for key, name in self.names.items():
            x = ep[key]
            if key.startswith("image/"):
                h, w = x.shape[1:3]
                if h % 2 or w % 2:
                    raise DataError(f"store {self.store.path}: camera {key!r} frames are {h}x{w}; mp4 (yuv420p) "
                                    "needs even height and width")
                if self.encoder == "libx265" and min(h, w) < 64:  # PyAV 18's libx265 corrupts memory there
                    raise DataError(f"store {self.store.path}: camera {key!r} frames are {h}x{w}; HEVC export "
                                    "needs at least 64x64 (use codec av1 or h264)")
                self.features[name] = {"dtype": "video", "shape": [int(h), int(w), 3],
                                       "names": ["height", "width", "channels"]}
            else:
                shape = [int(s) for s in x.shape[1:]] or [1]
                self.features[name] = {"dtype": dtype_name(x.dtype), "shape": shape,
                                       "names": (old.get(name) or {}).get("names")}
        for name, dtype in DEFAULT_FEATURES.items():
            self.features[name] = {"dtype": dtype, "shape": [1], "names": None}

    # --- episodes -------------------------------------------------------------------------------------------
    def add(self, i: int, ep: dict[str, np.ndarray]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.features:
            self._schema(ep)
        n = len(ep["action"])
        has_tasks = "info/task" in ep and bool(self.store.attrs.get("tasks"))  # as in _names
        task_index = ep["info/task"].astype(np.int64) if has_tasks else np.zeros(n, np.int64)
        frame = {"timestamp": (np.arange(n) / self.fps).astype(np.float32), "frame_index": np.arange(n),
                 "episode_index": np.full(n, i), "index": np.arange(self.frames, self.frames + n),
                 "task_index": task_index}
        cols = {name: ep[key] for key, name in self.names.items() if not key.startswith("image/")}
        cols.update(frame)
        table = pa.table({name: arrow_column(v) for name, v in cols.items()})
        if self.writer is not None and self.data_files.full(self.writer_bytes):
            self.writer.close()
            self.writer, self.writer_bytes = None, 0
            self.data_files.next()
        if self.writer is None:
            path = self.root / DATA_PATH.format(chunk_index=self.data_files.chunk, file_index=self.data_files.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(path, table.schema, compression="snappy", use_dictionary=True)
        self.writer.write_table(table)  # one row group per episode, as LeRobot writes them
        self.writer_bytes += table.nbytes
        meta: dict[str, Any] = {"episode_index": i,
                                "tasks": list(dict.fromkeys(self.tasks[t] for t in task_index.tolist())),
                                "length": n, "data/chunk_index": self.data_files.chunk,
                                "data/file_index": self.data_files.file, "dataset_from_index": self.frames,
                                "dataset_to_index": self.frames + n}
        for key in self.cams:
            meta.update(self._video(key, self.names[key], ep[key]))
        ep_stats = {name: feature_stats(v) for name, v in cols.items()}
        ep_stats.update({self.names[k]: feature_stats(ep[k], image=True) for k in self.cams})
        for name, s in ep_stats.items():
            self.stats.setdefault(name, []).append(s)
            meta.update({f"stats/{name}/{k}": np.asarray(v).tolist() for k, v in s.items()})
        meta.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        self.episodes.append(meta)
        self.frames += n

    def _video(self, key: str, name: str, frames: np.ndarray) -> dict[str, Any]:
        files, vw = self.video_files[key], self.videos.get(key)
        if vw is not None and files.full(vw.bytes):
            vw.close()
            vw = None
            files.next()
        if vw is None:
            path = self.root / VIDEO_PATH.format(video_key=name, chunk_index=files.chunk, file_index=files.file)
            vw = self.videos[key] = VideoWriter(path, self.encoder, self.fps, frames.shape[1], frames.shape[2])
        start = vw.n / self.fps
        if frames.shape[-1] == 1:
            frames = np.repeat(frames, 3, axis=-1)
        vw.write(frames)
        return {f"videos/{name}/chunk_index": files.chunk, f"videos/{name}/file_index": files.file,
                f"videos/{name}/from_timestamp": start, f"videos/{name}/to_timestamp": vw.n / self.fps}

    # --- finish ---------------------------------------------------------------------------------------------
    def finish(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is not None:
            self.writer.close()
        for vw in self.videos.values():
            vw.close()
        for key in self.cams:
            name = self.names[key]
            first = self.root / VIDEO_PATH.format(video_key=name, chunk_index=0, file_index=0)
            self.features[name]["info"] = video_info(first, self.encoder)
        episodes = pa.Table.from_pylist(self.episodes)
        (self.root / EPISODES_PATH).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(episodes, self.root / EPISODES_PATH, compression="snappy")
        write_tasks(self.root / "meta" / "tasks.parquet", self.tasks)
        stats = stats_json({name: merge_stats(parts) for name, parts in self.stats.items()})
        (self.root / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
        a = self.store.attrs
        info = {"codebase_version": "v3.0", "robot_type": a.get("robot_type"),
                "total_episodes": len(self.episodes), "total_frames": self.frames, "total_tasks": len(self.tasks),
                "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_MB, "video_files_size_in_mb": VIDEO_MB,
                "fps": self.fps, "splits": {"train": f"0:{len(self.episodes)}"}, "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if self.cams else None, "features": self.features}
        (self.root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
        prov = {k: a.get(k) for k in ("source", "env", "observation_space", "action_space", "ref_min_score",
                                      "ref_max_score", "created", "format_version")}
        prov["store"] = str(self.store.path.resolve())
        prov["keys"] = self.names
        prov["task_key"] = "info/task" in self.store.keys  # task_index is always written; was it a store key?
        (self.root / PROVENANCE).write_text(json.dumps(prov, indent=2, default=str))


def export_lerobot(store_path: str | os.PathLike, out_dir: str | os.PathLike, *, codec: str = "auto",
                   quiet: bool = False) -> Path:
    """Export the store at ``store_path`` to a new LeRobotDataset v3.0 folder ``out_dir``; returns it.
    ``codec``: auto (AV1 when this PyAV build can encode it, else H.264), av1, h264 or hevc."""
    store = EpisodeStore.open(store_path)
    out = Path(out_dir)
    if out.exists():
        raise DataError(f"{out} already exists (remove it first; a LeRobot dataset is written as a new folder)")
    out.parent.mkdir(parents=True, exist_ok=True)
    cleanup_stale(out.parent, out.name)
    tmp = temp_sibling(out)
    ex = _Exporter(store, tmp, codec)
    try:
        for i in range(store.n_episodes):
            ex.add(i, store.episode(i))
        ex.finish()
        replace_dir(tmp, out)
    except BaseException:
        for vw in ex.videos.values():
            vw.close(flush=False)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not quiet:
        cams = f", {len(ex.cams)} camera(s) as {ex.family} mp4" if ex.cams else ""
        print(f"wrote LeRobot dataset {out}: {len(ex.episodes)} episodes, {ex.frames} frames{cams}")
    return out
