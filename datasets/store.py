"""EpisodeStore: read and validate a zarr episode store (layout in docs/contracts.md).

Reads go through whole arrays or contiguous runs of episodes, never per-row zarr indexing, because decoding a
chunk costs the same whether one row or all of them are used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from genctl.datasets.schema import (
    FORMAT_VERSION,
    check_key_set,
    expected_dtype_ok,
    is_next_obs_key,
    key_kind,
)
from genctl.errors import DataError


def _runs(episodes: np.ndarray) -> list[tuple[int, int]]:
    """Group sorted-or-not episode indices into runs of consecutive indices (each run is one slice read)."""
    if len(episodes) == 0:
        return []
    breaks = np.flatnonzero(np.diff(episodes) != 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(episodes, breaks)]


class EpisodeStore:
    """A validated, read-only view of a store. Open with :meth:`EpisodeStore.open`."""

    def __init__(self, path: Path, root: zarr.Group, arrays: dict[str, zarr.Array], episode_ends: np.ndarray):
        self.path = path
        self._root = root
        self._arrays = arrays
        self.episode_ends = episode_ends
        self.attrs: dict[str, Any] = dict(root.attrs)
        self._chunks_checked: set[str] = set()
        self._obs_spec: Any = None  # an ObsSpec selecting what flat_obs returns (select_obs)

    # --- opening --------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, deep: bool = False) -> EpisodeStore:
        """Open and validate (format version, episode_ends, lengths, dtypes); ``deep`` also reads every chunk."""
        path = Path(path)
        if not path.exists():
            raise DataError(f"store {path} does not exist")
        if (path / "config.yaml").exists() or (path / "checkpoints").is_dir() or (path / "meta.json").exists():
            raise DataError(f"{path} is a training run (or a checkpoint), not a store: pass the run's data store "
                            f"(its config.yaml, data.store) or one made with genctl collect / ingest")
        try:
            root = zarr.open_group(path, mode="r")
            attrs = dict(root.attrs)
        except Exception as e:  # any zarr/json failure: not a readable store
            raise DataError(f"store {path}: not a readable zarr group ({type(e).__name__}: {e})") from None
        zarr_format = getattr(root.metadata, "zarr_format", None)
        if zarr_format != 3:  # v2 decodes through arbitrary numcodecs filters (pickle among them): refuse
            raise DataError(f"store {path}: zarr format {zarr_format}, expected 3 (genctl stores are zarr v3)")
        version = attrs.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(f"store {path}: attribute 'format_version' is {version!r}, expected {FORMAT_VERSION} "
                            "(missing means an unfinished or foreign store)")
        try:
            data, ends_arr = root["data"], root["meta/episode_ends"]
            arrays = {name: a for name, a in data.members(max_depth=None) if isinstance(a, zarr.Array)}
        except Exception as e:
            raise DataError(f"store {path}: missing group or field, or an unsupported array/codec "
                            f"({type(e).__name__}: {e})") from None
        if ends_arr.dtype != np.int64 or ends_arr.ndim != 1:
            raise DataError(f"store {path}: field 'meta/episode_ends' has dtype {ends_arr.dtype}, expected int64 1-D")
        store = cls(path, root, arrays, np.empty(0, np.int64))
        store.episode_ends = store._read_array(ends_arr, "meta/episode_ends", slice(None))
        store._validate_shallow()
        if deep:
            store.validate(deep=True)
        return store

    def _validate_shallow(self) -> None:
        where = f"store {self.path}"
        ends = self.episode_ends
        if len(ends) == 0 or ends[0] < 1 or (np.diff(ends) < 1).any():
            raise DataError(f"{where}: field 'meta/episode_ends' must be non-empty and strictly increasing from >= 1")
        check_key_set(list(self._arrays), where, reward_optional=self.attrs.get("has_reward") is False)
        n = int(ends[-1])
        for key, arr in self._arrays.items():
            key_kind(key, where)
            if arr.shape[0] != n:
                raise DataError(f"{where}: field 'data/{key}' has {arr.shape[0]} rows, expected {n} "
                                "(meta/episode_ends[-1])")
            reason = expected_dtype_ok(key, arr.dtype, arr.ndim)
            if reason:
                raise DataError(f"{where}: field 'data/{key}' has {reason}")

    def validate(self, deep: bool = True) -> None:
        """Re-check structure; with ``deep``, decode every chunk (catching deleted or corrupt chunks and NaN)."""
        self._validate_shallow()
        if not deep:
            return
        for key, arr in self._arrays.items():
            block = max(1, arr.chunks[0]) * (64 if key_kind(key) == "image" else 1)
            for start in range(0, arr.shape[0], block):
                x = self._read(key, slice(start, start + block))
                if x.dtype.kind == "f" and not np.isfinite(x).all():
                    raise DataError(f"store {self.path}: field 'data/{key}' contains NaN/Inf near row {start}")

    # --- reading --------------------------------------------------------------------------------------------
    def _read_array(self, arr: zarr.Array, name: str, sel: Any) -> np.ndarray:
        if name not in self._chunks_checked:
            try:
                missing = arr.nchunks - arr.nchunks_initialized
            except Exception as e:
                raise DataError(f"store {self.path}: cannot list chunks of field '{name}': {e}") from None
            if missing:
                raise DataError(f"store {self.path}: field '{name}' is missing {missing} of {arr.nchunks} "
                                "chunk(s) (deleted or incomplete store)")
            self._chunks_checked.add(name)
        try:
            return np.asarray(arr[sel])
        except Exception as e:  # codec errors, truncated chunk files
            raise DataError(f"store {self.path}: cannot read field '{name}' ({type(e).__name__}: {e})") from None

    def _read(self, key: str, sel: Any) -> np.ndarray:
        if key not in self._arrays:
            raise DataError(f"store {self.path}: no field {key!r} (has {', '.join(self.keys)})")
        return self._read_array(self._arrays[key], f"data/{key}", sel)

    @property
    def n_episodes(self) -> int:
        return len(self.episode_ends)

    @property
    def n_transitions(self) -> int:
        return int(self.episode_ends[-1])

    @property
    def keys(self) -> list[str]:
        return sorted(self._arrays)

    @property
    def obs_keys(self) -> list[str] | None:
        return self.attrs.get("obs_keys")

    def array_info(self, key: str) -> zarr.Array:
        """The underlying zarr array (read-only metadata: shape, chunks, codecs) for reporting."""
        return self._arrays[key]

    def episode_bounds(self, i: int) -> tuple[int, int]:
        if not -self.n_episodes <= i < self.n_episodes:
            raise IndexError(f"episode {i} out of range for {self.n_episodes} episodes")
        i %= self.n_episodes
        return (int(self.episode_ends[i - 1]) if i else 0), int(self.episode_ends[i])

    def episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        start, stop = self.episode_bounds(i)
        return {k: self._read(k, slice(start, stop)) for k in (keys or self.keys)}

    def _episode_index(self, episodes: Any) -> np.ndarray:
        eps = np.asarray(episodes, dtype=np.int64).reshape(-1)
        if ((eps < 0) | (eps >= self.n_episodes)).any():
            raise IndexError(f"episode indices out of range for {self.n_episodes} episodes")
        return eps

    def load(self, keys: list[str] | None = None, episodes: Any = None) -> dict[str, np.ndarray]:
        """Whole arrays (or the rows of ``episodes``, in the order given) as numpy."""
        keys = list(keys or self.keys)
        if episodes is None:
            return {k: self._read(k, slice(None)) for k in keys}
        runs = _runs(self._episode_index(episodes))
        starts = np.concatenate([[0], self.episode_ends])
        out = {}
        for k in keys:
            parts = [self._read(k, slice(int(starts[a]), int(starts[b]))) for a, b in runs]
            out[k] = np.concatenate(parts) if len(parts) != 1 else parts[0]
        return out

    def obs_field_keys(self, next: bool = False) -> list[str]:
        """Store keys that make up the flat observation, in flattening order."""
        prefix = "next_obs" if next else "obs"
        if self.obs_keys:
            return [f"{prefix}/{n}" for n in self.obs_keys]
        return [prefix]

    def has_next_obs(self) -> bool:
        return any(is_next_obs_key(k) for k in self._arrays)

    def select_obs(self, spec: Any) -> None:
        """Make :meth:`flat_obs` return what a policy with ``spec`` (``genctl.datasets.obs_spec.ObsSpec``) sees:
        the chosen low-dim keys, then camera pixels. None (or a spec of every key, no camera): the default."""
        self._obs_spec = None if spec is None or spec.is_default else spec

    def flat_obs(self, next: bool = False, episodes: Any = None) -> np.ndarray:
        """(N, D) float32: ``obs`` or the sorted concatenation of ``obs/<name>`` (``next_obs`` with ``next``);
        with :meth:`select_obs`, the selected keys and cameras (a next frame is the episode's next row; the last
        row repeats itself, as stores keep no next_image)."""
        if next and not self.has_next_obs():
            raise DataError(f"store {self.path}: no field 'next_obs' (the source had no next observations)")
        if self._obs_spec is not None:
            return self._selected_obs(next, episodes)
        keys = self.obs_field_keys(next)
        data = self.load(keys, episodes)
        parts = [data[k].reshape(len(data[k]), -1) for k in keys]
        return np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1), np.float32)

    def successor_rows(self, episodes: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """For the rows of ``episodes`` as :meth:`load` returns them: the index of each row's next row in the same
        episode (an episode's last row points at itself), and the indices of those last rows."""
        eps = np.arange(self.n_episodes) if episodes is None else self._episode_index(episodes)
        last = np.cumsum(self.episode_lengths()[eps]) - 1
        nxt = np.arange(1, int(last[-1]) + 2 if len(last) else 0)
        nxt[last] = last
        return nxt, last

    def _selected_obs(self, next: bool, episodes: Any) -> np.ndarray:
        spec = self._obs_spec
        bases = spec.store_low_keys(next)
        data = self.load(bases + [c.key for c in spec.cameras], episodes)
        n = len(data[bases[0]]) if bases else len(data[spec.cameras[0].key])
        low = spec.low_from_fields(data, n, next)
        images = {c.key: data[c.key] for c in spec.cameras}
        if next and images:
            nxt, _ = self.successor_rows(episodes)
            images = {k: v[nxt] for k, v in images.items()}
        return spec.compose(low, images)

    @property
    def has_reward(self) -> bool:
        """False for BC-only stores (attrs ``has_reward: false``), which have no ``reward`` key."""
        return "reward" in self._arrays

    def episode_returns(self) -> np.ndarray:
        """(E,) float64 sums of reward per episode (zeros for a store without rewards: nothing to rank)."""
        if not self.has_reward:
            return np.zeros(self.n_episodes)
        r = self._read("reward", slice(None)).astype(np.float64)
        starts = np.concatenate([[0], self.episode_ends[:-1]])
        return np.add.reduceat(r, starts)

    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self.episode_ends]))

    def __repr__(self) -> str:
        return f"EpisodeStore({str(self.path)!r}, episodes={self.n_episodes}, transitions={self.n_transitions})"

