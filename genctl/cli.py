"""genctl command line. Thin: parse arguments, build the typed config, call one function in genctl.apps.

Errors caused by input (bad files, bad config) print one line and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from genctl.cli_parser import build_parser
from genctl.errors import GenctlError


def _main_process() -> bool:
    """False on torchrun ranks other than 0, which stay quiet."""
    import os

    return os.environ.get("RANK", "0") == "0"


def cmd_train(args: argparse.Namespace) -> int:
    from genctl.config import TrainConfig, build_config, dump_yaml

    if args.resume:
        from genctl.apps import train as tr

        if args.config or args.overrides:
            raise GenctlError("--resume takes no config or overrides: the run folder's config.yaml is used")
        tr.resume(args.resume, progress=not args.quiet, stop_after=args.stop_after)
        if _main_process():
            print(_train_summary(Path(args.resume), args.stop_after))
        return 0
    cfg = build_config(TrainConfig, file=args.config, overrides=args.overrides)
    if args.print_config:
        print(dump_yaml(cfg.with_resolved_defaults()), end="")
        return 0
    from genctl.apps import train as tr

    run_dir = tr.train(cfg, overwrite=args.overwrite, progress=not args.quiet, stop_after=args.stop_after)
    if _main_process():
        print(_train_summary(run_dir, args.stop_after))
    return 0


def _train_summary(run_dir: Path, stop_after: int | None) -> str:
    """Where the outputs are and the next command (the first line stays ``run: DIR`` for scripts)."""
    lines = [f"run: {run_dir}",
             f"  config.yaml, checkpoints/, metrics.jsonl{', critic.json' if (run_dir / 'critic.json').exists() else ''}"]
    if stop_after is not None:
        lines.append(f"next: genctl train --resume {run_dir}   (stopped after {stop_after} steps)")
    else:
        lines.append(f"next: genctl eval {run_dir} --episodes 20 --rerun save {run_dir / 'rollouts.rrd'}"
                     f"   |   genctl plot {run_dir}")
    return "\n".join(lines)

@contextlib.contextmanager
def _flags(renamed: dict[str, str] | None = None) -> Iterator[None]:
    """An app's ``OptionError`` (named by its keyword argument) becomes an error naming the command-line flag."""
    from genctl.apps.rollout_state import OptionError

    try:
        yield
    except OptionError as e:
        flag = (renamed or {}).get(e.option) or "--" + e.option.replace("_", "-")
        raise GenctlError(f"{flag} {e.problem}") from None


def cmd_eval(args: argparse.Namespace) -> int:
    from genctl.apps.distributed import resolve_device
    from genctl.apps.evaluate import EvalOptions, evaluate, format_report
    from genctl.apps.viz import parse_rerun_arg

    rerun = parse_rerun_arg(args.rerun)
    if args.deterministic and args.temperature not in (None, 0.0):
        raise GenctlError(f"--deterministic means --temperature 0; got also --temperature {args.temperature}")
    temperature = 0.0 if args.deterministic else args.temperature
    ranked = args.candidates if args.select == "q" else None
    cloud = args.candidates if args.candidates is not None and args.select != "q" else 64
    opts = EvalOptions(episodes=args.episodes, envs=args.envs, solver=args.solver, steps=args.steps,
                       seed_start=args.seed, rerun=rerun, rerun_episodes=args.rerun_episodes, candidates=cloud,
                       frame_every=args.frame_every, max_episode_steps=args.max_episode_steps, device=args.device,
                       out=Path(args.out) if args.out else None, progress=not args.quiet,
                       n_action_steps=args.n_action_steps, select=args.select, select_candidates=ranked,
                       temperature=temperature, bf16_sampler=args.bf16_sampler or None,
                       weights=args.weights)
    with _flags({"seed_start": "--seed", "select_candidates": "--candidates"}):
        opts.check()
        resolve_device(args.device, label="--device ")  # the device errors name the flag
        r = evaluate(args.run, opts)
    if "return" not in r:  # a torchrun rank other than 0: rank 0 reports
        return 0
    print(format_report(r))
    print(f"wrote {r['path']}")
    for f in r.get("rerun_files", []):
        print(f"rerun recording: {f}   view: rerun {f}")
    if r.get("rerun_url"):
        print(f"rerun viewer: {r['rerun_url']}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from genctl.apps.collect import collect, collect_summary

    out = collect(args.env, expert=args.expert, episodes=args.episodes, noise=args.noise,
                  random_frac=args.random_frac, workers=args.workers, seed=args.seed, out=args.out,
                  images=args.images, camera=args.camera, image_size=args.image_size, image_codec=args.image_codec,
                  overwrite=args.overwrite, progress=not args.quiet)
    print(collect_summary(out))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from genctl.datasets import ingest

    keys = [k.strip() for k in args.obs_keys.split(",")] if args.obs_keys else None
    store = ingest(args.src, args.out, fmt=args.format, obs_keys=keys, image_codec=args.image_codec,
                   overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {store.path}: {store.n_episodes} episodes, {store.n_transitions} transitions")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.lerobot:
        from genctl.datasets.export_lerobot import export_lerobot

        export_lerobot(args.src, args.lerobot)
        return 0
    if args.onnx:
        from genctl.apps.onnx_export import export_onnx

        export_onnx(args.src, args.onnx)
        return 0
    from genctl.datasets import export_minari

    where = export_minari(args.src, args.minari, data_path=args.data_path)
    print(f"wrote Minari dataset {args.minari}" + (f" at {where}" if where else ""))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from genctl.datasets import format_info, store_info

    info = store_info(args.store)
    print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from genctl.apps.view import view_store
    from genctl.apps.viz import parse_rerun_arg

    rerun = parse_rerun_arg(args.rerun)
    if rerun is None:  # no viewer asked for: a file beside the store, said out loud
        rerun = ("save", str(Path(args.store).with_suffix(".rrd")))
        print(f"no --rerun mode given: saving the recording to {rerun[1]} (or --rerun spawn | serve | save PATH)")
    files, url = view_store(args.store, episodes=args.episodes, rerun=rerun, render=args.render,
                            progress=not args.quiet)
    for f in files:
        print(f"rerun recording: {f}   view: rerun {f}")
    if url:
        print(f"rerun viewer: {url}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from genctl.apps.realtime import run_realtime

    with _flags():
        r = run_realtime(args.run, hz=args.hz, episodes=args.episodes, late=args.late, solver=args.solver,
                         steps=args.steps, max_steps=args.max_steps, n_action_steps=args.n_action_steps)
    print(f"target {r['hz_target']:.1f} Hz, achieved {r['hz_achieved']:.1f} Hz over {r['ticks']} ticks; "
          f"deadline misses {r['deadline_misses']} ({100 * r['miss_rate']:.1f}%); policy p50 "
          f"{r['latency_ms']['p50']:.2f} ms p99 {r['latency_ms']['p99']:.2f} ms")
    for e in r["episodes"]:
        print(f"  episode {e['episode']}: return {e['return']:.2f} success {e['success']} length {e['length']}")
    print(f"wrote {r['path']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from genctl.apps.serve import TOKEN_ENV, ServeConfig, serve_policy

    cfg = ServeConfig(host=args.host, port=args.port, token=args.token or os.environ.get(TOKEN_ENV) or None,
                      max_bytes=args.max_bytes, batch_window_ms=args.batch_window_ms, max_batch=args.max_batch,
                      max_sessions=args.max_sessions, fps=args.fps)
    serve_policy(args.run, onnx=args.onnx, device=args.device, config=cfg)
    return 0


def cmd_robot_sim(args: argparse.Namespace) -> int:
    from genctl.apps.robot_sim import format_report, robot_sim

    r = robot_sim(args.target, server=args.server, hz=args.hz, episodes=args.episodes, seed=args.seed,
                  ahead=args.ahead, max_steps=args.max_steps, token=args.token, out=args.out,
                  timeout=args.timeout)
    print(format_report(r))
    if "path" in r:
        print(f"wrote {r['path']}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from genctl.apps.plot import plot_run

    for f in plot_run(args.run, states=args.states, samples=args.samples):
        print(f"wrote {f}")
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    from genctl.envs import env_ids, expert_names

    data = {"envs": env_ids(), "experts": expert_names()}
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print("envs:\n  " + "\n  ".join(data["envs"]))
        experts = data["experts"]
        items = experts.items() if isinstance(experts, dict) else ((e, "") for e in experts)
        print("experts:\n  " + "\n  ".join(f"{k:22s} {v}" for k, v in items))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from genctl.apps.demo import run_demo

    run_demo(Path(args.out), env_id=args.env, episodes=args.episodes, fast=args.fast, overrides=args.overrides,
             progress=not args.quiet)
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "collect": cmd_collect, "ingest": cmd_ingest,
            "export": cmd_export, "info": cmd_info, "view": cmd_view, "envs": cmd_envs, "demo": cmd_demo,
            "run": cmd_run, "plot": cmd_plot, "serve": cmd_serve, "robot-sim": cmd_robot_sim}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines appear promptly when piped to a file
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("absl", "matplotlib", "PIL", "OpenGL"):  # OpenGL: "No OpenGL_accelerate module loaded"
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ok = False
    try:
        rc = COMMANDS[args.cmd](args)
        ok = True
        return rc
    except GenctlError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`genctl info --json | head`): stop quietly, like a Unix tool, and keep the
        # interpreter's final flush from raising again into a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        _close_process_group(wait=ok)


def _close_process_group(wait: bool) -> None:
    """Leave a torchrun process group cleanly (gloo aborts at interpreter exit otherwise)."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            if wait:  # never wait for peers after an error: they may be blocked elsewhere
                dist.barrier()
        finally:
            dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
