"""Helpers shared by the source readers: HDF5 access with clear errors, image detection, space summaries."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from genctl.errors import DataError


def is_image(arr: np.ndarray) -> bool:
    """Per-step uint8 (H, W, C) with C in 1/3/4 is a camera frame; it goes to ``image/<key>``, not ``obs``."""
    return arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] in (1, 3, 4)


def open_h5(path: str | os.PathLike) -> Any:
    """h5py.File in read mode, or DataError naming the file (truncated/corrupt files fail here)."""
    import h5py

    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from None


def read_h5(group: Any, name: str, path: Path, numeric: bool = True) -> np.ndarray:
    """Read one dataset fully; missing fields and unreadable (truncated) data become DataError."""
    if name not in group:
        raise DataError(f"{path}: missing field {_full(group, name)!r}")
    ds = group[name]
    if not hasattr(ds, "dtype"):
        raise DataError(f"{path}: field {_full(group, name)!r} is a group, expected a dataset")
    try:
        arr = np.asarray(ds[()])
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise DataError(f"{path}: cannot read field {_full(group, name)!r} (file truncated or corrupt: {e})") from None
    if numeric:
        check_numeric(arr, f"{path}: field {_full(group, name)!r}")
    return arr


def one_line(e: BaseException) -> str:
    """An exception's message on one line (arrow and libav messages span several; errors print one line)."""
    return " ".join(str(e).split())


def check_numeric(arr: np.ndarray, where: str) -> None:
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{where} has dtype {arr.dtype}, expected numbers")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        row = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise DataError(f"{where} contains NaN/Inf (first at row {row})")


def _full(group: Any, name: str) -> str:
    base = group.name.strip("/")
    return f"{base}/{name}" if base else name


def walk_h5(group: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(relative name, dataset) for every dataset below ``group``."""
    for name, item in group.items():
        rel = f"{prefix}{name}"
        if hasattr(item, "dtype"):
            yield rel, item
        else:
            yield from walk_h5(item, rel + "/")


def box_dict(shape: Any, low: Any = None, high: Any = None, dtype: str = "float32") -> dict[str, Any]:
    """The contract's space summary ``{shape, dtype, low, high}``; unknown or infinite bounds become null."""
    def bound(b: Any) -> Any:
        if b is None:
            return None
        b = np.broadcast_to(np.asarray(b, np.float64), tuple(shape)).reshape(-1)
        return [float(v) if np.isfinite(v) else None for v in b]

    return {"shape": [int(s) for s in shape], "dtype": dtype, "low": bound(low), "high": bound(high)}


def env_dict(env_id: str | None, *, kwargs: dict | None = None, obs_keys: list[str] | None = None,
             obs_dim: int | None = None, action_space: dict | None = None, max_episode_steps: int | None = None,
             ref_min_score: float | None = None, ref_max_score: float | None = None,
             **extra: Any) -> dict[str, Any] | None:
    """An env description with the keys of ``genctl.envs.env_info`` (datasets may not import envs), as far as
    the source knows them; ``family`` is left for the envs layer to fill in."""
    if env_id is None:
        return None
    a = action_space or {}
    return {"id": env_id, "family": None, "kwargs": kwargs or {}, "obs_keys": obs_keys, "obs_dim": obs_dim,
            "action_dim": int(np.prod(a["shape"])) if a.get("shape") else None,
            "action_low": a.get("low"), "action_high": a.get("high"), "max_episode_steps": max_episode_steps,
            "ref_min_score": ref_min_score, "ref_max_score": ref_max_score, **extra}


def as_float(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(np.asarray(x).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None
    return v if np.isfinite(v) else None
