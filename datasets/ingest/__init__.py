"""Ingest logged demonstrations (Minari, D4RL-HDF5, robomimic-HDF5, LeRobotDataset) into a zarr episode store.

Each reader validates its source and yields episodes in store keys; :class:`StoreWriter` does the rest, so a
bad file or a killed process never leaves a partial store at ``out``.
"""

from __future__ import annotations

import os
from pathlib import Path

from genctl.datasets.store import EpisodeStore
from genctl.datasets.writer import StoreWriter
from genctl.errors import DataError

FORMATS = ("minari", "d4rl", "robomimic", "lerobot")


def detect_format(src: str | os.PathLike) -> str:
    """lerobot for a folder with meta/info.json; minari for a dataset folder or id; for HDF5 files: robomimic if
    ``data/demo_*``, d4rl if ``observations``."""
    from genctl.datasets.ingest.common import open_h5
    from genctl.datasets.ingest.lerobot import is_lerobot
    from genctl.datasets.ingest.minari import resolve_minari

    p = Path(src)
    if p.is_dir() and is_lerobot(p):
        return "lerobot"
    if p.is_file():
        with open_h5(p) as f:
            if "data" in f and any(str(n).startswith("demo_") for n in f["data"]):
                return "robomimic"
            if "observations" in f:
                return "d4rl"
            raise DataError(f"{p}: unknown HDF5 layout (top-level fields {sorted(f.keys())}); expected D4RL "
                            "'observations, actions, ...' or robomimic 'data/demo_N/...'")
    if resolve_minari(src) is not None:
        return "minari"
    if p.exists():
        raise DataError(f"{p}: not a Minari dataset folder (no data/metadata.json), a LeRobotDataset folder "
                        "(no meta/info.json) or an HDF5 file")
    raise DataError(f"{src}: no such file, folder or local Minari dataset id")


def ingest(src: str | os.PathLike, out: str | os.PathLike, *, fmt: str | None = None,
           obs_keys: list[str] | None = None, overwrite: bool = False, progress: bool = False,
           image_codec: str = "lz4") -> EpisodeStore:
    """Convert ``src`` into a store at ``out`` and return it opened (validated); ``progress`` shows a bar
    (LeRobot, which streams episode by episode); ``image_codec``: camera frames as ``lz4`` or ``zstd``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"store {out} already exists (pass overwrite=True to replace it)")
    fmt = fmt or detect_format(src)
    if fmt == "minari":
        from genctl.datasets.ingest.minari import read_minari as reader
    elif fmt == "d4rl":
        from genctl.datasets.ingest.d4rl import read_d4rl as reader
    elif fmt == "robomimic":
        from genctl.datasets.ingest.robomimic import read_robomimic as reader
    elif fmt == "lerobot":
        from functools import partial

        from genctl.datasets.ingest.lerobot import read_lerobot

        reader = partial(read_lerobot, progress=progress)
    else:
        raise DataError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    attrs, episodes = reader(src, obs_keys)
    try:
        with StoreWriter(out, attrs, overwrite=overwrite, image_codec=image_codec) as writer:
            for ep in episodes:
                writer.add_episode(ep)
    except DataError as e:
        msg = str(e)
        raise DataError(msg if str(src) in msg else f"ingest {src}: {msg}") from None
    return EpisodeStore.open(out)


__all__ = ["FORMATS", "detect_format", "ingest"]
