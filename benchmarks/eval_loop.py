"""Closed-loop speed on Hopper-v5 (not a test): raw env steps/s vs policy-in-the-loop steps/s, in the same run.

    .venv/bin/python benchmarks/eval_loop.py [--threads 1,2] [--steps 31,10] [--env-steps 3000] [--eval-episodes 10]
                                             [--vec-envs 8,16,32] [--bf16] [--device cuda]

Goals: issue 7, closed-loop Hopper eval with 1 env >= 500 env steps/s (GenerativeRL: 41-48) and the policy's
share of the loop <= 50%; issue 18, >= 300 env steps/s at 31 Euler steps on 2 cores (by batching envs),
reported as a ratio of the raw env rate. The policy is the reference size: ``make_generative_model("gvp", 3,
11)`` with the default 512/256/128 residual MLP (1.63 M params); speed does not depend on the weights, so it is
untrained.

Per torch thread count it measures
  raw      Hopper-v5 (genctl.envs.make_env) with uniform random actions, resets included
  policy   ``LoadedPolicy.act`` alone at batch 1 (the normaliser + traced Euler solve + clip), per call
  loop     the same env driven by ``LoadedPolicy.act`` for every action (N Euler steps, batch 1), resets included
  eval     ``genctl.apps.evaluate.evaluate`` itself (what ``genctl eval RUN --envs 1`` reports as loop steps/s)
and, per ``--vec-envs`` K, K envs stepped side by side with one batched policy call (K rows) per control step:
  vec loop the bare loop (``LoadedPolicy.act`` on K observations, then K env steps, resets included)
  vec eval ``evaluate(envs=K)`` (what ``genctl eval RUN --envs K`` reports), episodes = max(--eval-episodes, 2K)
each also with ``--bf16`` (the model's bf16 sampler), and prints steps/s and the ratio to the raw env rate of
the same thread count. The policy is wrapped in a real run folder (a 1-step BC run on a tiny generated Hopper
store), so ``LoadedPolicy`` and ``evaluate`` are the code ``genctl eval`` runs. ``--device cuda`` puts the
policy on the GPU (the sampler then replays a CUDA graph; each action still crosses to the host).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ENV = "Hopper-v5"


def make_run(root: Path) -> Path:
    """A real run folder holding an (almost) untrained reference-size GVP policy for Hopper-v5."""
    from genctl.apps.collect import collect
    from genctl.apps.train import train
    from genctl.config import TrainConfig, build_config

    store = root / "hopper_random.zarr"
    collect(ENV, expert="random", episodes=4, noise=0.0, random_frac=1.0, workers=1, seed=0, out=store,
            overwrite=True, progress=False)
    cfg = build_config(TrainConfig, base={
        "name": "speed", "out_dir": str(root / "runs"), "threads": 1, "device": "cpu", "data": {"store": str(store), "val_frac": 0.0},
        "model": {"kind": "gvp", "hidden": [512, 256, 128]}, "critic": {"steps": 0},
        "policy": {"algo": "bc", "steps": 1, "batch_size": 16, "ema_decay": None}, "eval": {"steps": 31}})
    return train(cfg, overwrite=True, progress=False)


def raw_rate(n: int, seed: int = 0) -> float:
    from genctl.envs import make_env

    env = make_env(ENV)
    rng = np.random.default_rng(seed)
    lo, hi = env.action_space.low, env.action_space.high
    env.reset(seed=seed)
    t0 = time.perf_counter()
    for _ in range(n):
        _, _, term, trunc, _ = env.step(rng.uniform(lo, hi).astype(np.float32))
        if term or trunc:
            env.reset()
    dt = time.perf_counter() - t0
    env.close()
    return n / dt


def policy_rate(policy, steps: int, n: int) -> float:
    obs = np.random.default_rng(0).standard_normal((1, policy.obs_dim)).astype(np.float32)
    gen = torch.Generator(device=policy.device).manual_seed(0)
    for _ in range(20):
        policy.act(obs, steps=steps, generator=gen)
    t0 = time.perf_counter()
    for _ in range(n):
        policy.act(obs, steps=steps, generator=gen)
    return n / (time.perf_counter() - t0)


def loop_rate(policy, steps: int, n: int, seed: int = 0) -> tuple[float, float]:
    """Closed loop, 1 env, batch 1: (env steps/s, policy share of the wall time)."""
    from genctl.envs import make_env

    env = make_env(ENV)
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    obs, _ = env.reset(seed=seed)
    policy.act(obs[None].astype(np.float32), steps=steps, generator=gen)  # warm-up (trace)
    t_pol = 0.0
    t0 = time.perf_counter()
    for _ in range(n):
        tp = time.perf_counter()
        a = policy.act(obs[None].astype(np.float32), steps=steps, generator=gen)[0]
        t_pol += time.perf_counter() - tp
        obs, _, term, trunc, _ = env.step(a)
        if term or trunc:
            obs, _ = env.reset()
    wall = time.perf_counter() - t0
    env.close()
    return n / wall, t_pol / wall


def vec_loop_rate(policy, steps: int, k: int, n: int, seed: int = 0) -> float:
    """Closed loop, k envs side by side, one batched policy call (k rows) per control step: env steps/s."""
    from genctl.envs import make_env

    envs = [make_env(ENV) for _ in range(k)]
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]).astype(np.float32)
    policy.act(obs, steps=steps, generator=gen)  # warm-up (the trace of this batch size's mode)
    done = 0
    t0 = time.perf_counter()
    while done < n:
        a = policy.act(obs, steps=steps, generator=gen)
        for i, env in enumerate(envs):
            o, _, term, trunc, _ = env.step(a[i])
            if term or trunc:
                o, _ = env.reset()
            obs[i] = o
        done += k
    wall = time.perf_counter() - t0
    for env in envs:
        env.close()
    return done / wall


def eval_rate(run: Path, policy, steps: int, k: int, episodes: int, device: str) -> float:
    """``evaluate()``'s own loop steps/s with k envs (after one untimed batched call: tracing is not timed)."""
    from genctl.apps.evaluate import evaluate

    obs = np.zeros((k, policy.obs_dim), np.float32)
    policy.act(obs, steps=steps)
    with tempfile.TemporaryDirectory() as t2:
        rep = evaluate(run, episodes=episodes if k == 1 else max(episodes, 2 * k), envs=k, steps=steps,
                       progress=False, out=Path(t2) / "eval.json", policy=policy, device=device)
    return rep["control_rate_hz"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    ap.add_argument("--steps", default="31,10", help="Euler steps per action, comma-separated")
    ap.add_argument("--env-steps", type=int, default=3000, help="env steps per measurement")
    ap.add_argument("--eval-episodes", type=int, default=10, help="episodes for the evaluate() lines (0 = skip)")
    ap.add_argument("--vec-envs", default="8",
                    help="env counts K to also time with one batched policy call per control step ('' = skip)")
    ap.add_argument("--bf16", action="store_true", help="also time the K-env loops with the bf16 sampler")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--device", default="cpu", help="where the policy runs: cpu or cuda")
    args = ap.parse_args()

    from genctl.apps.policy import LoadedPolicy
    from genctl.policies import count_parameters

    vec = [int(x) for x in args.vec_envs.split(",") if x.strip()]
    rows, vrows = [], []
    print(f"load average at start: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="genctl-evalloop-") as tmp:
        run = make_run(Path(tmp))
        policy = LoadedPolicy.from_run(run, device=args.device)
        where = torch.cuda.get_device_name(policy.device) if policy.device.type == "cuda" else "CPU"
        print(f"policy: {policy.meta['model']['kind']} hidden {policy.meta['model']['hidden']}, "
              f"{count_parameters(policy.model) / 1e6:.2f} M params on {where}; env {ENV}; "
              f"{args.env_steps} env steps per line", flush=True)
        for th in [int(x) for x in args.threads.split(",")]:
            torch.set_num_threads(th)
            raw = raw_rate(args.env_steps)
            for st in [int(x) for x in args.steps.split(",")]:
                pol = policy_rate(policy, st, min(args.env_steps, 1000))
                loop, share = loop_rate(policy, st, args.env_steps)
                ev = eval_rate(run, policy, st, 1, args.eval_episodes, args.device) if args.eval_episodes else None
                rows.append({"threads": th, "euler_steps": st, "raw_steps_s": raw, "policy_calls_s": pol,
                             "policy_ms": 1e3 / pol, "loop_steps_s": loop, "loop_over_raw": loop / raw,
                             "policy_share": share, "evaluate_steps_s": ev})
                for k in vec:
                    for bf16 in (False, True) if args.bf16 else (False,):
                        policy.model.bf16_sampler = bf16
                        vl = vec_loop_rate(policy, st, k, args.env_steps)
                        ve = (eval_rate(run, policy, st, k, args.eval_episodes, args.device)
                              if args.eval_episodes else None)
                        policy.model.bf16_sampler = False
                        vrows.append({"threads": th, "euler_steps": st, "envs": k, "bf16": bf16,
                                      "raw_steps_s": raw, "vec_loop_steps_s": vl, "vec_loop_over_raw": vl / raw,
                                      "evaluate_steps_s": ve, "evaluate_over_raw": ve / raw if ve else None})
                        print(f"  threads {th}, {st} Euler steps, {k} envs{', bf16' if bf16 else ''}: "
                              f"loop {vl:.0f} steps/s = {vl / raw:.3f} x raw {raw:.0f}", flush=True)
    print()
    print("| torch threads | Euler steps | raw env steps/s | policy call ms (batch 1) | closed-loop steps/s | "
          "loop / raw | policy share of loop | `evaluate()` steps/s, 1 env |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ev = f"{r['evaluate_steps_s']:.0f}" if r["evaluate_steps_s"] else "-"
        print(f"| {r['threads']} | {r['euler_steps']} | {r['raw_steps_s']:.0f} | {r['policy_ms']:.2f} | "
              f"{r['loop_steps_s']:.0f} | {r['loop_over_raw']:.3f} | {100 * r['policy_share']:.0f}% | {ev} |")
    if vrows:
        print()
        print("| torch threads | Euler steps | envs | sampler | raw env steps/s | batched loop steps/s | loop / raw | "
              "`evaluate()` steps/s | evaluate / raw |")
        print("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
        for r in vrows:
            ev = (f"{r['evaluate_steps_s']:.0f} | {r['evaluate_over_raw']:.3f}" if r["evaluate_steps_s"]
                  else "- | -")
            print(f"| {r['threads']} | {r['euler_steps']} | {r['envs']} | {'bf16' if r['bf16'] else 'fp32'} | "
                  f"{r['raw_steps_s']:.0f} | {r['vec_loop_steps_s']:.0f} | {r['vec_loop_over_raw']:.3f} | {ev} |")
    print("\ngoals: closed-loop >= 500 steps/s with 1 env (issue 7; GenerativeRL 41-48), policy share <= 50%; "
          ">= 300 steps/s at 31 Euler steps on 2 cores with batched envs (issue 18)")
    print(f"load average at end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"one_env": rows, "batched": vrows}, indent=2))

if __name__ == "__main__":
    main()
