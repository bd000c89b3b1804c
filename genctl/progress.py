"""Progress for long work: a tqdm bar on a terminal, plain timestamped lines when output goes to a file.

On clusters and in CI stdout is a file or a pipe, where a tqdm bar is disabled (or writes carriage returns that
end up as one endless line). There :class:`PlainProgress` prints one line every ``GENCTL_PROGRESS_EVERY``
seconds (default 30) and one when the work ends: what, step/total, the postfix values (losses), rate and ETA.
Both kinds take the same calls (``update``, ``set_postfix``, ``close``, context manager), so callers do not care.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("GENCTL_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class PlainProgress:
    """``desc  step/total (pct)  k v ...  rate  ETA`` every ``every`` seconds and at the end, on ``stream``."""

    def __init__(self, total: int | None, *, desc: str = "", unit: str = "it", initial: int = 0,
                 every: float | None = None, stream: TextIO | None = None):
        self.total, self.desc, self.unit = total, desc.strip(), unit
        self.n = self._n0 = int(initial)
        self.every = _interval() if every is None else every
        self.stream = stream or sys.stdout
        self._t0 = self._last = time.perf_counter()
        self._postfix: dict[str, Any] = {}
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self._last >= self.every and not (self.total is not None and self.n >= self.total):
            self._last = now
            self._print(now)

    def set_postfix(self, values: dict[str, Any] | None = None, refresh: bool = True, **kw: Any) -> None:
        self._postfix = {**(values or {}), **kw}

    def _print(self, now: float) -> None:
        done = self.n - self._n0
        rate = done / max(now - self._t0, 1e-9)
        parts = [self.desc] if self.desc else []
        if self.total:
            parts.append(f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)")
        else:
            parts.append(f"{self.n} {self.unit}")
        parts += [f"{k} {v}" for k, v in self._postfix.items()]
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and self.n < self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        elif self.total and self.n >= self.total:
            parts.append(f"done in {_duration(now - self._t0)}")
        print("  ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n > self._n0:
                self._print(time.perf_counter())

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Off:
    """Progress turned off (``--quiet``, or a torchrun rank other than 0)."""

    n = 0

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *a: Any, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(total: int | None, *, desc: str = "", enabled: bool = True, unit: str = "it", initial: int = 0,
             stream: TextIO | None = None) -> Any:
    """A tqdm bar when ``stream`` (default stderr, tqdm's) is a terminal, plain lines on stdout otherwise, or
    nothing when not ``enabled``."""
    if not enabled:
        return _Off()
    tty = (stream or sys.stderr).isatty()
    if tty:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, mininterval=0.5, dynamic_ncols=True,
                    file=stream)
    return PlainProgress(total, desc=desc, unit=unit, initial=initial, stream=None)


def progress_iter(items: Iterable[T], *, desc: str = "", enabled: bool = True, unit: str = "it") -> Iterator[T]:
    """Iterate ``items`` with :func:`progress_bar` (total = ``len(items)`` when it has one)."""
    seq = list(items)
    with progress_bar(len(seq), desc=desc, enabled=enabled, unit=unit) as bar:
        for x in seq:
            yield x
            bar.update(1)
