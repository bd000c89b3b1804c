"""Transitions of a camera store without their pixels: what ``load_transitions`` returns with an ``ObsSpec``
selected, except that the flat observation is only its low-dimensional part and each transition carries the
store rows of its frame and of its next frame instead (``OutOfCoreBatcher`` reads those when it needs them).

The rows, their order and the next-frame rule are ``load_transitions``' exactly: the next frame is the next
row of the same episode (an episode's last row repeats itself; stores keep no next image); without stored
``next_obs`` the last step of an episode that did not terminate is left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genctl.datasets.frame_reader import FrameReader
from genctl.datasets.normalizer import Normalizer
from genctl.datasets.obs_spec import ObsSpec
from genctl.datasets.store import EpisodeStore


def _low(store: EpisodeStore, spec: ObsSpec, episodes: np.ndarray, n: int, next: bool) -> np.ndarray:
    """The selected low-dim values (whole keys or their slices, ``obs/observation[0:3,9:11]``) of the rows."""
    if not spec.low_keys:
        return np.zeros((n, 0), np.float32)
    data = store.load(spec.store_low_keys(next), episodes)
    return np.ascontiguousarray(spec.low_from_fields(data, n, next), np.float32)


def camera_transitions(store: EpisodeStore, spec: ObsSpec, episodes: Any = None) -> dict[str, np.ndarray]:
    """``obs``, ``next_obs`` (N, spec.low_dim) float32, ``action``, ``reward``, ``terminal``, and ``frame_row``,
    ``next_frame_row`` (N,) int64 store rows, for the rows of ``episodes`` (all when None)."""
    eps = np.arange(store.n_episodes) if episodes is None else np.asarray(episodes, np.int64).reshape(-1)
    data = store.load(["action", "terminated"] + (["reward"] if store.has_reward else []), eps)
    n = len(data["action"])
    lengths = store.episode_lengths()[eps]
    starts = np.concatenate([[0], store.episode_ends])[eps]
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = np.arange(n) + np.repeat(starts - first, lengths)  # the store row of each loaded row
    nxt, last = store.successor_rows(eps)
    out = {"obs": _low(store, spec, eps, n, False), "action": data["action"],
           "reward": (data["reward"] if store.has_reward else np.zeros(n, np.float32)).astype(np.float32),
           "terminal": data["terminated"].astype(np.float32), "frame_row": rows, "next_frame_row": rows[nxt]}
    if store.has_next_obs():
        out["next_obs"] = _low(store, spec, eps, n, True)
        return out
    out["next_obs"] = out["obs"][nxt]
    keep = np.ones(n, bool)
    keep[last[data["terminated"][last] == 0]] = False
    return {k: np.ascontiguousarray(v[keep]) for k, v in out.items()}


def compose_rows(store: EpisodeStore, spec: ObsSpec, low: np.ndarray, frame_rows: np.ndarray) -> np.ndarray:
    """(N, spec.dim) flat observations: ``low`` then the frames at store rows ``frame_rows`` (read chunk by
    chunk, only those rows)."""
    images = {c.key: FrameReader(store, c.key).read_rows(frame_rows) for c in spec.cameras}
    return spec.compose(low, images)


def sampled_rows(store: EpisodeStore, spec: ObsSpec, episodes: Any, seed: int, n: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(obs, action) of the ``n`` transitions ``ValidationLoss`` takes from ``episodes`` (the same rows as with
    ``load_transitions``: a seeded permutation of them), reading only their frames."""
    raw = camera_transitions(store, spec, episodes)
    take = np.random.default_rng(seed).permutation(len(raw["action"]))[:n]
    return compose_rows(store, spec, raw["obs"][take], raw["frame_row"][take]), raw["action"][take]


def low_normalizer(norm: Normalizer, spec: ObsSpec) -> Normalizer:
    """The flat observation's normaliser restricted to its low-dim columns (on the pixel columns it is the
    identity: ``ObsSpec.pixel_normalizer_stats``)."""
    return Normalizer(norm.mode, {k: v[:spec.low_dim] for k, v in norm.stats.items()})
