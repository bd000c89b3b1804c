"""store_info / format_info: what ``genctl info`` prints (the dict is what ``--json`` prints)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from genctl.datasets.store import EpisodeStore


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _codec_names(arr: Any) -> str:
    names = []
    for c in arr.compressors:
        cname = getattr(c, "cname", None)
        shuffle = getattr(c, "shuffle", None)
        level = getattr(c, "clevel", getattr(c, "level", None))
        label = type(c).__name__.replace("Codec", "").lower()
        if cname is not None:
            label += f" {getattr(cname, 'value', cname)}"
        if level is not None:
            label += f" L{level}"
        if shuffle is not None:
            label += f" {getattr(shuffle, 'value', shuffle)}"
        names.append(label)
    return "+".join(names) or "none"


def store_info(path: str | os.PathLike) -> dict[str, Any]:
    """Summary of a store: sizes, return statistics and per-key shape/dtype/chunks/codec (JSON-serialisable)."""
    store = EpisodeStore.open(path)
    attrs = store.attrs
    returns = store.episode_returns()
    lengths = store.episode_lengths()
    keys: dict[str, Any] = {}
    raw = 0
    for k in store.keys:
        arr = store.array_info(k)
        nbytes = int(np.prod(arr.shape, dtype=np.int64)) * arr.dtype.itemsize
        raw += nbytes
        keys[k] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks),
                   "codec": _codec_names(arr), "bytes": nbytes}
    disk = _disk_bytes(store.path)
    ref_min, ref_max = attrs.get("ref_min_score"), attrs.get("ref_max_score")
    info: dict[str, Any] = {
        "path": str(store.path),
        "format_version": attrs.get("format_version"),
        "created": attrs.get("created"),
        # provenance: every scalar the producer recorded (expert, noise, random fraction, expert success, ...);
        # per-episode lists (seeds) stay in the attributes
        "source": {k: v for k, v in (attrs.get("source") or {}).items() if not isinstance(v, list | dict)},
        "env_id": (attrs.get("env") or {}).get("id"),
        "obs_keys": store.obs_keys,
        "episodes": store.n_episodes,
        "transitions": store.n_transitions,
        "episode_length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
        # None: a BC-only store (no rewards, e.g. LeRobot demos without next.reward)
        # p10/p90: where the worse and the better episodes lie (data.top_frac=0.1 trains on those above p90)
        "return": {"min": float(returns.min()), "p10": float(np.percentile(returns, 10)), "mean": float(returns.mean()),
                   "p90": float(np.percentile(returns, 90)), "max": float(returns.max()),
                   "std": float(returns.std())} if store.has_reward else None,
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
        "normalized_return_mean": (100.0 * (float(returns.mean()) - ref_min) / (ref_max - ref_min)
                                   if ref_min is not None and ref_max is not None and ref_max != ref_min
                                   and store.has_reward else None),
        "keys": keys,
        "raw_bytes": raw,
        "disk_bytes": disk,
        "compression_ratio": raw / disk if disk else None,
    }
    return info


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def format_info(info: dict[str, Any]) -> str:
    """Human-readable table of :func:`store_info`'s dict."""
    r, el = info["return"], info["episode_length"]
    src = info.get("source") or {}
    lines = [
        f"store        {info['path']}  (format v{info['format_version']}, created {info.get('created')})",
        f"source       {src.get('kind')}  {src.get('id') or src.get('path') or ''}".rstrip()
        + "".join(f"  {k} {_fmt(v)}" for k, v in src.items() if k not in ("kind", "id", "path")),
        f"env          {info.get('env_id')}" + (f"  obs_keys {info['obs_keys']}" if info.get("obs_keys") else ""),
        f"episodes     {info['episodes']}   transitions {info['transitions']}   "
        f"length min/mean/max {el['min']}/{el['mean']:.1f}/{el['max']}",
        f"return       min {r['min']:.2f}  p10 {r['p10']:.2f}  mean {r['mean']:.2f}  p90 {r['p90']:.2f}  "
        f"max {r['max']:.2f}  std {r['std']:.2f}" if r
        else "return       none (no rewards: BC-only demos)",
    ]
    if info.get("normalized_return_mean") is not None:
        lo, hi = info["ref_min_score"], info["ref_max_score"]

        def norm(x: float) -> str:
            return f"{100.0 * (x - lo) / (hi - lo):.1f}"

        lines.append(f"normalized   mean {info['normalized_return_mean']:.1f}  p10 {norm(r['p10'])}  p90 "
                     f"{norm(r['p90'])}  max {norm(r['max'])}  (ref min {lo}, max {hi})")
    ratio = info.get("compression_ratio")
    lines.append(f"size         {_size(info['disk_bytes'])} on disk, {_size(info['raw_bytes'])} raw"
                 + (f", ratio {ratio:.2f}x" if ratio else ""))
    rows = [("key", "shape", "dtype", "chunks", "codec", "raw")]
    rows += [(k, "x".join(map(str, v["shape"])), v["dtype"], "x".join(map(str, v["chunks"])), v["codec"],
              _size(v["bytes"])) for k, v in info["keys"].items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.append("")
    for j, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
