"""Policy server throughput and latency, 1/4/16 concurrent clients, with and without batching (not a test).

    .venv/bin/python benchmarks/serve.py RUN [--clients 1,4,16] [--requests 50] [--modes nobatch,batch]
                                         [--onnx FILE] [--device cpu] [-o results.json]

For each mode a ``genctl serve`` process is started on 127.0.0.1 (any free port) and, for each client count,
that many client threads (``genctl.apps.client.PolicyClient``, one connection each) send ``--requests``
observation histories back to back (closed loop: the next request when the reply is in). Reported per cell:
requests/s over the wall time, round-trip latency p50/p99 at the client, the server's own latency p50/p99,
and the mean number of requests that shared one policy call.

Modes: ``nobatch`` = ``--max-batch 1`` (one policy call per request, in arrival order); ``batch`` =
``--max-batch 16 --batch-window-ms 1`` (requests that arrive while the worker is busy, or within 1 ms, share a
call); ``batch0`` = ``--max-batch 16 --batch-window-ms 0`` (share only what is already queued).
For a policy that sees cameras every request also carries each camera's frames at the trained size (raw uint8).
Clients and server share this machine's cores, so absolute numbers are a lower bound for a robot on a LAN.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from genctl.apps.client import PolicyClient

MODES = {"nobatch": ["--max-batch", "1"], "batch": ["--max-batch", "16", "--batch-window-ms", "1"],
         "batch0": ["--max-batch", "16", "--batch-window-ms", "0"]}


def start_server(target: list[str], extra: list[str], device: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "genctl", "serve", *target, "--port", "0", "--device", device, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # the server prints its address once it listens
        m = re.search(r"ws://([\d.]+:\d+)", line)
        if m:  # keep draining its output so that a chatty server never blocks on a full pipe
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return proc, m.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit(f"server did not start: {' '.join(cmd)}")


def run_clients(addr: str, n_clients: int, n_requests: int) -> dict[str, float]:
    clients = [PolicyClient(addr, timeout=60) for _ in range(n_clients)]
    c0 = clients[0]
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n_clients, c0.n_obs_steps, c0.obs_dim)).astype(np.float32)
    # a policy that sees cameras: every request carries each camera's frames (raw uint8, the history's worth)
    cams = {k: tuple(v) for k, v in (c0.meta.get("cameras") or {}).items()}
    frames = [{k: rng.integers(0, 256, size=(c0.n_obs_steps, *hwc), dtype=np.uint8) for k, hwc in cams.items()}
              or None for _ in range(n_clients)]
    for c, o, f in zip(clients, obs, frames, strict=True):  # warm-up, not timed
        c.infer(o, images=f)
    rtt: list[float] = []
    server: list[float] = []
    batch: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n_clients + 1)

    def work(c: PolicyClient, o: np.ndarray, f: dict[str, np.ndarray] | None) -> None:
        mine = []
        barrier.wait()
        for _ in range(n_requests):
            mine.append(c.infer(o, images=f))
        with lock:
            rtt.extend(x.rtt_ms for x in mine)
            server.extend(x.server_ms for x in mine)
            batch.extend(x.batch for x in mine)

    threads = [threading.Thread(target=work, args=(c, o, f)) for c, o, f in zip(clients, obs, frames, strict=True)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    return {"clients": n_clients, "requests": len(rtt), "req_per_s": len(rtt) / wall,
            "rtt_p50_ms": float(np.percentile(rtt, 50)), "rtt_p99_ms": float(np.percentile(rtt, 99)),
            "server_p50_ms": float(np.percentile(server, 50)),
            "server_p99_ms": float(np.percentile(server, 99)),
            "mean_batch": float(np.mean(batch))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", help="run folder (or --onnx)")
    ap.add_argument("--onnx", help="serve this ONNX export instead of a run")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=50, help="requests per client per cell")
    ap.add_argument("--modes", default="nobatch,batch", help=f"comma-separated, of {sorted(MODES)}")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("-o", "--out", help="write the results as JSON")
    a = ap.parse_args()
    target = ["--onnx", a.onnx] if a.onnx else [a.run]
    if not (a.run or a.onnx):
        ap.error("give a RUN or --onnx FILE")
    results = []
    print(f"{'mode':8s} {'clients':>7s} {'req/s':>8s} {'rtt p50':>8s} {'rtt p99':>8s} {'srv p50':>8s} "
          f"{'srv p99':>8s} {'batch':>6s}")
    for mode in a.modes.split(","):
        proc, addr = start_server(target, MODES[mode], a.device)
        try:
            for n in (int(x) for x in a.clients.split(",")):
                r = {"mode": mode, **run_clients(addr, n, a.requests)}
                results.append(r)
                print(f"{mode:8s} {n:7d} {r['req_per_s']:8.1f} {r['rtt_p50_ms']:8.2f} {r['rtt_p99_ms']:8.2f} "
                      f"{r['server_p50_ms']:8.2f} {r['server_p99_ms']:8.2f} {r['mean_batch']:6.2f}",
                      flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
