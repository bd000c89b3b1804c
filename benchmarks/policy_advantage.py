"""How far up its critic a policy has climbed (diagnostic, not a test): the advantage of the policy's own actions.

    .venv/bin/python benchmarks/policy_advantage.py --critic runs/critic-s3 runs/bc-s3 runs/gmpg-s3 \
        runs/gmpg-s3/checkpoints/step-000000150

For each run (or checkpoint folder), one action is sampled (deployed EMA weights, and with ``--raw`` also the
optimiser's last weights; the run's own sampler and temperature 1) at each of ``--states`` training states drawn
from the critic's store; the critic scores it as
A_n = (Q(s, a) - V(s) - mean) / std, with mean and std of the *logged* actions' advantage from the critic run's
``critic.json`` (the same scale GMPO and GMPG use, so 0 = an average logged action, +1 = one spread better).
Prints mean A_n, the fraction of actions above V, and the run's closed-loop score next to it when its
``eval.json`` (or, for a checkpoint, ``evals/<checkpoint>.json``) exists: a policy whose A_n rises while its
score falls is exploiting the critic's errors rather than finding better actions.

``--mu RUN`` adds KL(pi || mu) in bits per action dimension (the unit of GMPG's KL term), mu = that run's deployed
weights (GMPG's ``behaviour_from_run``): the mean over the states of log pi(a|s) - log mu(a|s) at the policy's
own samples, both densities by the same reverse probability flow (``--kl-steps`` Euler steps, exact trace), so it
is 0 at pi = mu. The sampler's distribution is not exactly the reverse flow's, so this is an estimate, not a
bound: values within ~0.06 of 0 are noise (a walker GMPG run read -0.06). (GMPG's training term scores log pi on
the sampling trajectory instead; see GMPG's docstring.)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from genctl.apps.critic_report import policy_advantage
from genctl.apps.policy import LoadedPolicy, find_checkpoint
from genctl.datasets import EpisodeStore


def closed_loop_score(path: Path, weights: str = "ema") -> float | None:
    """D4RL-normalised score (or success rate in %) of the eval written for this run or checkpoint (for the raw
    weights of a run: its ``eval-raw.json``, from ``genctl eval RUN --weights raw -o RUN/eval-raw.json``)."""
    if (path / "config.yaml").exists():
        ev = path / ("eval.json" if weights == "ema" else "eval-raw.json")
    elif weights == "ema":
        ev = path.parent.parent / "evals" / f"{path.name}.json"
    else:  # a checkpoint's in-training evals used its EMA weights
        return None
    if not ev.exists():
        return None
    r = json.loads(ev.read_text())
    return r["normalized_score"]["mean"] if "normalized_score" in r else 100.0 * r["success_rate"]


def kl_bits_per_dim(pol: LoadedPolicy, mu: LoadedPolicy, states: np.ndarray, *, steps: int, seed: int = 0,
                    rows: int = 512) -> float:
    """Monte-Carlo KL(pi || mu) / (D ln 2) at the first ``rows`` states (exact densities carry D tangents per
    row): actions from pi's own sampler, both log-densities by the reverse flow on the same grid."""
    for p in (pol, mu):
        if p.n_obs_steps != 1 or p.horizon != 1 or p.obs_spec is not None:
            raise SystemExit(f"{p.ck.path}: --mu needs single-step state policies (one observation, one action)")
    s = states[:rows]
    cond = torch.as_tensor(pol.obs_norm.normalize(s), dtype=torch.float32)
    if not np.allclose(mu.obs_norm.normalize(s), cond.numpy(), atol=1e-5):
        raise SystemExit(f"{mu.ck.path}: mu normalises observations differently from the policy")
    kw = dict(steps=steps, solver="euler", exact_trace=True)
    with torch.no_grad():
        a = pol.model.sample(cond, steps=pol.steps, solver=pol.solver, generator=torch.Generator().manual_seed(seed))
        diff = pol.model.log_prob(a, cond, **kw) - mu.model.log_prob(a, cond, **kw)
    return float(diff.mean()) / (pol.action_dim * math.log(2.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("runs", nargs="+", help="run folders or checkpoint folders to score")
    ap.add_argument("--critic", required=True, help="run whose critic (and critic.json scale) scores the actions")
    ap.add_argument("--states", type=int, default=4096, help="training states sampled from the critic's store")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--raw", action="store_true", help="also score each run's raw (non-EMA) weights")
    ap.add_argument("--mu", help="also print KL(pi || mu) in bits per dimension, mu = this run's deployed policy")
    ap.add_argument("--kl-steps", type=int, default=32, help="reverse-flow Euler steps of the KL's densities")
    args = ap.parse_args()

    critic_run = Path(args.critic)
    judge = LoadedPolicy.from_run(critic_run)
    if judge.critic is None:
        ap.error(f"{critic_run} has no critic (pass a GMPO/GMPG run or a critic-only run)")
    adv = json.loads((critic_run / "critic.json").read_text())["advantage"]
    store = EpisodeStore.open(judge.meta["config"]["data"]["store"])
    obs = store.load(["obs"])["obs"].astype(np.float32)
    rng = np.random.default_rng(args.seed)
    states = obs[rng.choice(len(obs), size=min(args.states, len(obs)), replace=False)]

    print(f"critic {critic_run}; {len(states)} training states; A_n in units of the logged actions' advantage "
          f"spread ({adv['std']:.4g}), 0 = an average logged action")
    mu = LoadedPolicy(find_checkpoint(Path(args.mu))) if args.mu else None
    print("| run | mean A_n | A > V |" + (" KL(pi‖mu) bits/dim |" if mu else "") + " closed-loop score |\n|---|---:|---:|"
          + ("---:|" if mu else "") + "---:|")
    for r in args.runs:
        path = Path(r)
        for weights in ("ema", "raw") if args.raw else ("ema",):
            pol = LoadedPolicy(find_checkpoint(path), use_ema=weights == "ema")
            r_adv = policy_advantage(pol, judge, states, adv, seed=args.seed)
            score = closed_loop_score(path, pol.weights)
            kl = f" {kl_bits_per_dim(pol, mu, states, steps=args.kl_steps, seed=args.seed):.3f} |" if mu else ""
            print(f"| {r}{' (raw)' if pol.weights == 'raw' else ''} | {r_adv['adv_n_mean']:+.2f} | "
                  f"{100 * r_adv['above_v']:.0f} % |{kl} " + ("—" if score is None else f"{score:.1f}") + " |",
                  flush=True)


if __name__ == "__main__":
    main()
