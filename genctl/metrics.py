"""Metrics sinks: JSON lines always; TensorBoard when importable. Console output is the progress bar."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    def __init__(self, run_dir: Path, *, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self._f = open(self.path, "a", buffering=1)  # noqa: SIM115 - kept open for the run
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except Exception:  # tensorboard is optional: JSON lines are the record
                self._tb = None

    def log(self, step: int, metrics: dict[str, Any], **tags: Any) -> None:
        row = {"step": step, "time": round(time.time(), 3), **tags}
        for k, v in metrics.items():
            row[k] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        self._f.write(json.dumps(row, allow_nan=True) + "\n")
        if self._tb is not None:
            prefix = f"{tags['stage']}/" if "stage" in tags else ""
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(prefix + k, v, step)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line after a kill: skip it
    return rows
