"""Raw env throughput and offscreen render speed through genctl.envs.make_env.

    .venv/bin/python benchmarks/envs.py              # steps/s (random actions) and render fps, 240x240
    .venv/bin/python benchmarks/envs.py --steps 500 --frames 20

"raw" is gymnasium.make without genctl's wrappers, to show the wrappers' overhead; render fps is step+render
with genctl's fast renderer (no shadows/reflections/MSAA) and with MuJoCo's defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium as gym  # noqa: E402

from genctl.envs import make_env  # noqa: E402

IDS = ["Hopper-v5", "HalfCheetah-v5", "Ant-v5", "PointMaze_Medium-v3", "AntMaze_UMaze-v5", "FetchPickAndPlace-v4",
       "AdroitHandPen-v1", "FrankaKitchen-v1", "dmc/cartpole-swingup", "dmc/walker-walk"]


def steps_per_s(env: gym.Env, steps: int) -> float:
    env.reset(seed=0)
    env.action_space.seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        *_, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - t0)


def render_fps(env: gym.Env, frames: int) -> float:
    env.reset(seed=0)
    env.render()  # GL context creation is a one-off cost
    t0 = time.perf_counter()
    for _ in range(frames):
        *_, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
        env.render()
    return frames / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--ids", nargs="*", default=IDS)
    args = p.parse_args()
    with contextlib.redirect_stderr(io.StringIO()):
        import gymnasium_robotics
    gym.register_envs(gymnasium_robotics)
    print(f"{'env':24s} {'steps/s':>9s} {'raw gym':>9s} {'fps fast':>9s} {'fps default':>11s}")
    for env_id in args.ids:
        env = make_env(env_id)
        sps = steps_per_s(env, args.steps)
        env.close()
        raw_sps = float("nan")
        if not env_id.startswith("dmc/"):
            raw = gym.make(env_id, disable_env_checker=True)
            raw_sps = steps_per_s(raw, args.steps)
            raw.close()
        fps = {}
        for fast in (True, False):
            env = make_env(env_id, render_mode="rgb_array", fast_render=fast)
            fps[fast] = render_fps(env, args.frames)
            env.close()
        print(f"{env_id:24s} {sps:9.0f} {raw_sps:9.0f} {fps[True]:9.1f} {fps[False]:11.1f}", flush=True)


if __name__ == "__main__":
    main()
