"""Real-time control: one env stepped at a fixed rate while the policy runs in its own thread.

The control loop never waits for the policy. At each tick it applies the newest action the policy thread
has published; if none arrived since the last tick, that is a deadline miss and the loop holds the last
action (``late="hold"``) or, for a policy that predicts several actions at once, takes the next one from the
current chunk (``late="chunk"``; single-step policies fall back to hold).

The policy thread is given the last ``n_obs_steps`` observations (the reset observation repeated at episode
start) and publishes the whole predicted chunk of ``horizon`` actions. The chunk predicted from the observation
of tick k holds the actions for ticks k, k+1, ...: it is executed open loop for ``n_action_steps`` ticks (the
run's ``data.n_action_steps``, as ``genctl eval`` does; 1 = replan every tick), and the observation after the
last of them is submitted for the next chunk. A tick whose chunk has not arrived yet is a deadline miss; with
``late="chunk"`` it applies action j - k of the newest chunk it has (while j - k < horizon and the chunk
belongs to the current episode), and only then holds. The observation history and the episode record are
a ``rollout_state.RolloutState``, as in ``evaluate``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from genctl.apps.policy import LoadedPolicy
from genctl.apps.rollout_state import Episode, LatencyStats, OptionError, RolloutState
from genctl.envs import eval_seeds, make_env_from_info
from genctl.errors import GenctlError
from genctl.fsutil import atomic_write_json


class _PolicyThread(threading.Thread):
    def __init__(self, policy: LoadedPolicy, solver: str | None, steps: int | None):
        super().__init__(daemon=True)
        self.policy, self.solver, self.steps = policy, solver, steps
        self.cv = threading.Condition()
        self.obs: np.ndarray | None = None
        self.obs_id = -1
        self.action: np.ndarray | None = None
        self.action_id = -1
        self.latency = LatencyStats()
        self.stop = False
        self.error: BaseException | None = None

    def submit(self, obs: np.ndarray, obs_id: int) -> None:
        with self.cv:
            self.obs, self.obs_id = obs, obs_id
            self.cv.notify()

    def latest(self) -> tuple[np.ndarray | None, int]:
        with self.cv:
            return self.action, self.action_id

    def run(self) -> None:
        done = -1
        try:
            while True:
                with self.cv:
                    while not self.stop and self.obs_id == done:
                        self.cv.wait(0.1)
                    if self.stop:
                        return
                    obs, oid = self.obs, self.obs_id
                a = self.latency.timed(self.policy.predict_chunk, obs[None], solver=self.solver,
                                       steps=self.steps)[0]  # (H, A)
                with self.cv:
                    self.action, self.action_id = a, oid
                done = oid
        except BaseException as e:  # surfaced by the control loop
            self.error = e


def run_realtime(run: str | Path, *, hz: float, episodes: int = 1, late: str = "hold", solver: str | None = None,
                 steps: int | None = None, seed: int = 0, max_steps: int | None = None,
                 n_action_steps: int | None = None) -> dict[str, Any]:
    """Run ``episodes`` episodes at ``hz`` and write ``realtime.json`` into the run folder; return the report.
    A bad option value raises ``OptionError`` naming the keyword argument."""
    if hz <= 0:
        raise OptionError("hz", f"must be > 0 (got {hz})")
    if late not in ("hold", "chunk"):
        raise OptionError("late", f"must be hold or chunk (got {late!r})")
    policy = LoadedPolicy.from_run(run)
    k = policy.n_action_steps if n_action_steps is None else n_action_steps
    if not 1 <= k <= policy.horizon:
        raise OptionError("n_action_steps", f"must be between 1 and the policy's horizon ({policy.horizon} "
                          f"actions per call), got {k}")
    if policy.env_info is None:
        raise GenctlError(f"{run}: the training store recorded no env")
    env = make_env_from_info(policy.env_info, **policy.env_overrides())  # a camera policy: its trained view
    period = 1.0 / hz
    # first calls build the sampler's cached trace: do them before the clock starts
    for _ in range(2):
        policy.act(np.zeros((1, policy.obs_dim), np.float32), solver=solver, steps=steps)
    worker = _PolicyThread(policy, solver, steps)
    worker.start()
    eps = []
    state = RolloutState(policy.n_obs_steps, policy.obs_dim, k)
    ticks = misses = from_chunk = 0
    sid = 0  # id of the latest submitted history: one per tick, plus one per episode reset
    t_start = time.perf_counter()
    try:
        for ep_i, s in enumerate(eval_seeds(episodes, start=seed)):
            obs, _ = env.reset(seed=s)
            ep = Episode(ep_i, s)
            state.start(ep, policy.observe(obs, env))  # the keys (and camera frame) the policy sees
            last = np.zeros(env.action_space.shape, np.float32)
            sid += 1
            ep_first = obs_id = sid
            submitted = {sid: 0}  # submission id -> the episode tick whose observation it holds
            worker.submit(state.history(), obs_id)
            next_tick = time.perf_counter()
            while True:
                next_tick += period
                chunk, aid = worker.latest()
                if worker.error is not None:
                    raise worker.error
                n = ep.length
                lag = n - submitted[aid] if chunk is not None and aid >= ep_first else None
                if lag is not None and aid == obs_id:
                    last = chunk[lag]  # on time: action `lag` of the chunk being executed (lag < k <= horizon)
                else:
                    misses += 1  # policy late for this observation: next action of the current chunk, or hold
                    if late == "chunk" and lag is not None and 0 < lag < len(chunk):
                        last = chunk[lag]
                        from_chunk += 1
                obs, r, term, trunc, info = env.step(last)
                ticks += 1
                ep.record(last, float(r), info)
                n = ep.length
                state.observe(policy.observe(obs, env))
                if n - submitted[obs_id] >= k:  # the chunk's k actions are done: replan from this observation
                    sid += 1
                    obs_id = sid
                    submitted[sid] = n
                    worker.submit(state.history(), obs_id)
                if term or trunc or (max_steps and n >= max_steps):
                    break
                delay = next_tick - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_tick = time.perf_counter()  # overran: do not try to catch up in a burst
            state.finish()
            eps.append({"episode": ep_i, "seed": s, "return": ep.ret, "success": ep.success, "length": ep.length})
    finally:
        worker.stop = True
        with worker.cv:
            worker.cv.notify()
        worker.join(timeout=5)
        env.close()
    wall = time.perf_counter() - t_start
    lat = worker.latency.summary_ms()
    report = {"hz_target": hz, "hz_achieved": ticks / wall if wall else 0.0, "ticks": ticks,
              "deadline_misses": misses, "miss_rate": misses / max(ticks, 1), "late_policy": late,
              "actions_from_chunk": from_chunk, "n_obs_steps": policy.n_obs_steps, "horizon": policy.horizon,
              "n_action_steps": k, "policy_calls": len(worker.latency),
              "latency_ms": {"p50": lat["p50"], "p99": lat["p99"]},
              "episodes": eps}
    run_dir = Path(run) if (Path(run) / "config.yaml").exists() else policy.ck.path.parent.parent
    atomic_write_json(run_dir / "realtime.json", report)
    report["path"] = str(run_dir / "realtime.json")
    return report
