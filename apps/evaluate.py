"""Closed-loop evaluation: the learned sampler drives MuJoCo envs; every episode, latency and fault is measured.

K envs run side by side with one batched policy call per control step; episode i always uses eval seed i,
so results do not depend on K. A policy trained with observation history / action chunking is fed the last
``n_obs_steps`` observations of each env (the reset observation repeated at episode start) and runs receding
horizon: it is called for an env only when that env's action queue is empty, and the first ``n_action_steps``
of the ``horizon`` predicted actions are queued (the batched call covers the envs whose queues ran out). A diverging simulator (NaN state, MuJoCo instability warning, exception)
ends only that episode, with the reason recorded.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genctl.apps.blueprints import RolloutLayout, rollout_blueprint
from genctl.apps.distributed import gather, init_distributed, resolve_device
from genctl.apps.policy import LoadedPolicy
from genctl.apps.rollout_log import RolloutLogger, trace_point
from genctl.apps.viz import Viewer
from genctl.envs import eval_seeds, make_env_from_info, sim_data
from genctl.errors import GenctlError
from genctl.fsutil import atomic_write_json
from genctl.progress import progress_bar

log = logging.getLogger("genctl.eval")

# mjtWarning members that mean the simulation blew up. Their indices come from mujoco itself: they differ
# between versions (3.11: BADQPOS=3, BADQVEL=4, BADQACC=5), and a wrong index silently disabled detection.
_BAD_WARNING_NAMES = {"mjWARN_BADQPOS": "bad_qpos", "mjWARN_BADQVEL": "bad_qvel", "mjWARN_BADQACC": "bad_qacc"}


@functools.cache
def _bad_warnings() -> dict[int, str]:
    import mujoco

    return {int(getattr(mujoco.mjtWarning, k)): v for k, v in _BAD_WARNING_NAMES.items()}


@dataclass
class Episode:
    index: int
    seed: int
    ret: float = 0.0
    length: int = 0
    success: bool = False
    final_success: bool = False
    end: str = ""
    rewards: list[float] = field(default_factory=list)
    prev_action: np.ndarray | None = None
    action_delta: float = 0.0  # sum over steps of mean_d |a_t - a_{t-1}| (how jumpy the executed actions are)


def _warning_counts(env: Any) -> dict[int, int]:
    data = sim_data(env)
    if data is None or not hasattr(data, "warning"):
        return {}
    try:
        return {i: int(data.warning[i].number) for i in _bad_warnings()}
    except Exception:
        return {}


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


def evaluate(run: str | Path, *, episodes: int | None = None, envs: int | None = None, solver: str | None = None,
             steps: int | None = None, seed_start: int = 0, rerun: tuple[str, str | None] | None = None,
             rerun_episodes: int | None = None, candidates: int = 64, frame_every: int = 1,
             max_episode_steps: int | None = None, device: str = "cpu", out: Path | None = None,
             progress: bool = True, policy: LoadedPolicy | None = None,
             n_action_steps: int | None = None, select: str | None = None, select_candidates: int | None = None,
             temperature: float | None = None) -> dict[str, Any]:
    """Run ``episodes`` closed-loop episodes and write ``eval.json`` into the run folder (or ``out``).

    ``select`` / ``select_candidates`` / ``temperature`` override the run's deployment mode (eval.select:
    sample one action, or sample N and execute the highest-Q one; eval.temperature: 0 = deterministic).
    ``n_action_steps``: actions executed per policy call (default: the run's ``data.n_action_steps``).
    Under torchrun the episodes are spread over the processes (episode i on rank i mod N, same seeds as a
    single process); rank 0 gathers them, records rerun and writes the report. ``episodes``, ``envs`` and
    ``max_episode_steps`` default to the run's ``eval.*`` config.
    """
    for name, value, low in (("--episodes", episodes, 1), ("--envs", envs, 1), ("--steps", steps, 1),
                             ("--candidates", candidates, 0), ("--frame-every", frame_every, 0)):
        if value is not None and value < low:
            raise GenctlError(f"{name} must be >= {low}, got {value}")
    dev = resolve_device(device, label="--device ")
    dinfo = init_distributed(dev.type)
    if dinfo.enabled and dev.type == "cuda":
        dev = torch.device("cuda", dinfo.local_rank)
    policy = policy or LoadedPolicy.from_run(run, device=str(dev))
    policy.configure(select=select, candidates=select_candidates, temperature=temperature)
    run_eval = (policy.meta.get("config") or {}).get("eval") or {}
    episodes = int(episodes if episodes is not None else run_eval.get("episodes", 10))
    envs = int(envs if envs is not None else run_eval.get("envs", 1))
    if max_episode_steps is None:
        max_episode_steps = run_eval.get("max_episode_steps")
    if policy.env_info is None:
        raise GenctlError(f"{run}: the training store recorded no env, so there is nothing to evaluate in")
    solver = solver or policy.solver
    if n_action_steps is not None and not 1 <= n_action_steps <= policy.horizon:
        raise GenctlError(f"--n-action-steps must be in [1, {policy.horizon}] (the policy predicts "
                          f"{policy.horizon} actions per call), got {n_action_steps}")
    spec = policy.seq.with_action_steps(n_action_steps)
    steps = steps or policy.steps
    run_dir = Path(run) if (Path(run) / "config.yaml").exists() else policy.ck.path.parent.parent
    keep = None if out else run_dir / "evals"  # default: every eval kept, eval.json = the latest
    overrides = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
    viewer = Viewer(rerun if dinfo.is_main else None, app_id=f"genctl-eval-{run_dir.name}",
                    default_file=run_dir / "rollouts.rrd")
    record = viewer.enabled
    mine = [i for i in range(episodes) if i % dinfo.world == dinfo.rank]
    k = max(1, min(envs, len(mine)))
    render = record and frame_every > 0
    env_list = [make_env_from_info(policy.env_info, render_mode="rgb_array" if render else None, **overrides)
                for _ in range(k)]
    first = env_list[0]
    policy.check_env(int(np.prod(first.observation_space.shape)), int(np.prod(first.action_space.shape)),
                     policy.env_info.get("id", "?"))
    # with select=q the cloud is the candidates the policy actually ranked (coloured by Q, the chosen one marked)
    cloud = 0 if policy.select == "q" else candidates
    logger = RolloutLogger(viewer, first, policy, candidates=cloud, frame_every=frame_every) if record else None
    n_record = episodes if rerun_episodes is None else rerun_episodes
    seeds = eval_seeds(episodes, start=seed_start)
    if logger:
        viewer.send_blueprint(rollout_blueprint(RolloutLayout(
            episodes=[(i, int(seeds[i])) for i in mine if i < n_record], action_dim=policy.action_dim,
            camera=render, maze=logger.is_maze, trace=not logger.is_maze and trace_point(first) is not None,
            cloud=bool(cloud) or policy.select == "q",
            critic=policy.critic is not None, joints=sim_data(first) is not None, chunks=policy.horizon > 1,
            action_box=(policy.low.tolist(), policy.high.tolist()) if policy.low is not None else None,
            title=f"genctl eval {run_dir.name}")))
    queue = list(mine)
    gen = torch.Generator(device=policy.device).manual_seed(seed_start)
    results: list[Episode] = []
    slots: list[Episode | None] = [None] * k
    obs = [None] * k
    hist: list[deque] = [deque(maxlen=spec.n_obs_steps) for _ in range(k)]  # observation history per env
    plan: list[deque] = [deque() for _ in range(k)]  # queued actions per env (receding horizon)
    warn0: list[dict[int, int]] = [{} for _ in range(k)]
    latencies, t_start, env_steps, chunks = [], time.perf_counter(), 0, 0
    bar = progress_bar(len(mine), desc="eval", unit="ep", enabled=progress and dinfo.is_main)

    def start(i: int) -> None:
        idx = queue.pop(0)
        ep = Episode(idx, seeds[idx])
        obs[i], info = env_list[i].reset(seed=ep.seed)
        hist[i].extend([np.asarray(obs[i], np.float32)] * spec.n_obs_steps)
        plan[i].clear()
        warn0[i] = _warning_counts(env_list[i])
        slots[i] = ep
        if logger and ep.index < n_record:
            logger.start_episode(ep.index, ep.seed, env_list[i], obs[i])

    policy.predict_chunk(np.zeros((k, spec.n_obs_steps, policy.obs_dim), np.float32), solver=solver,
                         steps=steps)  # warm-up, not timed
    try:
        for i in range(min(k, len(queue))):
            start(i)
        while any(s is not None for s in slots):
            live = [i for i in range(k) if slots[i] is not None]
            need = [i for i in live if not plan[i]]
            if need:
                batch = np.stack([np.stack(hist[i]) for i in need]).astype(np.float32)
                t0 = time.perf_counter()
                pred = policy.predict_chunk(batch, solver=solver, steps=steps, generator=gen)
                latencies.append(time.perf_counter() - t0)
                chunks += len(need)
                for j, i in enumerate(need):
                    plan[i].extend(pred[j, :spec.n_action_steps])
                    ep = slots[i]
                    if logger and ep is not None and ep.index < n_record and spec.horizon > 1:
                        logger.chunk(ep.index, ep.length, pred[j], spec.n_action_steps)
                    sel = policy.last_selection
                    if logger and ep is not None and ep.index < n_record and sel is not None:
                        logger.selection(ep.index, ep.length, sel["candidates"][j], sel["q"][j],
                                         int(sel["chosen"][j]))
            for i in live:
                ep, env = slots[i], env_list[i]
                assert ep is not None
                action = plan[i].popleft()
                try:
                    nobs, r, term, trunc, info = env.step(action)
                except Exception as e:  # the simulator itself failed: end this episode only
                    ep.end = f"sim_error: {type(e).__name__}: {e}"
                    term, trunc, r, info, nobs = True, False, 0.0, {}, obs[i]
                r = float(r)
                env_steps += 1
                act = np.asarray(action, np.float64)
                if ep.prev_action is not None:
                    ep.action_delta += float(np.mean(np.abs(act - ep.prev_action)))
                ep.prev_action = act
                ep.ret += r if math.isfinite(r) else 0.0
                ep.length += 1
                ep.rewards.append(r)
                succ = bool(info.get("success", False))
                ep.success |= succ
                ep.final_success = succ
                if not ep.end:
                    w = _warning_counts(env)
                    bad = [name for idx, name in _bad_warnings().items() if w.get(idx, 0) > warn0[i].get(idx, 0)]
                    if not np.all(np.isfinite(nobs)) or not math.isfinite(r):
                        ep.end = "nan_state"
                    elif bad:
                        ep.end = f"mujoco_warning: {bad[0]}"
                if logger and ep.index < n_record:
                    logger.step(ep.index, ep.length - 1, np.stack(hist[i]), action, r, ep.ret, env)
                obs[i] = nobs
                hist[i].append(np.asarray(nobs, np.float32))
                if ep.end or term or trunc:
                    ep.end = ep.end or ("terminated" if term else "truncated")
                    if logger and ep.index < n_record:
                        logger.end_episode(ep.index)
                    results.append(ep)
                    bar.update(1)
                    slots[i] = None
                    if queue:
                        start(i)
    finally:
        bar.close()
        for env in env_list:
            env.close()
        viewer.close()
    wall = time.perf_counter() - t_start
    if dinfo.enabled:  # rank 0 reports every process's episodes
        parts = gather((results, latencies, env_steps, wall, chunks), dinfo)
        if not dinfo.is_main:
            return {"rank": dinfo.rank, "episodes": len(results)}
        results = [e for p in parts for e in p[0]]
        latencies = [x for p in parts for x in p[1]]
        env_steps = sum(p[2] for p in parts)
        wall = max(p[3] for p in parts)  # processes ran concurrently: aggregate rate = all steps / wall
        chunks = sum(p[4] for p in parts)
    report = build_report(results, policy, latencies, env_steps, wall, solver=solver, steps=steps, k=k)
    report.update(policy.deployment())
    report.update(spec.to_meta(), policy_calls=len(latencies), chunks_predicted=chunks,
                  actions_per_call=env_steps / len(latencies) if latencies else math.nan,
                  actions_per_chunk=env_steps / chunks if chunks else math.nan)
    report["processes"] = dinfo.world
    if viewer.files:
        report["rerun_files"] = [str(p) for p in viewer.files]
    if viewer.url:
        report["rerun_url"] = viewer.url
    if keep is not None:
        # evals/<time>-<solver>-<steps>[-<mode>].json never overwrite each other; eval.json is the latest one
        tags = [time.strftime("%Y%m%d-%H%M%S"), solver, str(steps)]
        if report.get("select") == "q":
            tags.append(f"q{report['candidates']}")
        if report.get("temperature", 1.0) != 1.0:
            tags.append(f"t{report['temperature']:g}")
        kept, k = keep / f"{'-'.join(tags)}.json", 1
        while kept.exists():  # two evals within a second
            kept, k = keep / f"{'-'.join(tags)}-{k}.json", k + 1
        report["kept_as"] = str(kept)
        atomic_write_json(kept, report)
        out = run_dir / "eval.json"
    atomic_write_json(out, report)
    report["path"] = str(out)
    return report


def build_report(results: list[Episode], policy: LoadedPolicy, latencies: list[float], env_steps: int,
                 wall: float, *, solver: str, steps: int, k: int) -> dict[str, Any]:
    results = sorted(results, key=lambda e: e.index)
    rets = np.array([e.ret for e in results], dtype=np.float64)
    lo, hi = policy.meta.get("ref_min_score"), policy.meta.get("ref_max_score")
    lat = np.array(latencies) * 1e3 if latencies else np.zeros(1)
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
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                       "mean": float(lat.mean()), "calls": len(latencies)},
        "control_rate_hz": env_steps / wall if wall > 0 else math.nan,
        "env_steps": env_steps, "wall_s": wall,
    }
    if lo is not None and hi is not None and hi != lo:
        report["normalized_score"] = summarise(100.0 * (rets - lo) / (hi - lo))
    return report


def _mode(r: dict[str, Any]) -> str:
    t = r.get("temperature", 1.0)
    how = "deterministic" if t == 0 else ("sampled" if t == 1 else f"temperature {t:g}")
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
