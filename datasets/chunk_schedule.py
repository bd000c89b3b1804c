"""The out-of-core loader's schedule: which units of image chunks are resident and which rows each batch takes.

Pure index arithmetic, no I/O and no threads, so it is the whole of what makes the loader deterministic:

* A *unit* is ``unit_rows`` consecutive store rows (whole image chunks). Units holding at least one training item
  form the *stream*: epoch after epoch, a fresh permutation of them, seeded (``stream_seed``, epoch). Stream
  position ``j`` names one admission of one unit; the stream is a pure function of ``j``.
* The cache is a sliding window over the stream: a batch drawn at position ``pos`` samples uniformly among the
  items (training rows) of the units at stream positions ``[pos - K, pos)`` (a chunk-level shuffle buffer; a unit
  that appears twice in the window, at an epoch boundary, counts twice). After the batch, ``pos`` advances by
  one unit per ``REUSE * items_per_unit`` items drawn (at most ``P`` per batch): the oldest units leave, new ones
  enter. Every unit enters once per epoch and stays for the same number of admissions, so over an epoch every
  item has the same expected number of draws, and every training row is sampled eventually.
* The only state is (generator state, ``pos``, items drawn): a few numbers, restored exactly on resume; the units
  ahead of ``pos`` are known without touching the generator, so they can be decoded in advance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from genctl.errors import ConfigError, DataError

REUSE = 1.0  # expected draws of an item while its unit is resident (lower: more decoding, less repetition)
AHEAD_BATCHES = 3  # the prefetch holds the admissions of this many batches of the largest size


@dataclass(frozen=True)
class ScheduleState:
    rng: dict[str, Any]  # numpy PCG64 state (JSON: a dict of ints)
    pos: int
    drawn: int

    def to_dict(self) -> dict[str, Any]:
        return {"generator": self.rng, "pos": self.pos, "drawn": self.drawn}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScheduleState:
        try:
            return cls(dict(d["generator"]), int(d["pos"]), int(d["drawn"]))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"out-of-core loader state: expected generator, pos and drawn ({e})") from None


@dataclass(frozen=True)
class Draw:
    items: np.ndarray  # (B,) item indices of the kind drawn
    positions: np.ndarray  # (B,) stream position of the unit copy each item came from
    window: tuple[int, int]  # [pos - K, pos): the stream positions the batch reads
    admitted: tuple[int, int]  # [pos, new pos): the units that enter after it


class ChunkSchedule:
    """``item_units``: kind (e.g. transitions, windows) -> the unit of each item. ``n_slots``: units the cache
    holds (the window plus the prefetch); ``max_batch``: the largest batch asked for (sizes the prefetch)."""

    def __init__(self, item_units: dict[str, np.ndarray], n_slots: int, max_batch: int, seed: int) -> None:
        if not item_units or any(len(v) == 0 for v in item_units.values()):
            raise DataError("out-of-core loader: no training rows")
        self.units = np.unique(np.concatenate([np.asarray(v, np.int64) for v in item_units.values()]))
        nu = len(self.units)
        self._csr: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for kind, iu in item_units.items():
            dense = np.searchsorted(self.units, np.asarray(iu, np.int64))
            counts = np.bincount(dense, minlength=nu)
            ptr = np.concatenate([[0], np.cumsum(counts)])
            self._csr[kind] = (counts, ptr, np.argsort(dense, kind="stable"))
        first = next(iter(item_units))
        self.items_per_unit = len(item_units[first]) / nu
        if n_slots >= nu:  # everything fits: one fill, never an eviction
            self.window, self.ahead = nu, 0
        elif n_slots < 4:
            raise ConfigError(f"data.cache_gb holds {n_slots} unit(s) of image chunks of the {nu} needed; the "
                              "out-of-core loader needs at least 4 (2 resident, 2 prefetched): raise data.cache_gb")
        else:
            per_batch = math.ceil(max_batch / (REUSE * self.items_per_unit))
            self.ahead = min(max(2, AHEAD_BATCHES * per_batch), n_slots // 2)
            self.window = n_slots - self.ahead
        self.n_slots = self.window + self.ahead
        self.stream_seed = int(seed)
        self._perms: dict[int, np.ndarray] = {}

    def set_stream(self, seed: int) -> None:
        self.stream_seed = int(seed)
        self._perms.clear()

    @property
    def n_units(self) -> int:
        return len(self.units)

    def initial(self, seed: int) -> ScheduleState:
        return ScheduleState(np.random.Generator(np.random.PCG64(seed)).bit_generator.state, self.window, 0)

    def _perm(self, epoch: int) -> np.ndarray:
        p = self._perms.get(epoch)
        if p is None:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            p = self._perms[epoch] = np.random.default_rng([self.stream_seed, epoch]).permutation(self.n_units)
        return p

    def stream(self, positions: np.ndarray) -> np.ndarray:
        """Dense unit index (into ``units``) at each stream position."""
        positions = np.asarray(positions, np.int64)
        epoch, at = np.divmod(positions, self.n_units)
        out = np.empty(len(positions), np.int64)
        for e in np.unique(epoch):
            sel = epoch == e
            out[sel] = self._perm(int(e))[at[sel]]
        return out

    def admissions(self, state: ScheduleState, batch: int) -> int:
        """Units that enter after a batch of ``batch`` items drawn in ``state``."""
        if self.ahead == 0:
            return 0
        target = self.window + int((state.drawn + batch) // (REUSE * self.items_per_unit))
        return max(0, min(target - state.pos, self.ahead))

    def draw(self, state: ScheduleState, kind: str, batch: int) -> tuple[Draw, ScheduleState]:
        """The items of one batch of ``kind`` and the state after it (the input state is not modified)."""
        counts, ptr, order = self._csr[kind]
        lo, pos = state.pos - self.window, state.pos
        dense = self.stream(np.arange(lo, pos))
        cum = np.cumsum(counts[dense])
        if cum[-1] == 0:
            raise DataError(f"out-of-core loader: no {kind} among the {self.window} resident units")
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state.rng
        r = rng.integers(0, cum[-1], batch)
        k = np.searchsorted(cum, r, side="right")  # the window slot of each draw, weighted by its item count
        d = dense[k]
        items = order[ptr[d] + r - (cum[k] - counts[d])]
        n_admit = self.admissions(state, batch)
        nxt = ScheduleState(rng.bit_generator.state, pos + n_admit, state.drawn + batch)
        return Draw(items, lo + k, (lo, pos), (pos, pos + n_admit)), nxt
