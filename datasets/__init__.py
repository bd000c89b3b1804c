"""genctl.datasets: the zarr episode store, ingestion, samplers and normaliser (contract: docs/contracts.md).

Importing this package loads only numpy and zarr; torch, h5py and minari are imported where they are used, so
``genctl info`` and other light commands start fast.
"""

from __future__ import annotations

from genctl.datasets.export import export_minari
from genctl.datasets.info import format_info, store_info
from genctl.datasets.ingest import detect_format, ingest
from genctl.datasets.normalizer import Normalizer
from genctl.datasets.samplers import (
    SequenceSampler,
    TransitionBatcher,
    best_episodes,
    episode_split,
    load_transitions,
    return_weights,
)
from genctl.datasets.schema import FORMAT_VERSION
from genctl.datasets.store import EpisodeStore
from genctl.datasets.windows import SeqSpec, WindowData, build_windows
from genctl.datasets.writer import StoreWriter

__all__ = [
    "FORMAT_VERSION",
    "EpisodeStore",
    "Normalizer",
    "SeqSpec",
    "SequenceSampler",
    "StoreWriter",
    "TransitionBatcher",
    "WindowData",
    "best_episodes",
    "build_windows",
    "detect_format",
    "episode_split",
    "export_minari",
    "format_info",
    "ingest",
    "load_transitions",
    "return_weights",
    "store_info",
]
