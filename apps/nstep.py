"""n-step TD targets for the IQL critic (``critic.nstep``).

IQL's one-step target y = r + gamma V(s') asks Q(s, a) to tell apart the logged actions of a state from one
reward and a bootstrap that barely depends on the action; on the shared locomotion sets that Q ranks the actions
within a state weakly (corr(A, Monte-Carlo advantage) 0.10-0.21, docs/results.md §3c). With n steps,

    y_t = sum_{j < k} gamma^j r_{t+j} + gamma^k (1 - terminal_{t+k-1}) V(s'_{t+k-1}),   k = min(n, rows left)

the target carries what the logged action led to over k steps (as GAE does for GMPO's advantage, §3k) and
bootstraps from the expectile V, which keeps IQL's in-sample improvement at the horizon. The rest of the episode's
logged actions enter the target too (the usual n-step bias towards the behaviour policy), which is why n stays
small. An episode's last row (time-limit cut or terminated) ends every window that reaches it.
"""

from __future__ import annotations

import numpy as np


def nstep_columns(reward: np.ndarray, next_obs: np.ndarray, terminal: np.ndarray, lengths: np.ndarray,
                  gamma: float, n: int) -> dict[str, np.ndarray]:
    """``reward_n`` (discounted sum of k rewards), ``discount_n`` (gamma^k (1 - terminal at the window's last
    row)) and ``next_obs_n`` (the state to bootstrap from) per row; rows concatenated episode after episode,
    ``lengths`` summing to the row count (as ``training_row_lengths`` gives them)."""
    reward = np.asarray(reward, np.float64).reshape(-1)
    terminal = np.asarray(terminal, np.float64).reshape(-1)
    lengths = np.asarray(lengths, np.int64)
    rows = len(reward)
    if n < 1:
        raise ValueError(f"nstep must be >= 1, got {n}")
    if int(lengths.sum()) != rows or len(next_obs) != rows or len(terminal) != rows:
        raise ValueError(f"nstep_columns: {rows} rows, {len(next_obs)} next observations, {len(terminal)} "
                         f"terminal flags, but episode lengths sum to {int(lengths.sum())}")
    end = np.repeat(np.cumsum(lengths), lengths)  # one past each row's episode end
    idx = np.arange(rows)
    k = np.minimum(n, end - idx)  # steps in each row's window (>= 1)
    ret = np.zeros(rows, np.float64)
    for j in range(n):  # O(n rows): n is small
        inside = j < k
        ret[inside] += gamma ** j * reward[idx[inside] + j]
    last = idx + k - 1
    return {"reward_n": ret.astype(np.float32),
            "discount_n": (gamma ** k * (1.0 - terminal[last])).astype(np.float32),
            "next_obs_n": np.ascontiguousarray(np.asarray(next_obs)[last])}
