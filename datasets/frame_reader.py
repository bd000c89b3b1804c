"""Camera frames read straight from their chunk files: rows of one ``image/<cam>`` array decoded into a buffer
the caller owns (the out-of-core loader's cache slots), and arbitrary rows gathered chunk by chunk.

zarr-python's slice read costs ~1.6 ms per 1 MiB chunk in its async pipeline on this machine, of which the lz4
decode is ~0.15 ms and reading the file into a reused buffer ~0.3 ms (``bytes`` from ``Path.read_bytes`` cost
~1.1 ms: a fresh 1 MiB allocation page-faults on every read). Stores written by ``StoreWriter`` are local
zarr v3 arrays whose chunks are raw C-order bytes then one blosc or zstd codec; for those the chunk file is
read into a per-thread buffer and decoded by numcodecs directly into the destination (both release the GIL, so
decoding threads run in parallel). Any other layout (sharding, filters, a remote store) falls back to zarr's own
slice read: slower, same frames.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from genctl.errors import DataError


def _fast_path(arr: Any) -> tuple[Path, Any, Any] | None:
    """(array folder, chunk key encoder, numcodecs decoder) when the chunk files can be decoded directly."""
    import numcodecs
    from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec
    from zarr.storage import LocalStore

    store = arr.store_path.store
    codecs = tuple(arr.metadata.codecs)
    if (not isinstance(store, LocalStore) or arr.dtype != np.uint8 or len(codecs) != 2
            or not isinstance(codecs[0], BytesCodec) or tuple(arr.chunks[1:]) != tuple(arr.shape[1:])):
        return None
    if isinstance(codecs[1], BloscCodec):
        decoder: Any = numcodecs.Blosc()  # blosc and zstd frames describe themselves: no settings needed to decode
    elif isinstance(codecs[1], ZstdCodec):
        decoder = numcodecs.Zstd()
    else:
        return None
    return Path(store.root) / arr.store_path.path, arr.metadata.chunk_key_encoding.encode_chunk_key, decoder


class FrameReader:
    """Rows of one uint8 image array (T, H, W, C), decoded whole chunk by whole chunk. Thread-safe: every thread
    has its own file and chunk buffers."""

    def __init__(self, store: Any, key: str) -> None:
        arr = store.array_info(key)
        if arr.dtype != np.uint8 or arr.ndim != 4:
            raise DataError(f"store {store.path}: field 'data/{key}' is {arr.dtype} {arr.shape}, expected uint8 "
                            "(T, H, W, C) frames")
        self.key, self.n_rows, self.chunk_rows = key, int(arr.shape[0]), int(arr.chunks[0])
        self.frame_shape: tuple[int, ...] = tuple(int(s) for s in arr.shape[1:])
        self.frame_bytes = int(np.prod(self.frame_shape))
        self._arr = arr
        self._fast = _fast_path(arr)
        self._where = f"store {store.path}: field 'data/{key}'"
        self._local = threading.local()

    @property
    def direct(self) -> bool:
        """True when chunks are decoded from their files directly (else through zarr)."""
        return self._fast is not None

    def _buffers(self) -> tuple[bytearray, np.ndarray]:
        loc = self._local
        if not hasattr(loc, "chunk"):
            loc.file = bytearray(self.chunk_rows * self.frame_bytes + 4096)
            loc.chunk = np.empty((self.chunk_rows, *self.frame_shape), np.uint8)
        return loc.file, loc.chunk

    def _decode(self, c: int, dst: np.ndarray) -> None:
        """Chunk ``c`` into ``dst`` (a C-contiguous (chunk_rows, H, W, C) uint8 array or view)."""
        assert self._fast is not None
        folder, encode_key, decoder = self._fast
        path = folder / encode_key((c, *(0,) * len(self.frame_shape)))
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                if size > len(self._buffers()[0]):
                    self._local.file = bytearray(size)
                view = memoryview(self._local.file)[:size]
                got = 0
                while got < size:  # readinto a reused buffer: no page faults of a fresh allocation per chunk
                    n = f.readinto(view[got:])
                    if not n:
                        break
                    got += n
            decoder.decode(view[:got], out=dst.reshape(-1))
        except FileNotFoundError:
            raise DataError(f"{self._where}: chunk file {path.name} is missing (deleted or incomplete store)") from None
        except Exception as e:  # truncated or corrupt chunk: name it
            raise DataError(f"{self._where}: cannot decode chunk {path.name} ({type(e).__name__}: {e})") from None

    def read_into(self, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows [lo, hi) into ``out`` ((hi - lo, H, W, C) uint8, C-contiguous). A chunk that lies wholly inside the
        range is decoded in place; the partial ones at the ends go through this thread's chunk buffer."""
        if not 0 <= lo < hi <= self.n_rows:
            raise IndexError(f"{self._where}: rows [{lo}, {hi}) outside [0, {self.n_rows})")
        if not out.flags.c_contiguous:  # decoding in place needs one flat run of bytes (a reshape would copy)
            raise ValueError("FrameReader.read_into: the output must be C-contiguous")
        if self._fast is None:
            try:
                out[...] = np.asarray(self._arr[lo:hi])
            except Exception as e:
                raise DataError(f"{self._where}: cannot read rows {lo}-{hi} ({type(e).__name__}: {e})") from None
            return
        b = self.chunk_rows
        for c in range(lo // b, (hi - 1) // b + 1):
            a, z = max(lo, c * b), min(hi, (c + 1) * b)
            if a == c * b and z == (c + 1) * b:
                self._decode(c, out[a - lo:z - lo])
            else:
                chunk = self._buffers()[1]
                self._decode(c, chunk)
                out[a - lo:z - lo] = chunk[a - c * b:z - c * b]

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Frames (len(rows), H, W, C) of arbitrary ``rows`` (any order, repeats allowed); each chunk holding
        one of them is decoded once."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        out = np.empty((len(rows), *self.frame_shape), np.uint8)
        if len(rows) == 0:
            return out
        if rows.min() < 0 or rows.max() >= self.n_rows:
            raise IndexError(f"{self._where}: rows outside [0, {self.n_rows})")
        chunk = np.empty((self.chunk_rows, *self.frame_shape), np.uint8)
        which = rows // self.chunk_rows
        order = np.argsort(which, kind="stable")
        bounds = np.flatnonzero(np.diff(which[order])) + 1
        for group in np.split(order, bounds):
            c = int(which[group[0]])
            lo, hi = c * self.chunk_rows, min((c + 1) * self.chunk_rows, self.n_rows)
            self.read_into(lo, hi, chunk[:hi - lo])
            out[group] = chunk[rows[group] - lo]
        return out
