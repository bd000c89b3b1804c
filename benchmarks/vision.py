"""Performance figures for genctl's vision encoders on this machine (not a test).

    .venv/bin/python benchmarks/vision.py [--quick] [--threads 2] [--repeat 5] [--kinds small,resnet18]
                                          [--size 84] [--batch 64] [--device cpu]

Prints, per encoder kind (``small`` = 3 strided convs, ``resnet18`` = ResNet-18 with GroupNorm; both with
spatial-softmax keypoints; one RGB camera of size x size, crop 90%):
  encoder images/s (eval: centre crop, no grad, uint8 in)   and its FLOP rate as a fraction of a dense matmul
  training step it/s at --batch: random crop + encoder + a small MLP generative model (128/64/32, flow
      matching) under the BC loss, forward + backward + Adam on both (``make_algorithm("bc", VisionPolicy)``)
and, once, the data path: a uint8 batch gathered from an in-memory numpy store at random rows, random-cropped
and normalised to float [-1, 1] (what the training step feeds the encoder), as batches/s, with the ratio
data path / training step for each kind (goal >= 3x: the data path must not be the bottleneck). The dense
1024^3 fp32 matmul is measured in the same run as the baseline of the FLOP rates. Medians of ``--repeat`` runs.
``--quick``: fewer repeats and a smaller store (< 1 min on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # 2 shared cores: avoid OpenMP spin-wait collapse

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_timing import flops_of, matmul_rate, set_device, timeit  # noqa: E402

from genctl.policies import count_parameters, make_algorithm, make_generative_model  # noqa: E402
from genctl.policies.vision import ImageSpec, MultiCameraEncoder, VisionPolicy, preprocess  # noqa: E402

ACT, STATE, KEY = 7, 9, "image/front"
DEVICE = torch.device("cpu")


def report(name: str, value: float, unit: str, extra: str = "") -> None:
    print(f"  {name:<52s} {value:10.1f} {unit:<9s}{extra}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 repeats, a 512-frame store: < 1 min on 2 cores")
    ap.add_argument("--kinds", default="small,resnet18")
    ap.add_argument("--size", type=int, default=84)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--store", type=int, default=4096, help="frames in the in-memory uint8 store")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    global DEVICE
    DEVICE = set_device(args.device)
    repeat, n_store = (2, 512) if args.quick else (args.repeat, args.store)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, size = args.batch, args.size
    spec = ImageSpec(KEY, size, size, 3)
    rng = np.random.default_rng(0)
    store = rng.integers(0, 256, (n_store, size, size, 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, (n_store, ACT)).astype(np.float32)
    states = rng.standard_normal((n_store, STATE)).astype(np.float32)
    peak = matmul_rate(repeat)
    print(f"load average at start: {os.getloadavg()}")
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, dense matmul fp32 {peak / 1e9:.1f} GFLOP/s; images {size}x{size}x3 "
          f"uint8, crop {spec.crop_height}x{spec.crop_width}, batch {B}, store {n_store} frames", flush=True)

    def data_path() -> torch.Tensor:  # gather + random crop + normalise, as a training step's input
        idx = rng.integers(0, n_store, B)
        return preprocess(spec, store[idx], train=True, device=DEVICE)[0]

    sec_data = timeit(data_path, max(repeat, 10), warmup=2)
    report(f"data path: gather+crop+normalise @{B}", 1 / sec_data, "batches/s", f"  ({B / sec_data:,.0f} images/s)")
    idx = rng.integers(0, n_store, B)
    sec_gather = timeit(lambda: store[rng.integers(0, n_store, B)], max(repeat, 10), warmup=2)
    sec_crop = timeit(lambda: preprocess(spec, store[idx], train=True, device=DEVICE), max(repeat, 10), warmup=2)
    print(f"    (of which gather {sec_gather * 1e3:.2f} ms, crop+normalise {sec_crop * 1e3:.2f} ms per batch)")

    for kind in args.kinds.split(","):
        enc = MultiCameraEncoder([spec], kind=kind, out_dim=64).to(DEVICE).eval()
        print(f"encoder {kind}: {count_parameters(enc):,} params, feature map {enc.backbones[0].feature_hw}",
              flush=True)
        imgs = {KEY: torch.from_numpy(store[idx])}
        with torch.no_grad():
            sec = timeit(lambda e=enc, m=imgs: e(m, train=False), repeat, warmup=1)
            x = preprocess(spec, store[idx], train=False, device=DEVICE)[0]
            fl = flops_of(lambda e=enc, x=x: e.backbones[0](x))
        report(f"encoder eval images/s @{B} (uint8 in, centre crop)", B / sec, "images/s",
               f"  [{fl / sec / 1e9:6.1f} GFLOP/s = {fl / sec / peak:4.0%} of dense matmul]")

        enc.train()
        model = make_generative_model("gvp", ACT, STATE + enc.feature_dim, hidden=[128, 64, 32]).to(DEVICE)
        pol = VisionPolicy(enc, model, state_dim=STATE)
        algo = make_algorithm("bc", pol, lr=1e-4)

        def step(a=algo) -> None:
            i = rng.integers(0, n_store, B)
            a.update({"action": torch.from_numpy(actions[i]).to(DEVICE),
                      "obs": {"obs": torch.from_numpy(states[i]).to(DEVICE), KEY: store[i]}})

        sec_step = timeit(step, repeat, warmup=1)
        fl = flops_of(step)
        report(f"train step it/s @{B} (crop+encoder+MLP gen., fwd+bwd+Adam)", 1 / sec_step, "it/s",
               f"  [{fl / sec_step / 1e9:6.1f} GFLOP/s = {fl / sec_step / peak:4.0%} of dense matmul]")
        ratio = sec_step / sec_data
        print(f"  {'data path / train step rate':<52s} {ratio:10.1f} x         (goal >= 3x: "
              f"{'met' if ratio >= 3 else 'NOT met'})", flush=True)
    print(f"load average at end: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
