"""Quality protocol (not a test): BC vs GMPO vs GMPG over seeds, through the real pipeline.

``--algos`` takes bc, bc10, gmpo, gmpg; bc10 is BC on the best 10 % of the episodes by return (``data.top_frac``),
the baseline that uses the better episodes without a critic.

    # PointMaze: collect noisy scripted-expert demos, then train + eval every algo x seed
    .venv/bin/python benchmarks/quality.py --env PointMaze_UMaze-v3 --noise 0.5 --random-frac 0.3 \
        --episodes 300 --out outputs/quality/umaze --seeds 0,1,2 --eval-episodes 30 --eval-envs 4
    # Hopper: ingest the D4RL-format file, report D4RL-normalised scores
    .venv/bin/python benchmarks/quality.py --ingest /work/shared/data/hopper_v5_mixed.hdf5 \
        --out outputs/quality/hopper --seeds 0,1,2 --eval-episodes 30 --set data.reward_scale=return_range

On Hopper keep 30 episodes: a GMPO policy's episodes either fall early or run long (per-episode std ~22 D4RL
points), so 10 episodes leave a standard error of ~7 — one run read 41.0 on 10 episodes and 24.0 on 30 fresh ones
(docs/results.md §3g).

Every stage is the ``genctl`` CLI in a subprocess (``genctl collect`` / ``genctl ingest``, ``genctl train``,
``genctl eval``), at most ``--parallel`` runs at once, each with ``threads=1``. Common training overrides come
from ``--set key=value`` (all algos) and ``--bc/--bc10/--gmpo/--gmpg key=value`` (one algo), on top of the defaults
below. A run whose ``eval.json`` already exists is not redone (``--force`` redoes it), so an interrupted
protocol can be restarted. Prints a markdown table (mean ± std over seeds of each run's success rate, or of its
mean D4RL-normalised score, ``--metric``; plus per-seed values) and writes ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GENCTL = [sys.executable, "-m", "genctl", "--quiet"]

# Budget only (CPU, 2 shared cores): network width, batch sizes, step counts, the policy lr that goes with the
# short budget, and the eval sampler's steps. Every *algorithm* hyperparameter (critic tau/lr/schedule, reward
# scale, advantage normalisation, beta, clamp) is the library default, the same on every dataset.
# 12000 policy steps (12-26 min on one shared core; was 3000): BC underfit at 3000 (hopper medium_replay 21.3 +- 1.6
# -> 23.7 +- 0.4, the data 24.4; docs/results.md §3f). GMPG keeps its own, unchanged budget below.
COMMON = ["threads=1", "model.kind=gvp", "model.hidden=[256,256,128]", "policy.batch_size=512", "policy.steps=12000",
          "policy.lr=3e-4", "eval.steps=16", "log_every=100", "ckpt_every=1000"]
PER_ALGO = {
    "bc": ["policy.algo=bc", "critic.steps=0"],
    # "10 % BC": BC on the best 10 % of the training episodes by return, the critic-free baseline that uses the
    # better episodes (the Decision Transformer paper's %BC); an offline-RL method should beat it, not only BC
    "bc10": ["policy.algo=bc", "critic.steps=0", "data.top_frac=0.1"],
    "gmpo": ["policy.algo=gmpo"],
    "gmpg": ["policy.algo=gmpg", "policy.steps=200", "policy.batch_size=256", "policy.lr=1e-4",
             "policy.behaviour_steps=3000", "policy.behaviour_lr=3e-4"],
}
# Extra deployment modes evaluated on the same trained run (no retraining): name -> genctl eval flags.
EVAL_MODES = {"det": ["--deterministic"], "t05": ["--temperature", "0.5"], "t025": ["--temperature", "0.25"],
              "q16": ["--select", "q", "--candidates", "16"],
              "q16t025": ["--select", "q", "--candidates", "16", "--temperature", "0.25"]}  # the demo's


def is_bc(algo: str) -> bool:
    return "policy.algo=bc" in PER_ALGO[algo]


def sh(cmd: list[str], log: Path) -> None:
    line = " ".join(shlex.quote(c) for c in cmd)
    with open(log, "a") as f:
        f.write(f"$ {line}\n")
        f.flush()
        # PYTHONSAFEPATH: ``python -m genctl`` run in the repo root must import the installed package, not the
        # source folder of the same name (whose subpackages live elsewhere, mapped only by the install).
        env = dict(os.environ, PYTHONSAFEPATH="1")
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise RuntimeError(f"command failed (rc {rc}, log {log}): {line}")


def make_store(args: argparse.Namespace, out: Path) -> Path:
    if args.store:
        return Path(args.store)
    store = out / "data.zarr"
    if store.exists() and not args.force_data:
        return store
    out.mkdir(parents=True, exist_ok=True)
    if args.ingest:
        cmd = [*GENCTL, "ingest", args.ingest, "-o", str(store), "--overwrite"]
    else:
        cmd = [*GENCTL, "collect", args.env, "--expert", args.expert, "--episodes", str(args.episodes),
               "--noise", str(args.noise), "--random-frac", str(args.random_frac), "--workers", str(args.parallel),
               "--seed", str(args.data_seed), "-o", str(store), "--overwrite"]
    sh(cmd, out / "data.log")
    return store


def _row(algo: str, seed: int, run: Path, ev_path: Path, wall: float) -> dict[str, Any]:
    ev = json.loads(ev_path.read_text())
    r = {"algo": algo, "seed": seed, "run": str(run), "success_rate": ev["success_rate"],
         "return": ev["return"]["mean"], "episodes": ev["return"]["n"], "wall_s": wall,
         "eval_wall_s": ev.get("wall_s"), "action_delta": (ev.get("action_delta") or {}).get("mean"),
         "length": ev["length"]["mean"]}
    if "normalized_score" in ev:
        r["normalized_score"] = ev["normalized_score"]["mean"]
        r["per_episode"] = [round(100.0 * (e["return"] - _ref(ev_path)[0]) / (_ref(ev_path)[1] - _ref(ev_path)[0]), 2)
                            for e in ev["episodes"]] if _ref(ev_path) else None
    crit = run / "critic.json"
    if crit.exists():
        c = json.loads(crit.read_text())
        r["critic"] = {k: c.get(k) for k in ("q_mc_pearson", "q_mc_spearman", "adv_mc_pearson")}
        r["critic"]["adv_std"] = c["advantage"]["std"]
        if "heldout" in c:  # validation episodes, never trained on
            r["critic"]["heldout_adv_mc_pearson"] = c["heldout"]["adv_mc_pearson"]
    return r


def _ref(ev_path: Path) -> tuple[float, float] | None:
    meta = sorted((ev_path.parent / "checkpoints").glob("*/meta.json"))
    if not meta:
        return None
    m = json.loads(meta[-1].read_text())
    lo, hi = m.get("ref_min_score"), m.get("ref_max_score")
    return (lo, hi) if lo is not None and hi is not None and hi != lo else None


_critic_locks: dict[int, threading.Lock] = {}
_critics_done: set[int] = set()  # seeds whose critic this invocation has (re)trained


def shared_critic(seed: int, store: Path, args: argparse.Namespace, out: Path) -> Path:
    """One IQL critic per seed (a run with policy.steps=0), trained once and reused by GMPO and GMPG through
    ``critic.from_run``: the algorithms are compared on the same critic, and it is not trained twice."""
    run = out / "runs" / f"critic-s{seed}"
    with _critic_locks.setdefault(seed, threading.Lock()):
        if not (run / "critic.json").exists() or (args.force and seed not in _critics_done):
            over = [*COMMON, *args.set, "policy.steps=0", f"data.store={store}", f"out_dir={out / 'runs'}",
                    f"name={run.name}", f"seed={seed}"]
            sh([*GENCTL, "train", *over, "--overwrite"], out / "logs" / f"{run.name}.log")
        _critics_done.add(seed)
    return run


_run_locks: dict[tuple[str, int], threading.Lock] = {}
_runs_done: dict[tuple[str, int], list[dict[str, Any]]] = {}  # this invocation's rows per algo x seed


def one_run(algo: str, seed: int, store: Path, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """One algo x seed, once per invocation (GMPG with ``--gmpg-mu bc`` asks for the seed's BC run too)."""
    with _run_locks.setdefault((algo, seed), threading.Lock()):
        if (algo, seed) not in _runs_done:
            _runs_done[algo, seed] = _one_run(algo, seed, store, args, out)
        return _runs_done[algo, seed]


def _one_run(algo: str, seed: int, store: Path, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Train (unless done) and evaluate one algo x seed; then each extra deployment mode on the same run."""
    name = f"{algo}-s{seed}"
    run = out / "runs" / name
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    ev_path = run / "eval.json"
    t0 = time.time()
    if args.report_only and not ev_path.exists():
        raise RuntimeError(f"{ev_path} missing (--report-only)")
    if args.force or not ev_path.exists():
        fixed = ["critic.steps=0"] if is_bc(algo) else []  # BC needs no critic, whatever --set says
        if not is_bc(algo) and not args.own_critic:
            fixed = [f"critic.from_run={shared_critic(seed, store, args, out)}"]
        if algo == "gmpg" and args.gmpg_mu == "bc":  # mu = this seed's BC policy (trained and evaluated first)
            bc_run = Path(one_run("bc", seed, store, args, out)[0]["run"])
            fixed += [f"policy.behaviour_from_run={bc_run}"]
        over = [*COMMON, *PER_ALGO[algo], *args.set, *getattr(args, algo), *fixed, f"data.store={store}",
                f"out_dir={out / 'runs'}", f"name={name}", f"seed={seed}"]
        sh([*GENCTL, "train", *over, "--overwrite"], log)
        sh([*GENCTL, "eval", str(run), "--episodes", str(args.eval_episodes), "--envs", str(args.eval_envs)], log)
    rows = [_row(algo, seed, run, ev_path, time.time() - t0)]
    for mode in args.modes:
        if mode.startswith("q") and is_bc(algo):
            continue  # BC has no critic to rank with
        mpath = run / f"eval-{mode}.json"
        t1 = time.time()
        if args.force or not mpath.exists():
            if args.report_only:
                raise RuntimeError(f"{mpath} missing (--report-only)")
            sh([*GENCTL, "eval", str(run), "--episodes", str(args.eval_episodes), "--envs", str(args.eval_envs),
                *EVAL_MODES[mode], "-o", str(mpath)], log)
        rows.append(_row(f"{algo}+{mode}", seed, run, mpath, time.time() - t1))
    for r in rows:
        print(f"  done {r['algo']}-s{seed}: success {r['success_rate']:.3f}  return {r['return']:.2f}"
              + (f"  normalised {r['normalized_score']:.1f}" if "normalized_score" in r else "")
              + f"  ({r['wall_s']:.0f} s)", flush=True)
    return rows


def mean_std(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n if n else math.nan
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return m, s


def table(results: list[dict[str, Any]], algos: list[str], seeds: list[int], metric: str) -> str:
    scale = 1.0 if metric == "normalized_score" else 100.0
    head = "D4RL-normalised score" if metric == "normalized_score" else "success rate (%)"
    lines = [f"| algo | {head}, mean ± std over seeds | return, mean over seeds | "
             + " | ".join(f"seed {s}" for s in seeds) + " | mean |a_t - a_t-1| | wall s per run |",
             "|---|---:|---:|" + "---:|" * len(seeds) + "---:|---:|"]
    for a in algos:
        rs = {r["seed"]: r for r in results if r["algo"] == a}
        vals = [scale * rs[s][metric] for s in seeds if s in rs]
        if not vals:
            continue
        m, sd = mean_std(vals)
        rm, _ = mean_std([rs[s]["return"] for s in seeds if s in rs])
        cells = [f"{scale * rs[s][metric]:.1f}" if s in rs else "-" for s in seeds]
        jd = [rs[s]["action_delta"] for s in seeds if s in rs and rs[s].get("action_delta") is not None]
        wall, _ = mean_std([rs[s]["wall_s"] for s in seeds if s in rs])
        lines.append(f"| {a} | {m:.1f} ± {sd:.1f} | {rm:.2f} | " + " | ".join(cells)
                     + f" | {mean_std(jd)[0]:.3f} | {wall:.0f} |" if jd else
                     f"| {a} | {m:.1f} ± {sd:.1f} | {rm:.2f} | " + " | ".join(cells) + f" | - | {wall:.0f} |")
    return "\n".join(lines)


def critic_line(out: Path, seeds: list[int]) -> str:
    """Is the shared critic right? Its critic.json per seed (corr with Monte-Carlo returns, advantage spread)."""
    reps = {s: json.loads(p.read_text()) for s in seeds if (p := out / "runs" / f"critic-s{s}" / "critic.json").exists()}
    if not reps:
        return ""

    def cells(f) -> str:
        return " / ".join(f(r) for r in reps.values())

    return (f"critic (seeds {', '.join(map(str, reps))}): corr(Q, MC return) "
            f"{cells(lambda r: format(r.get('q_mc_pearson', float('nan')), '.3f'))}, "
            f"corr(A, MC advantage) {cells(lambda r: format(r.get('adv_mc_pearson', float('nan')), '.3f'))} "
            f"(held-out episodes {cells(lambda r: format(r.get('heldout', {}).get('adv_mc_pearson', float('nan')), '.3f'))}), "
            f"advantage std {cells(lambda r: format(r['advantage']['std'], '.3g'))}")


def behaviour_line(store: Path, metric: str) -> str:
    """The data's own score: the bar every policy is compared against."""
    import numpy as np

    sys.path.insert(0, str(ROOT.parent))
    from genctl.datasets import EpisodeStore, best_episodes

    st = EpisodeStore.open(store)
    if metric == "normalized_score":
        lo, hi = st.attrs.get("ref_min_score"), st.attrs.get("ref_max_score")
        if lo is None or hi is None:
            return "behaviour data: no reference scores in the store"
        sc = 100.0 * (st.episode_returns() - lo) / (hi - lo)
        p10, p90 = np.percentile(sc, [10, 90])
        top = sc[best_episodes(sc, np.arange(len(sc)), 0.1)]  # what bc10 learns from (its data's own score)
        return (f"behaviour data ({st.n_episodes} episodes): D4RL-normalised {sc.mean():.1f} "
                f"(p10 {p10:.1f}, p90 {p90:.1f}, best {sc.max():.1f}; best 10 % of episodes {top.mean():.1f})")
    succ = st.attrs.get("provenance", {}).get("success_rate")
    rets = st.episode_returns()
    frac = float((rets > 0).mean())
    return f"behaviour data ({st.n_episodes} episodes): success {100 * (succ if succ is not None else frac):.1f} %"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="PointMaze_UMaze-v3", help="env for genctl collect")
    ap.add_argument("--expert", default="maze")
    ap.add_argument("--episodes", type=int, default=300, help="demo episodes to collect")
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--random-frac", type=float, default=0.3)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--ingest", help="ingest this file/dataset instead of collecting (e.g. a D4RL-format HDF5)")
    ap.add_argument("--store", help="use this existing zarr store (no collect/ingest)")
    ap.add_argument("--force-data", action="store_true", help="re-collect/re-ingest even if OUT/data.zarr exists")
    ap.add_argument("--out", required=True, help="output folder (store, runs/, logs/, results.json)")
    ap.add_argument("--algos", default="bc,gmpo,gmpg")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, help="policy.steps for bc and gmpo (shortcut for --bc/--gmpo)")
    ap.add_argument("--parallel", type=int, default=2, help="trainings at once (each threads=1)")
    ap.add_argument("--eval-episodes", type=int, default=30)
    ap.add_argument("--eval-envs", type=int, default=4)
    # action="extend": a repeated flag adds to the list (with plain nargs="*" the last one silently replaced it)
    ap.add_argument("--set", nargs="*", action="extend", default=[], metavar="K=V", help="overrides for every algo")
    for a in PER_ALGO:
        ap.add_argument(f"--{a}", nargs="*", action="extend", default=[], metavar="K=V",
                        help=f"overrides for {a} only (repeatable)")
    ap.add_argument("--metric", choices=["auto", "success_rate", "normalized_score"], default="auto",
                    help="table metric; auto = normalized_score when every run's eval has one (D4RL-style data "
                    "with reference scores), else success_rate")
    ap.add_argument("--modes", default="", help=f"extra deployment modes evaluated on each trained run, "
                    f"comma-separated from {sorted(EVAL_MODES)} (rows algo+mode; bc skips the q modes)")
    ap.add_argument("--own-critic", action="store_true",
                    help="train a critic inside every GMPO/GMPG run instead of one shared critic per seed")
    ap.add_argument("--gmpg-mu", choices=["own", "bc"], default="bc",
                    help="GMPG's behaviour model mu: own = fitted inside the GMPG run (policy.behaviour_steps); bc = "
                    "the same seed's BC run (policy.behaviour_from_run; trained first if missing), so GMPG starts "
                    "from, and is held near, the BC policy of its row (the default since docs/results.md §3m)")
    ap.add_argument("--report-only", action="store_true", help="train nothing: tabulate the runs that have eval.json")
    ap.add_argument("--force", action="store_true", help="redo runs that already have eval.json")
    args = ap.parse_args()
    if args.steps:
        args.bc = [f"policy.steps={args.steps}", *args.bc]
        args.gmpo = [f"policy.steps={args.steps}", *args.gmpo]

    out = Path(args.out)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in EVAL_MODES]
    if bad:
        ap.error(f"unknown --modes {bad}; choose from {sorted(EVAL_MODES)}")
    def keys(items: list[str]) -> set[str]:
        return {i.split("=", 1)[0] for i in items}

    for a in algos:  # --set comes after an algo's own budget (PER_ALGO): say when it replaces one
        hit = sorted((keys(args.set) & keys(PER_ALGO.get(a, []))) - keys(getattr(args, a, [])))
        if hit:
            print(f"note: --set {', '.join(hit)} replaces {a}'s own budget ({' '.join(PER_ALGO[a])}); "
                  f"--{a} key=value sets it for {a} alone", file=sys.stderr, flush=True)
    t0 = time.time()
    store = Path(args.store) if args.report_only and args.store else make_store(args, out)
    print(f"store {store}; {len(algos)} algos x {len(seeds)} seeds, {args.parallel} at once", flush=True)
    jobs = [(a, s) for s in seeds for a in algos]
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futs = {pool.submit(one_run, a, s, store, args, out): (a, s) for a, s in jobs}
        for f, (a, s) in futs.items():
            try:
                results.extend(f.result())
            except Exception as e:  # keep the other runs; report the failure
                errors.append(f"{a}-s{s}: {e}")
                print(f"  FAILED {a}-s{s}: {e}", flush=True)
    metric = args.metric
    if metric == "auto":  # from the results, so --store of an ingested D4RL set reports scores too
        scored = results and all(r.get("normalized_score") is not None for r in results)
        metric = "normalized_score" if scored else "success_rate"
    rows = [a for a in algos] + [f"{a}+{m}" for a in algos for m in args.modes]
    md = behaviour_line(store, metric) + "\n" + critic_line(out, seeds) + "\n\n" + table(results, rows, seeds, metric)
    print()
    print(md)
    if errors:
        print("\nfailed runs:\n  " + "\n  ".join(errors))
    print(f"\ntotal wall {time.time() - t0:.0f} s")
    summary = {"command": " ".join(shlex.quote(c) for c in sys.argv), "store": str(store), "metric": metric,
               "common_overrides": COMMON + args.set,
               "per_algo_overrides": {a: PER_ALGO[a] + getattr(args, a) for a in algos},
               "eval_episodes": args.eval_episodes, "eval_envs": args.eval_envs, "results": results,
               "table": md, "errors": errors, "wall_s": time.time() - t0}
    tmp = out / "results.json.tmp"  # atomic: an interrupted write leaves the previous results.json whole
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "results.json")
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
