"""Running the real ``genctl`` CLI in a subprocess, as a user would (headless GL, one OpenMP thread)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def genctl_ok(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m genctl --quiet ARGS``; fails the test with both output streams unless it exits 0."""
    env = dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "genctl", "--quiet", *args], capture_output=True, text=True,
                       cwd=cwd, env=env, timeout=timeout)
    assert r.returncode == 0, f"genctl {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r
