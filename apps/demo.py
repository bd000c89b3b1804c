"""The main job on an embedded default: collect demos -> zarr store -> IQL + GMPO -> closed-loop eval -> rerun."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from genctl.config import TrainConfig, build_config


def demo_defaults() -> dict[str, Any]:
    return yaml.safe_load(resources.files("genctl").joinpath("configs/demo.yaml").read_text())


def run_demo(out: Path, *, env_id: str | None = None, episodes: int = 10, fast: bool = False,
             overrides: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    from genctl.apps.collect import collect
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
    base = dict(d["train"], out_dir=str(out / "runs"))
    base["data"] = dict(base.get("data", {}), store=str(store))
    cfg = build_config(TrainConfig, base=base, overrides=overrides)
    print(f"[2/4] training IQL critic ({cfg.critic.steps} steps) and {cfg.policy.algo.upper()} "
          f"{cfg.model.kind} policy ({cfg.policy.steps} steps) on {cfg.device}")
    run_dir = train(cfg, overwrite=True, progress=progress)
    rrd = run_dir / "rollouts.rrd"
    print(f"[3/4] closed-loop evaluation: {episodes} episodes, rerun recording -> {rrd}")
    report = evaluate(run_dir, episodes=episodes, envs=1, rerun=("save", str(rrd)), rerun_episodes=min(episodes, 5),
                      frame_every=2 if not fast else 4, candidates=32, progress=progress)
    print("[4/4] results")
    print(format_report(report))
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
