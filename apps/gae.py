"""GMPO's advantage from the logged outcome: GAE(lambda) over the critic's V instead of the critic's Q - V.

IQL's Q(s, a) has to generalise across actions from one logged action per state, and on the shared sets it ranks
the actions *within* a state weakly (corr(Q - V, Monte-Carlo advantage) 0.11-0.21, docs/results.md §3c) while V
ranks states well (corr with the Monte-Carlo return 0.89-0.98). The generalised advantage estimate (Schulman et
al. 2016; AWR uses the same lambda-return, Peng et al. 2019) reads the action's quality from what the logged
action led to:

    delta_t = r_t + gamma (1 - terminal_t) V(s'_t) - V(s_t),    A_t = delta_t + gamma lambda A_{t+1}

within each episode; the sum stops at the episode's last row (whose delta bootstraps from V(s') when a time
limit cut the episode, and from 0 when it terminated). lambda = 0 is the one-step TD advantage, lambda = 1 the
Monte-Carlo return minus V.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from genctl.apps.critic_report import discounted_returns
from genctl.datasets import EpisodeStore


def gae_advantages(v: np.ndarray, v_next: np.ndarray, reward: np.ndarray, terminal: np.ndarray,
                   lengths: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """A_t per row (rows concatenated episode after episode, ``lengths`` summing to the row count)."""
    v, v_next, reward, terminal = (np.asarray(x, np.float64).reshape(-1) for x in (v, v_next, reward, terminal))
    lengths = np.asarray(lengths, np.int64)
    if int(lengths.sum()) != len(v) or not len(v) == len(v_next) == len(reward) == len(terminal):
        raise ValueError(f"gae_advantages: {len(v)} rows, but episode lengths sum to {int(lengths.sum())}")
    delta = reward + gamma * (1.0 - terminal) * v_next - v
    # A_t = delta_t + gamma lambda A_{t+1} within an episode: a discounted sum of the TD errors at gamma * lambda
    return discounted_returns(delta, lengths, gamma * lam)


def training_row_lengths(store: EpisodeStore, episodes: np.ndarray) -> np.ndarray:
    """Rows per episode as ``load_transitions(store, episodes)`` returns them: without stored next observations
    the last row of an episode that did not terminate has no successor and is left out."""
    eps = np.asarray(episodes, np.int64)
    lengths = store.episode_lengths()[eps].astype(np.int64)
    if store.has_next_obs():
        return lengths
    term = store.load(["terminated"], eps)["terminated"].reshape(-1)
    ends = np.cumsum(lengths)
    return lengths - (term[ends - 1] == 0).astype(np.int64) * (lengths > 0)


@torch.no_grad()
def critic_v(critic: Any, obs: torch.Tensor, batch: int = 16384) -> np.ndarray:
    """V of every row (an ensemble critic: the members' mean, as GMPO's Q - V uses)."""
    return np.concatenate([critic.v_members(obs[i:i + batch]).mean(0).double().cpu().numpy()
                           for i in range(0, len(obs), batch)])
