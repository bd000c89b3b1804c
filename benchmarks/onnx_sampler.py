"""Torch sampler vs the exported ONNX sampler on onnxruntime, same run, same process (not a test).

    .venv/bin/python benchmarks/onnx_sampler.py RUN [--threads 1] [--repeat 50] [--batches 1,64] [--steps N] [--sample]

Exports RUN (``genctl export RUN --onnx``) to a temporary file, then times ``LoadedPolicy.predict_chunk``
(torch; on CPU its fastest path, the TorchScript-traced unrolled solve) and ``OnnxPolicy.predict_chunk``
(onnxruntime, CPU provider) at each batch size: the median over 5 alternating rounds of each side's median of
``--repeat``/5 calls after warm-up (so load from other processes hits both alike), each call including its
noise draw and the numpy<->tensor conversions a server pays. Both get the same thread count
(``torch.set_num_threads`` = onnxruntime ``intra_op_num_threads`` = ``--threads``) so the comparison is fair.
Also prints the largest torch-vs-ONNX difference for the same starting noise. ``--steps`` overrides the run's
eval step count (both sides) to see how the gap scales with the unrolled graph's length; the run's deployment
(select=q: best of ``candidates`` by Q, in the graph too) is used on both sides unless ``--sample``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # 2 shared cores: avoid OpenMP spin-wait collapse
_HERE = Path(__file__).resolve().parent

import numpy as np  # noqa: E402
import torch  # noqa: E402

_spec = importlib.util.spec_from_file_location("genctl_benchmarks_policies", _HERE / "policies.py")
assert _spec is not None and _spec.loader is not None
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)
timeit = _bench.timeit  # median of timed runs after warm-up, as the other policy benchmarks

from genctl.apps.onnx_export import build_onnx, sampler_meta  # noqa: E402
from genctl.apps.onnx_policy import OnnxPolicy  # noqa: E402
from genctl.apps.policy import LoadedPolicy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--steps", type=int, default=None, help="override the run's eval.steps on both sides")
    ap.add_argument("--sample", action="store_true", help="plain sampling even if the run deploys select=q")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    policy = LoadedPolicy.from_run(args.run)
    if args.sample:
        policy.configure(select="sample")
    if args.steps:
        policy.steps = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sampler.onnx"
        path.write_bytes(build_onnx(policy, sampler_meta(policy, Path(args.run))))
        size = path.stat().st_size
        onnx_policy = OnnxPolicy(path, threads=args.threads)
    params = sum(p.numel() for p in policy.model.parameters())
    print(f"load average at start: {os.getloadavg()}")
    print(f"{args.run}: {policy.solver} x {policy.steps} steps, horizon {policy.horizon}, obs {policy.obs_dim}, "
          f"action {policy.action_dim}, {params / 1e3:.0f} k params, ONNX {size / 1024:.0f} KiB; "
          f"{args.threads} thread(s) each; deployment {policy.deployment()}")
    rng = np.random.default_rng(0)
    print(f"{'batch':>5}  {'torch ms':>9}  {'onnxruntime ms':>14}  {'torch/ort':>9}  {'max |diff|':>10}")
    for b in (int(x) for x in args.batches.split(",")):
        obs = rng.normal(size=(b, policy.n_obs_steps, policy.obs_dim)).astype(np.float32)
        n = onnx_policy.n_select  # LoadedPolicy's noise: the generator's first draw, (state, candidate) rows
        z = torch.randn(b * n, policy.model.action_dim, generator=torch.Generator().manual_seed(b)).numpy()
        want = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(b))
        diff = float(np.abs(onnx_policy.predict_chunk(obs, noise=z.reshape(b, n, -1) if n > 1 else z) - want).max())
        # alternate short rounds of each, so load from other processes on a shared machine hits both alike
        rounds, t_torch, t_ort = 5, [], []
        for _ in range(rounds):
            t_torch.append(timeit(lambda obs=obs: policy.predict_chunk(obs), max(1, args.repeat // rounds), 3))
            t_ort.append(timeit(lambda obs=obs: onnx_policy.predict_chunk(obs, rng=rng),
                                max(1, args.repeat // rounds), 3))
        t_torch, t_ort = statistics.median(t_torch), statistics.median(t_ort)
        print(f"{b:>5}  {t_torch * 1e3:>9.3f}  {t_ort * 1e3:>14.3f}  {t_torch / t_ort:>9.2f}  {diff:>10.2e}",
              flush=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
