"""The policy server's wire format: msgpack maps over websocket binary messages, numpy arrays as plain maps.

An array travels as ``{"__nd__": True, "dtype": "<f4", "shape": [2, 4], "data": <raw bytes>}`` (openpi's
layout): no pickle and no codegen, any language with a msgpack library can speak it, and decoding checks that
the dtype is one of a short allow-list and that ``shape`` matches the byte count before a view is made.

Messages (every request may carry ``"token"`` and ``"id"``; the reply echoes ``id``):

* ``{"type": "meta"}`` -> ``{"type": "meta", obs_dim, action_dim, n_obs_steps, horizon, n_action_steps,
  policy_version, env, max_bytes, fps, obs_keys, cameras, obs_spec, view}``
* ``{"type": "infer", "obs": (obs_dim,) | (n_obs_steps, obs_dim) float, "timestamp": s, "dt": s,
  "images": {name: uint8 (H, W[, C]) array | JPEG/PNG bytes}}`` -> ``{"type": "chunk", "actions": (horizon,
  action_dim) float32, "timestamps": (horizon,) float64, "policy_version", "server_ms", "batch"}``.
  A single observation is appended to the session's history (the server keeps the last n_obs_steps; the first
  one after a reset fills it); a full history replaces it. For a policy that sees cameras (the meta's
  ``cameras``: {name: [H, W, C]}), ``obs`` holds its low-dim keys (``obs_keys``) and ``images`` every camera's
  frame, or with a full history its n_obs_steps frames ((T, H, W, C) array or a list), at the trained size.
* ``{"type": "reset"}`` -> ``{"type": "ok"}``: the next observation starts a new episode.
* any error -> ``{"type": "error", "error": "<what was expected>"}``; the connection stays usable.

This module imports no torch (the client library uses it).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

# dtypes a peer may send; anything else (object, void, datetime...) is refused before numpy sees the bytes
ALLOWED_DTYPES = frozenset({"|u1", "|i1", "<i2", "<i4", "<i8", "<u2", "<f2", "<f4", "<f8", "|b1"})
MAX_NDIM = 4


class WireError(ValueError):
    """A message that does not follow the protocol; the text says what was expected."""


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        if a.dtype.str not in ALLOWED_DTYPES:
            raise TypeError(f"array dtype {a.dtype} cannot be sent (allowed: {sorted(ALLOWED_DTYPES)})")
        return {"__nd__": True, "dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send a {type(obj).__name__} (send numbers, strings, bytes, lists, maps, arrays)")


def _decode_hook(obj: dict[Any, Any]) -> Any:
    if obj.get("__nd__") is not True:
        return obj
    dtype, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
    if dtype not in ALLOWED_DTYPES:
        raise WireError(f"array dtype {dtype!r} is not allowed (expected one of {sorted(ALLOWED_DTYPES)})")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
        raise WireError(f"array shape {shape!r}: expected a list of at most {MAX_NDIM} non-negative ints")
    if not isinstance(data, bytes):
        raise WireError("array data: expected bytes")
    dt = np.dtype(dtype)
    if int(np.prod(shape, dtype=np.int64)) * dt.itemsize != len(data):
        raise WireError(f"array of shape {shape} and dtype {dtype}: expected "
                        f"{int(np.prod(shape, dtype=np.int64)) * dt.itemsize} bytes of data, got {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(shape)


def pack(msg: dict[str, Any]) -> bytes:
    return msgpack.packb(msg, default=_encode_default, use_bin_type=True)


def unpack(data: bytes | str) -> dict[str, Any]:
    """Decode one message; raises ``WireError`` for anything that is not a msgpack map of known values."""
    if isinstance(data, str):
        raise WireError("expected a binary msgpack message, got a text frame")
    try:
        msg = msgpack.unpackb(data, object_hook=_decode_hook, raw=False, strict_map_key=True,
                              use_list=True)
    except WireError:
        raise
    except Exception as e:  # msgpack's ExtraData / FormatError / ValueError / RecursionError...
        raise WireError(f"expected a msgpack map, got bytes that are not valid msgpack ({type(e).__name__})"
                        ) from None
    if not isinstance(msg, dict):
        raise WireError(f"expected a msgpack map, got {type(msg).__name__}")
    return msg
