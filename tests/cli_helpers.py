"""Running the real ``genctl`` CLI in a subprocess, as a user would (headless GL, one OpenMP thread)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def genctl_ok(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m genctl --quiet ARGS``; fails the test with both output streams unless it exits 0."""
    # MUJOCO_GL is the caller's, else genctl's own default (egl): MUJOCO_GL=disable on a machine without libEGL
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "genctl", "--quiet", *args], capture_output=True, text=True,
                       cwd=cwd, env=env, timeout=timeout)
    assert r.returncode == 0, f"genctl {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r


def tiny_maze_run(root: Path, *, seed: int, episodes: int, train: Sequence[str], collect: Sequence[str] = ()
                  ) -> tuple[Path, Path]:
    """In-process ``genctl collect`` of scripted PointMaze_UMaze demos into ROOT/maze.zarr, then ``genctl train``
    of ROOT/run on them with the ``train`` overrides. Returns (store, run folder)."""
    from genctl.cli import main

    store = root / "maze.zarr"
    assert main(["--quiet", "collect", "PointMaze_UMaze-v3", "--expert", "maze", "--episodes", str(episodes),
                 *collect, "--seed", str(seed), "-o", str(store)]) == 0
    assert main(["--quiet", "train", f"data.store={store}", f"out_dir={root}", "name=run", *train]) == 0
    return store, root / "run"


@contextmanager
def onnx_server(onnx: Path) -> Iterator[tuple[str, str]]:
    """``genctl serve --onnx FILE --port 0`` in a subprocess: yields (its "serving ..." line, host:port), after
    checking that the server process never loaded libtorch (served with onnxruntime alone); stopped on exit."""
    proc = subprocess.Popen([sys.executable, "-m", "genctl", "serve", "--onnx", str(onnx), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1"))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "serving step10-<hash> (...) on ws://127.0.0.1:PORT; ..."
        assert "ws://127.0.0.1:" in line, line + proc.stdout.read()
        assert "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text()
        yield line, line.split("ws://")[1].split(";")[0]
    finally:
        proc.terminate()
        proc.wait(10)
