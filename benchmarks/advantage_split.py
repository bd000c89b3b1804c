"""Does GMPO's advantage prefer the better episodes? (diagnostic, not a test; no policy is trained or scored)

    .venv/bin/python benchmarks/advantage_split.py runs/critic-s1 --lambdas 0.95,1

On mixed-quality data (medium_expert: a medium and an expert policy, half the transitions each) the better
episodes are known from their returns; an advantage that lets GMPO pick the better behaviour has to give their
actions more of GMPO's weight than their share of the rows, above all in the first steps of an episode, where
the episodes still share their states and the policy decides which behaviour it follows.

For a critic run (its store, every episode; rewards scaled as its training scaled them), the episodes are split
at the return quantile ``--top`` (0.75: the best quarter). For each advantage GMPO can use (``q`` = Q - V of the
critic, the default; ``gae`` with each ``--lambdas`` value: 1 = Monte-Carlo return - V), normalised like GMPO's
(A_n = (A - mean) / std), prints the mean A_n of the best episodes' rows and of the rest, and the share of GMPO's
weight min(exp(beta A_n), clamp) at the library defaults that lands on the best episodes' rows, against their
share of the rows: in the first ``--early`` steps of each episode and after them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from genctl.algos.gmpo import GMPOPolicyConfig
from genctl.apps.gae import gae_advantages
from genctl.apps.policy import LoadedPolicy
from genctl.apps.train import reward_scale
from genctl.config import TrainConfig
from genctl.datasets import EpisodeStore


def split_line(name: str, adv: np.ndarray, best: np.ndarray, rows: np.ndarray, beta: float, clamp: float) -> str:
    a_n = (adv - adv.mean()) / adv.std()
    w = np.minimum(np.exp(np.minimum(beta * a_n, 50.0)), clamp)  # (the min: no overflow warning past the clamp)
    b, r = best & rows, ~best & rows
    return (f"| {name} | {a_n[b].mean():+.2f} | {a_n[r].mean():+.2f} | {w[b].sum() / w[rows].sum():.2f} | "
            f"{b.sum() / rows.sum():.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("critic", help="a run with a critic (critic-only, GMPO or GMPG)")
    ap.add_argument("--lambdas", default="0.95,1", help="GAE lambdas to show beside q (comma-separated)")
    ap.add_argument("--top", type=float, default=0.75, help="return quantile above which an episode is 'best'")
    ap.add_argument("--early", type=int, default=50, help="the first steps of each episode, shown apart")
    args = ap.parse_args()

    judge = LoadedPolicy.from_run(Path(args.critic))
    if judge.critic is None:
        ap.error(f"{args.critic} has no critic")
    cfg = TrainConfig.model_validate(judge.meta["config"])
    store = EpisodeStore.open(cfg.data.store)
    d = store.load(["obs", "action", "reward", "next_obs", "terminated"])
    rets, lengths = store.episode_returns(), store.episode_lengths()
    episode = np.repeat(np.arange(store.n_episodes), lengths)
    step = np.arange(len(episode)) - (store.episode_ends - lengths)[episode]
    best = (rets >= np.quantile(rets, args.top))[episode]
    obs, act = d["obs"].astype(np.float32), d["action"].astype(np.float32)
    q, v = judge.q_v(obs, act)
    v_next = judge.q_v(d["next_obs"].astype(np.float32), act)[1]
    advs = {"q (Q - V)": q - v}
    for lam in (float(x) for x in args.lambdas.split(",") if x.strip()):
        advs[f"gae, lambda {lam:g}"] = gae_advantages(v, v_next, d["reward"] * reward_scale(cfg, store),
                                                      d["terminated"].astype(np.float64), lengths,
                                                      cfg.critic.gamma, lam)
    gmpo = GMPOPolicyConfig()
    beta, clamp = gmpo.resolved_beta(), gmpo.clamp
    print(f"{store.path}: {store.n_episodes} episodes; best = return >= the {args.top:g} quantile "
          f"({int((rets >= np.quantile(rets, args.top)).sum())} episodes); GMPO weights min(exp({beta:g} A_n), "
          f"{clamp:g})")
    for title, rows in ((f"first {args.early} steps of each episode", step < args.early),
                        (f"steps >= {args.early}", step >= args.early)):
        print(f"\n{title}\n| advantage | mean A_n, best episodes | mean A_n, rest | weight share of best | "
              "row share of best |\n|---|---:|---:|---:|---:|")
        for name, adv in advs.items():
            print(split_line(name, adv, best, rows, beta, clamp))


if __name__ == "__main__":
    main()
