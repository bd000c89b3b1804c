"""Normalizer: per-dimension affine scaling that travels with checkpoints as plain JSON.

Stored as the raw statistics (mean/std or min/max) rather than the derived scale/offset, so a checkpoint says
what the data looked like, and the same numbers can be checked against a store's ``attrs["stats"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genctl.errors import DataError

MODES = ("gaussian", "minmax", "identity")
EPS = 1e-6


class Normalizer:
    """``y = x * scale + offset``: gaussian -> zero mean / unit std; minmax -> [-1, 1]; identity -> unchanged.

    Dimensions with (near) zero spread are only shifted (scale 1), so constant features do not blow up."""

    def __init__(self, mode: str, stats: dict[str, list[float]] | None = None) -> None:
        if mode not in MODES:
            raise DataError(f"normalizer mode {mode!r}: expected one of {', '.join(MODES)}")
        self.mode = mode
        self.stats = {k: [float(v) for v in np.asarray(vals, np.float64).reshape(-1)]
                      for k, vals in (stats or {}).items()}
        need = {"gaussian": ("mean", "std"), "minmax": ("min", "max"), "identity": ()}[mode]
        missing = [k for k in need if k not in self.stats]
        if missing:
            raise DataError(f"normalizer ({mode}): statistics missing field(s) {missing}")
        if mode == "gaussian":
            mean, std = np.asarray(self.stats["mean"]), np.asarray(self.stats["std"])
            std = np.where(std < EPS, 1.0, std)
            self.scale, self.offset = 1.0 / std, -mean / std
        elif mode == "minmax":
            lo, hi = np.asarray(self.stats["min"]), np.asarray(self.stats["max"])
            rng = hi - lo
            wide = rng >= EPS
            self.scale = np.where(wide, 2.0 / np.where(wide, rng, 1.0), 1.0)
            self.offset = np.where(wide, -1.0 - lo * self.scale, -lo)
        else:
            self.scale, self.offset = np.ones(1), np.zeros(1)
        self.scale = self.scale.astype(np.float32)
        self.offset = self.offset.astype(np.float32)
        self._torch_cache: dict[Any, tuple[Any, Any]] = {}

    # --- construction ---------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, x: Any, mode: str = "gaussian") -> Normalizer:
        """Statistics over axis 0 of ``x`` (N, ...) -> one scale per trailing element (flattened)."""
        x = np.asarray(_to_numpy(x), np.float64)
        x = x.reshape(len(x), -1)
        return cls(mode, {"mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0)})

    @classmethod
    def from_stats(cls, stats_for_key: dict[str, Any], mode: str = "gaussian") -> Normalizer:
        """From one entry of a store's ``attrs["stats"]`` (e.g. ``stats["obs"]``)."""
        return cls(mode, {k: stats_for_key[k] for k in ("mean", "std", "min", "max") if k in stats_for_key})

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "stats": {k: list(v) for k, v in self.stats.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        if not isinstance(d, dict) or "mode" not in d:
            raise DataError("normalizer: expected a dict with 'mode' and 'stats'")
        return cls(d["mode"], d.get("stats"))

    # --- application ----------------------------------------------------------------------------------------
    def _params(self, x: Any) -> tuple[Any, Any]:
        if not _is_torch(x):
            return self.scale, self.offset
        key = (x.device, x.dtype)
        if key not in self._torch_cache:
            import torch

            self._torch_cache[key] = (torch.as_tensor(self.scale, dtype=x.dtype, device=x.device),
                                      torch.as_tensor(self.offset, dtype=x.dtype, device=x.device))
        return self._torch_cache[key]

    def _apply(self, x: Any, inverse: bool) -> Any:
        if self.mode == "identity":
            return x
        if not _is_torch(x):
            x = np.asarray(x)
            if x.dtype.kind != "f":
                x = x.astype(np.float32)
        scale, offset = self._params(x)
        shape, d = tuple(x.shape), scale.shape[0]
        if shape and shape[-1] == d:
            flat = x
        elif len(shape) >= 2 and int(np.prod(shape[1:])) == d:  # fitted on flattened trailing dims
            flat = x.reshape(shape[0], d)
        else:
            raise DataError(f"normalizer: input shape {shape} does not end in the fitted size {d}")
        out = (flat - offset) / scale if inverse else flat * scale + offset
        return out.reshape(shape)

    def normalize(self, x: Any) -> Any:
        return self._apply(x, inverse=False)

    def unnormalize(self, x: Any) -> Any:
        return self._apply(x, inverse=True)

    def __repr__(self) -> str:
        return f"Normalizer(mode={self.mode!r}, dim={len(self.scale)})"


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)
