"""What training reports besides its losses: a validation loss on held-out episodes (``data.val_frac``), a
closed-loop evaluation every ``eval.every`` policy steps, both written to metrics.jsonl (and so to the plots),
and the NaN/Inf watch on the losses (``NonFinite``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genctl.config import TrainConfig
from genctl.datasets import EpisodeStore, Normalizer, load_transitions
from genctl.datasets.camera_rows import sampled_rows
from genctl.datasets.obs_spec import ObsSpec
from genctl.run import latest_checkpoint

log = logging.getLogger("genctl.train")

VAL_ROWS = 4096  # a fixed subset: the loss is a curve to compare over steps, not an estimate to the last digit


class ValidationLoss:
    """The generative matching loss on a fixed set of held-out transitions, with fixed noise and times (so the
    curve moves only when the weights do, and reading it leaves the training RNG stream untouched)."""

    def __init__(self, store: EpisodeStore, episodes: list[int], obs_norm: Normalizer, act_norm: Normalizer,
                 device: torch.device, seed: int, spec: ObsSpec | None = None):
        if spec is None:
            raw = load_transitions(store, episodes=episodes)
            take = np.random.default_rng(seed).permutation(len(raw["action"]))[:VAL_ROWS]
            obs, action = raw["obs"][take], raw["action"][take]
        else:  # out-of-core camera data (data.cache_gb): the same rows, but only their frames are read
            obs, action = sampled_rows(store, spec, episodes, seed, VAL_ROWS)
        self.device = device
        self.obs = torch.as_tensor(obs_norm.normalize(obs), dtype=torch.float32, device=device)
        self.action = torch.as_tensor(act_norm.normalize(action), dtype=torch.float32, device=device)

    @classmethod
    def maybe(cls, store: EpisodeStore, episodes: list[int], obs_norm: Normalizer, act_norm: Normalizer,
              device: torch.device, seed: int, chunked: bool, spec: ObsSpec | None = None) -> ValidationLoss | None:
        """None without validation episodes, or for chunked runs (their loss is over windows; not yet here).
        ``spec``: read the held-out frames row by row from the store (out-of-core runs)."""
        if not episodes or chunked:
            return None
        return cls(store, episodes, obs_norm, act_norm, device, seed, spec)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> float:
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(0)
                return float(model.loss(self.action, self.obs).mean())
        finally:
            model.train(was_training)


def periodic_eval(cfg: TrainConfig) -> Callable[[Path], dict[str, Any]] | None:
    """The ``on_eval`` callback for ``eval.every`` > 0: evaluates the checkpoint just saved with the run's own
    eval settings and returns the figures logged as a stage="eval" row; the full report is kept in
    ``evals/<checkpoint>.json``."""
    if not cfg.eval.every:
        return None

    def run_eval(run_dir: Path) -> dict[str, Any]:
        from genctl.apps.evaluate import evaluate

        ck = latest_checkpoint(run_dir)
        name = ck.name if ck is not None else "latest"
        r = evaluate(run_dir, progress=False, out=run_dir / "evals" / f"{name}.json")
        out = {"eval_success_rate": r["success_rate"], "eval_return": r["return"]["mean"]}
        if "normalized_score" in r:
            out["eval_normalized"] = r["normalized_score"]["mean"]
        log.info("eval at %s: success %.1f %%, return %.3g over %d episodes", name, 100 * r["success_rate"],
                 r["return"]["mean"], r["return"]["n"])
        return out

    return run_eval


class NonFinite:
    """Which metrics went NaN/Inf since the last check. CPU metrics arrive as floats and are checked at once;
    GPU metrics arrive as device tensors and are OR-ed into device flags, read only by ``check`` (one host sync
    per log or checkpoint step instead of one per training step)."""

    def __init__(self) -> None:
        self.lazy = False
        self._bad: list[str] = []
        self._flags: dict[str, torch.Tensor] = {}

    def add(self, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor):
                self.lazy = True
                flag = ~torch.isfinite(v)
                self._flags[k] = flag if k not in self._flags else self._flags[k] | flag
            elif not math.isfinite(v):
                self._bad.append(k)

    def check(self) -> list[str]:
        bad = self._bad + [k for k, f in self._flags.items() if bool(f)]
        self._bad, self._flags = [], {}
        return bad
