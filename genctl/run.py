"""Run folders and checkpoints.

Layout of a run folder::

    runs/<name>/
      config.yaml            the resolved TrainConfig (written once, re-read by --resume)
      metrics.jsonl          one JSON object per logged step (always)
      tb/                    TensorBoard events (when tensorboard is importable)
      checkpoints/
        step-000001000/      one complete checkpoint (written to a temp sibling, then renamed)
          meta.json          stage, steps, config, normaliser, env info, RNG state, optimiser hyper-params
          <group>.safetensors   weights per module group (policy, ema, critic, behaviour, optim)
        LATEST               name of the newest complete checkpoint (atomically replaced)
      eval.json, rollouts.rrd, plots/   written by eval / plot

A checkpoint folder is either complete or absent: readers only follow LATEST or list ``step-*`` folders,
never the hidden temp siblings that an interrupted write may leave (they are swept on the next save).
No pickle anywhere: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from genctl.errors import DataError
from genctl.fsutil import TMP_MARK, atomic_dir, atomic_write_text, cleanup_stale, temp_sibling

CKPT_RE = re.compile(r"^step-(\d{9})$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def optimizer_to_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state_dict into flat tensors (for safetensors) and JSON-able hyper-parameters."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}/{pid}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor],
                           meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if not key.startswith(prefix + "/"):
            continue
        _, pid, k = key.rsplit("/", 2)
        state.setdefault(int(pid), {})[k] = v
    for pid, sc in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: Path, step: int, groups: dict[str, dict[str, torch.Tensor]],
                    optimizers: dict[str, torch.optim.Optimizer], meta: dict[str, Any], keep: int = 2) -> Path:
    """Write ``checkpoints/step-<step>/`` atomically, point LATEST at it, keep the newest ``keep``."""
    ckdir = checkpoint_dir(run_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:09d}"
    for stale in {p.name[1:].split(TMP_MARK)[0] for p in ckdir.glob(f".step-*{TMP_MARK}*")} | {name, "LATEST"}:
        cleanup_stale(ckdir, stale)  # leftovers of writes or deletions a killed process did not finish
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_meta: dict[str, Any] = {}
    for oname, opt in optimizers.items():
        t, m = optimizer_to_tensors(opt, oname)
        opt_tensors.update(t)
        opt_meta[oname] = m
    with atomic_dir(ckdir / name) as tmp:
        for gname, tensors in groups.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                      str(tmp / f"{gname}.safetensors"))
        if opt_tensors:
            save_file(opt_tensors, str(tmp / "optim.safetensors"))
        full_meta = dict(meta, step=step, groups=sorted(groups), optimizers=opt_meta)
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=1))
    atomic_write_text(ckdir / "LATEST", name + "\n")
    for old in list_checkpoints(run_dir)[:-keep]:
        remove_dir(old)
    return ckdir / name


def remove_dir(path: Path) -> None:
    """Delete a checkpoint folder without ever showing a half-deleted one: rename it to a hidden temp name
    first (atomic), then delete; a kill mid-delete leaves only a hidden leftover, swept on the next save."""
    hidden = temp_sibling(path)
    try:
        os.replace(path, hidden)
    except FileNotFoundError:
        return
    shutil.rmtree(hidden, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    ckdir = checkpoint_dir(run_dir)
    if not ckdir.exists():
        return []
    return sorted(p for p in ckdir.iterdir() if p.is_dir() and CKPT_RE.match(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckdir = checkpoint_dir(run_dir)
    pointer = ckdir / "LATEST"
    if pointer.exists():
        cand = ckdir / pointer.read_text().strip()
        if cand.is_dir():
            return cand
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


class Checkpoint:
    """A loaded checkpoint: ``meta`` (JSON), weight ``groups`` and optimiser tensors, validated on load."""

    def __init__(self, path: Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except FileNotFoundError as e:
            raise DataError(f"checkpoint {self.path}: meta.json is missing (not a genctl checkpoint?)") from e
        except json.JSONDecodeError as e:
            raise DataError(f"checkpoint {meta_path}: not valid JSON ({e})") from e
        for field in ("step", "groups", "config"):
            if field not in self.meta:
                raise DataError(f"checkpoint {meta_path}: field {field!r} is missing")
        self._groups: dict[str, dict[str, torch.Tensor]] = {}

    def group(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self._groups:
            f = self.path / f"{name}.safetensors"
            if not f.exists():
                raise DataError(f"checkpoint {self.path}: {f.name} is missing")
            try:
                self._groups[name] = load_file(str(f))
            except (SafetensorError, OSError, ValueError) as e:
                raise DataError(f"checkpoint file {f}: cannot be read as safetensors ({e})") from e
        return self._groups[name]

    def has(self, name: str) -> bool:
        return (self.path / f"{name}.safetensors").exists()

    def load_optimizers(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        tensors = self.group("optim") if self.has("optim") else {}
        for name, opt in optimizers.items():
            if name in self.meta.get("optimizers", {}):
                optimizer_from_tensors(opt, name, tensors, self.meta["optimizers"][name])


def load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Load weights strictly with an error that names the checkpoint and the mismatching tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    bad_shape = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if bad_shape:
            k = bad_shape[0]
            parts.append(f"shape of {k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}")
        raise DataError(f"{where}: weights do not match the model ({'; '.join(parts)})")
    module.load_state_dict(tensors)
