"""Samplers: the training batcher (transitions for critics, windows for sequence policies), the window index
and the train/val split.

Training indexes RAM, never zarr: a random batch touches nearly every chunk, so it costs a full decode on disk
but one gather in memory (stack-notes §f).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genctl.datasets.store import EpisodeStore
from genctl.errors import DataError

TRANSITION_KEYS = ("obs", "action", "reward", "next_obs", "terminal")


def rank_stream_seed(seed: int, rank: int, offset: int = 0) -> int:
    """The seed of data-parallel rank ``rank``'s batch stream: distinct per rank and per restart ``offset``."""
    return int(seed) + 7919 * int(rank) + int(offset)


def episode_split(n_episodes: int, val_frac: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random split by whole episodes (no window straddles train and val). At least one episode stays in
    train; at least one goes to val when ``val_frac > 0`` and there are two or more episodes."""
    if n_episodes < 1 or not 0.0 <= val_frac < 1.0:
        raise DataError(f"episode_split: need n_episodes >= 1 and 0 <= val_frac < 1 (got {n_episodes}, {val_frac})")
    n_val = int(round(n_episodes * val_frac))
    if val_frac > 0 and n_episodes > 1:
        n_val = max(n_val, 1)
    n_val = min(n_val, n_episodes - 1)
    perm = np.random.default_rng(seed).permutation(n_episodes)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def best_episodes(returns: np.ndarray, episodes: np.ndarray, frac: float) -> np.ndarray:
    """The ``ceil(frac * len(episodes))`` of ``episodes`` with the highest ``returns[episode]`` (sorted indices; ties
    keep the lower index): "filtered BC" / "x % BC" trains on these, the baseline that uses the better episodes
    without a critic (Chen et al. 2021, Decision Transformer)."""
    if not 0.0 < frac <= 1.0:
        raise DataError(f"best_episodes: need 0 < frac <= 1 (got {frac})")
    episodes = np.asarray(episodes, np.int64)
    keep = max(1, int(np.ceil(frac * len(episodes) - 1e-9)))
    order = np.argsort(-np.asarray(returns, np.float64)[episodes], kind="stable")
    return np.sort(episodes[order[:keep]])


def return_weights(returns: np.ndarray, episodes: np.ndarray, temperature: float) -> np.ndarray:
    """Return-weighted sampling (trajectory weighting, Hong et al. 2023): the weight of each of ``episodes``,
    ``exp((G - G_max) / (temperature * (G_max - G_min)))`` over their returns G, 1 for the best episode. Every
    transition of an episode is drawn with its episode's weight, so the batches come from a mixture that leans
    towards the better episodes while every episode keeps some weight (the hard cut is ``best_episodes``).
    The scale is the return range, so ``temperature`` means the same whatever the reward units; equal returns
    give equal weights."""
    if not temperature > 0.0:
        raise DataError(f"return_weights: need temperature > 0 (got {temperature})")
    g = np.asarray(returns, np.float64)[np.asarray(episodes, np.int64)]
    span = float(g.max() - g.min()) if len(g) else 0.0
    if span <= 0.0:
        return np.ones(len(g))
    return np.exp((g - g.max()) / (temperature * span))


def load_transitions(store: EpisodeStore, episodes: Any = None) -> dict[str, np.ndarray]:
    """Flat float32 arrays ``obs, action, reward, next_obs, terminal`` (terminal = terminated, not truncated).

    Without stored ``next_obs`` (a D4RL file lacking ``next_observations``) the next observation is the next row
    of the same episode; the last step of an episode that did not terminate has no known successor, so it is
    left out rather than bootstrapped from a wrong state."""
    data = store.load(["action", "terminated"] + (["reward"] if store.has_reward else []), episodes)
    obs = store.flat_obs(False, episodes)
    reward = data["reward"] if store.has_reward else np.zeros(len(obs), np.float32)  # BC-only: unused
    out = {"obs": obs, "action": data["action"], "reward": reward.astype(np.float32),
           "terminal": data["terminated"].astype(np.float32)}
    if store.has_next_obs():
        out["next_obs"] = store.flat_obs(True, episodes)
        return out
    nxt, last = store.successor_rows(episodes)  # an episode's last row points at itself (unused if terminal)
    keep = np.ones(len(obs), bool)
    keep[last[data["terminated"][last] == 0]] = False
    out["next_obs"] = obs[nxt]
    return {k: np.ascontiguousarray(v[keep]) for k, v in out.items()}


class TransitionBatcher:
    """Uniform random minibatches from arrays held in memory (on ``device``): the training data path.
    ``row_weights`` (one per row) draws rows with probability proportional to them instead (return-weighted
    sampling, ``return_weights``).

    All keys live in one contiguous (N, sum of widths) float32 tensor, so a batch is one ``randint`` plus one
    ``index_select`` — a single gather instead of one per key. Returned tensors are column views of that batch.
    ``windows`` (a ``genctl.datasets.windows.WindowData``) adds observation-history / action-chunk batches,
    ``sample(windows=True)``, drawn from the same stream.

    Streams: each rank draws from its own CPU generator seeded ``seed + 7919 * rank`` (data-parallel workers do
    not see identical batches); on a GPU the indices are copied from page-locked memory without a host sync.
    ``state_dict()`` / ``load_state_dict()`` carry the stream across a checkpoint (exact resume);
    ``restart(offset)`` starts a fresh, distinct stream per rank when a resume cannot continue the old ones
    (a different world size)."""

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, *, device: Any = "cpu", seed: int = 0,
                 rank: int = 0, world_size: int = 1, windows: Any = None,
                 row_weights: np.ndarray | None = None) -> None:
        import torch

        if not 0 <= rank < world_size:
            raise DataError(f"TransitionBatcher: rank {rank} not in [0, world_size={world_size})")
        if batch_size < 1 or not arrays:
            raise DataError("TransitionBatcher: need batch_size >= 1 and at least one array")
        lengths = {k: len(v) for k, v in arrays.items()}
        n = next(iter(lengths.values()))
        if any(v != n for v in lengths.values()) or n == 0:
            raise DataError(f"TransitionBatcher: arrays must have equal, non-zero lengths (got {lengths})")
        self.keys = list(arrays)
        self.shapes = {k: np.asarray(v).shape[1:] for k, v in arrays.items()}
        widths = [int(np.prod(self.shapes[k], dtype=np.int64)) for k in self.keys]
        table = np.empty((n, sum(widths)), np.float32)
        col = 0
        self._cols: list[tuple[str, int, int]] = []
        for k, w in zip(self.keys, widths, strict=True):
            table[:, col:col + w] = np.asarray(arrays[k], np.float32).reshape(n, w)
            self._cols.append((k, col, col + w))
            col += w
        self.device = torch.device(device)
        self.table = torch.from_numpy(table).to(self.device)
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.windows = windows
        self._cdf = None if row_weights is None else _weights_cdf(row_weights, n)
        if self._cdf is not None and windows is not None:
            raise DataError("TransitionBatcher: row_weights draw single transitions; windows are drawn uniformly")
        self.seed = int(seed)
        self.generator = torch.Generator()
        self.restart()

    def __len__(self) -> int:
        return self.n

    def restart(self, offset: int = 0) -> None:
        """(Re)seed this rank's stream: ``seed + 7919 * rank + offset``."""
        self.generator.manual_seed(rank_stream_seed(self.seed, self.rank, offset))

    def _indices(self, n: int, batch_size: int) -> Any:
        import torch

        if self._cdf is not None and n == self.n:  # weighted rows: invert the CDF at uniform draws
            u = torch.rand(batch_size, generator=self.generator, dtype=torch.float64)
            idx = torch.searchsorted(self._cdf, u, right=True).clamp_(max=n - 1)
        else:
            idx = torch.randint(n, (batch_size,), generator=self.generator)
        if self.device.type == "cuda":  # from page-locked memory the copy is queued, not waited for
            idx = idx.pin_memory()
        return idx.to(self.device, non_blocking=True)

    def sample(self, batch_size: int | None = None, *, windows: bool = False) -> dict[str, Any]:
        """A batch of ``batch_size`` (default: the constructor's) transitions, or of windows with
        ``windows=True`` when the batcher has them (else transitions)."""
        b = batch_size or self.batch_size
        if windows and self.windows is not None:
            return self.windows.gather(self._indices(self.windows.n, b))
        rows = self.table.index_select(0, self._indices(self.n, b))
        return {k: rows[:, a:c].reshape(b, *self.shapes[k]) for k, a, c in self._cols}  # views for 0-d/1-d keys

    def column(self, key: str) -> Any:
        """All N rows of one key (a view of the table), e.g. every training observation."""
        for k, a, c in self._cols:
            if k == key:
                return self.table[:, a:c].reshape(self.n, *self.shapes[k])
        raise KeyError(key)

    def add_column(self, key: str, values: np.ndarray) -> None:
        """Append a per-row key (e.g. an advantage computed once the critic is frozen); batches carry it from
        then on. The stream (generator state) is unchanged, so the rows drawn are the same as without it."""
        import torch

        if key in self.keys:
            raise KeyError(f"TransitionBatcher already has {key!r}")
        values = np.asarray(values, np.float32)
        if len(values) != self.n:
            raise DataError(f"TransitionBatcher.add_column({key!r}): {len(values)} rows, the table has {self.n}")
        width = int(np.prod(values.shape[1:], dtype=np.int64))
        col = torch.from_numpy(np.ascontiguousarray(values.reshape(self.n, width))).to(self.device)
        start = self.table.shape[1]
        self.table = torch.cat([self.table, col], dim=1)
        self.keys.append(key)
        self.shapes[key] = values.shape[1:]
        self._cols.append((key, start, start + width))

    def state_dict(self) -> dict[str, Any]:
        """Generator state as a JSON-friendly list, for exact resume."""
        return {"generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import torch

        self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8))


def _weights_cdf(row_weights: np.ndarray, n: int) -> Any:
    import torch

    w = np.asarray(row_weights, np.float64).reshape(-1)
    if len(w) != n or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise DataError(f"TransitionBatcher: row_weights must be {n} finite weights >= 0 with a positive sum "
                        f"(got {len(w)} values, sum {w.sum() if len(w) else 0})")
    cdf = np.cumsum(w)
    return torch.from_numpy(cdf / cdf[-1])


class SequenceSampler:
    """Fixed-length windows over episodes, padded at the edges by repeating the first/last frame.

    Same windows as Diffusion Policy's ``create_indices``: start offsets run from ``-pad_before`` to
    ``L - horizon + pad_after`` in each episode of length L. A window is gathered as
    ``clip(start + arange(horizon), ep_start, ep_end - 1)``, which is exactly edge padding, for a whole batch at
    once. Observation keys keep only the first ``n_obs_steps`` frames (history), other keys the full horizon
    (action chunk)."""

    def __init__(self, episode_ends: Any, horizon: int, n_obs_steps: int = 1, pad_before: int = 0,
                 pad_after: int = 0, episodes: Any = None) -> None:
        ends = np.asarray(episode_ends, np.int64)
        if horizon < 1 or not 1 <= n_obs_steps <= horizon or pad_before < 0 or pad_after < 0:
            raise DataError(f"SequenceSampler: need horizon >= n_obs_steps >= 1 and pads >= 0 "
                            f"(horizon={horizon}, n_obs_steps={n_obs_steps}, pads={pad_before},{pad_after})")
        self.horizon, self.n_obs_steps = horizon, n_obs_steps
        self.pad_before, self.pad_after = pad_before, pad_after
        starts = np.concatenate([[0], ends[:-1]])
        eps = np.arange(len(ends)) if episodes is None else np.asarray(episodes, np.int64).reshape(-1)
        ep_start, ep_end = starts[eps], ends[eps]
        counts = np.maximum(ep_end - ep_start - horizon + pad_after + pad_before + 1, 0)
        rep = np.repeat(np.arange(len(eps)), counts)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        offset = np.arange(int(counts.sum())) - first[rep] - pad_before
        # indices: (n_windows, 3) = window start row (may be before ep_start), episode start row, episode end row
        self.indices = np.stack([ep_start[rep] + offset, ep_start[rep], ep_end[rep]], axis=1).astype(np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def rows(self, idx: Any) -> np.ndarray:
        """(B, horizon) row numbers into the concatenated arrays for windows ``idx`` (edge-clipped)."""
        win = self.indices[np.asarray(idx, np.int64).reshape(-1)]
        t = win[:, :1] + np.arange(self.horizon)
        return np.clip(t, win[:, 1:2], win[:, 2:3] - 1)

    def sample(self, arrays: dict[str, np.ndarray], idx: Any, obs_keys: Any = None) -> dict[str, np.ndarray]:
        """Gather windows ``idx`` from in-memory ``arrays``: obs-like keys (B, n_obs_steps, ...), others
        (B, horizon, ...). ``obs_keys`` defaults to keys starting with obs, image or state."""
        rows = self.rows(idx)
        if obs_keys is None:
            obs_keys = [k for k in arrays if k.split("/")[0] in ("obs", "image", "state")]
        out = {}
        for k, a in arrays.items():
            r = rows[:, : self.n_obs_steps] if k in obs_keys else rows
            out[k] = a[r]
        return out

    def __getitem__(self, i: int) -> np.ndarray:
        return self.rows([i])[0]
