"""Pieces of the LeRobotDataset on-disk format: statistics, the task table, arrow columns (in and out).

Facts taken from LeRobot's ``compute_stats.py`` / ``io_utils.py`` / ``dataset_metadata.py``: per-feature
statistics are ``min, max, mean, std, count`` and the quantiles ``q01 q10 q50 q90 q99``; camera statistics are
per channel with shape (3, 1, 1) in [0, 1]; episode statistics are merged by count-weighted mean and pooled
variance, and quantiles by their min (lower ones) or max (upper ones) across episodes. ``meta/tasks.parquet`` is
a pandas frame indexed by the task string (index name ``task``) with one column ``task_index``; LeRobot reads
it back with pandas and takes ``tasks.iloc[task_index].name`` as the task, so the pandas index metadata must be
there (we write it without needing pandas).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from genctl.datasets.ingest.common import check_numeric, one_line
from genctl.errors import DataError

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
DEFAULT_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                    "task_index": "int64"}


def feature_stats(x: np.ndarray, image: bool = False) -> dict[str, np.ndarray]:
    """Statistics of one episode's values (T, ...) per dimension; images (T, H, W, C) uint8 per channel."""
    if image:
        step = max(1, len(x) // 64)  # LeRobot samples frames per episode too; this bounds the cost
        v = x[::step].astype(np.float32) / 255.0
        v = v.reshape(-1, v.shape[-1])
    else:
        v = np.asarray(x, np.float64).reshape(len(x), -1)
    qs = np.quantile(v, QUANTILES, axis=0)
    out = {"min": v.min(0), "max": v.max(0), "mean": v.mean(0), "std": v.std(0),
           "count": np.array([len(x[:: max(1, len(x) // 64)]) if image else len(x)])}
    out.update({f"q{round(q * 100):02d}": qs[i] for i, q in enumerate(QUANTILES)})
    if image:
        return {k: (s if k == "count" else s.reshape(-1, 1, 1)) for k, s in out.items()}
    return out


def merge_stats(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    counts = np.array([float(p["count"][0]) for p in parts])
    w = (counts / counts.sum()).reshape(-1, *([1] * np.ndim(parts[0]["mean"])))
    means = np.stack([p["mean"] for p in parts])
    mean = (means * w).sum(0)
    var = ((np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2) * w).sum(0)
    out = {"min": np.min([p["min"] for p in parts], 0), "max": np.max([p["max"] for p in parts], 0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(counts.sum())])}
    for k in parts[0]:
        if k.startswith("q"):
            stack = np.stack([p[k] for p in parts])
            out[k] = stack.min(0) if int(k[1:]) <= 50 else stack.max(0)
    return out


def stats_json(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {f: {k: np.asarray(v).tolist() for k, v in s.items()} for f, s in stats.items()}


def write_tasks(path: Path, tasks: list[str]) -> None:
    """``meta/tasks.parquet`` as pandas ``DataFrame({"task_index": ...}, index=Index(tasks, name="task"))``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def arrow_column(x: np.ndarray) -> Any:
    """A per-frame array as an arrow column the way HF ``datasets`` stores LeRobot features: a plain column for
    one value per frame, fixed-size lists for vectors (nested for more dimensions)."""
    import pyarrow as pa

    x = np.ascontiguousarray(x)
    if x.ndim == 1 or (x.ndim == 2 and x.shape[1] == 1):
        return pa.array(x.reshape(len(x)))
    col = pa.array(x.reshape(-1))
    for d in reversed(x.shape[1:]):
        col = pa.FixedSizeListArray.from_arrays(col, int(d))
    return col


def dtype_name(dtype: np.dtype) -> str:
    return "bool" if dtype == np.bool_ else str(np.dtype(dtype))


def column_array(table: Any, name: str, ft: dict, where: str) -> np.ndarray:
    """A numeric column as (n, *shape); nested list columns are flattened (all rows must have the shape)."""
    import pyarrow as pa

    col = table.column(name)
    if col.null_count:
        raise DataError(f"{where}: column {name!r} has {col.null_count} null value(s), expected numbers")
    arr = col.combine_chunks()
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    vals = arr.to_numpy(zero_copy_only=False)
    shape = tuple(int(s) for s in ft.get("shape") or [1])
    n = table.num_rows
    if vals.size != n * int(np.prod(shape)):
        raise DataError(f"{where}: column {name!r} has {vals.size} values for {n} rows, expected shape {list(shape)} "
                        "per row (meta/info.json)")
    vals = vals.reshape(n, *shape)
    check_numeric(vals, f"{where}: column {name!r}")
    return vals


def decode_images(col: Any, root: Path, where: str) -> np.ndarray:
    """``image`` features: PNG/JPEG bytes (or a path) per row, as HF ``datasets.Image`` stores them."""
    from PIL import Image

    out = []
    for i, item in enumerate(col.to_pylist()):
        data = (item or {}).get("bytes") if isinstance(item, dict) else None
        try:
            src = io.BytesIO(data) if data else root / str((item or {}).get("path"))
            with Image.open(src) as im:
                out.append(np.asarray(im.convert("RGB")))
        except Exception as e:
            raise DataError(f"{where}: row {i} is not a decodable image ({type(e).__name__}: {one_line(e)})") from None
    try:
        return np.stack(out)
    except ValueError:
        raise DataError(f"{where}: images of different sizes in one episode") from None
