"""LeRobotDataset folder reader (codebase v3.0, and v2.0/v2.1), streamed episode by episode.

Layout (from LeRobot's ``datasets/utils.py``, ``dataset_writer.py`` and the v2.1 -> v3.0 conversion script):

* v3.0: ``meta/info.json``; ``meta/episodes/chunk-*/file-*.parquet`` (one row per episode: ``episode_index``,
  ``tasks``, ``length``, ``data/chunk_index``, ``data/file_index``, ``dataset_from_index``/``dataset_to_index``,
  and per video key ``videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp}``);
  ``meta/tasks.parquet`` (``task_index`` plus the task string as the pandas index column ``task``);
  ``data/chunk-*/file-*.parquet`` holding many episodes; ``videos/<key>/chunk-*/file-*.mp4`` holding the
  episodes' frames back to back, episode k starting at its ``from_timestamp``.
* v2.x: ``meta/episodes.jsonl``, ``meta/tasks.jsonl``, one ``data/chunk-*/episode_*.parquet`` and one
  ``videos/chunk-*/<key>/episode_*.mp4`` per episode (paths from the templates in info.json).

Feature names map to store keys as documented in docs/contracts.md (``observation.state`` -> ``obs``, other
``observation.<a>.<b>`` vectors -> ``obs/<a>/<b>``, cameras -> ``image/<cam>``, ``next.reward`` -> ``reward``...).
Only one episode's frames are in memory at a time: parquet files are read in record batches and split at
``episode_index`` changes, and each camera's mp4 is decoded sequentially on its own thread, one episode ahead
(see ``lerobot_video``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from genctl.datasets.ingest.common import box_dict, one_line
from genctl.datasets.lerobot_meta import column_array, decode_images
from genctl.datasets.lerobot_video import CameraDecoders
from genctl.errors import DataError

VERSIONS = ("v2.0", "v2.1", "v3.0")
DEFAULT_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
NUMERIC = ("bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
           "uint32", "uint64")
PROVENANCE = "meta/genctl.json"  # written by genctl's export: the original store's provenance
BATCH_ROWS = 4096  # parquet rows read at a time (256 when rows hold PNG images)
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"


def is_lerobot(src: str | os.PathLike) -> bool:
    return (Path(src) / "meta" / "info.json").is_file()


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing (expected LeRobot metadata)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not valid JSON ({one_line(e)})") from None


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: missing (a LeRobot v2.x dataset lists its episodes and tasks there)")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not valid JSON lines ({one_line(e)})") from None


def _parquet(path: Path) -> Any:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{path}: missing parquet file")
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # ArrowInvalid for bad magic bytes / footer: truncated or not parquet at all
        raise DataError(f"{path}: not a readable parquet file, truncated or corrupt ({one_line(e)})") from None


def _read_table(path: Path, where: str = "") -> Any:
    pf = _parquet(path)
    try:
        return pf.read()
    except Exception as e:
        raise DataError(f"{path}: cannot read parquet data{where}, file truncated or corrupt ({one_line(e)})") from None


# --- feature names -> store keys -------------------------------------------------------------------------------
def _sub(name: str, prefix: str) -> str:
    return name[len(prefix):].replace(".", "/")


def store_key(name: str, ft: dict, obs_flat: bool) -> str | None:
    """The store key for a LeRobot feature, or None when it is not stored as its own key."""
    dtype = ft.get("dtype")
    if dtype in ("video", "image"):
        if (ft.get("info") or {}).get("is_depth_map") or (ft.get("info") or {}).get("video.is_depth_map"):
            return None  # depth maps are 12-bit gray; image/<cam> keys hold RGB
        prefix = "observation.images." if name.startswith("observation.images.") else "observation."
        return "image/" + _sub(name, prefix if name.startswith(prefix) else "")
    if dtype not in NUMERIC or name in DEFAULT_FEATURES:
        return None  # strings / language columns; the frame bookkeeping columns
    fixed = {"action": "action", "next.reward": "reward", "next.done": "terminated", "next.truncated": "truncated"}
    if name in fixed:
        return fixed[name]
    for prefix, key in (("next.observation.", "next_obs"), ("observation.", "obs")):
        if name.startswith(prefix):
            return key if obs_flat else f"{key}/{_sub(name, prefix)}"
    if name.startswith("state."):
        return "state/" + _sub(name, "state.")
    return "info/" + _sub(name, "info." if name.startswith("info.") else "")


def plan_keys(features: dict[str, dict], obs_keys: list[str] | None, where: Path) -> dict[str, str]:
    """{feature name: store key} for the features that are ingested."""
    def is_obs(n: str, ft: dict) -> bool:
        return n.startswith("observation.") and ft.get("dtype") in NUMERIC

    vectors = [n for n, ft in features.items() if is_obs(n, ft)]
    if obs_keys:
        want = {k if k.startswith("observation.") else f"observation.{k}" for k in obs_keys}
        unknown = sorted(want - set(vectors))
        if unknown:
            raise DataError(f"{where}: obs_keys {unknown} are not observation vectors of the dataset "
                            f"(has {vectors})")
        vectors = [n for n in vectors if n in want]
    if not vectors:
        raise DataError(f"{where}: no observation vector feature (expected 'observation.state' or "
                        "'observation.<name>' with a numeric dtype)")
    flat = vectors == ["observation.state"]
    plan: dict[str, str] = {}
    for name, ft in features.items():
        if is_obs(name, ft) and name not in vectors:
            continue
        nxt = name.startswith("next.observation.")
        if nxt and name[len("next."):] not in vectors:
            continue
        key = store_key(name, ft, flat)
        if key is not None:
            plan[name] = key
    return plan


# --- the dataset ---------------------------------------------------------------------------------------------
class LeRobotSource:
    """Metadata of a LeRobot folder, validated up front so a bad dataset fails before anything is written."""

    def __init__(self, root: Path, obs_keys: list[str] | None) -> None:
        self.root = root
        info_path = root / "meta" / "info.json"
        if not info_path.is_file():
            raise DataError(f"{info_path}: missing (a LeRobotDataset folder has meta/info.json with "
                            "'codebase_version', 'fps' and 'features')")
        self.info = info = _load_json(info_path)
        if not isinstance(info, dict):
            raise DataError(f"{info_path}: expected a JSON object")
        self.version = info.get("codebase_version")
        if self.version not in VERSIONS:
            raise DataError(f"{info_path}: field 'codebase_version' is {self.version!r}, expected one of "
                            f"{', '.join(VERSIONS)}")
        for field in ("fps", "features"):
            if field not in info:
                raise DataError(f"{info_path}: missing field {field!r}")
        try:
            self.fps = float(info["fps"])
        except (TypeError, ValueError):
            self.fps = 0.0
        if not self.fps > 0:
            raise DataError(f"{info_path}: field 'fps' is {info['fps']!r}, expected a positive number")
        self.features: dict[str, dict] = info["features"]
        bad = [n for n, ft in (self.features.items() if isinstance(self.features, dict) else [])
               if not isinstance(ft, dict) or "dtype" not in ft or not isinstance(ft.get("shape"), list | tuple)]
        if not isinstance(self.features, dict) or bad:
            raise DataError(f"{info_path}: field 'features' must map names to {{'dtype', 'shape', ...}} "
                            f"(bad: {bad[:3] if bad else type(self.features).__name__})")
        self.plan = plan_keys(self.features, obs_keys, info_path)
        self.videos = [n for n in self.plan if self.features[n]["dtype"] == "video"]
        self.images = [n for n in self.plan if self.features[n]["dtype"] == "image"]
        self.dropped = sorted(n for n in self.features if n not in self.plan and n not in DEFAULT_FEATURES)
        self.chunks_size = int(info.get("chunks_size") or 1000)
        prov = root / PROVENANCE
        self.provenance: dict = _load_json(prov) if prov.is_file() else {}
        # genctl's export writes task_index for every store; it becomes info/task only where it was one
        self.task_key = "task_index" in self.features and self.provenance.get("task_key", True)
        if self.videos and not info.get("video_path"):
            raise DataError(f"{info_path}: features {self.videos} are videos but field 'video_path' is empty")
        if self.version == "v3.0":
            self.episodes, self.tasks = self._meta_v3()
        else:
            self.episodes, self.tasks = self._meta_v2()

    def _meta_v3(self) -> tuple[list[dict], dict[int, str]]:
        import pyarrow.parquet as pq

        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DataError(f"{self.root / 'meta' / 'episodes'}: no chunk-*/file-*.parquet episode metadata")
        need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
        for k in self.videos:
            need += [f"videos/{k}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
        episodes: list[dict] = []
        for f in files:
            pf = _parquet(f)
            names = pf.schema_arrow.names
            missing = [c for c in need if c not in names]
            if missing:
                raise DataError(f"{f}: missing column(s) {missing} (LeRobot v3.0 episode metadata)")
            cols = [c for c in names if not c.startswith("stats/")]  # per-episode stats are not needed
            try:
                table = pq.read_table(f, columns=cols)
            except Exception as e:
                raise DataError(f"{f}: cannot read parquet data, file truncated or corrupt ({one_line(e)})") from None
            rows = table.to_pylist()
            episodes += rows
        episodes.sort(key=lambda r: r["episode_index"])
        for ep in episodes:
            where = f"{self.root / 'meta' / 'episodes'}: episode {ep['episode_index']}"
            ep["data_file"] = self._fill(self.info.get("data_path") or V3_DATA_PATH, where,
                                         chunk_index=ep["data/chunk_index"], file_index=ep["data/file_index"])
            ep["video"] = {k: (self._fill(self.info["video_path"], where, video_key=k,
                                          chunk_index=ep[f"videos/{k}/chunk_index"],
                                          file_index=ep[f"videos/{k}/file_index"]),
                               float(ep[f"videos/{k}/from_timestamp"] or 0.0), ep[f"videos/{k}/to_timestamp"])
                           for k in self.videos}
        tasks: dict[int, str] = {}
        path = self.root / "meta" / "tasks.parquet"
        if path.exists() or self.info.get("total_tasks"):
            t = _read_table(path)
            text = "task" if "task" in t.column_names else "__index_level_0__"
            if "task_index" not in t.column_names or text not in t.column_names:
                raise DataError(f"{path}: expected columns 'task_index' and 'task' (has {t.column_names})")
            tasks = dict(zip(t.column("task_index").to_pylist(), t.column(text).to_pylist(), strict=True))
        return episodes, tasks

    def _fill(self, template: str, where: str, **fields: Any) -> Path:
        """A path template of info.json filled in; bad templates or indices name the episode and the field."""
        try:
            return self.root / template.format(**fields)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise DataError(f"{where}: cannot fill path template {template!r} from meta/info.json with {fields} "
                            f"({type(e).__name__}: {one_line(e)})") from None

    def _meta_v2(self) -> tuple[list[dict], dict[int, str]]:
        meta = self.root / "meta"
        episodes = sorted(_jsonl(meta / "episodes.jsonl"), key=lambda r: r.get("episode_index", -1))
        data_path = self.info.get("data_path") or "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
        video_path = self.info.get("video_path") or ""
        for ep in episodes:
            if "episode_index" not in ep or "length" not in ep:
                raise DataError(f"{meta / 'episodes.jsonl'}: each line needs 'episode_index' and 'length' "
                                f"(got {sorted(ep)})")
            idx = int(ep["episode_index"])
            fmt = {"episode_chunk": idx // self.chunks_size, "episode_index": idx}
            where = f"{meta / 'episodes.jsonl'}: episode {idx}"
            ep["data_file"] = self._fill(data_path, where, **fmt)
            ep["video"] = {k: (self._fill(video_path, where, video_key=k, **fmt), 0.0, None) for k in self.videos}
        rows = _jsonl(meta / "tasks.jsonl") if (meta / "tasks.jsonl").exists() else []
        if any("task_index" not in r or "task" not in r for r in rows):
            raise DataError(f"{meta / 'tasks.jsonl'}: each line needs 'task_index' and 'task'")
        return episodes, {int(r["task_index"]): str(r["task"]) for r in rows}

    # --- attributes -----------------------------------------------------------------------------------------
    def attrs(self) -> dict[str, Any]:
        info = self.info
        prov = self.provenance
        shape = lambda n: [int(np.prod(self.features[n]["shape"]))]  # noqa: E731
        obs = [n for n, k in self.plan.items() if k == "obs" or k.startswith("obs/")]
        obs_dim = sum(shape(n)[0] for n in obs)
        keys = set(self.plan.values())
        source = {"kind": "lerobot", "path": str(self.root.resolve()), "codebase_version": self.version,
                  "repo_id": info.get("repo_id"), "robot_type": info.get("robot_type"), "fps": info["fps"],
                  "total_episodes": len(self.episodes), "dropped": self.dropped}
        if prov.get("source") is not None:
            source["origin"] = prov["source"]  # where the data came from before it was exported to LeRobot
        attrs = {
            "source": source,
            "env": prov.get("env"),
            "observation_space": prov.get("observation_space") or box_dict([obs_dim]),
            "action_space": prov.get("action_space") or box_dict(shape("action") if "action" in self.plan else [0]),
            "ref_min_score": prov.get("ref_min_score"),
            "ref_max_score": prov.get("ref_max_score"),
            "fps": info["fps"],
            "robot_type": info.get("robot_type"),
            "has_reward": "reward" in keys,
            "tasks": {str(k): v for k, v in sorted(self.tasks.items())},
            "lerobot": {"codebase_version": self.version, "features": self.features,
                        "keys": self.plan, "stats": _stats(self.root)},
        }
        return attrs

    # --- episodes -------------------------------------------------------------------------------------------
    def _episode_tables(self) -> Iterator[tuple[int, Any, Path]]:
        """(episode_index, pyarrow table of its rows, file) in file order, one episode in memory at a time."""
        import pyarrow as pa

        columns = ["episode_index", "timestamp", *(["task_index"] if self.task_key else []),
                   *[n for n in self.plan if self.features[n]["dtype"] != "video"]]
        seen: list[Path] = []
        for ep in self.episodes:
            if ep["data_file"] not in seen:
                seen.append(ep["data_file"])
        for path in seen:
            pf = _parquet(path)
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing} declared in meta/info.json features")
            parts: list[Any] = []
            current = None
            try:
                for batch in pf.iter_batches(batch_size=256 if self.images else BATCH_ROWS, columns=columns):
                    idx = batch.column("episode_index").to_numpy(zero_copy_only=False)
                    cuts = np.flatnonzero(np.diff(idx)) + 1
                    for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(idx)], strict=True):
                        if current is not None and idx[a] != current:
                            yield current, pa.Table.from_batches(parts), path
                            parts = []
                        current = int(idx[a])
                        parts.append(batch.slice(a, b - a))
            except DataError:
                raise
            except Exception as e:
                raise DataError(f"{path}: cannot read parquet data, file truncated or corrupt ({one_line(e)})") from None
            if parts:
                yield current, pa.Table.from_batches(parts), path

    def iter_episodes(self, progress: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Episodes in order; each camera decodes on its own thread one episode ahead of the one handed out, so
        decoding overlaps the caller's writes (at most two episodes' frames in memory)."""
        from genctl.progress import progress_bar

        by_index = {int(ep["episode_index"]): ep for ep in self.episodes}
        cameras = CameraDecoders(self.videos, self.fps)
        done: set[int] = set()
        ahead: tuple | None = None
        bar = progress_bar(len(self.episodes), desc="ingest lerobot", enabled=progress, unit="ep")
        try:
            for idx, table, path in self._episode_tables():
                meta = by_index.get(idx)
                if meta is None or idx in done or (ahead is not None and ahead[0] == idx):
                    what = "repeated" if meta else "not in the episode metadata"
                    raise DataError(f"{path}: episode_index {idx} is {what} (expected each episode's rows once, "
                                    "contiguous)")
                if table.num_rows != int(meta["length"]):
                    raise DataError(f"{path}: frame counts disagree: episode {idx} has {table.num_rows} rows, "
                                    f"expected {meta['length']} (its 'length' in the episode metadata)")
                video = cameras.submit(meta.get("video", {}), table, f"{path}: episode {idx}")
                if ahead is not None:
                    yield self._episode(*ahead)
                    done.add(ahead[0])
                    bar.update(1)
                ahead = (idx, table, path, meta, video)
            if ahead is not None:
                yield self._episode(*ahead)
                done.add(ahead[0])
                bar.update(1)
        finally:
            bar.close()
            cameras.close()
        missing = sorted(set(by_index) - done)
        if missing:
            raise DataError(f"{self.root / 'data'}: episodes {missing[:5]} are in the metadata but have no rows")

    def _episode(self, idx: int, table: Any, path: Path, meta: dict, video: dict[str, Any]
                 ) -> dict[str, np.ndarray]:
        where = f"{path}: episode {idx}"
        n = table.num_rows
        ep: dict[str, np.ndarray] = {}
        for name, key in self.plan.items():
            ft = self.features[name]
            if ft["dtype"] == "video":
                ep[key] = video[name].result()  # re-raises the decoder's DataError here
            elif ft["dtype"] == "image":
                ep[key] = decode_images(table.column(name), self.root, f"{where}, feature {name!r}")
            else:
                arr = column_array(table, name, ft, where)
                if key in ("reward", "terminated", "truncated"):
                    arr = arr.reshape(n)
                elif key == "action" or key.startswith(("obs", "next_obs")):
                    arr = arr.reshape(n, -1)
                elif arr.ndim == 2 and arr.shape[1] == 1:
                    arr = arr.reshape(n)
                ep[key] = arr
        if self.task_key:
            ep["info/task"] = column_array(table, "task_index", {"shape": [1]}, where).reshape(n).astype(np.int64)
        term = ep.setdefault("terminated", np.zeros(n, bool)).astype(bool)
        if "truncated" not in ep:  # the recording stopped: the last step ends the episode unless it terminated
            trunc = np.zeros(n, bool)
            trunc[-1] = not term[-1]
            ep["truncated"] = trunc
        return ep


def _stats(root: Path) -> Any:
    path = root / "meta" / "stats.json"
    return _load_json(path) if path.is_file() else None


def read_lerobot(src: str | os.PathLike, obs_keys: list[str] | None = None, *, progress: bool = False
                 ) -> tuple[dict, Iterator[dict]]:
    source = LeRobotSource(Path(src), obs_keys)
    return source.attrs(), source.iter_episodes(progress)
