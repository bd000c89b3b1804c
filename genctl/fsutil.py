"""Atomic filesystem writes: build beside the target, then rename, so a killed process leaves the old
target intact or nothing at all — never a half-written file or folder."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_sibling(target: Path) -> Path:
    """A hidden, unique path next to ``target`` (same filesystem, so rename is atomic)."""
    target = Path(target)
    return target.parent / f".{target.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        at_fdcwd, rename_exchange = -100, 2
        return libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    return False


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder ``tmp`` onto ``target``, never leaving an instant without a complete version.

    Where ``target`` exists the two are swapped atomically (Linux ``renameat2(RENAME_EXCHANGE)``) and the old
    version, now at ``tmp``, is deleted. Elsewhere ``target`` is first renamed to a hidden ``.old`` sibling
    (a short window where only that copy exists; :func:`cleanup_stale` leaves it alone while we live).
    """
    tmp, target = Path(tmp), Path(target)
    if target.exists() and _exchange(tmp, target):
        _fsync_dir(target.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous version
        return
    if target.exists():
        old = target.parent / f".{target.name}{TMP_MARK}{os.getpid()}-old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on normal exit it replaces ``target``, on error it is deleted."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, target)


def cleanup_stale(parent: str | os.PathLike, name: str) -> list[Path]:
    """Remove leftovers of interrupted atomic writes of ``parent/name`` (from dead processes)."""
    parent = Path(parent)
    removed = []
    if not parent.exists():
        return removed
    for p in parent.glob(f".{name}{TMP_MARK}*"):
        pid_part = p.name[len(f".{name}{TMP_MARK}") :].split("-", 1)[0]
        alive = pid_part.isdigit() and int(pid_part) != os.getpid() and _pid_alive(int(pid_part))
        if not alive:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
