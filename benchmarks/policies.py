"""Performance figures for genctl.policies on this machine (not a test).

    .venv/bin/python benchmarks/policies.py [--threads 2] [--repeat 5] [--nets ref,small] [--device cuda]

Prints, per network size (``ref`` = GenerativeRL's TemporalSpatialResidualNet 512/256/128 = 1.63 M params at
Hopper dims |S|=11, |A|=3; ``small`` = 128/64/32, 171 k; ``tiny`` = 64/32/16, 77 k):
  GMPO train step it/s (batch 4096)            target >= 10  (fp32, and with amp = bf16 autocast)
  IQL critic step it/s (batch 4096, 256x256)    target >= 30
  GMPG iteration s (batch 4096, 10 Euler steps) target <= 1   (exact sampler density or Hutchinson trace;
                                                            KL term on all 4096 rows or on 1024 of them;
                                                            fp32 or bf16 autocast)
  sample latency, 31 Euler steps, batch 1 / 64  targets <= 1.5 ms / <= 1.5x the dense-matmul floor (the solve's
                                                FLOPs at the fp32 matmul rate below; issue 18), next to the eager
                                                solve and the generic trace, timed in alternating rounds; at
                                                batch 64 also the bf16 sampler and its action error vs fp32
and the FLOP rate each training step achieves (counted with torch's FlopCounterMode) as a fraction of a
dense matmul of the same precision (fp32 steps against fp32, bf16-autocast steps against bf16; 1024^3 on CPU,
8192^3 on a GPU) measured in the same run. Medians of ``--repeat`` timed runs after warm-up.

``--device cuda``: the same figures on the GPU (timed with the device synchronised around each run), plus
the GMPO step without a host sync (as ``genctl train`` runs on a GPU) and with the backbone compiled in place
(``torch.compile``, what ``genctl train compile=true`` does), and
sampling as a replayed CUDA graph (the default for no-grad GPU solves) next to the eager solve.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # 2 shared cores: avoid OpenMP spin-wait collapse

import torch  # noqa: E402
from bench_timing import dense_matmul, flops_of, interleaved, matmul_rate, set_device, sync, timeit  # noqa: E402,E501

from genctl.policies import (  # noqa: E402
    GenerativeModel,
    IQLCritic,
    count_parameters,
    cpu_solve,
    make_algorithm,
    make_generative_model,
)

OBS, ACT, BATCH = 11, 3, 4096
NETS = {"ref": [512, 256, 128], "small": [128, 64, 32], "tiny": [64, 32, 16]}


DEVICE = torch.device("cpu")


def batch(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    b = {"obs": torch.randn(n, OBS, generator=gen), "action": torch.rand(n, ACT, generator=gen) * 2 - 1,
         "reward": torch.randn(n, generator=gen), "next_obs": torch.randn(n, OBS, generator=gen),
         "terminal": (torch.rand(n, generator=gen) < 0.01).float()}
    return {k: v.to(DEVICE) for k, v in b.items()}


def report(name: str, value: float, unit: str, target: str, flops: int | None = None, sec: float | None = None,
           peak: float | None = None) -> None:
    extra = ""
    if flops is not None and sec and peak:
        extra = f"  [{flops / sec / 1e9:6.1f} GFLOP/s = {flops / sec / peak:4.0%} of dense matmul]"
    print(f"  {name:<44s} {value:9.3f} {unit:<5s} (target {target}){extra}", flush=True)


@contextlib.contextmanager
def switches(model: GenerativeModel, **kw: bool) -> Iterator[None]:
    """Set the model's solve-backend switches (trace, graph, hoist, bf16) for a block, then restore them."""
    be = model.solve_backend
    old = {k: getattr(be, k) for k in kw}
    for k, v in kw.items():
        setattr(be, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(be, k, v)


def timed_under(model: GenerativeModel, fn: Callable[[], object], **kw: bool) -> Callable[[], object]:
    def run() -> object:
        with switches(model, **kw):
            return fn()
    return run


def sample_lines(model: GenerativeModel, gen: torch.Generator, repeat: int, cuda: bool) -> None:
    """Sampling latency (31 Euler steps) at batch 1 and 64 against baselines timed in the same alternating
    rounds: the eager solve, on the CPU the generic trace (``hoist`` off: the sampler before cpu_solve), and
    the dense-matmul floor = the solve's FLOPs at the fp32 rate of ``dense_matmul`` (torch's matmul; on the CPU
    also oneDNN's, which the packed sampler uses). On the CPU at batch 64 also the bf16 sampler, with its
    action error against fp32 from the same noise."""
    mm, mm_flops = dense_matmul()
    for n in (1, 64):
        cond = torch.randn(n, OBS, generator=gen).to(DEVICE)
        noise = torch.randn(n, ACT, generator=gen).to(DEVICE)

        def run(c: torch.Tensor = cond, z: torch.Tensor = noise) -> torch.Tensor:
            return model.sample(c, steps=31, noise=z)

        with switches(model, trace=False, graph=False):
            flops = flops_of(run)
        fns = {"fast": timed_under(model, run), "eager": timed_under(model, run, trace=False, graph=False),
               "matmul": mm}
        packed = not cuda and n >= cpu_solve.PACKED_MIN_ROWS and cpu_solve.onednn_ok()
        if not cuda:
            fns["generic trace"] = timed_under(model, run, hoist=False)
        if packed:
            fns["matmul oneDNN"] = dense_matmul(onednn=True)[0]
        bf16 = packed and cpu_solve.bf16_ok()
        if bf16:
            fns["bf16"] = timed_under(model, run, bf16=True)
        lat = interleaved(fns, max(repeat, 20) if n == 1 else max(repeat, 5))
        floor = flops * lat["matmul"] / mm_flops
        base = ", ".join(f"{k} {lat[k] * 1e3:.2f} ms = {lat[k] / floor:.2f}x" for k in ("eager", "generic trace")
                         if k in lat)
        how = "CUDA graph" if cuda else ("traced, oneDNN packed" if packed else "traced")
        print(f"  {'sample 31 Euler steps, batch ' + str(n):<44s} {lat['fast'] * 1e3:9.3f} ms    "
              f"(target {'<= 1.5 ms' if n == 1 else '<= 1.5x floor'})  [{how}; {lat['fast'] / floor:.2f}x the fp32 "
              f"dense-matmul floor {floor * 1e3:.2f} ms ({flops / 1e9:.2f} GFLOP at "
              f"{mm_flops / lat['matmul'] / 1e9:.0f} GFLOP/s); {base}]", flush=True)
        if packed:
            dnn_floor = flops * lat["matmul oneDNN"] / mm_flops
            label = "  ... against oneDNN's dense fp32 rate"
            print(f"  {label:<44s} {lat['fast'] / dnn_floor:9.2f} x     "
                  f"[floor {dnn_floor * 1e3:.2f} ms at {mm_flops / lat['matmul oneDNN'] / 1e9:.0f} GFLOP/s]",
                  flush=True)
        if bf16:
            a32 = run()
            with switches(model, bf16=True):
                a16 = run()
            err = (a16 - a32).abs()
            print(f"  {'  ... bf16 (model.bf16_sampler)':<44s} {lat['bf16'] * 1e3:9.3f} ms    [{lat['bf16'] / lat['fast']:.2f}x "
                  f"the fp32 time, {lat['bf16'] / floor:.2f}x the fp32 floor; action error vs fp32 on the same "
                  f"noise: max {err.max().item():.1e}, mean {err.mean().item():.1e} (action std "
                  f"{a32.std().item():.2f})]", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--nets", default="ref,small,tiny")
    ap.add_argument("--kind", default="gvp", choices=["vpsde", "gvp", "icfm"])
    ap.add_argument("--skip-gmpg", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    global DEVICE
    DEVICE = set_device(args.device)
    cuda = DEVICE.type == "cuda"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    peak = matmul_rate(args.repeat)
    peak16 = matmul_rate(args.repeat, torch.bfloat16)
    print(f"load average at start: {os.getloadavg()}")
    where = (f"{torch.cuda.get_device_name(DEVICE)}, dense 8192^3 matmul fp32 {peak / 1e12:.1f} TFLOP/s, "
             f"bf16 {peak16 / 1e12:.1f} TFLOP/s" if cuda else
             f"CPU, {torch.get_num_threads()} threads, dense 1024^3 matmul fp32 {peak / 1e9:.1f} GFLOP/s, "
             f"bf16 {peak16 / 1e9:.1f} GFLOP/s")
    print(f"torch {torch.__version__}, {where}, model kind {args.kind}", flush=True)

    critic = IQLCritic(OBS, ACT).to(DEVICE)
    b = batch(BATCH, gen)
    sec = timeit(lambda: critic.update(b), args.repeat)
    report("IQL critic step @4096", 1 / sec, "it/s", ">= 30", flops_of(lambda: critic.update(b)), sec, peak)
    critic16 = IQLCritic(OBS, ACT, amp=True).to(DEVICE)
    sec = timeit(lambda: critic16.update(b), args.repeat)
    report("IQL critic step @4096, bf16 autocast", 1 / sec, "it/s", ">= 30", flops_of(lambda: critic16.update(b)),
           sec, peak16)
    if cuda:  # as genctl train runs it on a GPU: metrics stay on the device (no host sync per step)
        sec = timeit(lambda: critic.update(b, sync=False), args.repeat)
        report("IQL critic step @4096, no host sync", 1 / sec, "it/s", ">= 30", None, sec, peak)

    for net in args.nets.split(","):
        hidden = NETS[net]
        model = make_generative_model(args.kind, ACT, OBS, hidden=hidden).to(DEVICE)
        print(f"net {net} hidden={hidden}: {count_parameters(model):,} params", flush=True)
        gmpo = make_algorithm("gmpo", model, critic=critic, beta=1.0, clamp=100.0)
        sec = timeit(lambda g=gmpo: g.update(b), args.repeat)
        report("GMPO train step @4096", 1 / sec, "it/s", ">= 10", flops_of(lambda g=gmpo: g.update(b)), sec, peak)
        gmpo_amp = make_algorithm("gmpo", model, critic=critic, beta=1.0, clamp=100.0, amp=True)
        sec = timeit(lambda g=gmpo_amp: g.update(b), args.repeat)
        report("GMPO train step @4096, bf16 autocast", 1 / sec, "it/s", ">= 10",
               flops_of(lambda g=gmpo_amp: g.update(b)), sec, peak16)
        if cuda:  # genctl train on a GPU keeps metrics on the device; compile=true compiles the backbone in place
            sec = timeit(lambda g=gmpo: g.update(b, sync=False), args.repeat)
            report("GMPO train step @4096, no host sync", 1 / sec, "it/s", ">= 10", None, sec, peak)
            for amp in (False, True):
                compiled = make_generative_model(args.kind, ACT, OBS, hidden=hidden).to(DEVICE)
                compiled.backbone.compile()
                gmpo_c = make_algorithm("gmpo", compiled, critic=critic, beta=1.0, clamp=100.0, amp=amp)
                t0 = time.perf_counter()
                gmpo_c.update(b)
                sync()
                print(f"  (torch.compile of the backbone: first step {time.perf_counter() - t0:.1f} s)", flush=True)
                sec = timeit(lambda g=gmpo_c: g.update(b, sync=False), args.repeat, warmup=3)
                report(f"GMPO step @4096, {'bf16' if amp else 'fp32'}, compiled, no sync", 1 / sec, "it/s", ">= 10",
                       None, sec, peak16 if amp else peak)

        sample_lines(model, gen, args.repeat, cuda)
        if cuda:  # the graph of a torch.compile'd network step (GenerativeModel.compile_sampler)
            model.compile_sampler = True
            for n in (1, 64):
                cond = torch.randn(n, OBS, generator=gen).to(DEVICE)
                t0 = time.perf_counter()
                model.sample(cond, steps=31)
                sync()
                first = time.perf_counter() - t0
                sec = timeit(lambda c=cond, m=model: m.sample(c, steps=31), max(args.repeat, 20), warmup=3)
                print(f"  {'sample 31 Euler steps, batch ' + str(n):<44s} {sec * 1e3:9.3f} ms    "
                      f"[CUDA graph of the compiled step; first call {first:.1f} s]", flush=True)
            model.compile_sampler = False
            for n in (4096,):
                cond = torch.randn(n, OBS, generator=gen).to(DEVICE)
                sec = timeit(lambda c=cond, m=model: m.sample(c, steps=31), max(args.repeat, 20), warmup=3)
                print(f"  {'sample 31 Euler steps, batch ' + str(n):<44s} {sec * 1e3:9.3f} ms    [CUDA graph]",
                      flush=True)

        if args.skip_gmpg:
            continue
        behaviour = make_generative_model(args.kind, ACT, OBS, hidden=hidden).to(DEVICE)
        for exact, kl_batch, amp in ((True, None, False), (False, None, False), (True, 1024, False),
                                     (False, 1024, False), (True, None, True), (True, 1024, True)):
            gmpg = make_algorithm("gmpg", model, critic=critic, behaviour=behaviour, beta=1.0, sample_steps=10,
                                  exact_trace=exact, kl_batch=kl_batch, amp=amp)
            gmpg.update(batch(256, gen))  # warm-up at a small batch
            slow = net == "ref" and not cuda
            sec = timeit(lambda g=gmpg: g.update(b), 1 if slow else max(1, args.repeat // 2), warmup=0 if slow else 1)
            name = ("exact" if exact else "Hutch.") + (f", KL on {kl_batch}" if kl_batch else "") + (
                ", bf16" if amp else "")
            report(f"GMPG iter @4096, 10 Euler, {name}", sec, "s", "<= 1 s",
                   flops_of(lambda g=gmpg: g.update(b)) if not slow else None, sec, peak16 if amp else peak)
    print(f"load average at end: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
