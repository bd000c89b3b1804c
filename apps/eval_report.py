"""The evaluation report: per-episode outcomes, their summaries with 95 % intervals, and its text form."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from genctl.apps.policy import LoadedPolicy
from genctl.apps.rollout_state import Episode, LatencyStats


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion: stays inside [0, 1] and is not degenerate at 0 or n
    successes, unlike mean +- t * sd / sqrt(n) (which printed [0.79, 1.01] for 27 of 30)."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise(values: np.ndarray) -> dict[str, float]:
    n = len(values)
    if n and np.isin(values, (0.0, 1.0)).all():  # a 0/1 outcome (sparse goal reward): binomial interval
        lo, hi = wilson_interval(float(np.sum(values)), n)
        std = float(np.std(values, ddof=1)) if n > 1 else 0.0
        return {"mean": float(np.mean(values)), "std": std, "ci95_low": lo, "ci95_high": hi, "n": n}
    mean = float(np.mean(values)) if n else math.nan
    std = float(np.std(values, ddof=1)) if n > 1 else 0.0
    try:
        from scipy import stats

        tq = float(stats.t.ppf(0.975, n - 1)) if n > 1 else math.nan
    except ImportError:
        tq = 1.96
    half = tq * std / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half, "n": n}


def build_report(results: list[Episode], policy: LoadedPolicy, latencies: list[float], env_steps: int,
                 wall: float, *, solver: str, steps: int, k: int) -> dict[str, Any]:
    results = sorted(results, key=lambda e: e.index)
    rets = np.array([e.ret for e in results], dtype=np.float64)
    lo, hi = policy.meta.get("ref_min_score"), policy.meta.get("ref_max_score")
    report: dict[str, Any] = {
        "env": policy.env_info.get("id") if policy.env_info else None,
        "checkpoint": str(policy.ck.path), "solver": solver, "steps": steps, "envs": k,
        "episodes": [{"index": e.index, "seed": e.seed, "return": e.ret, "length": e.length, "success": e.success,
                      "final_success": e.final_success, "end": e.end} for e in results],
        "return": summarise(rets),
        "success_rate": float(np.mean([e.success for e in results])) if results else math.nan,
        "final_success_rate": float(np.mean([e.final_success for e in results])) if results else math.nan,
        "success_ci95": list(wilson_interval(sum(e.success for e in results), len(results))),
        "length": summarise(np.array([e.length for e in results], dtype=np.float64)),
        # mean over episodes of mean_t mean_d |a_t - a_{t-1}|: a controller is smooth, imitated noise is not
        "action_delta": summarise(np.array([e.action_delta / max(e.length - 1, 1) for e in results], np.float64)),
        "faults": sum(1 for e in results if e.end not in ("terminated", "truncated")),
        "latency_ms": LatencyStats(latencies).summary_ms(),
        "control_rate_hz": env_steps / wall if wall > 0 else math.nan,
        "env_steps": env_steps, "wall_s": wall,
    }
    if lo is not None and hi is not None and hi != lo:
        report["normalized_score"] = summarise(100.0 * (rets - lo) / (hi - lo))
    return report


def _mode(r: dict[str, Any]) -> str:
    t = r.get("temperature", 1.0)
    how = "deterministic" if t == 0 else ("sampled" if t == 1 else f"temperature {t:g}")
    if r.get("weights") == "raw":  # the optimiser's last weights, not the moving average
        how += ", raw weights"
    if r.get("select") == "q":
        return f"best-Q of {r['candidates']} {how}"
    return how


def format_report(r: dict[str, Any]) -> str:
    ret = r["return"]
    lo, hi = r.get("success_ci95") or (math.nan, math.nan)  # older eval.json files predate the interval
    lines = [
        f"env {r['env']}  episodes {ret['n']}  solver {r['solver']}/{r['steps']} steps  envs {r['envs']}  "
        f"action: {_mode(r)}",
        f"  return        {ret['mean']:9.2f} ± {ret['std']:.2f}   95% CI [{ret['ci95_low']:.2f}, {ret['ci95_high']:.2f}]",
        f"  success rate  {100 * r['success_rate']:8.1f}%   95% CI [{100 * lo:.1f}, {100 * hi:.1f}] (Wilson)   "
        f"(final-step {100 * r['final_success_rate']:.1f}%)",
    ]
    if "normalized_score" in r:
        ns = r["normalized_score"]
        lines.append(f"  normalised    {ns['mean']:9.2f} ± {ns['std']:.2f}")
    if "action_delta" in r:
        lines.append(f"  |a_t - a_t-1| {r['action_delta']['mean']:9.3f}   (mean per step and dimension)")
    lat = r["latency_ms"]
    lines.append(f"  policy call   p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms   loop {r['control_rate_hz']:.0f} steps/s")
    if r.get("horizon", 1) > 1 or r.get("n_obs_steps", 1) > 1:
        lines.append(f"  chunking      {r['n_obs_steps']} obs -> {r['horizon']} actions, {r['n_action_steps']} "
                     f"executed per call; {r['policy_calls']} calls, {r['actions_per_chunk']:.2f} actions/chunk")
    if r["faults"]:
        lines.append(f"  faults        {r['faults']} episode(s) ended by the simulator (see eval.json 'end')")
    return "\n".join(lines)
