"""StoreWriter: build a zarr episode store atomically from a stream of episodes.

Episodes are buffered and appended in large blocks (one resize + one slice write per key per block), because
per-episode zarr writes make collecting many short episodes slow. Normalisation statistics are accumulated per
block while writing, so no second pass over the data is needed. Everything is built in a hidden temporary
sibling of the target and renamed into place only after the attributes are written: a killed process leaves
either the previous store or nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from genctl.datasets.schema import (
    FORMAT_VERSION,
    check_key_set,
    coerce,
    is_next_obs_key,
    key_kind,
    obs_keys_of,
)
from genctl.errors import DataError
from genctl.fsutil import cleanup_stale, replace_dir, temp_sibling

BLOCK_ROWS = 1 << 18  # rows buffered before a block is appended
BLOCK_BYTES = 64 << 20  # ... or bytes, whichever comes first (images)
CHUNK_BYTES = 4 << 20  # target uncompressed chunk size for non-image arrays
STAT_KINDS = ("float32",)


def numeric_compressor() -> BloscCodec:
    """lz4 + bitshuffle: the fastest codec measured for float data (stack-notes §f), still shrinks flags."""
    return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


# Camera frames: lz4 by default. A camera store is written once and decoded on every training read; on 96x96 RGB
# chunks blosc-lz4 encodes in ~6 us/frame and decodes in ~2-10 (zstd level 1: 55-70 and 20-50), for 1.3-5x more
# bytes than zstd on rendered and synthetic frames (benchmarks/datasets.py; docs/results.md §5). ``zstd`` (level 1)
# is the choice for archival stores (``genctl ingest/collect --image-codec zstd``).
IMAGE_CODECS = ("lz4", "zstd")
IMAGE_ZSTD_LEVEL = 1
FRAME_EPISODES_IN_FLIGHT = 4  # jobs of frames queued for the frame threads (bounds memory)
FRAME_THREADS = 2  # frame encode + write threads (zstd and file writes release the GIL; 2 measured 1.2-1.3x 1)
# Frames are chunked many to a chunk: one file per frame made file creation, not encoding, the cost of writing a
# camera store (~0.3 ms per 96x96 frame on this machine, 4x the zstd encode). ~1 MiB of raw pixels per chunk
# (37 frames of 96x96 RGB, 6 of 224x224) keeps a random frame read cheap (one ~1 ms decode).
FRAME_CHUNK_BYTES = 1 << 20
FRAME_CHUNK_MAX = 64


def frames_per_chunk(frame_shape: tuple[int, ...], itemsize: int = 1) -> int:
    """Frames per chunk of an image array whose frames have ``frame_shape`` (H, W, C)."""
    frame = max(1, itemsize * int(np.prod(frame_shape, dtype=np.int64)))
    return int(min(max(FRAME_CHUNK_BYTES // frame, 1), FRAME_CHUNK_MAX))


def check_image_codec(codec: str) -> str:
    if codec not in IMAGE_CODECS:
        raise DataError(f"image codec {codec!r}: expected one of {', '.join(IMAGE_CODECS)}")
    return codec


def image_compressor(codec: str = "lz4") -> BloscCodec | ZstdCodec:
    if check_image_codec(codec) == "zstd":
        return ZstdCodec(level=IMAGE_ZSTD_LEVEL)
    return BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")  # uint8: a byte shuffle would do nothing


def frame_encoder(codec: str) -> Any:
    """The numcodecs encoder writing exactly what ``image_compressor(codec)`` declares (zarr reads it back)."""
    from numcodecs import Blosc, Zstd

    if check_image_codec(codec) == "zstd":
        return Zstd(level=IMAGE_ZSTD_LEVEL)
    return Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE)


class RunningStats:
    """Per-dimension count/mean/M2/min/max merged block by block (Chan et al.), in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        # float32 passes with float64 accumulators: 3-4x faster than converting the block to float64, and the
        # centred sum of squares keeps the relative error ~1e-9 (no E[x^2] - E[x]^2 cancellation)
        x = np.asarray(x).reshape(len(x), -1)
        nb = len(x)
        if nb == 0:
            return
        mb = x.mean(axis=0, dtype=np.float64)
        xc = x - mb.astype(x.dtype)
        m2b = np.einsum("ij,ij->j", xc, xc, dtype=np.float64)
        lo, hi = x.min(axis=0).astype(np.float64), x.max(axis=0).astype(np.float64)
        if self.n == 0:
            self.n, self.mean, self.m2, self.min, self.max = nb, mb, m2b, lo, hi
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.min, self.max = np.minimum(self.min, lo), np.maximum(self.max, hi)
        self.n = n

    def to_dict(self) -> dict[str, list[float]]:
        std = np.sqrt(self.m2 / max(self.n, 1))
        return {"mean": self.mean.tolist(), "std": std.tolist(), "min": self.min.tolist(),
                "max": self.max.tolist(), "count": self.n}


def _summary(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max()),
            "count": int(len(x))}


def json_clean(obj: Any) -> Any:
    """numpy scalars/arrays -> Python; non-finite floats -> None (zarr attrs must be strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, bytes):  # HDF5 string attributes
        return obj.decode("utf-8", errors="replace")
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


class StoreWriter:
    """Context manager writing episodes to a new store at ``path`` (see docs/contracts.md)."""

    def __init__(self, path: str | os.PathLike, attrs: dict | None = None, *, overwrite: bool = False,
                 block_rows: int = BLOCK_ROWS, image_codec: str = "lz4") -> None:
        self.path = Path(path)
        self.image_codec = check_image_codec(image_codec)
        self.attrs = dict(attrs or {})
        self.overwrite = overwrite
        self.block_rows = block_rows
        if self.path.exists() and not overwrite:
            raise DataError(f"store {self.path} already exists (pass overwrite=True to replace it)")
        self._tmp: Path | None = None
        self._root: zarr.Group | None = None
        self._arrays: dict[str, zarr.Array] = {}
        self._schema: dict[str, tuple[np.dtype, tuple[int, ...]]] | None = None
        self._buf: dict[str, list[np.ndarray]] = {}
        self._buf_rows = 0
        self._buf_bytes = 0
        self._written = 0
        self._ends: list[int] = []
        self._returns: list[float] = []
        self._stats: dict[str, RunningStats] = {}
        self._frame_pool: ThreadPoolExecutor | None = None
        self._frame_jobs: list[Future] = []
        # per image key: (first frame not yet written, a multiple of the chunk length; frames waiting to fill it)
        self._frame_carry: dict[str, tuple[int, np.ndarray]] = {}

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    def __enter__(self) -> StoreWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cleanup_stale(self.path.parent, self.path.name)
        self._tmp = temp_sibling(self.path)
        self._root = zarr.open_group(self._tmp, mode="w")
        self._root.create_group("data")
        self._root.create_group("meta")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            self._finish()
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        self._drain_frames(raise_errors=False)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # --- episodes -------------------------------------------------------------------------------------------
    def add_episode(self, ep: dict[str, np.ndarray]) -> None:
        """Validate one episode and buffer it; all-or-nothing (a bad episode leaves the writer unchanged)."""
        if self._root is None:
            raise RuntimeError("StoreWriter must be used as a context manager")
        where = f"store {self.path}, episode {self.n_episodes}"
        keys = sorted(ep)
        for k in keys:
            key_kind(k, where)
        check_key_set(keys, where, reward_optional=self.attrs.get("has_reward") is False)
        if self._schema is not None and keys != sorted(self._schema):
            extra, missing = set(keys) - set(self._schema), set(self._schema) - set(keys)
            raise DataError(f"{where}: keys differ from the first episode (missing {sorted(missing)}, "
                            f"extra {sorted(extra)})")
        arrays = {k: coerce(k, ep[k], where) for k in keys}
        lengths = {k: (len(a) if a.ndim else -1) for k, a in arrays.items()}
        t = lengths["action"]
        bad = [k for k, n in lengths.items() if n != t]
        if t < 1 or bad:
            raise DataError(f"{where}: length mismatch: field(s) {bad or ['action']} have lengths "
                            f"{[lengths[k] for k in bad] or [t]}, expected {t if t >= 1 else '>= 1'} "
                            "(the length of 'action')")
        if self._schema is None:
            self._schema = {k: (a.dtype, a.shape[1:]) for k, a in arrays.items()}
        for k, a in arrays.items():
            dtype, shape = self._schema[k]
            if a.dtype != dtype or a.shape[1:] != shape:
                raise DataError(f"{where}: field {k!r} has dtype {a.dtype} shape {a.shape[1:]} per step, "
                                f"expected {dtype} {shape} like the first episode")
        start = self._ends[-1] if self._ends else 0
        for k, a in arrays.items():
            if key_kind(k) == "image":  # whole chunks written now, by the frame threads, not buffered
                self._submit_frames(k, start, a)
                continue
            self._buf.setdefault(k, []).append(a)
            self._buf_bytes += a.nbytes
        self._buf_rows += t
        self._ends.append(start + t)
        if "reward" in arrays:
            self._returns.append(float(np.sum(arrays["reward"], dtype=np.float64)))
        if self._buf_rows >= self.block_rows or self._buf_bytes >= BLOCK_BYTES:
            self._flush()

    def _create(self, key: str, block: np.ndarray) -> zarr.Array:
        data = self._root["data"]
        if key_kind(key) == "image":
            # chunks of frames_per_chunk frames, named c.<chunk>.0.0.0 in one folder: the default "/" separator
            # makes three nested folders per chunk, and their mkdirs cost more than encoding it
            rows = frames_per_chunk(block.shape[1:], block.dtype.itemsize)
            return data.create_array(key, shape=(0, *block.shape[1:]), chunks=(rows, *block.shape[1:]),
                                     dtype=block.dtype, compressors=[image_compressor(self.image_codec)],
                                     chunk_key_encoding={"name": "default", "separator": "."},
                                     config={"write_empty_chunks": True})
        row = max(1, block.dtype.itemsize * int(np.prod(block.shape[1:], dtype=np.int64)))
        rows = int(min(max(CHUNK_BYTES // row, 1024), 1 << 20, max(len(block), 1024)))
        return data.create_array(key, shape=(0, *block.shape[1:]), chunks=(rows, *block.shape[1:]),
                                 dtype=block.dtype, compressors=[numeric_compressor()],
                                 config={"write_empty_chunks": True})

    def _flush(self) -> None:
        if not self._buf_rows:
            return
        start, stop = self._written, self._written + self._buf_rows
        for key, arr in self._arrays.items():
            if key_kind(key) == "image":  # the frames' chunk files are written by the frame thread
                arr.resize((stop, *arr.shape[1:]))
        for key, parts in self._buf.items():
            block = parts[0] if len(parts) == 1 else np.concatenate(parts)
            arr = self._arrays.get(key)
            if arr is None:
                arr = self._arrays[key] = self._create(key, block)
            arr.resize((stop, *block.shape[1:]))
            arr[start:stop] = block
            if key_kind(key) in STAT_KINDS and not is_next_obs_key(key):  # next_obs ~ obs; not needed
                self._stats.setdefault(key, RunningStats()).update(block)
        self._written = stop
        self._buf, self._buf_rows, self._buf_bytes = {}, 0, 0

    def _submit_frames(self, key: str, start: int, frames: np.ndarray) -> None:
        """Queue the whole chunks that one episode's frames complete for the frame threads; the rest waits for
        the next episode (or ``_finish``). At most FRAME_EPISODES_IN_FLIGHT jobs wait; the caller blocks beyond
        that, so memory stays bounded by a few episodes' frames."""
        arr = self._arrays.get(key)
        if arr is None:
            arr = self._arrays[key] = self._create(key, frames)
        rows = arr.chunks[0]
        first, carry = self._frame_carry.get(key, (start, frames[:0]))
        assert first + len(carry) == start, "image frames must arrive in order"
        used = 0
        if len(carry):  # complete the chunk the previous episode started (the only copy of frames here)
            used = min(rows - len(carry), len(frames))
            carry = np.concatenate([carry, frames[:used]])
            if len(carry) < rows:
                self._frame_carry[key] = (first, carry)
                return
            self._queue_frames(arr, first, carry)
            first += rows
        whole = (len(frames) - used) // rows * rows
        if whole:
            self._queue_frames(arr, first, frames[used:used + whole])
        self._frame_carry[key] = (first + whole, frames[used + whole:])

    def _queue_frames(self, arr: zarr.Array, first: int, block: np.ndarray) -> None:
        if self._frame_pool is None:
            self._frame_pool = ThreadPoolExecutor(FRAME_THREADS, thread_name_prefix="genctl-frames")
        while len(self._frame_jobs) >= FRAME_EPISODES_IN_FLIGHT:
            self._frame_jobs.pop(0).result()  # re-raises a write error here, in the caller's thread
        self._frame_jobs.append(self._frame_pool.submit(self._write_frames, arr, first, block))

    def _flush_frames(self) -> None:
        """The last, partial chunk of every image key, padded with zeros (zarr stores edge chunks whole and
        reads only the rows inside the array's shape)."""
        for key, (first, carry) in self._frame_carry.items():
            if len(carry):
                arr = self._arrays[key]
                pad = np.zeros((arr.chunks[0] - len(carry), *carry.shape[1:]), carry.dtype)
                self._queue_frames(arr, first, np.concatenate([carry, pad]))
        self._frame_carry = {}

    def _drain_frames(self, *, raise_errors: bool = True) -> None:
        jobs, self._frame_jobs = self._frame_jobs, []
        try:
            for job in jobs:
                if raise_errors:
                    job.result()
                else:
                    job.exception()
        finally:
            if self._frame_pool is not None:
                self._frame_pool.shutdown(wait=True)
                self._frame_pool = None

    def _write_frames(self, arr: zarr.Array, first: int, block: np.ndarray) -> None:
        """Whole chunks (``first`` and ``len(block)`` multiples of the chunk length), encoded here and written
        straight into the (local, temporary) store.

        zarr-python's slice write costs ~1.1 ms per chunk in its async pipeline, more than encoding a chunk; so
        chunks are encoded with the array's own codec settings (raw C-order bytes, then lz4 or zstd — exactly
        what the array's metadata declares, and zarr reads them back as its own) under the array's own
        chunk keys. It runs on a frame thread: the codecs and file writes release the GIL, so encoding overlaps the
        caller's video decode."""
        assert self._tmp is not None
        rows = arr.chunks[0]
        base = self._tmp / arr.store_path.path
        encode_key = arr.metadata.chunk_key_encoding.encode_chunk_key
        zeros, codec = (0,) * (block.ndim - 1), frame_encoder(self.image_codec)
        base.mkdir(parents=True, exist_ok=True)
        for i in range(0, len(block), rows):
            f = base / encode_key(((first + i) // rows, *zeros))
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(codec.encode(np.ascontiguousarray(block[i:i + rows])))

    # --- finish ---------------------------------------------------------------------------------------------
    def _stats_dict(self) -> dict[str, Any]:
        stats: dict[str, Any] = {k: s.to_dict() for k, s in self._stats.items()}
        names = obs_keys_of(list(self._schema))
        if names:  # flat obs = concatenation of obs/<name> in sorted order
            parts = [stats[f"obs/{n}"] for n in names]
            stats["obs"] = {f: [v for p in parts for v in p[f]] for f in ("mean", "std", "min", "max")}
            stats["obs"]["count"] = parts[0]["count"]
        if self._returns:
            stats["episode_return"] = _summary(np.asarray(self._returns))
        return stats

    def _finish(self) -> None:
        if not self._ends:
            raise DataError(f"store {self.path}: no episodes were added; nothing written")
        self._flush()
        self._flush_frames()
        self._drain_frames()
        self._root["meta"].create_array("episode_ends", data=np.asarray(self._ends, dtype=np.int64),
                                        chunks=(max(len(self._ends), 1),))
        attrs = {"format_version": FORMAT_VERSION, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                 "source": None, "env": None, "observation_space": None, "action_space": None,
                 "ref_min_score": None, "ref_max_score": None}
        attrs.update(self.attrs)
        attrs["format_version"] = FORMAT_VERSION
        attrs["obs_keys"] = obs_keys_of(list(self._schema))
        attrs["has_reward"] = "reward" in self._schema
        attrs["stats"] = self._stats_dict()
        attrs = json_clean(attrs)
        try:
            json.dumps(attrs, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise DataError(f"store {self.path}: attributes are not JSON-serialisable: {e}") from None
        self._root.update_attributes(attrs)  # one metadata write (attrs.update rewrites zarr.json per key)
        if self.path.exists() and not self.overwrite:  # created by someone else while we were writing
            raise DataError(f"store {self.path} appeared while writing; not replaced (overwrite=False)")
        tmp, self._tmp = self._tmp, None
        try:
            replace_dir(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
