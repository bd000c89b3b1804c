"""What a policy observes: which store keys, in what order, and how they become one flat vector.

A policy's observation is one flat float vector per control step: the selected low-dimensional keys
(``obs/<name>`` or ``obs``, concatenated, normalised as before) followed by each selected camera's frame
(``image/<cam>``, uint8 H x W x C, flattened, *not* normalised: the vision encoder converts pixels itself).
Keeping one flat vector means observation history, checkpoints, evaluation and serving treat image
observations exactly like state ones; the policy's first layer (``genctl.policies.obs_encoder``) splits the
vector again and runs the cameras through a CNN.

``ObsSpec`` travels in checkpoint metadata as plain JSON (no pickle).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genctl.errors import DataError

_SLICED = re.compile(r"^(?P<key>[^\[\]]+)\[(?P<ranges>[^\[\]]*)\]$")


def parse_key(key: str) -> tuple[str, str | None]:
    """``obs/observation[0:3,9:11]`` -> (``obs/observation``, ``0:3,9:11``); a plain key -> (key, None)."""
    m = _SLICED.match(key.strip())
    return (m["key"], m["ranges"]) if m else (key, None)


def key_ranges(key: str, width: int, where: str = "data.obs_keys") -> tuple[tuple[int, int], ...]:
    """Column ranges of ``key`` within its store field of ``width`` values: the whole field, or the listed
    ``a:b`` slices (Python semantics, step 1; negative ends count from the end), in the order given."""
    base, spec = parse_key(key)
    if spec is None:
        return ((0, width),)
    out = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*", part)
        if m is None:
            raise DataError(f"{where}: {key!r}: bad slice {part.strip()!r} (expected a:b, e.g. "
                            f"{base}[0:3,9:11])")
        a, b, _ = slice(int(m[1]) if m[1] else None, int(m[2]) if m[2] else None).indices(width)
        if b <= a:
            raise DataError(f"{where}: {key!r}: slice {part.strip()!r} selects nothing of the {width} values "
                            f"of {base}")
        out.append((a, b))
    cols = np.concatenate([np.arange(a, b) for a, b in out])
    if len(np.unique(cols)) != len(cols):
        raise DataError(f"{where}: {key!r}: slices overlap")
    return tuple(out)


def take_columns(x: np.ndarray, ranges: tuple[tuple[int, int], ...]) -> np.ndarray:
    """(N, width) -> (N, selected) for ``key_ranges``; the array itself when it is the whole field."""
    if len(ranges) == 1 and ranges[0] == (0, x.shape[-1]):
        return x
    return np.concatenate([x[..., a:b] for a, b in ranges], axis=-1)


@dataclass(frozen=True)
class CameraSpec:
    key: str  # store key, image/<cam>
    height: int
    width: int
    channels: int

    @property
    def size(self) -> int:
        return self.height * self.width * self.channels

    @property
    def camera(self) -> str:
        return self.key.split("/", 1)[1]


@dataclass(frozen=True)
class ObsSpec:
    """``low_keys`` (store keys, or slices of them: ``obs/observation[0:3,9:11]``) with their per-step widths,
    then ``cameras``; ``env_slices`` picks the low-dim values out of the env's own flat observation (the sorted
    concatenation of its dict keys, as the store has them), in order."""

    low_keys: tuple[str, ...]
    low_dims: tuple[int, ...]
    cameras: tuple[CameraSpec, ...] = ()
    env_slices: tuple[tuple[int, int], ...] = field(default=())
    env_obs_dim: int = 0

    @property
    def low_dim(self) -> int:
        return int(sum(self.low_dims))

    @property
    def dim(self) -> int:
        """Width of one step's flat observation (low-dim + every camera's pixels)."""
        return self.low_dim + sum(c.size for c in self.cameras)

    @property
    def has_images(self) -> bool:
        return bool(self.cameras)

    @property
    def is_default(self) -> bool:
        """The env's whole flat observation and no cameras (every run before obs_keys existed)."""
        if self.cameras or self.low_dim != self.env_obs_dim:
            return False
        cols = np.concatenate([np.arange(a, b) for a, b in self.env_slices]) if self.env_slices else np.zeros(0)
        return bool(np.array_equal(cols, np.arange(self.env_obs_dim)))  # every value, in the env's order

    # --- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_store(cls, store: Any, obs_keys: list[str] | None) -> ObsSpec:
        """The spec of ``obs_keys`` in ``store`` (None: every low-dim obs key, no cameras)."""
        env_keys = store.obs_field_keys()  # the store's (= the env's) flat order
        widths = {k: _width(store, k) for k in env_keys}
        offsets, o = {}, 0
        for k in env_keys:
            offsets[k] = (o, o + widths[k])
            o += widths[k]
        keys = list(env_keys) if obs_keys is None else list(obs_keys)
        if not keys:
            raise DataError("data.obs_keys is empty: list at least one observation key (e.g. obs or image/top)")
        where = f"store {store.path}"
        available = sorted(set(env_keys) | {k for k in store.keys if k.startswith("image/")})
        low, cams, bases = [], [], []
        for k in keys:
            if k.startswith("image/"):
                if k not in store.keys:
                    raise DataError(f"{where}: data.obs_keys names {k!r}, which the store does not have "
                                    f"(observation keys: {available}); record cameras with genctl collect --images")
                shape = tuple(store.array_info(k).shape[1:])
                if len(shape) != 3 or shape[2] not in (1, 3):
                    raise DataError(f"{where}: {k} has frames of shape {shape}, expected (H, W, 1 or 3) uint8")
                cams.append(CameraSpec(k, *map(int, shape)))
            elif parse_key(k)[0] in offsets:
                low.append(k)
                bases.append(parse_key(k)[0])
            else:
                raise DataError(f"{where}: data.obs_keys names {k!r}, which is not one of its observation keys "
                                f"{available} (a slice of one is written obs/observation[0:3,9:11])")
        if len(set(bases)) != len(bases) or len(set(keys)) != len(keys):
            raise DataError(f"data.obs_keys lists a key twice: {keys} (put every slice of a key in one [...])")
        low.sort(key=lambda k: env_keys.index(parse_key(k)[0]))  # the env's order, whatever the user's order
        dims, slices = [], []
        for k in low:
            base = parse_key(k)[0]
            ranges = key_ranges(k, widths[base], f"{where}: data.obs_keys")
            dims.append(sum(b - a for a, b in ranges))
            slices.extend((offsets[base][0] + a, offsets[base][0] + b) for a, b in ranges)
        return cls(tuple(low), tuple(dims), tuple(cams), tuple(slices), o)

    def to_dict(self) -> dict[str, Any]:
        return {"low_keys": list(self.low_keys), "low_dims": list(self.low_dims),
                "cameras": [{"key": c.key, "height": c.height, "width": c.width, "channels": c.channels}
                            for c in self.cameras],
                "env_slices": [list(s) for s in self.env_slices], "env_obs_dim": self.env_obs_dim}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObsSpec:
        return cls(tuple(d["low_keys"]), tuple(int(x) for x in d["low_dims"]),
                   tuple(CameraSpec(c["key"], int(c["height"]), int(c["width"]), int(c["channels"]))
                         for c in d.get("cameras", [])),
                   tuple((int(a), int(b)) for a, b in d["env_slices"]), int(d["env_obs_dim"]))

    @classmethod
    def whole(cls, obs_dim: int) -> ObsSpec:
        """The default spec of a run without ``obs_keys``: the env's flat observation as it is."""
        return cls(("obs",), (obs_dim,), (), ((0, obs_dim),), obs_dim)

    # --- composing ------------------------------------------------------------------------------------------
    def select_low(self, env_obs: np.ndarray) -> np.ndarray:
        """(..., env_obs_dim) env observations -> (..., low_dim): the selected keys, in order."""
        env_obs = np.asarray(env_obs, np.float32)
        if env_obs.shape[-1] != self.env_obs_dim:
            raise DataError(f"observation has {env_obs.shape[-1]} values, expected {self.env_obs_dim} (the env the "
                            "policy was trained on)")
        return take_columns(env_obs, self.env_slices)

    def store_low_keys(self, next: bool = False) -> list[str]:
        """The store fields the low-dim part is read from (``next_obs/...`` with ``next``), one per low key."""
        return [("next_" if next else "") + parse_key(k)[0] for k in self.low_keys]

    def low_from_fields(self, data: dict[str, np.ndarray], n: int, next: bool = False) -> np.ndarray:
        """(n, low_dim): the selected values (whole keys or their slices) of ``data[store_low_keys(next)]``."""
        parts = []
        for key, base in zip(self.low_keys, self.store_low_keys(next), strict=True):
            x = data[base].reshape(n, -1)
            parts.append(take_columns(x, key_ranges(key, x.shape[1])))
        return np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), np.float32)

    def compose(self, low: np.ndarray, images: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """(B, low_dim) float + {key: (B, H, W, C) uint8} -> (B, dim) float32 (pixels as 0..255 floats)."""
        low = np.asarray(low, np.float32).reshape(len(low), -1)
        if not self.cameras:
            return low
        images = images or {}
        parts = [low]
        for c in self.cameras:
            img = images.get(c.key)
            if img is None:
                raise DataError(f"observation has no {c.key!r} frame (the policy sees {[x.key for x in self.cameras]})")
            img = check_frames(img, c, len(low))
            parts.append(img.reshape(len(low), -1).astype(np.float32))
        return np.concatenate(parts, axis=1)

    def render_overrides(self, view: dict[str, Any] | None, where: str) -> dict[str, Any]:
        """``make_env`` arguments so an env renders the camera this spec sees at its trained size ({} without
        cameras); ``view`` is the camera settings the store was recorded with (checkpoint meta ``images``)."""
        if not self.cameras:
            return {}
        cams = sorted({c.camera for c in self.cameras})
        if not view or cams != [view.get("camera")]:
            raise DataError(f"{where}: the policy sees cameras {cams}, but its store recorded "
                            f"{'no camera view' if not view else 'camera ' + repr(view.get('camera'))} "
                            "(only stores made with genctl collect --images can be re-rendered in simulation)")
        return {"render_mode": "rgb_array", "camera": view["camera"], "width": int(view["width"]),
                "height": int(view["height"])}

    def observe(self, env_obs: np.ndarray, env: Any = None) -> np.ndarray:
        """One step's flat observation (dim,) from the env's flat observation and, for cameras, the frame
        ``env.render()`` gives (an env built with ``render_overrides``)."""
        low = self.select_low(np.asarray(env_obs, np.float32).ravel()[None])
        frames = {c.key: np.asarray(env.render())[None] for c in self.cameras} if self.cameras else None
        return self.compose(low, frames)[0]

    def stats_from_store(self, stats: dict[str, Any]) -> dict[str, list[float]] | None:
        """Normaliser statistics of the whole flat vector from a store's ``attrs["stats"]`` (None if missing)."""
        parts = []
        for k in self.low_keys:
            base = parse_key(k)[0]
            st = stats.get(base)
            if st is None:
                return None
            ranges = key_ranges(k, len(st["mean"]))
            parts.append({f: [v for a, b in ranges for v in st[f][a:b]] for f in ("mean", "std", "min", "max")})
        low = {f: [v for p in parts for v in p[f]] for f in ("mean", "std", "min", "max")}
        return self.pixel_normalizer_stats(low)

    def pixel_normalizer_stats(self, low_stats: dict[str, list[float]]) -> dict[str, list[float]]:
        """Normaliser statistics for the flat vector: the low-dim ones, then for pixels statistics that make
        every mode the identity (mean 0 / std 1; min -1 / max 1): the encoder scales pixels itself."""
        n = self.dim - self.low_dim
        out = {k: list(v) for k, v in low_stats.items() if k in ("mean", "std", "min", "max")}
        pad = {"mean": 0.0, "std": 1.0, "min": -1.0, "max": 1.0}
        return {k: v + [pad[k]] * n for k, v in out.items()}


def check_frames(img: Any, cam: CameraSpec, batch: int | None = None) -> np.ndarray:
    """(B, H, W, C) uint8 frames of ``cam``, or one clear error (size, grey-scale vs RGB, dtype)."""
    img = np.asarray(img)
    if img.ndim == 3 and batch is not None and img.shape[0] != batch:
        img = img[None]
    if img.ndim == 2:
        img = img[None, :, :, None]
    if img.ndim == 3:
        img = img[..., None] if cam.channels == 1 else img[None]
    if img.dtype != np.uint8:
        raise DataError(f"{cam.key}: frames must be uint8 0..255, got {img.dtype}")
    got = tuple(img.shape[1:])
    if got[2] != cam.channels:
        kind = {1: "grey-scale", 3: "RGB"}
        raise DataError(f"{cam.key}: the policy's encoder expects {kind.get(cam.channels, cam.channels)} frames "
                        f"({cam.height}x{cam.width}x{cam.channels}), got {kind.get(got[2], got[2])} "
                        f"({got[0]}x{got[1]}x{got[2]})")
    if got[:2] != (cam.height, cam.width):
        raise DataError(f"{cam.key}: frames are {got[0]}x{got[1]}, the policy was trained on "
                        f"{cam.height}x{cam.width} (render or resize the camera to that size)")
    if batch is not None and len(img) != batch:
        raise DataError(f"{cam.key}: {len(img)} frames for {batch} observations")
    return img


def _width(store: Any, key: str) -> int:
    return int(np.prod(store.array_info(key).shape[1:], dtype=np.int64)) or 1
