"""genctl's argument parser: every command, its flags and their help (``genctl COMMAND --help``)."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  genctl demo                                   collect -> train -> eval -> rerun recording (PointMaze)
  genctl collect PointMaze_UMaze-v3 --expert maze --episodes 300 --noise 0.3 -o data/umaze.zarr
  genctl ingest hopper.hdf5 -o data/hopper.zarr
  genctl train data.store=data/umaze.zarr policy.algo=gmpo policy.beta=3
  genctl eval runs/umaze-gmpo-gvp-s0 --episodes 50 --rerun save rollouts.rrd
  rerun runs/umaze-gmpo-gvp-s0/rollouts.rrd
"""


def _add_rerun(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rerun", nargs="+", metavar="MODE",
                   help="spawn | serve | save PATH | connect ADDR (serve binds 127.0.0.1 and prints the URL)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="genctl", description="Generative policies (diffusion / flow matching) for robots: "
        "GMPO and GMPG trained offline from demos, evaluated in closed loop in MuJoCo, shown live in rerun.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debug", action="store_true", help="show full tracebacks")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="the main job on an embedded default: collect demos, train GMPO, evaluate, record",
                       description="Collect PointMaze demos with the scripted expert (BFS + PD, noisy), write a zarr "
                       "store, train an IQL critic and a GMPO flow policy on the CPU, evaluate it in closed loop and "
                       "save a rerun recording of the rollouts.")
    p.add_argument("-o", "--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--env", default="PointMaze_UMaze-v3")
    p.add_argument("--episodes", type=int, default=30, help="evaluation episodes (default 30: enough to tell the policy from its demos)")
    p.add_argument("--fast", action="store_true", help="tiny budgets (smoke test, ~1 min)")
    p.add_argument("overrides", nargs="*", help="training config overrides key=value")

    p = sub.add_parser("collect", help="record demonstrations from a scripted expert into a zarr store")
    p.add_argument("env", help="env id, e.g. PointMaze_Medium-v3 (see genctl envs)")
    p.add_argument("--expert", required=True, help="scripted expert name (see genctl envs)")
    p.add_argument("--episodes", type=int, required=True)
    p.add_argument("--noise", type=float, default=0.0, help="Gaussian action noise sigma")
    p.add_argument("--random-frac", type=float, default=0.0, help="fraction of episodes with uniform random actions")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", action="store_true", help="also store camera frames as image/<camera> (uint8)")
    p.add_argument("--camera", default="default",
                   help="with --images: 'default' (the env's view), 'top' (overhead; mazes: whole maze and goal) "
                   "or a camera named in the MuJoCo model; evaluation renders the same view")
    p.add_argument("--image-size", type=int, default=240, help="with --images: frame height = width in pixels "
                   "(84 or 64 for a vision policy)")
    p.add_argument("--image-codec", choices=["lz4", "zstd"], default="lz4", help="camera frames in the store: lz4 (default; fast to write and to read while training) or zstd (smaller, slower)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-o", "--out", required=True, help="output store (.zarr)")

    p = sub.add_parser("ingest", help="convert logged demos (Minari, D4RL-HDF5, robomimic-HDF5, LeRobotDataset) "
                       "into a zarr store")
    p.add_argument("src", help="Minari dataset id or path, an HDF5 file, or a LeRobotDataset folder")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--format", choices=["minari", "d4rl", "robomimic", "lerobot"], help="default: detected")
    p.add_argument("--obs-keys", help="comma-separated observation keys (robomimic)")
    p.add_argument("--image-codec", choices=["lz4", "zstd"], default="lz4", help="camera frames in the store: lz4 (default; fast to write and to read while training) or zstd (smaller, slower)")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("export", help="write a store out as a Minari or LeRobot dataset, or a run's sampler as ONNX",
                       description="A store goes out as a Minari dataset (--minari) or a LeRobotDataset v3.0 folder "
                       "(--lerobot); a trained run's whole sampler goes out as one ONNX graph (--onnx).")
    p.add_argument("src", metavar="STORE_OR_RUN", help="a store (.zarr) for --minari/--lerobot, a run for --onnx")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--minari", metavar="ID", help="Minari dataset id, e.g. genctl/umaze-expert-v0")
    target.add_argument("--lerobot", metavar="DIR", help="write a LeRobotDataset (v3.0) folder")
    target.add_argument("--onnx", metavar="OUT", help="write the run's sampler as an ONNX file (e.g. policy.onnx)")
    p.add_argument("--data-path", help="Minari root (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)")

    p = sub.add_parser("info", help="summarise a store: episodes, returns, keys, size, compression")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("train", help="train critic and policy (bc | gmpo | gmpg) from a store",
                       description="Train from a zarr store. Configuration: defaults <- -c FILE <- key=value "
                       "overrides (dotted, e.g. policy.algo=gmpg critic.steps=5000). The resolved config is written "
                       "to the run folder; --resume RUN continues a run exactly where it stopped.")
    p.add_argument("-c", "--config", help="YAML config file")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder (nothing else needed)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop (with a checkpoint) after N steps in this call")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides")

    p = sub.add_parser("eval", help="evaluate a trained run in closed loop; writes eval.json")
    p.add_argument("run", help="run folder (runs/<name>) or checkpoint folder")
    p.add_argument("--episodes", type=int, help="episodes (default: the run's eval.episodes, 10 unless set)")
    p.add_argument("--envs", type=int, help="envs stepped side by side, one batched policy call (default: the "
                   "run's eval.envs)")
    p.add_argument("--solver", choices=["euler", "heun", "midpoint"])
    p.add_argument("--steps", type=int, help="sampler steps (default: the run's eval.steps)")
    p.add_argument("--seed", type=int, default=0, help="first eval seed offset")
    p.add_argument("--max-episode-steps", type=int, help="default: the run's eval.max_episode_steps, else the env's")
    p.add_argument("--n-action-steps", type=int, metavar="N",
                   help="chunked policies: actions executed per policy call (default: the run's data.n_action_steps)")
    p.add_argument("--select", choices=["sample", "q"],
                   help="how an action is chosen (default: the run's eval.select): sample = one sampled action; "
                   "q = sample --candidates actions, execute the one with the highest Q")
    p.add_argument("--candidates", type=int, metavar="N",
                   help="with --select q: actions ranked per decision (default: the run's eval.candidates); "
                   "otherwise: actions drawn per step for the rerun candidate cloud (default 64)")
    p.add_argument("--temperature", type=float, metavar="T",
                   help="scale of the sampler's starting noise (default: the run's eval.temperature; 1 = learned "
                   "distribution, 0 = deterministic)")
    p.add_argument("--deterministic", action="store_true",
                   help="= --temperature 0: the ODE from zero noise, one repeatable action per state")
    p.add_argument("--bf16-sampler", action="store_true",
                   help="CPU: the sampler's network in bfloat16 when a call has >= 8 rows (--envs 8+, --select q) "
                   "on CPUs with native bf16; ~1.5x faster, ~1e-3 action error; recorded in eval.json")
    p.add_argument("--weights", choices=["ema", "raw"], default="ema",
                   help="which weights act: ema = the policy's moving average (default, when the run kept one), "
                   "raw = the optimiser's last weights; recorded in eval.json")
    p.add_argument("--rerun-episodes", type=int, help="record only the first N episodes in rerun")
    p.add_argument("--frame-every", type=int, default=1, help="log a camera frame every N steps (0 = none)")
    p.add_argument("--device", default="cpu", help="where the policy runs: cpu, cuda, cuda:N or auto (default cpu; "
                   "on a GPU the sampler replays a captured CUDA graph)")
    p.add_argument("-o", "--out", help="eval.json path (default: RUN/eval.json)")
    _add_rerun(p)

    p = sub.add_parser("view", help="browse a store in rerun (observations, actions, frames, re-rendered sim)")
    p.add_argument("store")
    p.add_argument("--episodes", default="0:5", help="indices or ranges, e.g. 0,3,10:20 (default 0:5)")
    p.add_argument("--render", action="store_true", help="re-render frames by replaying stored sim state")
    _add_rerun(p)

    p = sub.add_parser("run", help="real-time control: step one env at a fixed rate, count deadline misses",
                       description="Step one env at --hz while the policy runs in its own thread. When the policy "
                       "is late the loop keeps going with the last action (hold) and counts a deadline miss.")
    p.add_argument("run", help="run folder")
    p.add_argument("--hz", type=float, required=True, help="control rate")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--late", choices=["hold", "chunk"], default="hold", help="what to do when the policy is late")
    p.add_argument("--solver", choices=["euler", "heun", "midpoint"])
    p.add_argument("--steps", type=int)
    p.add_argument("--max-steps", type=int, help="stop each episode after N control ticks")
    p.add_argument("--n-action-steps", type=int, metavar="N",
                   help="actions of each predicted chunk executed before replanning (default: the run's "
                        "data.n_action_steps; 1 = replan every tick)")

    p = sub.add_parser("serve", help="serve a policy over websockets (msgpack) to robots in other processes",
                       description="Serve a trained run (or an ONNX export, without torch) to robot processes: a "
                       "client sends an observation (or its history) and, for a policy that sees cameras, each camera's "
                       "frame at the trained size (uint8 array or JPEG/PNG bytes), and gets an action chunk with per-action timestamps, the policy version and the server "
                       "latency. Requests from several clients are batched into one policy call. Binds "
                       "127.0.0.1; any other --host needs a token. Client: genctl.apps.client.PolicyClient.")
    p.add_argument("run", nargs="?", help="run folder or checkpoint folder (or give --onnx instead)")
    p.add_argument("--onnx", metavar="FILE",
                   help="serve an ONNX export (genctl export RUN --onnx FILE) without torch")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port)")
    p.add_argument("--device", default="cpu", help="where a run's policy runs: cpu, cuda, cuda:N or auto")
    p.add_argument("--token", help="shared secret every request must carry (default: $GENCTL_SERVE_TOKEN, "
                   "better: a command line is visible to other users); required unless --host is loopback")
    p.add_argument("--max-bytes", type=int, default=8 << 20, help="largest request accepted (default 8 MiB)")
    p.add_argument("--batch-window-ms", type=float, default=1.0,
                   help="how long a request waits for other sessions' requests to share its call (default 1 ms; "
                   "no wait when all open sessions have asked)")
    p.add_argument("--max-batch", type=int, default=16, help="most requests in one policy call (1 = no batching)")
    p.add_argument("--max-sessions", type=int, default=64, help="most clients connected at once (default 64)")
    p.add_argument("--fps", type=float, default=10.0,
                   help="action spacing of the reply timestamps when a request gives no dt (default 10 Hz)")

    p = sub.add_parser("robot-sim", help="a MuJoCo env acting as the robot of a genctl serve server, at a "
                       "fixed rate",
                       description="Step the env at --hz in this process, requesting action chunks from the server "
                       "asynchronously (the next chunk is asked for --ahead ticks before the current one runs out) "
                       "and report return/success per episode (eval seeds, comparable with genctl eval), deadline "
                       "misses and end-to-end latency p50/p99. Writes RUN/robot_sim.json for a run.")
    p.add_argument("target", metavar="RUN_OR_ENV",
                   help="a run folder (its env and eval.max_episode_steps) or an env id")
    p.add_argument("--server", default="127.0.0.1:8765", help="server address host:port (default 127.0.0.1:8765)")
    p.add_argument("--hz", type=float, required=True, help="control rate")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="first eval seed offset (as genctl eval --seed)")
    p.add_argument("--ahead", type=int, metavar="K", help="request each chunk K ticks before it is needed (default "
                   "1 when the horizon allows; 0 = plan at the chunk boundary, exactly like genctl eval)")
    p.add_argument("--max-steps", type=int, help="stop each episode after N ticks (default: the run's "
                   "eval.max_episode_steps)")
    p.add_argument("--token", help="the server's token (default: $GENCTL_SERVE_TOKEN)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a reply before giving up")
    p.add_argument("-o", "--out", help="report path (default: RUN/robot_sim.json for a run; none for an env id)")

    p = sub.add_parser("plot", help="PNG learning curves and action-sample distributions of a run")
    p.add_argument("run", help="run folder")
    p.add_argument("--states", type=int, default=6, help="states at which to draw action samples")
    p.add_argument("--samples", type=int, default=256)

    p = sub.add_parser("envs", help="list registered envs and scripted experts")
    p.add_argument("--json", action="store_true")
    return ap
