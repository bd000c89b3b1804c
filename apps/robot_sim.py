"""``genctl robot-sim``: a MuJoCo env in its own process playing the robot of a remote ``genctl serve``.

The control loop steps at a fixed rate and never waits for the network (except for the first chunk of an
episode: a robot does not start moving without a plan). Chunks are requested asynchronously from a thread,
LeRobot-style: the chunk that will run from control tick ``b`` on is requested ``ahead`` ticks earlier, from
the observation of tick ``b - ahead``, while the current chunk is still running; it then supplies actions
``ahead .. ahead + n_action_steps - 1`` of its ``horizon`` (its action k is for tick ``b - ahead + k``).
``ahead = 0`` plans exactly at the chunk boundary, the receding horizon of ``genctl eval`` (same seeds, same
history, same number of executed actions per chunk), so with no deadline misses the episodes are the ones
eval runs, up to the sampler's noise. A tick whose chunk has not arrived is a deadline miss: the robot keeps
going with the newest chunk it has (its action for this tick, while the chunk reaches that far), else holds
the last action.

Reported: return / success per episode (as eval.json), deadline misses, and latency p50/p99: ``e2e_ms`` from
the observation being taken to its chunk being on the robot, ``server_ms`` as measured by the server.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from genctl.apps.client import Chunk, PolicyClient, ServerError
from genctl.datasets.obs_spec import ObsSpec
from genctl.errors import GenctlError


class _Requester(threading.Thread):
    """Sends the newest submitted history (older unsent ones are superseded) and collects the replies."""

    def __init__(self, client: PolicyClient, dt: float):
        super().__init__(daemon=True, name="genctl-robot-requester")
        self.client, self.dt = client, dt
        self.cv = threading.Condition()
        # history, its camera frames ({cam: (T, H, W, C)} or None), episode, t0, perf time
        self.pending: tuple[np.ndarray, dict[str, np.ndarray] | None, int, int, float] | None = None
        self.arrived: list[tuple[int, int, Chunk, float]] = []  # episode, t0, chunk, e2e ms
        self.stop = False
        self.error: BaseException | None = None

    def submit(self, hist: np.ndarray, episode: int, t0: int,
               images: dict[str, np.ndarray] | None = None) -> None:
        with self.cv:
            self.pending = (hist, images, episode, t0, time.perf_counter())
            self.cv.notify()

    def take(self) -> list[tuple[int, int, Chunk, float]]:
        with self.cv:
            out, self.arrived = self.arrived, []
            return out

    def run(self) -> None:
        try:
            while True:
                with self.cv:
                    while self.pending is None and not self.stop:
                        self.cv.wait(0.1)
                    if self.stop:
                        return
                    assert self.pending is not None
                    hist, images, ep, t0, t_obs = self.pending
                    self.pending = None
                chunk = self.client.infer(hist, timestamp=time.time(), dt=self.dt, images=images)
                with self.cv:
                    self.arrived.append((ep, t0, chunk, (time.perf_counter() - t_obs) * 1e3))
                    self.cv.notify_all()
        except BaseException as e:  # surfaced by the control loop
            self.error = e


def _target_env(target: str) -> tuple[dict[str, Any], int | None, Path | None]:
    """(env info, eval.max_episode_steps, run folder) for a run or checkpoint; (info of the id, None, None)
    for an env id."""
    path = Path(target)
    if path.exists():
        from genctl.apps.policy import find_checkpoint

        ck = find_checkpoint(path)
        info = ck.meta.get("env")
        if not info:
            raise GenctlError(f"{target}: the training store recorded no env, so there is nothing to run")
        ev = (ck.meta.get("config") or {}).get("eval") or {}
        run_dir = path if (path / "config.yaml").exists() else ck.path.parent.parent
        return info, ev.get("max_episode_steps"), run_dir
    from genctl.envs import env_info

    return env_info(target), None, None


def _stack(seen: deque, cams: list[str]) -> dict[str, np.ndarray] | None:
    """{camera: (T, H, W, C)} frames of the history, oldest first (None for a state policy)."""
    return {c: np.stack([f[c] for f in seen]) for c in cams} if cams else None


def _pct(x: list[float]) -> dict[str, float]:
    a = np.asarray(x or [np.nan], np.float64)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "n": len(x)}


def robot_sim(target: str, *, server: str, hz: float, episodes: int = 10, seed: int = 0,
              ahead: int | None = None, max_steps: int | None = None, token: str | None = None,
              out: str | Path | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """Run ``episodes`` episodes (eval seeds from ``seed``) against the policy server at ``server``."""
    from genctl.envs import eval_seeds, make_env_from_info

    if not hz > 0:
        raise GenctlError(f"--hz must be > 0 (got {hz})")
    if episodes < 1:
        raise GenctlError(f"--episodes must be >= 1 (got {episodes})")
    info, run_max_steps, run_dir = _target_env(target)
    max_steps = max_steps or run_max_steps
    client = PolicyClient(server, token=token, timeout=timeout)
    n_act, horizon = client.n_action_steps, client.horizon
    # the chunk's actions ahead .. ahead + n_act - 1 must exist, and one request per window
    top = min(horizon - n_act, n_act - 1)
    ahead = min(1, top) if ahead is None else ahead
    if not 0 <= ahead <= top:
        client.close()
        raise GenctlError(f"--ahead must be in [0, min(horizon - n_action_steps, n_action_steps - 1)] = "
                          f"[0, {top}] for this policy (horizon {horizon}, n_action_steps {n_act}), "
                          f"got {ahead}")
    # what the policy observes (its keys and cameras, from the server's meta): sliced and rendered here as
    # genctl eval does; a server that does not say takes the env's whole observation
    spec = ObsSpec.from_dict(client.meta["obs_spec"]) if client.meta.get("obs_spec") else None
    try:
        view = spec.render_overrides(client.meta.get("view"), f"server {server}") if spec is not None else {}
    except GenctlError:
        client.close()
        raise
    env = make_env_from_info(info, **({"max_episode_steps": max_steps} if max_steps else {}), **view)
    obs_dim, act_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
    want = spec.env_obs_dim if spec is not None else client.obs_dim
    if obs_dim != want or act_dim != client.action_dim:
        env.close()
        client.close()
        raise GenctlError(f"the server's policy takes obs {want} / action {client.action_dim}, env "
                          f"{info.get('id')} has obs {obs_dim} / action {act_dim}")
    cams = [c.camera for c in spec.cameras] if spec is not None else []

    def observe(o: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The low-dim values the server takes, and this tick's frame of each camera."""
        flat = np.asarray(o, np.float32).ravel()
        low = spec.select_low(flat[None])[0] if spec is not None else flat
        return low, ({c: np.asarray(env.render(), np.uint8) for c in cams} if cams else {})
    period = 1.0 / hz
    req = _Requester(client, period)
    req.start()
    eps, e2e, server_ms, versions = [], [], [], set()
    ticks = misses = 0
    # seconds from each episode's first tick to its last (not resets or the wait for the first chunk): the
    # achieved rate is tick intervals over that time
    control_s = 0.0

    def collect(chunks: dict[int, np.ndarray], ep_i: int) -> None:
        for ep, t0, chunk, ms in req.take():
            e2e.append(ms)
            server_ms.append(chunk.server_ms)
            versions.add(chunk.policy_version)
            if ep == ep_i:
                chunks[t0] = chunk.actions
        if req.error is not None:
            raise req.error

    try:
        for ep_i, s in enumerate(eval_seeds(episodes, start=seed)):
            obs, _ = env.reset(seed=s)
            first, frames = observe(obs)  # repeated as the history, as eval does
            hist = deque([first] * client.n_obs_steps, maxlen=client.n_obs_steps)
            seen = deque([frames] * client.n_obs_steps, maxlen=client.n_obs_steps)  # frames, as the history
            chunks: dict[int, np.ndarray] = {}  # t0 (tick of the observation) -> (horizon, A) actions
            req.submit(np.stack(hist), ep_i, 0, _stack(seen, cams))
            deadline = time.perf_counter() + timeout
            while 0 not in chunks:  # the robot waits for its first plan
                if time.perf_counter() > deadline:
                    raise ServerError(f"no first chunk from {server} within {timeout:g} s")
                with req.cv:
                    req.cv.wait(0.01)
                collect(chunks, ep_i)
            ret, success, n, delta = 0.0, False, 0, 0.0
            prev: np.ndarray | None = None
            last = np.zeros(env.action_space.shape, np.float32)
            next_tick = ep_t0 = time.perf_counter()
            while True:
                collect(chunks, ep_i)
                b = (n // n_act) * n_act  # first tick of the chunk window that tick n belongs to
                t0 = 0 if b == 0 else b - ahead
                if t0 in chunks:
                    last = chunks[t0][n - t0]
                else:  # deadline miss: the newest chunk that reaches this tick, else hold
                    misses += 1
                    usable = [k for k in chunks if n - k < horizon]
                    if usable:
                        last = chunks[max(usable)][n - max(usable)]
                obs, r, term, trunc, step_info = env.step(last)
                act = np.asarray(last, np.float64)
                if prev is not None:  # as eval's action_delta: how jumpy the executed actions are
                    delta += float(np.mean(np.abs(act - prev)))
                prev = act
                n += 1
                ticks += 1
                ret += float(r)
                success |= bool(step_info.get("success", False))
                low, frames = observe(obs)
                hist.append(low)
                seen.append(frames)
                if (n + ahead) % n_act == 0:
                    req.submit(np.stack(hist), ep_i, n, _stack(seen, cams))  # for the window starting at tick n + ahead
                for k in [k for k in chunks if n - k >= horizon]:
                    del chunks[k]
                if term or trunc or (max_steps and n >= max_steps):
                    break
                next_tick += period
                delay = next_tick - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_tick = time.perf_counter()  # overran: do not catch up in a burst
            control_s += time.perf_counter() - ep_t0
            eps.append({"episode": ep_i, "seed": s, "return": ret, "success": success, "length": n,
                        "action_delta": delta / max(n - 1, 1)})
    finally:
        with req.cv:
            req.stop = True
            req.cv.notify_all()
        req.join(timeout=timeout)
        client.close()
        env.close()
    rets = np.array([e["return"] for e in eps])
    hz_achieved = (ticks - len(eps)) / control_s if control_s > 0 else float("nan")
    report = {"server": server, "env": info.get("id"), "hz_target": hz, "hz_achieved": hz_achieved,
              "ticks": ticks, "deadline_misses": misses, "miss_rate": misses / max(ticks, 1), "ahead": ahead,
              "n_obs_steps": client.n_obs_steps, "horizon": horizon, "n_action_steps": n_act,
              "policy_versions": sorted(versions), "e2e_ms": _pct(e2e), "server_ms": _pct(server_ms),
              "return": {"mean": float(rets.mean()),
                         "std": float(rets.std(ddof=1)) if len(rets) > 1 else 0.0},
              "success_rate": float(np.mean([e["success"] for e in eps])),
              "action_delta": float(np.mean([e["action_delta"] for e in eps])), "episodes": eps}
    path = Path(out) if out else (run_dir / "robot_sim.json" if run_dir else None)
    if path is not None:
        from genctl.fsutil import atomic_write_json

        atomic_write_json(path, report)
        report["path"] = str(path)
    return report


def format_report(r: dict[str, Any]) -> str:
    lines = [f"{r['env']}: {len(r['episodes'])} episodes, return {r['return']['mean']:.3f} +- "
             f"{r['return']['std']:.3f}, success {100 * r['success_rate']:.0f}%",
             f"target {r['hz_target']:.1f} Hz, achieved {r['hz_achieved']:.1f} Hz over {r['ticks']} ticks; "
             f"deadline misses {r['deadline_misses']} ({100 * r['miss_rate']:.1f}%), chunk requested "
             f"{r['ahead']} tick(s) ahead",
             f"latency ms: end-to-end p50 {r['e2e_ms']['p50']:.2f} p99 {r['e2e_ms']['p99']:.2f}; server p50 "
             f"{r['server_ms']['p50']:.2f} p99 {r['server_ms']['p99']:.2f}; "
             f"policy {', '.join(r['policy_versions'])}"]
    return "\n".join(lines)

