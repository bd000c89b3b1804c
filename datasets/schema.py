"""What a store's keys mean and which dtypes they must have.

Kept in one place so the writer (which coerces and checks incoming episodes) and the reader (which checks a
store on open) cannot drift apart.
"""

from __future__ import annotations

import numpy as np

from genctl.errors import DataError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("action", "reward", "terminated", "truncated")
BOOL_KEYS = ("terminated", "truncated")


def is_obs_key(key: str) -> bool:
    return key == "obs" or key.startswith("obs/")


def is_next_obs_key(key: str) -> bool:
    return key == "next_obs" or key.startswith("next_obs/")


def key_kind(key: str, where: str = "") -> str:
    """``float32`` | ``bool`` | ``image`` | ``float64`` | ``numeric`` (free numeric dtype, e.g. ``info/*``)."""
    if key in ("action", "reward") or is_obs_key(key) or is_next_obs_key(key):
        return "float32"
    if key in BOOL_KEYS:
        return "bool"
    if key.startswith("image/"):
        return "image"
    if key.startswith("state/"):
        return "float64"
    if key.startswith("info/"):
        return "numeric"
    raise DataError(f"{where}{': ' if where else ''}unknown field {key!r}: expected obs, obs/<name>, next_obs[/<name>], action, reward, "
                    "terminated, truncated, image/<camera>, state/<name> or info/<name>")


def obs_keys_of(keys: list[str] | tuple[str, ...]) -> list[str] | None:
    """Dict-observation names in sorted order (the order of ``gymnasium.spaces.flatten``), or None for flat obs."""
    names = sorted(k[len("obs/"):] for k in keys if k.startswith("obs/"))
    return names or None


def check_key_set(keys: list[str], where: str, *, reward_optional: bool = False) -> None:
    """A store needs the required keys and exactly one observation layout (``obs`` or ``obs/<name>``).

    ``reward`` may be absent only in a store marked ``has_reward: false`` (BC-only demos, e.g. LeRobot data
    without ``next.reward``); anywhere else a missing reward is a broken store, not a choice."""
    missing = [k for k in REQUIRED_KEYS if k not in keys and not (k == "reward" and reward_optional)]
    has_flat, has_dict = "obs" in keys, any(k.startswith("obs/") for k in keys)
    if not has_flat and not has_dict:
        missing.insert(0, "obs")
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(repr(m) for m in missing)}")
    if has_flat and has_dict:
        raise DataError(f"{where}: field 'obs' and 'obs/<name>' fields both present; use one layout")


def coerce(key: str, arr: np.ndarray, where: str) -> np.ndarray:
    """Convert an incoming array to the store dtype for ``key``, or raise DataError naming ``where`` and ``key``.

    Lossless-enough conversions are accepted (float64 -> float32, 0/1 ints -> bool) because every source format
    stores these differently; anything else (strings, objects, complex, non-binary flags) is an error.
    """
    arr = np.asarray(arr)
    kind = key_kind(key)
    k = arr.dtype.kind
    shape_reason = _ndim_reason(key, arr.ndim)
    if shape_reason:
        raise DataError(f"{where}: field {key!r} has shape {arr.shape}, {shape_reason}")
    if kind in ("float32", "float64"):
        if k not in "fiu":
            raise DataError(f"{where}: field {key!r} has dtype {arr.dtype}, expected a real number array")
        out = arr.astype(np.float32 if kind == "float32" else np.float64, copy=False)
        if k == "f" and not np.isfinite(arr).all():
            bad = np.argwhere(~np.isfinite(arr))[0].tolist()
            raise DataError(f"{where}: field {key!r} contains NaN/Inf (first at index {bad})")
        return out
    if kind == "bool":
        if k == "b":
            return arr
        if k in "fiu" and np.isin(arr, (0, 1)).all():
            return arr.astype(bool)
        raise DataError(f"{where}: field {key!r} has dtype {arr.dtype} with values other than 0/1, expected bool")
    if kind == "image":
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
            raise DataError(f"{where}: field {key!r} has dtype {arr.dtype} shape {arr.shape}, "
                            "expected uint8 (T, H, W, C) with C in 1, 3, 4")
        return arr
    if k not in "biuf":
        raise DataError(f"{where}: field {key!r} has dtype {arr.dtype}, expected a numeric array")
    if k == "f" and not np.isfinite(arr).all():
        raise DataError(f"{where}: field {key!r} contains NaN/Inf")
    return arr


# Per-step shapes fixed by the contract: scalars per step, and (T, A) actions (a 1-D action space is (T, 1)).
_NDIM = {"reward": 1, "terminated": 1, "truncated": 1, "action": 2}


def _ndim_reason(key: str, ndim: int) -> str | None:
    want = _NDIM.get(key)
    if want is None or ndim == want:
        return None
    return f"expected {'(T,): one value per step' if want == 1 else '(T, A): one action vector per step'}"


def expected_dtype_ok(key: str, dtype: np.dtype, ndim: int) -> str | None:
    """Reason a stored array's dtype (or number of dimensions) is wrong for ``key``, or None when it is fine."""
    kind = key_kind(key)
    if _ndim_reason(key, ndim):
        return f"{ndim} dimension(s), {_ndim_reason(key, ndim)}"
    want = {"float32": np.float32, "float64": np.float64, "bool": np.bool_, "image": np.uint8}.get(kind)
    if want is not None and dtype != want:
        return f"dtype {dtype}, expected {np.dtype(want)}"
    if kind == "image" and ndim != 4:
        return f"{ndim} dimensions, expected 4 (T, H, W, C)"
    if kind == "numeric" and dtype.kind not in "biuf":
        return f"dtype {dtype}, expected numeric"
    return None
