"""Closed-loop evaluation: the learned sampler drives MuJoCo envs; every episode, latency and fault is measured.

K envs run side by side with one batched policy call per control step; episode i always uses eval seed i,
so results do not depend on K. A policy trained with observation history / action chunking is fed the last
``n_obs_steps`` observations of each env (the reset observation repeated at episode start) and runs receding
horizon: it is called for an env only when that env's action queue is empty, and the first ``n_action_steps``
of the ``horizon`` predicted actions are queued (the batched call covers the envs whose queues ran out); each
env's history, queue and episode record are a ``rollout_state.RolloutState``, as in ``realtime``. A diverging
simulator (NaN state, MuJoCo instability warning, exception) ends only that episode, with the reason recorded.
The report (statistics, text form) is ``eval_report``'s.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from genctl.apps.blueprints import RolloutLayout, rollout_blueprint
from genctl.apps.distributed import DistInfo, gather, init_distributed, resolve_device
from genctl.apps.eval_report import build_report, format_report, summarise, wilson_interval
from genctl.apps.policy import LoadedPolicy
from genctl.apps.rollout_log import RolloutLogger, trace_point
from genctl.apps.rollout_state import Episode, LatencyStats, OptionError, RolloutState
from genctl.apps.viz import Viewer
from genctl.envs import eval_seeds, make_env_from_info, sim_data
from genctl.errors import GenctlError
from genctl.fsutil import atomic_write_json
from genctl.progress import progress_bar

if TYPE_CHECKING:
    from genctl.datasets import SeqSpec

__all__ = ["EvalOptions", "Episode", "build_report", "evaluate", "format_report", "summarise", "wilson_interval"]

log = logging.getLogger("genctl.eval")

# mjtWarning members that mean the simulation blew up. Their indices come from mujoco itself: they differ
# between versions (3.11: BADQPOS=3, BADQVEL=4, BADQACC=5), and a wrong index silently disabled detection.
_BAD_WARNING_NAMES = {"mjWARN_BADQPOS": "bad_qpos", "mjWARN_BADQVEL": "bad_qvel", "mjWARN_BADQACC": "bad_qacc"}


@functools.cache
def _bad_warnings() -> dict[int, str]:
    import mujoco

    return {int(getattr(mujoco.mjtWarning, k)): v for k, v in _BAD_WARNING_NAMES.items()}


def _warning_counts(env: Any) -> dict[int, int]:
    data = sim_data(env)
    if data is None or not hasattr(data, "warning"):
        return {}
    try:
        return {i: int(data.warning[i].number) for i in _bad_warnings()}
    except Exception:
        return {}


@dataclass(frozen=True)
class EvalOptions:
    """What ``evaluate`` runs. None takes the run's own setting: ``episodes``, ``envs``, ``max_episode_steps``
    from its ``eval.*`` config, ``solver`` / ``steps`` from its sampler, ``n_action_steps`` (actions executed per
    policy call) from ``data.n_action_steps``, and the deployment mode from ``eval.select`` (``sample`` one
    action, or ``q``: sample ``select_candidates`` and execute the highest-Q one) and ``eval.temperature`` (0 =
    deterministic). ``weights``: ``ema`` (the policy's moving average where the run kept one) or ``raw`` (the
    optimiser's last weights). ``candidates`` / ``frame_every``: rerun candidate cloud and camera frames; ``out``:
    the report path (default: RUN/eval.json, every eval also kept under RUN/evals)."""

    episodes: int | None = None
    envs: int | None = None
    solver: str | None = None
    steps: int | None = None
    seed_start: int = 0
    max_episode_steps: int | None = None
    n_action_steps: int | None = None
    select: str | None = None
    select_candidates: int | None = None
    temperature: float | None = None
    bf16_sampler: bool | None = None
    weights: str = "ema"
    device: str = "cpu"
    rerun: tuple[str, str | None] | None = None
    rerun_episodes: int | None = None
    candidates: int = 64
    frame_every: int = 1
    out: Path | None = None
    progress: bool = True

    def check(self) -> None:
        for name, low in (("episodes", 1), ("envs", 1), ("steps", 1), ("candidates", 0), ("frame_every", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise OptionError(name, f"must be >= {low}, got {value}")
        if self.weights not in ("ema", "raw"):
            raise OptionError("weights", f"must be 'ema' or 'raw', got {self.weights!r}")


@dataclass(frozen=True)
class _Setup:
    """One evaluation with the run's defaults filled in; ``mine`` = this process's episode indices."""

    run_dir: Path
    solver: str
    steps: int
    spec: SeqSpec
    seeds: list[int]
    mine: list[int]
    k: int  # envs side by side
    n_record: int  # episodes recorded in rerun
    overrides: dict[str, Any]


def _resolve(run: str | Path, opts: EvalOptions, policy: LoadedPolicy, dinfo: DistInfo) -> _Setup:
    run_eval = (policy.meta.get("config") or {}).get("eval") or {}
    episodes = int(opts.episodes if opts.episodes is not None else run_eval.get("episodes", 10))
    envs = int(opts.envs if opts.envs is not None else run_eval.get("envs", 1))
    max_steps = opts.max_episode_steps
    if max_steps is None:
        max_steps = run_eval.get("max_episode_steps")
    if policy.env_info is None:
        raise GenctlError(f"{run}: the training store recorded no env, so there is nothing to evaluate in")
    n = opts.n_action_steps
    if n is not None and not 1 <= n <= policy.horizon:
        raise OptionError("n_action_steps", f"must be in [1, {policy.horizon}] (the policy predicts "
                          f"{policy.horizon} actions per call), got {n}")
    mine = [i for i in range(episodes) if i % dinfo.world == dinfo.rank]
    return _Setup(run_dir=Path(run) if (Path(run) / "config.yaml").exists() else policy.ck.path.parent.parent,
                  solver=opts.solver or policy.solver, steps=opts.steps or policy.steps,
                  spec=policy.seq.with_action_steps(n), seeds=eval_seeds(episodes, start=opts.seed_start),
                  mine=mine, k=max(1, min(envs, len(mine))),
                  n_record=episodes if opts.rerun_episodes is None else opts.rerun_episodes,
                  overrides={"max_episode_steps": max_steps} if max_steps else {})


class _EvalLoop:
    """K envs side by side: one batched policy call for the envs whose action queues ran out, then a step of
    every live env; a finished episode's env starts the next queued episode."""

    def __init__(self, s: _Setup, opts: EvalOptions, policy: LoadedPolicy, dinfo: DistInfo):
        self.s, self.policy = s, policy
        assert policy.env_info is not None
        self.viewer = Viewer(opts.rerun if dinfo.is_main else None, app_id=f"genctl-eval-{s.run_dir.name}",
                             default_file=s.run_dir / "rollouts.rrd")
        render = self.viewer.enabled and opts.frame_every > 0
        view = policy.env_overrides()  # a vision policy: the env renders its camera at the trained size
        render = render or bool(view)
        self.envs = [make_env_from_info(policy.env_info, **({"render_mode": "rgb_array" if render else None}
                                                            | view | s.overrides)) for _ in range(s.k)]
        first = self.envs[0]
        policy.check_env(int(np.prod(first.observation_space.shape)), int(np.prod(first.action_space.shape)),
                         policy.env_info.get("id", "?"))
        # with select=q the cloud is the candidates the policy actually ranked (coloured by Q, the chosen one marked)
        cloud = 0 if policy.select == "q" else opts.candidates
        self.logger = (RolloutLogger(self.viewer, first, policy, candidates=cloud, frame_every=opts.frame_every)
                       if self.viewer.enabled else None)
        if self.logger:
            self.viewer.send_blueprint(rollout_blueprint(RolloutLayout(
                episodes=[(i, s.seeds[i]) for i in s.mine if i < s.n_record], action_dim=policy.action_dim,
                camera=render, maze=self.logger.is_maze,
                trace=not self.logger.is_maze and trace_point(first) is not None,
                cloud=bool(cloud) or policy.select == "q", critic=policy.critic is not None,
                joints=sim_data(first) is not None, chunks=policy.horizon > 1,
                action_box=(policy.low.tolist(), policy.high.tolist()) if policy.low is not None else None,
                title=f"genctl eval {s.run_dir.name}")))
        self.queue = list(s.mine)
        self.gen = torch.Generator(device=policy.device).manual_seed(opts.seed_start)
        self.states = [RolloutState(s.spec.n_obs_steps, policy.obs_dim, s.spec.n_action_steps) for _ in range(s.k)]
        self.warn0: list[dict[int, int]] = [{} for _ in range(s.k)]
        self.results: list[Episode] = []
        self.latency, self.t_start, self.env_steps, self.chunks = LatencyStats(), time.perf_counter(), 0, 0
        self.bar = progress_bar(len(s.mine), desc="eval", unit="ep", enabled=opts.progress and dinfo.is_main)

    def run(self) -> None:
        s = self.s
        self.policy.predict_chunk(np.zeros((s.k, s.spec.n_obs_steps, self.policy.obs_dim), np.float32),
                                  solver=s.solver, steps=s.steps)  # warm-up, not timed
        for i in range(min(s.k, len(self.queue))):
            self.start(i)
        while any(st.live for st in self.states):
            live = [i for i, st in enumerate(self.states) if st.live]
            self.plan([i for i in live if self.states[i].needs_plan])
            for i in live:
                self.step(i)

    def close(self) -> None:
        self.bar.close()
        for env in self.envs:
            env.close()
        self.viewer.close()

    def _logged(self, ep: Episode) -> bool:
        return self.logger is not None and ep.index < self.s.n_record

    def start(self, i: int) -> None:
        idx = self.queue.pop(0)
        ep = Episode(idx, self.s.seeds[idx])
        obs, _ = self.envs[i].reset(seed=ep.seed)
        self.states[i].start(ep, self.policy.observe(obs, self.envs[i]))
        self.warn0[i] = _warning_counts(self.envs[i])
        if self.logger and self._logged(ep):
            self.logger.start_episode(ep.index, ep.seed, self.envs[i], obs)

    def plan(self, need: list[int]) -> None:
        """One batched policy call for the envs in ``need``; queue the executed part of each chunk."""
        if not need:
            return
        spec = self.s.spec
        batch = np.stack([self.states[i].history() for i in need]).astype(np.float32)
        pred = self.latency.timed(self.policy.predict_chunk, batch, solver=self.s.solver, steps=self.s.steps,
                                  generator=self.gen)
        self.chunks += len(need)
        sel = self.policy.last_selection
        for j, i in enumerate(need):
            self.states[i].queue(pred[j])
            ep = self.states[i].episode
            if self.logger and ep is not None and self._logged(ep):
                if spec.horizon > 1:
                    self.logger.chunk(ep.index, ep.length, pred[j], spec.n_action_steps)
                if sel is not None:
                    self.logger.selection(ep.index, ep.length, sel["candidates"][j], sel["q"][j],
                                          int(sel["chosen"][j]))

    def step(self, i: int) -> None:
        st, env = self.states[i], self.envs[i]
        ep = st.episode
        assert ep is not None
        action = st.next_action()
        try:
            nobs, r, term, trunc, info = env.step(action)
        except Exception as e:  # the simulator itself failed: end this episode only
            ep.end = f"sim_error: {type(e).__name__}: {e}"
            term, trunc, r, info, nobs = True, False, 0.0, {}, st.obs
        r = float(r)
        self.env_steps += 1
        ep.record(action, r, info)
        if not ep.end:
            ep.end = self._fault(i, nobs, r)
        if self.logger and self._logged(ep):
            self.logger.step(ep.index, ep.length - 1, st.history(), action, r, ep.ret, env)
        st.observe(self.policy.observe(nobs, env) if not ep.end else st.obs)
        if ep.end or term or trunc:
            ep.end = ep.end or ("terminated" if term else "truncated")
            if self.logger and self._logged(ep):
                self.logger.end_episode(ep.index)
            self.results.append(st.finish())
            self.bar.update(1)
            if self.queue:
                self.start(i)

    def _fault(self, i: int, obs: Any, r: float) -> str:
        """Why the simulator diverged at this step ("" if it did not): NaN state/reward or a MuJoCo warning."""
        w = _warning_counts(self.envs[i])
        bad = [name for idx, name in _bad_warnings().items() if w.get(idx, 0) > self.warn0[i].get(idx, 0)]
        if not np.all(np.isfinite(obs)) or not math.isfinite(r):
            return "nan_state"
        return f"mujoco_warning: {bad[0]}" if bad else ""


def evaluate(run: str | Path, options: EvalOptions | None = None, /, *, policy: LoadedPolicy | None = None,
             **fields: Any) -> dict[str, Any]:
    """Run the episodes of ``options`` (``EvalOptions``; keyword ``fields`` override them) in closed loop and
    write ``eval.json`` into the run folder (or ``options.out``); return the report.

    Under torchrun the episodes are spread over the processes (episode i on rank i mod N, same seeds as a
    single process); rank 0 gathers them and writes the report. A bad option value raises ``OptionError``.
    """
    opts = dataclasses.replace(options or EvalOptions(), **fields)
    opts.check()
    dev = resolve_device(opts.device, label="device ")
    dinfo = init_distributed(dev.type)
    if dinfo.enabled and dev.type == "cuda":
        dev = torch.device("cuda", dinfo.local_rank)
    policy = policy or LoadedPolicy.from_run(run, device=str(dev), use_ema=opts.weights == "ema")
    policy.configure(select=opts.select, candidates=opts.select_candidates, temperature=opts.temperature,
                     bf16_sampler=opts.bf16_sampler)
    s = _resolve(run, opts, policy, dinfo)
    loop = _EvalLoop(s, opts, policy, dinfo)
    try:
        loop.run()
    finally:
        loop.close()
    wall = time.perf_counter() - loop.t_start
    results, latencies, env_steps, chunks = loop.results, loop.latency.seconds, loop.env_steps, loop.chunks
    if dinfo.enabled:  # rank 0 reports every process's episodes
        parts = gather((results, latencies, env_steps, wall, chunks), dinfo)
        if not dinfo.is_main:
            return {"rank": dinfo.rank, "episodes": len(results)}
        results = [e for p in parts for e in p[0]]
        latencies = [x for p in parts for x in p[1]]
        env_steps = sum(p[2] for p in parts)
        wall = max(p[3] for p in parts)  # processes ran concurrently: aggregate rate = all steps / wall
        chunks = sum(p[4] for p in parts)
    report = build_report(results, policy, latencies, env_steps, wall, solver=s.solver, steps=s.steps, k=s.k)
    report.update(policy.deployment(), weights=policy.weights)
    report.update(s.spec.to_meta(), policy_calls=len(latencies), chunks_predicted=chunks,
                  actions_per_call=env_steps / len(latencies) if latencies else math.nan,
                  actions_per_chunk=env_steps / chunks if chunks else math.nan)
    report["processes"] = dinfo.world
    if loop.viewer.files:
        report["rerun_files"] = [str(p) for p in loop.viewer.files]
    if loop.viewer.url:
        report["rerun_url"] = loop.viewer.url
    return _write(report, s, opts.out)


def _write(report: dict[str, Any], s: _Setup, out: Path | None) -> dict[str, Any]:
    """Write the report to ``out``; by default to RUN/eval.json (the latest) and a kept copy in RUN/evals."""
    if out is None:
        # evals/<time>-<solver>-<steps>[-<mode>].json never overwrite each other; eval.json is the latest one
        keep = s.run_dir / "evals"
        tags = [time.strftime("%Y%m%d-%H%M%S"), s.solver, str(s.steps)]
        if report.get("select") == "q":
            tags.append(f"q{report['candidates']}")
        if report.get("temperature", 1.0) != 1.0:
            tags.append(f"t{report['temperature']:g}")
        if report.get("weights") == "raw":
            tags.append("raw")
        kept, n = keep / f"{'-'.join(tags)}.json", 1
        while kept.exists():  # two evals within a second
            kept, n = keep / f"{'-'.join(tags)}-{n}.json", n + 1
        report["kept_as"] = str(kept)
        atomic_write_json(kept, report)
        out = s.run_dir / "eval.json"
    atomic_write_json(out, report)
    report["path"] = str(out)
    return report
