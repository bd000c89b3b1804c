"""Scripted-expert benchmark: success rate, episodes/s and env steps/s per (env, expert), clean and noisy.

    .venv/bin/python benchmarks/experts.py                 # default episode counts (about 1-2 min, 1 core)
    .venv/bin/python benchmarks/experts.py --episodes 20   # quick look
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from genctl.apps.collect import run_expert  # noqa: E402

CASES = [
    ("PointMaze_UMaze-v3", "maze", 100),
    ("PointMaze_Medium-v3", "maze", 200),
    ("PointMaze_Large-v3", "maze", 200),
    ("PointMaze_Large_Diverse_GR-v3", "maze", 100),
    ("FetchReach-v4", "fetch", 100),
    ("FetchPush-v4", "fetch", 100),
    ("FetchPickAndPlace-v4", "fetch", 200),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=None, help="episodes per case (default: per-case counts)")
    p.add_argument("--noise", type=float, nargs="*", default=[0.0, 0.3], help="action-noise sigmas to run")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"{'env':32s} {'expert':7s} {'noise':>5s} {'episodes':>8s} {'success':>8s} {'return':>8s} "
          f"{'length':>7s} {'ep/s':>7s} {'steps/s':>8s}")
    for env_id, expert, n in CASES:
        for sigma in args.noise:
            r = run_expert(env_id, expert, args.episodes or n, args.seed, noise=sigma)
            print(f"{env_id:32s} {expert:7s} {sigma:5.2f} {r['episodes']:8d} {r['success_rate']:8.1%} "
                  f"{r['mean_return']:8.2f} {r['mean_length']:7.1f} {r['episodes_per_s']:7.1f} "
                  f"{r['steps_per_s']:8.0f}", flush=True)


if __name__ == "__main__":
    main()
