"""Is the critic right? Q of the logged actions against their discounted Monte-Carlo returns, and the spread
of the advantage that GMPO/GMPG see (also the scale that makes ``policy.beta`` unit-free).

The Monte-Carlo return G_t = sum_k gamma^k r_{t+k} is computed per training episode from the stored (scaled)
rewards. For an episode cut by a time limit the tail beyond the cut is unknown, so rows closer than
2 / (1 - gamma) steps to such a cut (residual weight < gamma^(2/(1-gamma)) ~ 0.13) are left out of the
correlations; terminated episodes are exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from genctl.datasets import EpisodeStore


def discounted_returns(rewards: np.ndarray, lengths: np.ndarray, gamma: float) -> np.ndarray:
    """G_t within each episode (rewards concatenated episode after episode, ``lengths`` summing to len)."""
    out = np.empty(len(rewards), np.float64)
    start = 0
    for n in lengths:
        g = 0.0
        for t in range(start + int(n) - 1, start - 1, -1):
            g = float(rewards[t]) + gamma * g
            out[t] = g
        start += int(n)
    return out


def mc_targets(store: EpisodeStore, episodes: np.ndarray, *, gamma: float, scale: float, shift: float,
               keep_last_untermed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(G, valid) aligned with ``load_transitions(store, episodes)`` rows.

    ``keep_last_untermed``: whether load_transitions kept the last row of a non-terminated episode (it does
    when the store has next_obs)."""
    data = store.load(["reward", "terminated"], episodes)
    lengths = store.episode_lengths()[np.asarray(episodes, np.int64)]
    r = data["reward"].astype(np.float64).reshape(-1) * scale + shift
    term = data["terminated"].reshape(-1).astype(bool)
    g = discounted_returns(r, lengths, gamma)
    valid = np.ones(len(r), bool)
    keep = np.ones(len(r), bool)
    horizon = int(round(2.0 / max(1.0 - gamma, 1e-6)))
    end = np.cumsum(lengths)
    for s, e in zip(end - lengths, end, strict=True):
        if e > s and not term[e - 1]:
            valid[max(s, e - horizon):e] = False
            if not keep_last_untermed:
                keep[e - 1] = False
    return g[keep], valid[keep]


def _rank(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x), np.float64)
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


@torch.no_grad()
def critic_values(critic: Any, obs: torch.Tensor, act: torch.Tensor, batch: int = 16384
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Q and V of every row, and for an ensemble critic each member's advantage Q_k - V_k, (K, N) (else None)."""
    qs, vs, members = [], [], []
    for i in range(0, len(obs), batch):
        o, a = obs[i:i + batch], act[i:i + batch]
        qk, vk = critic.q_members(o, a), critic.v_members(o)  # (K, B) each; a plain critic is K = 1
        qs.append(qk.mean(0).double().cpu().numpy())
        vs.append(vk.mean(0).double().cpu().numpy())
        if critic.ensemble > 1:
            members.append((qk - vk).double().cpu().numpy())
    return np.concatenate(qs), np.concatenate(vs), np.concatenate(members, axis=1) if members else None


def advantage_stats(q: np.ndarray, v: np.ndarray) -> dict[str, float]:
    a = q - v
    p = np.percentile(a, [10, 50, 90])
    return {"mean": float(a.mean()), "std": float(a.std()), "p10": float(p[0]), "p50": float(p[1]),
            "p90": float(p[2]), "frac_positive": float((a > 0).mean())}


def critic_report(q: np.ndarray, v: np.ndarray, g: np.ndarray | None, valid: np.ndarray | None,
                  members: np.ndarray | None = None) -> dict[str, Any]:
    rep: dict[str, Any] = {"n": int(len(q)), "q_mean": float(q.mean()), "v_mean": float(v.mean()),
                           "advantage": advantage_stats(q, v)}
    mc = g is not None and valid is not None and valid.sum() >= 3
    if mc:
        qv, vv, gv = q[valid], v[valid], g[valid]
        rep.update(n_mc=int(valid.sum()), mc_mean=float(gv.mean()),
                   q_mc_pearson=pearson(qv, gv), q_mc_spearman=pearson(_rank(qv), _rank(gv)),
                   v_mc_pearson=pearson(vv, gv),
                   # does Q rank the actions *at a state*? A = Q - V against the Monte-Carlo advantage G - V
                   adv_mc_pearson=pearson(qv - vv, gv - vv))
    if members is not None:  # how much do independently initialised critics agree on the advantage?
        k = len(members)
        pairs = [pearson(members[i], members[j]) for i in range(k) for j in range(i + 1, k)]
        ens: dict[str, Any] = {"members": k, "adv_pairwise_pearson": float(np.mean(pairs)),
                               "member_adv_std": [float(m.std()) for m in members]}
        if mc:
            ens["member_adv_mc_pearson"] = [pearson(m[valid], g[valid] - v[valid]) for m in members]
        rep["ensemble"] = ens
    return rep


def format_critic_report(rep: dict[str, Any]) -> str:
    a = rep["advantage"]
    line = (f"critic: Q mean {rep['q_mean']:.3g}, advantage std {a['std']:.3g} (p10 {a['p10']:.3g}, "
            f"p90 {a['p90']:.3g})")
    if "q_mc_pearson" in rep:
        line += (f"; corr(Q, MC return) {rep['q_mc_pearson']:.3f} (Spearman {rep['q_mc_spearman']:.3f}), "
                 f"corr(A, MC advantage) {rep['adv_mc_pearson']:.3f}, MC mean {rep['mc_mean']:.3g}")
    if "heldout" in rep:
        h = rep["heldout"]
        line += (f"; held-out episodes: corr(Q, MC) {h['q_mc_pearson']:.3f}, corr(A, MC advantage) "
                 f"{h['adv_mc_pearson']:.3f}")
    if "ensemble" in rep:
        e = rep["ensemble"]
        line += f"; {e['members']} members, their advantages correlate {e['adv_pairwise_pearson']:.2f} pairwise"
    return line


def policy_advantage(policy: Any, judge: Any, states: np.ndarray, adv: dict[str, float], *,
                     seed: int = 0) -> dict[str, float]:
    """How far up the critic a policy's own actions sit: A_n = (Q(s, a) - V(s) - adv mean) / adv std with
    a ~ ``policy`` (a LoadedPolicy, sampled as deployed) at ``states`` and Q, V from ``judge``'s critic; ``adv``
    is the critic's ``advantage`` stats over the logged actions, so 0 = an average logged action. A policy whose
    A_n rises while its closed-loop score falls is exploiting the critic's errors."""
    acts = policy.act(states, generator=torch.Generator().manual_seed(seed))  # same noise for every policy compared
    q, v = judge.q_v(states, acts)
    a_n = (q - v - adv["mean"]) / adv["std"]
    return {"adv_n_mean": float(a_n.mean()), "above_v": float((q > v).mean()), "n": int(len(states))}
