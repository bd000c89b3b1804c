"""Observation history and action chunking: Diffusion-Policy windows over the train episodes, as flat tensors.

A window at step t of an episode conditions on the last ``n_obs_steps`` observations ``obs[t-n+1 .. t]`` (the
first frame repeated before the episode start) and predicts the ``horizon`` actions ``action[t .. t+H-1]`` (the
last action repeated past the episode end). Both are flattened row-major, oldest observation first, so the
generative model sees ``cond`` of width ``n_obs_steps * D`` and ``x`` of width ``horizon * A``; the current
observation is the last ``D`` columns of ``cond`` and the first action of the chunk the first ``A`` columns of
``x``. There is one window per transition (every step of every train episode is a "current step").

The IQL critic keeps learning from single transitions; ``genctl.policies.ChunkCritic`` reads it on windows.
Torch is imported where it is used (importing ``genctl.datasets`` stays light).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from genctl.datasets.normalizer import Normalizer
from genctl.datasets.samplers import SequenceSampler
from genctl.datasets.store import EpisodeStore
from genctl.errors import DataError


@dataclass(frozen=True)
class SeqSpec:
    """``n_obs_steps`` observations in, ``horizon`` actions out, ``n_action_steps`` of them executed per call."""

    n_obs_steps: int = 1
    horizon: int = 1
    n_action_steps: int = 1

    @property
    def chunked(self) -> bool:
        return self.n_obs_steps > 1 or self.horizon > 1

    @classmethod
    def from_config(cls, cfg: Any) -> SeqSpec:
        """From a TrainConfig (its ``data`` section)."""
        d = cfg.data
        return cls(d.n_obs_steps, d.horizon, d.n_action_steps or d.horizon)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> SeqSpec:
        """From a checkpoint's meta (checkpoints written before chunking existed are single-step)."""
        n_obs, horizon = int(meta.get("n_obs_steps", 1)), int(meta.get("horizon", 1))
        spec = cls(n_obs, horizon, int(meta.get("n_action_steps") or horizon))
        spec.check()
        return spec

    def with_action_steps(self, n: int | None) -> SeqSpec:
        spec = SeqSpec(self.n_obs_steps, self.horizon, self.n_action_steps if n is None else int(n))
        spec.check()
        return spec

    def check(self) -> None:
        if self.n_obs_steps < 1 or self.horizon < 1 or not 1 <= self.n_action_steps <= self.horizon:
            raise ValueError(f"need n_obs_steps >= 1, horizon >= 1 and 1 <= n_action_steps <= horizon "
                             f"(got {self.n_obs_steps}, {self.horizon}, {self.n_action_steps})")

    def to_meta(self) -> dict[str, int]:
        return {"n_obs_steps": self.n_obs_steps, "horizon": self.horizon, "n_action_steps": self.n_action_steps}


class WindowData:
    """Normalised observations/actions of the train episodes plus one window per step, gathered on demand.

    Memory is O(transitions): the window table holds (start row, episode start, episode end) per window and a
    batch is two ``index_select`` calls on edge-clipped row numbers (no per-window copies)."""

    def __init__(self, obs: Any, action: Any, windows: Any, spec: SeqSpec):
        import torch

        self.obs, self.action, self.windows, self.spec = obs, action, windows, spec
        self.n = len(windows)
        self._arange = torch.arange(spec.n_obs_steps - 1 + spec.horizon, device=obs.device)

    def gather(self, idx: Any) -> dict[str, Any]:
        """``obs`` (B, n_obs_steps * D) and ``action`` (B, horizon * A) for windows ``idx`` (a device tensor)."""
        import torch

        w = self.windows.index_select(0, idx)
        rows = torch.minimum(torch.maximum(w[:, :1] + self._arange, w[:, 1:2]), w[:, 2:3] - 1)
        n_obs, b = self.spec.n_obs_steps, len(idx)
        obs = self.obs.index_select(0, rows[:, :n_obs].reshape(-1)).reshape(b, -1)
        act = self.action.index_select(0, rows[:, n_obs - 1:].reshape(-1)).reshape(b, -1)
        return {"obs": obs, "action": act}


def build_windows(store: EpisodeStore, episodes: Any, obs_norm: Normalizer, act_norm: Normalizer,
                  spec: SeqSpec, device: Any = "cpu") -> WindowData:
    """Windows of ``episodes`` (train split), via ``SequenceSampler`` with pad_before = n_obs_steps - 1 and
    pad_after = horizon - 1 over a window of n_obs_steps - 1 + horizon rows (one window per step)."""
    import torch

    eps = np.asarray(episodes, np.int64).reshape(-1)
    obs = obs_norm.normalize(store.flat_obs(False, eps))
    act = act_norm.normalize(store.load(["action"], eps)["action"])
    for k, v in (("obs", obs), ("action", act)):
        if not np.all(np.isfinite(v)):
            raise DataError(f"store {store.path}: field {k!r} has NaN/Inf after normalisation")
    ends = np.cumsum(store.episode_lengths()[eps])
    sampler = SequenceSampler(ends, spec.n_obs_steps - 1 + spec.horizon, spec.n_obs_steps,
                              pad_before=spec.n_obs_steps - 1, pad_after=spec.horizon - 1)
    if len(sampler) == 0:
        raise DataError(f"store {store.path}: no training windows after the validation split")

    def t(x: np.ndarray, dtype: Any = np.float32) -> Any:
        return torch.as_tensor(np.ascontiguousarray(x, dtype=dtype)).to(device)

    return WindowData(t(obs.reshape(len(obs), -1)), t(act.reshape(len(act), -1)), t(sampler.indices, np.int64), spec)
