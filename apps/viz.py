"""rerun plumbing that never blocks or kills the run it watches.

Modes: ``spawn`` (native viewer), ``serve`` (web viewer on 127.0.0.1, URL printed), ``save PATH`` (.rrd file),
``connect ADDR`` (a running viewer / server). Every mode except ``save`` also tees into a .rrd file in the
run folder, so if the viewer cannot start or the connection drops, the data is still on disk. Any rerun
error disables logging for the rest of the run with one warning; the caller's work goes on.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("genctl.viz")

MODES = ("spawn", "serve", "save", "connect")


def parse_rerun_arg(values: list[str] | None) -> tuple[str, str | None] | None:
    """``["save", "x.rrd"]`` -> ("save", "x.rrd"); ``["serve"]`` -> ("serve", None); None -> None."""
    if not values:
        return None
    mode, *rest = values
    if mode not in MODES:
        from genctl.errors import GenctlError

        raise GenctlError(f"--rerun: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode in ("save", "connect") and not rest:
        from genctl.errors import GenctlError

        raise GenctlError(f"--rerun {mode} needs an argument ({'PATH' if mode == 'save' else 'ADDR'})")
    return mode, (rest[0] if rest else None)


def _free_port(start: int) -> int:
    for port in range(start, start + 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise OSError("no free port")


def _rerun_binary() -> str:
    try:
        import rerun_cli  # the wheel ships the real binary; the `rerun` script is only a wrapper

        cand = Path(rerun_cli.__file__).parent / "rerun"
        if cand.exists():
            return str(cand)
    except ImportError:
        pass
    found = shutil.which("rerun") or str(Path(sys.executable).parent / "rerun")
    return found


def start_web_server() -> tuple[subprocess.Popen, str, str]:
    """Start ``rerun --serve-web`` bound to 127.0.0.1; returns (process, grpc url, browser url)."""
    grpc_port = _free_port(9876)
    web_port = _free_port(9090)
    proc = subprocess.Popen(
        [_rerun_binary(), "--serve-web", "--bind", "127.0.0.1", "--port", str(grpc_port),
         "--web-viewer-port", str(web_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    grpc_url = f"rerun+http://127.0.0.1:{grpc_port}/proxy"
    web_url = f"http://127.0.0.1:{web_port}/?url=rerun%2Bhttp%3A%2F%2F127.0.0.1%3A{grpc_port}%2Fproxy"
    return proc, grpc_url, web_url


class Viewer:
    """A rerun RecordingStream with failure isolation. ``enabled`` turns False on the first error."""

    def __init__(self, mode: tuple[str, str | None] | None, *, app_id: str, default_file: Path):
        self.enabled = False
        self.files: list[Path] = []
        self.url: str | None = None
        self.server: subprocess.Popen | None = None
        self.rec: Any = None
        if mode is None:
            return
        kind, arg = mode
        try:
            import rerun as rr

            self.rr = rr
            # rerun wants an entry name ([A-Za-z0-9_-]); anything else draws a migration warning per recording
            self.rec = rr.RecordingStream(re.sub(r"[^A-Za-z0-9_-]", "_", app_id))
            file = Path(arg) if kind == "save" else Path(default_file)
            file.parent.mkdir(parents=True, exist_ok=True)
            sinks: list[Any] = [rr.FileSink(str(file))]
            self.files.append(file)
            if kind == "serve":
                self.server, grpc_url, self.url = start_web_server()
                sinks.append(rr.GrpcSink(grpc_url))
            elif kind == "connect":
                url = arg if "://" in str(arg) else f"rerun+http://{arg}/proxy"
                sinks.append(rr.GrpcSink(url))
                self.url = url
            elif kind == "spawn":
                try:
                    self.rec.spawn(connect=False)
                    sinks.append(rr.GrpcSink())
                except Exception as e:  # no display, no viewer binary: keep the file
                    log.warning("rerun: could not spawn a viewer (%s); recording to %s only", e, file)
            self.rec.set_sinks(*sinks)
            self.enabled = True
        except Exception as e:
            log.warning("rerun: disabled (%s); the run goes on without it", e)
            self.enabled = False

    def _guard(self, fn, *args: Any, **kw: Any) -> None:
        if not self.enabled:
            return
        try:
            fn(*args, **kw)
        except Exception as e:
            self.enabled = False
            log.warning("rerun: logging stopped (%s); the run goes on, saved so far: %s", e,
                        ", ".join(map(str, self.files)) or "nothing")

    def set_step(self, step: int, timeline: str = "step") -> None:
        self._guard(lambda: self.rec.set_time(timeline, sequence=int(step)))

    def log(self, path: str, item: Any, *, static: bool = False) -> None:
        self._guard(lambda: self.rec.log(path, item, static=static))

    def scalars_series(self, path: str, steps: np.ndarray, values: np.ndarray, timeline: str = "step") -> None:
        """Send a whole time series at once (columnar: far cheaper than one log call per step)."""
        def send() -> None:
            rr = self.rr
            vals = np.asarray(values, dtype=np.float64)
            self.rec.send_columns(path, indexes=[rr.TimeColumn(timeline, sequence=np.asarray(steps, np.int64))],
                                  columns=rr.Scalars.columns(scalars=vals))
        if len(steps):
            self._guard(send)

    def send_blueprint(self, blueprint: Any) -> None:
        """The recording's layout (apps/blueprints.py); saved in the .rrd and made the viewer's default."""
        self._guard(lambda: self.rec.send_blueprint(blueprint, make_active=True, make_default=True))

    def close(self) -> None:
        if self.rec is not None:
            try:
                self.rec.flush()
                self.rec.disconnect()
            except Exception as e:
                log.warning("rerun: flush failed (%s)", e)
        self.enabled = False


def rrd_contents(path: str | Path) -> dict[str, list[Any]]:
    """Read an .rrd with rerun's own reader: entity path -> list of pyarrow RecordBatches (for tests/checks)."""
    from rerun.chunk import RrdReader

    out: dict[str, list[Any]] = {}
    for chunk in RrdReader(str(path)).store().stream().to_chunks():
        out.setdefault(chunk.entity_path, []).append(chunk.to_record_batch())
    return out


def first_image(batches: list[Any]) -> np.ndarray:
    """The first logged image of an entity, as a flat uint8 array."""
    for rb in batches:
        if "Image:buffer" in rb.schema.names:
            return np.asarray(rb.column("Image:buffer")[0].as_py()[0], dtype=np.uint8)
    raise KeyError("no Image:buffer column")
