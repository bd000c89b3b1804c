"""Data-parallel training and evaluation on torch.distributed (gloo on CPU, NCCL on GPU), launched by torchrun.

``torchrun --nproc-per-node N -m genctl train ...`` starts N processes; each samples its own share of every
batch (its own data stream), and gradients are averaged across ranks with one bucketed all-reduce per
optimiser step, so all replicas stay identical. Rank 0 alone writes the run folder, metrics and checkpoints.

Why not ``torch.nn.parallel.DistributedDataParallel`` itself: DDP averages gradients through hooks armed
by its wrapper's ``forward``. Our updates are not one forward/backward: IQL takes two optimiser steps on
two losses per batch, and GMPG backpropagates through a sampler solve plus a density solve of several
models. Averaging at ``optimizer.step`` (a step pre-hook) gives DDP's result - the same averaged gradient on
every rank - for every algorithm without wrapping or renaming modules (checkpoints stay interchangeable
between 1 and N processes). The cost is that communication is not overlapped with backward, which does not
matter at these model sizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from genctl.errors import GenctlError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(name: str, local_rank: int | None = None, *, label: str = "device=") -> torch.device:
    """``cpu | cuda | cuda:N | auto`` -> a torch.device, with one clear error (``label`` names the option, e.g.
    ``device=`` or ``--device ``) for anything else, for CUDA that torch cannot see, or for a missing GPU index.
    A bare ``cuda`` means ``cuda:local_rank`` when a rank is given (one process per GPU)."""
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "auto") or (index and (kind != "cuda" or not index.isdigit())):
        raise GenctlError(f"{label.strip()} must be cpu, cuda, cuda:N or auto, got {name!r}")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise GenctlError(f"{label}{name}: torch sees no CUDA device (torch {torch.__version__})")
    if index and int(index) >= torch.cuda.device_count():
        raise GenctlError(f"{label}{name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    if index:
        return torch.device("cuda", int(index))
    return torch.device("cuda") if local_rank is None else torch.device("cuda", local_rank)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment; a no-op for a single process."""
    if not launched_by_torchrun():
        return DistInfo()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local)


def broadcast_modules(modules: list[nn.Module | None]) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    for m in modules:
        if m is None:
            continue
        for t in list(m.parameters()) + list(m.buffers()):
            dist.broadcast(t.data, src=0)


def _average_grads(optimizer: torch.optim.Optimizer, world: int) -> None:
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return
    by_kind: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        by_kind.setdefault((g.device, g.dtype), []).append(g)
    for bucket in by_kind.values():
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for g in bucket:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


def sync_gradients(optimizers: dict[str, torch.optim.Optimizer], world: int) -> list[Any]:
    """Average gradients across ranks right before each ``optimizer.step()``."""
    return [opt.register_step_pre_hook(lambda o, args, kwargs: _average_grads(o, world))
            for opt in optimizers.values()]


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is true on any rank (keeps ranks in lock-step on errors)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def param_digest(modules: list[nn.Module | None]) -> torch.Tensor:
    """A small fingerprint of all parameters (sums and a position-weighted sum per tensor), in float64."""
    parts = []
    for m in modules:
        if m is None:
            continue
        for p in m.parameters():
            x = p.detach().double().reshape(-1).cpu()
            w = torch.arange(1, x.numel() + 1, dtype=torch.float64)
            parts.append(torch.stack([x.sum(), (x * w).sum() / x.numel()]))
    return torch.cat(parts) if parts else torch.zeros(1, dtype=torch.float64)


def replica_divergence(modules: list[nn.Module | None], info: DistInfo) -> float:
    """Max |difference| of the parameter fingerprints between ranks (0.0 when replicas are identical)."""
    if not info.enabled:
        return 0.0
    digests = gather(param_digest(modules), info)
    ref = digests[0]
    return float(max((d - ref).abs().max().item() for d in digests))
