"""The main job on an embedded default: collect demos -> zarr store -> IQL + GMPO -> closed-loop eval -> rerun."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from genctl.config import TrainConfig, build_config
from genctl.datasets import EpisodeStore
from genctl.policies.optim import cpu_has_fast_bf16


def behaviour_summary(store: Path) -> dict[str, float]:
    """What the demos themselves do: success rate (episodes whose return is positive: the sparse goal reward)
    and how jumpy their actions are (mean over steps and dims of |a_t - a_{t-1}|, within episodes)."""
    st = EpisodeStore.open(store)
    act = st.load(["action"])["action"].astype(np.float64)
    ends = st.episode_ends
    d = np.abs(np.diff(act, axis=0)).mean(1)
    within = np.ones(len(d), bool)
    within[ends[:-1] - 1] = False  # no delta across an episode boundary
    return {"success_rate": float((st.episode_returns() > 0).mean()), "action_delta": float(d[within].mean()),
            "episodes": st.n_episodes}


def demo_defaults() -> dict[str, Any]:
    return yaml.safe_load(resources.files("genctl").joinpath("configs/demo.yaml").read_text())


def run_demo(out: Path, *, env_id: str | None = None, episodes: int = 30, fast: bool = False,
             overrides: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    from genctl.apps.collect import collect, collect_summary
    from genctl.apps.evaluate import evaluate, format_report
    from genctl.apps.train import train

    t0 = time.perf_counter()
    d = demo_defaults()
    c = d["collect"]
    if env_id:
        c["env"] = env_id
    if fast:  # smoke-test budgets
        c["episodes"] = 40
        d["train"]["critic"]["steps"] = 100
        d["train"]["policy"]["steps"] = 150
        d["train"]["model"]["hidden"] = [64, 64, 64]
    out = Path(out)
    store = out / "data" / f"{c['env']}.zarr"
    print(f"[1/4] collecting {c['episodes']} demos in {c['env']} (expert {c['expert']}, noise {c['noise']}, "
          f"random {c['random_frac']:.0%}) -> {store}")
    collect(c["env"], expert=c["expert"], episodes=c["episodes"], noise=c["noise"], random_frac=c["random_frac"],
            workers=c["workers"], seed=c["seed"], out=store, overwrite=True, progress=progress)
    print("      " + collect_summary(store))
    base = dict(d["train"], out_dir=str(out / "runs"))
    base["data"] = dict(base.get("data", {}), store=str(store))
    if d.get("amp_where_fast") and cpu_has_fast_bf16():
        # bf16 autocast of both networks: same success and smoothness on this demo (docs/results.md §3d), and
        # what keeps it within 5 minutes on 2 cores; a CPU without bf16 instructions trains in fp32.
        base["amp"] = True
        base["critic"] = dict(base.get("critic", {}), amp=True)
    cfg = build_config(TrainConfig, base=base, overrides=overrides)
    precision = "bf16 autocast" if cfg.amp else "fp32"
    print(f"[2/4] training IQL critic ({cfg.critic.steps} steps) and {cfg.policy.algo.upper()} "
          f"{cfg.model.kind} policy ({cfg.policy.steps} steps) on {cfg.device}, {precision}")
    run_dir = train(cfg, overwrite=True, progress=progress)
    rrd = run_dir / "rollouts.rrd"
    print(f"[3/4] closed-loop evaluation: {episodes} episodes, rerun recording -> {rrd}")
    report = evaluate(run_dir, episodes=episodes, envs=min(4, episodes), rerun=("save", str(rrd)), rerun_episodes=min(episodes, 5),
                      frame_every=2 if not fast else 4, candidates=32, progress=progress)
    print("[4/4] results")
    print(format_report(report))
    data = behaviour_summary(store)
    gain = 100 * (report["success_rate"] - data["success_rate"])
    print(f"\npolicy vs its demos: success {100 * report['success_rate']:.0f} % over {report['return']['n']} episodes "
          f"vs {100 * data['success_rate']:.0f} % of the {data['episodes']} demos ({gain:+.0f} points); "
          f"|a_t - a_t-1| {report['action_delta']['mean']:.3f} vs {data['action_delta']:.3f} in the demos")
    report["behaviour"] = data
    print(f"\noutputs in {out.resolve()}:")
    print(f"  store        {store}")
    print(f"  run          {run_dir}  (config.yaml, checkpoints/, metrics.jsonl, eval.json)")
    print(f"  recording    {rrd}")
    rerun_bin = Path(sys.executable).parent / "rerun"
    rr = str(rerun_bin) if rerun_bin.exists() else "rerun"
    with contextlib.suppress(ValueError):
        rr = os.path.relpath(rr)
    print(f"view it:  {rr} {rrd}")
    print(f"   or (headless, open the printed URL in a browser):  {rr} --serve-web --bind 127.0.0.1 {rrd}")
    print(f"total time {time.perf_counter() - t0:.0f} s")
    return report
