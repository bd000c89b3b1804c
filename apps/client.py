"""Client for ``genctl serve``: what a robot process imports to get action chunks (no torch, no MuJoCo).

    from genctl.apps.client import PolicyClient

    with PolicyClient("127.0.0.1:8765") as c:        # token=... (or $GENCTL_SERVE_TOKEN) for a remote server
        c.reset()                                     # a new episode: the server forgets the history
        chunk = c.infer(obs, timestamp=t, dt=0.05)    # obs: (obs_dim,) or (n_obs_steps, obs_dim)
        chunk.actions       # (horizon, action_dim) float32, env units; execute the first c.n_action_steps
        chunk.timestamps    # (horizon,) when each action is meant to run: t + k * dt
        chunk.policy_version, chunk.server_ms, chunk.rtt_ms

One request is in flight per connection (replies come back in order); a robot that wants to ask for the next
chunk while it executes the current one does so from a thread (see ``genctl.apps.robot_sim``). The wire format
is in ``genctl.apps.wire``.
"""

from __future__ import annotations

import io
import itertools
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from genctl.apps.wire import WireError, pack, unpack
from genctl.errors import GenctlError

TOKEN_ENV = "GENCTL_SERVE_TOKEN"


class ServerError(GenctlError):
    """The server answered a request with an error (bad observation, wrong token...) or went away."""


@dataclass
class Chunk:
    actions: np.ndarray  # (horizon, action_dim) float32
    timestamps: np.ndarray  # (horizon,) float64, seconds
    n_action_steps: int
    policy_version: str
    server_ms: float  # time the server spent on the request, receive to reply
    rtt_ms: float  # this client's send -> reply decoded
    batch: int  # requests that shared the server's policy call


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """A (H, W[, 3]) uint8 frame as JPEG bytes, for the ``images`` field (raw arrays are accepted too)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _uri(address: str) -> str:
    return address if address.startswith(("ws://", "wss://")) else f"ws://{address}"


class PolicyClient:
    """A blocking connection to one policy server session. ``meta`` holds the policy's shapes and version."""

    def __init__(self, address: str, *, token: str | None = None, timeout: float = 10.0,
                 max_bytes: int = 64 << 20):
        self.uri, self.timeout = _uri(address), timeout
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            # proxy=None: a robot talks to its policy server directly, whatever $https_proxy says
            self.ws: ClientConnection = connect(self.uri, additional_headers=headers, open_timeout=timeout,
                                                max_size=max_bytes, compression=None, proxy=None)
        except InvalidStatus as e:
            code = e.response.status_code
            hint = {401: " (wrong or missing token: --token or $GENCTL_SERVE_TOKEN)",
                    503: " (the server is at its --max-sessions)"}.get(code, "")
            raise ServerError(f"{self.uri} refused the connection: HTTP {code}{hint}") from None
        except (OSError, TimeoutError, WebSocketException) as e:
            raise ServerError(f"cannot connect to {self.uri} ({type(e).__name__}: {e}); is `genctl serve` "
                              "running there?") from None
        self._ids = itertools.count(1)
        self.meta = self.request({"type": "meta"})
        self.obs_dim, self.action_dim = int(self.meta["obs_dim"]), int(self.meta["action_dim"])
        self.n_obs_steps, self.horizon = int(self.meta["n_obs_steps"]), int(self.meta["horizon"])
        self.n_action_steps = int(self.meta["n_action_steps"])
        self.policy_version = str(self.meta["policy_version"])

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one message and wait for its reply; an error reply raises ``ServerError`` (the connection
        stays usable), a lost connection raises ``ServerError`` too."""
        rid = next(self._ids)
        out = {**msg, "id": rid}
        if self.token:
            out["token"] = self.token
        try:
            self.ws.send(pack(out))
            reply = unpack(self.ws.recv(timeout=self.timeout))
        except TimeoutError:
            raise ServerError(f"{self.uri}: no reply within {self.timeout:g} s") from None
        except ConnectionClosed as e:
            why = f": {e.rcvd.reason or e.rcvd.code}" if e.rcvd is not None else ""
            raise ServerError(f"{self.uri}: connection closed{why}") from None
        except WireError as e:
            raise ServerError(f"{self.uri}: bad reply ({e})") from None
        if reply.get("type") == "error":
            raise ServerError(f"server: {reply.get('error')}")
        if reply.get("id") != rid:
            raise ServerError(f"{self.uri}: reply to request {reply.get('id')}, expected {rid}")
        return reply

    def infer(self, obs: np.ndarray, *, timestamp: float | None = None, dt: float | None = None,
              images: dict[str, np.ndarray | bytes] | None = None) -> Chunk:
        """An action chunk for ``obs`` (one observation, or the last ``n_obs_steps`` oldest first)."""
        msg: dict[str, Any] = {"type": "infer", "obs": np.asarray(obs),
                               "timestamp": time.time() if timestamp is None else float(timestamp)}
        if dt is not None:
            msg["dt"] = float(dt)
        if images:
            msg["images"] = images
        t0 = time.perf_counter()
        r = self.request(msg)
        rtt = (time.perf_counter() - t0) * 1e3
        return Chunk(np.asarray(r["actions"], np.float32), np.asarray(r["timestamps"], np.float64),
                     int(r["n_action_steps"]), str(r["policy_version"]), float(r["server_ms"]), rtt,
                     int(r.get("batch", 1)))

    def reset(self) -> None:
        """Start a new episode: the next single observation is repeated as the whole history."""
        self.request({"type": "reset"})

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
