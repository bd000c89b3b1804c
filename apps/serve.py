"""``genctl serve``: a trained policy behind a websocket, for a robot whose control loop runs elsewhere.

Transport: websockets (asyncio server, the ``websockets`` package) carrying msgpack messages (``wire.py``).
One long-lived connection per robot gives ordered request/reply without per-request HTTP overhead, the wire
format is binary and schema-light (an observation is a numpy array as dtype/shape/bytes), and there is no code
generation step, so a robot-side client in any language is a page of code; it is also openpi's choice. gRPC
would add protobuf schemas and a compiler to every client for no gain on a loopback/LAN link.

A policy that sees cameras takes its low-dim keys in ``obs`` and every camera's frame in ``images``; the server
checks the frames (size, channels; decoded off the event loop) and composes the flat per-step vector the policy
takes (``datasets.obs_spec``), so histories, batching and both backends are the same as for state policies.

Serving model: one asyncio loop handles every connection (a connection is a session with its own observation
history); inference runs in one worker thread. Requests that arrive while the worker is busy, or within
``batch_window_ms`` of each other, go into the same ``predict_chunk`` call (up to ``max_batch``; there is no
wait when every open session has already asked, e.g. a single robot), which is what keeps latency flat when
many robots share one server (measured in ``benchmarks/serve.py``). A client that vanishes without closing is
dropped by the websocket keepalive (ping every 20 s), and its session with it.

Safety: binds 127.0.0.1 by default; any other address needs a token, which the handshake
(``Authorization: Bearer``) and every request (``"token"``) must carry, compared in constant time. Messages
over ``max_bytes`` get an error reply, far larger ones close that connection at the websocket layer;
malformed, wrong-shape, wrong-dtype or non-finite observations get an error reply and the connection stays
usable. A session is freed when its connection ends, however it ends. This module imports torch only to load
a run.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http
import ipaddress
import itertools
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from genctl.apps.serve_batch import Batcher
from genctl.apps.serve_input import camera_frames, check_images, check_obs, check_time
from genctl.apps.wire import WireError, pack, unpack
from genctl.datasets.obs_spec import ObsSpec
from genctl.errors import GenctlError

log = logging.getLogger("genctl.serve")

TOKEN_ENV = "GENCTL_SERVE_TOKEN"
DEFAULT_PORT = 8765


@runtime_checkable
class PolicyBackend(Protocol):
    """What the server needs from a policy (``LoadedPolicy`` and ``OnnxPolicy`` both satisfy it)."""

    obs_dim: int
    action_dim: int
    n_obs_steps: int
    horizon: int
    n_action_steps: int

    def predict_chunk(self, obs_history: np.ndarray) -> np.ndarray:
        """(B, n_obs_steps, obs_dim) float32 -> (B, horizon, action_dim) float32 in env units."""
        ...


def backend_spec(backend: Any) -> ObsSpec | None:
    """What a backend observes (``obs_spec``: its keys and cameras), None for one that does not say."""
    spec = getattr(backend, "obs_spec", None)
    return spec if isinstance(spec, ObsSpec) else None


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    max_bytes: int = 8 << 20  # one request; a 640x480 raw RGB frame is 0.9 MB
    batch_window_ms: float = 1.0  # how long a request waits for other sessions' (not when it is the only one)
    max_batch: int = 16  # 1 = no batching across sessions
    max_sessions: int = 64  # connections beyond this are refused at the handshake (HTTP 503)
    fps: float = 10.0  # action spacing for the reply's timestamps when a request gives no dt

    def check(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise GenctlError(f"--host {self.host} is reachable from other machines: set a token with "
                              f"--token or ${TOKEN_ENV} (every request must then carry it) or bind 127.0.0.1")
        if not 0 <= self.port <= 65535:
            raise GenctlError(f"--port must be in 0..65535, got {self.port}")
        if self.max_bytes < 1024:
            raise GenctlError(f"--max-bytes must be >= 1024, got {self.max_bytes}")
        if not 0 <= self.batch_window_ms <= 1000 or self.max_batch < 1:
            raise GenctlError(f"need 0 <= --batch-window-ms <= 1000 and --max-batch >= 1 (got "
                              f"{self.batch_window_ms}, {self.max_batch})")
        if self.max_sessions < 1:
            raise GenctlError(f"--max-sessions must be >= 1, got {self.max_sessions}")
        if not self.fps > 0:
            raise GenctlError(f"--fps must be > 0, got {self.fps}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost, or "" (= every interface)


@dataclass
class Session:
    """One connection: its observation history (when the client sends single observations) and counters."""

    sid: int
    peer: str
    history: deque = field(default_factory=deque)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # latest frames, for vision backends
    requests: int = 0
    errors: int = 0


class PolicyServer:
    """The websocket server around one policy backend: ``await serve()`` on an event loop (``serve_policy`` for
    the CLI); ``ServerThread`` runs it in the background (tests, benchmarks, a robot process)."""

    def __init__(self, backend: PolicyBackend, *, version: str = "unknown", config: ServeConfig | None = None,
                 env_info: dict[str, Any] | None = None, warm_up: bool = True):
        if not isinstance(backend, PolicyBackend):
            raise GenctlError(f"{type(backend).__name__} is not a policy backend (needs obs_dim, action_dim, "
                              "n_obs_steps, horizon, n_action_steps and predict_chunk)")
        self.backend, self.version = backend, version
        self.cfg = config or ServeConfig()
        self.cfg.check()
        self.env_info, self.warm_up = env_info, warm_up
        # a camera policy: requests carry the low-dim keys in "obs" and every camera's frame in "images"; the
        # server composes the flat vector (pixels included) the backend takes
        self.spec = backend_spec(backend)
        self.cameras = self.spec.cameras if self.spec is not None else ()
        self.obs_in = self.spec.low_dim if self.cameras and self.spec is not None else backend.obs_dim
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self._token = self.cfg.token.encode() if self.cfg.token else None
        self.batcher: Batcher | None = None
        self.port: int | None = None

    # --- request handling -------------------------------------------------------------------------------
    def _authorised(self, token: Any) -> bool:
        if self._token is None:
            return True
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self._token)

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Refuse an unauthenticated handshake, or one over the session limit, before a session exists."""
        if self._token is not None:
            auth = request.headers.get("Authorization", "")
            if not (auth.startswith("Bearer ") and self._authorised(auth[len("Bearer "):])):
                return conn.respond(http.HTTPStatus.UNAUTHORIZED, "token required: Authorization: Bearer T\n")
        if len(self.sessions) >= self.cfg.max_sessions:
            return conn.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                f"this server takes at most {self.cfg.max_sessions} sessions\n")
        return None

    def meta(self) -> dict[str, Any]:
        b = self.backend
        spec = self.spec
        return {"type": "meta", "obs_dim": self.obs_in, "action_dim": b.action_dim,
                "n_obs_steps": b.n_obs_steps, "horizon": b.horizon, "n_action_steps": b.n_action_steps,
                "policy_version": self.version,
                "env": self.env_info, "max_bytes": self.cfg.max_bytes, "fps": self.cfg.fps,
                # what "obs" and "images" must carry: the low-dim keys in order, each camera's frame size, and
                # the whole spec + camera view so a simulated robot can render and slice like genctl eval
                "obs_keys": list(spec.low_keys) if spec is not None else None,
                "cameras": {c.camera: [c.height, c.width, c.channels] for c in self.cameras},
                "obs_spec": spec.to_dict() if spec is not None else None,
                "view": getattr(b, "view", None) if self.cameras else None}

    async def _reply(self, sess: Session, raw: bytes | str) -> dict[str, Any]:
        t0 = time.perf_counter()
        sess.requests += 1
        if len(raw) > self.cfg.max_bytes:
            return {"type": "error", "error": f"request of {len(raw)} bytes is over this server's limit of "
                                              f"{self.cfg.max_bytes} bytes (--max-bytes)"}
        msg = unpack(raw)
        rid = msg.get("id")
        if isinstance(rid, bool) or not isinstance(rid, int | str) or len(str(rid)) > 64:
            rid = None  # echoed back as is: only a short int or string
        try:
            return await self._answer(sess, msg, rid, t0)
        except WireError as e:
            return {"type": "error", "id": rid, "error": str(e)}

    async def _answer(self, sess: Session, msg: dict[str, Any], rid: Any, t0: float) -> dict[str, Any]:
        if not self._authorised(msg.get("token")):
            return {"type": "error", "id": rid,
                    "error": "unauthorised: every request must carry the server's token in its 'token' field"}
        kind = msg.get("type")
        if kind == "meta":
            return {**self.meta(), "id": rid}
        if kind == "reset":
            sess.history.clear()
            sess.images.clear()
            return {"type": "ok", "id": rid}
        if kind != "infer":
            raise WireError(f"message type {kind!r}: expected 'infer', 'reset' or 'meta'")
        b = self.backend
        obs = check_obs(msg.get("obs"), self.obs_in, b.n_obs_steps)
        stamp, dt = check_time(msg.get("timestamp"), msg.get("dt"), 1.0 / self.cfg.fps)
        loop = asyncio.get_running_loop()
        if self.cameras:  # decode/check the frames off the event loop, then the backend's flat rows
            steps = len(obs) if obs.ndim == 2 else 1
            frames = await loop.run_in_executor(None, camera_frames, msg.get("images"), self.cameras, steps)
            assert self.spec is not None
            rows = self.spec.compose(obs.reshape(steps, -1), frames)
            obs = rows if obs.ndim == 2 else rows[0]
        elif msg.get("images") is not None:
            sess.images.update(await loop.run_in_executor(None, check_images, msg["images"]))
        if obs.ndim == 2:  # a full history replaces the session's
            sess.history = deque(obs, maxlen=b.n_obs_steps)
        elif not sess.history:  # first observation of an episode: repeated as the history, as in eval
            sess.history = deque([obs] * b.n_obs_steps, maxlen=b.n_obs_steps)
        else:
            sess.history.append(obs)
        assert self.batcher is not None
        actions, batch = await self.batcher.infer(np.stack(sess.history))
        if not np.all(np.isfinite(actions)):
            return {"type": "error", "id": rid, "error": "the policy produced non-finite actions for this "
                                                         "observation"}
        return {"type": "chunk", "id": rid, "actions": actions,
                "timestamps": stamp + dt * np.arange(b.horizon, dtype=np.float64),
                "n_action_steps": b.n_action_steps, "policy_version": self.version, "batch": batch,
                "server_ms": (time.perf_counter() - t0) * 1e3}

    async def _handle(self, conn: ServerConnection) -> None:
        sid = next(self._ids)
        sess = self.sessions[sid] = Session(sid, str(conn.remote_address))
        log.debug("session %d opened from %s", sid, sess.peer)
        try:
            async for raw in conn:
                try:
                    reply = await self._reply(sess, raw)
                except WireError as e:
                    reply = {"type": "error", "error": str(e)}
                except Exception as e:  # the policy call failed: this request only
                    reply = {"type": "error", "error": f"server error: {type(e).__name__}: {e}"}
                if reply["type"] == "error":
                    sess.errors += 1
                await conn.send(pack(reply))
        except ConnectionClosed:
            pass  # the client went away (or sent a message over the websocket limit): nothing to answer
        finally:
            self.sessions.pop(sid, None)
            log.debug("session %d closed after %d requests", sid, sess.requests)

    # --- running ----------------------------------------------------------------------------------------
    async def serve(self, ready: threading.Event | None = None, stop: asyncio.Event | None = None) -> None:
        self.batcher = Batcher(self.backend, self.cfg.batch_window_ms / 1e3, self.cfg.max_batch,
                                lambda: len(self.sessions))
        if self.warm_up:
            # the first calls of a traced sampler take 10-100x longer (tracing, then the profiling executor's
            # optimisation): make them before the first robot waits on one
            b, loop = self.backend, asyncio.get_running_loop()
            try:
                for n in (1, 1, min(2, self.cfg.max_batch)):
                    zeros = np.zeros((n, b.n_obs_steps, b.obs_dim), np.float32)
                    await loop.run_in_executor(self.batcher.pool, b.predict_chunk, zeros)
            except Exception as e:
                raise GenctlError(f"the policy fails on a warm-up call ({type(e).__name__}: {e})") from e
        worker = asyncio.create_task(self.batcher.run())
        # the websocket limit is a backstop at twice the request limit: between the two the client gets an
        # error reply, above it the connection is closed (1009) before the message is buffered whole
        async with serve(self._handle, self.cfg.host, self.cfg.port, max_size=2 * self.cfg.max_bytes,
                         compression=None, process_request=self._process_request,
                         server_header=None) as server:
            self.port = _bound_port(server)
            if ready is not None:
                ready.set()
            try:
                await (stop.wait() if stop is not None else asyncio.Future())
            finally:
                worker.cancel()
                self.batcher.close()


def _bound_port(server: Server) -> int:
    return int(next(iter(server.sockets)).getsockname()[1])


class ServerThread:
    """A ``PolicyServer`` on its own event loop in a daemon thread: ``start()`` returns the bound port."""

    def __init__(self, server: PolicyServer):
        self.server = server
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="genctl-serve")

    def _main(self) -> None:
        async def go() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            await self.server.serve(self._ready, self._stop)

        try:
            asyncio.run(go())
        except BaseException as e:
            self._error = e
            self._ready.set()

    def start(self, timeout: float = 30.0) -> int:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise GenctlError(f"policy server did not start: {self._error!r}")
        assert self.server.port is not None
        return self.server.port

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --- loading a backend ----------------------------------------------------------------------------------
def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def load_backend(run: str | None, onnx: str | None, device: str = "cpu"
                 ) -> tuple[PolicyBackend, str, dict[str, Any] | None]:
    """(backend, version, env info) from a run (torch) or an ONNX file (no torch). The version is
    ``step<N>-<sha256 of the checkpoint files or the .onnx, 12 hex>``: it changes whenever the weights do."""
    if (run is None) == (onnx is None):
        raise GenctlError("give a RUN folder or --onnx FILE (one of the two)")
    if onnx is not None:
        path = Path(onnx)
        if not path.is_file():
            raise GenctlError(f"--onnx {path}: no such file (write one with genctl export RUN --onnx {path})")
        try:
            from genctl.apps.onnx_policy import OnnxPolicy
        except ImportError as e:
            raise GenctlError(f"serving ONNX needs genctl.apps.onnx_policy and onnxruntime ({e})") from None
        pol = OnnxPolicy(str(path))
        meta = dict(getattr(pol, "meta", None) or {})
        m = re.search(r"step-0*(\d+)", str(meta.get("source_checkpoint", "")))
        return pol, f"step{m.group(1) if m else '?'}-{_digest([path])}", meta.get("env")
    from genctl.apps.distributed import resolve_device
    from genctl.apps.policy import LoadedPolicy

    policy = LoadedPolicy.from_run(run, device=str(resolve_device(device, label="--device ")))
    # the weights and meta that define the actions; not the optimiser state
    files = [p for p in policy.ck.path.iterdir() if p.is_file() and not p.name.startswith("optim")]
    return policy, f"step{policy.meta.get('step', '?')}-{_digest(files)}", policy.env_info


def serve_policy(run: str | None, *, onnx: str | None = None, device: str = "cpu",
                 config: ServeConfig | None = None) -> None:
    """Load the policy and serve until interrupted (the CLI's ``genctl serve``)."""
    cfg = config or ServeConfig()
    cfg.check()  # before loading anything: a refused bind should not wait for torch
    logging.getLogger("websockets").setLevel(logging.WARNING)  # our own line below says where we listen
    backend, version, env = load_backend(run, onnx, device)
    server = PolicyServer(backend, version=version, config=cfg, env_info=env)
    ready = threading.Event()

    async def main() -> None:
        task = asyncio.create_task(server.serve(ready))
        while not ready.is_set() and not task.done():
            await asyncio.sleep(0.01)
        if ready.is_set():
            cams = "".join(f" + {c.camera} {c.height}x{c.width}x{c.channels}" for c in server.cameras)
            print(f"serving {version} (obs {server.obs_in}{cams} x {backend.n_obs_steps} -> actions "
                  f"{backend.horizon} x {backend.action_dim}) on ws://{cfg.host}:{server.port}"
                  f"{'  (token required)' if cfg.token else ''}; Ctrl-C stops", flush=True)
        await task

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("stopped", flush=True)
    except OSError as e:
        raise GenctlError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
