"""A genctl ONNX sampler (``genctl export RUN --onnx``) as a policy, on onnxruntime alone: no torch import.

Same protocol as ``LoadedPolicy`` for serving: ``obs_dim``, ``action_dim``, ``n_obs_steps``, ``horizon``,
``n_action_steps``, ``meta`` and ``predict_chunk(obs_history) -> (B, horizon, action_dim)`` actions in env
units, clipped to the action box (the clip is in the graph). Only numpy, onnx (for the metadata) and
onnxruntime are imported, so a robot-side server does not need torch installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from genctl.apps.obs_history import stack_history
from genctl.datasets.obs_spec import ObsSpec
from genctl.errors import DataError, GenctlError

META_KEY = "genctl"  # same key as onnx_export.META_KEY (not imported from there: that module imports torch)
_INTS = ("obs_dim", "action_dim", "n_obs_steps", "horizon", "n_action_steps", "steps")


def read_meta(path: Path) -> dict[str, Any]:
    """The genctl metadata of an ONNX file, checked; DataError naming the file otherwise."""
    import onnx

    try:
        # the graph itself is loaded by onnxruntime; here only the small header fields are needed
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError / ValueError / OSError depending on the damage
        raise DataError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise DataError(f"{path}: ONNX model without genctl metadata (expected a file written by "
                        "genctl export RUN --onnx OUT.onnx)")
    try:
        meta = json.loads(props[META_KEY])
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        for k in _INTS:
            if int(meta[k]) < 1:
                raise ValueError(f"{k} must be >= 1")
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: genctl metadata is not valid ({type(e).__name__}: {e})") from None
    return meta


class OnnxPolicy:
    """``predict_chunk`` on an exported sampler. ``providers``: onnxruntime execution providers (default CPU);
    ``threads``: onnxruntime intra-op threads (0 = onnxruntime's default)."""

    def __init__(self, path: str | Path, providers: list[str] | None = None, *, threads: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            raise GenctlError(f"{self.path} does not exist (expected an .onnx file from genctl export --onnx)")
        try:
            import onnxruntime as ort
        except ImportError:
            raise GenctlError("serving an ONNX policy needs onnxruntime: pip install onnxruntime") from None
        self.meta = read_meta(self.path)
        m = self.meta
        self.obs_dim, self.action_dim = int(m["obs_dim"]), int(m["action_dim"])
        self.n_obs_steps, self.horizon = int(m["n_obs_steps"]), int(m["horizon"])
        self.n_action_steps = int(m["n_action_steps"])
        self.solver, self.steps = str(m["solver"]), int(m["steps"])
        self.temperature = float(m.get("temperature", 1.0))
        self.select = str(m.get("select", "sample"))
        self.n_select = int(m.get("candidates", 1))  # chunks per state ranked by Q in the graph (select=q)
        if self.select not in ("sample", "q") or self.n_select < 1 or (self.select == "sample"
                                                                       and self.n_select != 1):
            raise DataError(f"{self.path}: genctl metadata select={self.select!r} / candidates={self.n_select} "
                            "is not valid")
        self.env_info: dict[str, Any] | None = m.get("env")
        try:  # what the policy observes (keys, cameras); exports before it existed: the env's whole observation
            self.obs_spec = ObsSpec.from_dict(m["obs_spec"]) if m.get("obs_spec") else None
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{self.path}: genctl metadata field 'obs_spec' is not valid ({e!r})") from None
        if self.obs_spec is not None and self.obs_spec.dim != self.obs_dim:
            raise DataError(f"{self.path}: genctl metadata obs_spec describes {self.obs_spec.dim} values per step, "
                            f"obs_dim is {self.obs_dim}")
        self.view: dict[str, Any] | None = m.get("view")  # the camera view the store was recorded with
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph types
            raise DataError(f"{self.path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from None
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != (["obs_history", "noise"], ["actions"]):
            raise DataError(f"{self.path}: graph has inputs/outputs {names}, expected "
                            "(['obs_history', 'noise'], ['actions'])")

    @property
    def sees_cameras(self) -> bool:
        return self.obs_spec is not None and self.obs_spec.has_images

    def deployment(self) -> dict[str, Any]:
        return {"select": self.select, "candidates": self.n_select, "temperature": self.temperature,
                "bf16_sampler": False}  # the exported graph runs in fp32

    def configure(self, *, select: str | None = None, candidates: int | None = None,
                  temperature: float | None = None) -> None:
        """Deployment overrides, as ``LoadedPolicy.configure``; selection and candidate count are fixed in the
        graph at export, so only the temperature (which scales the noise fed in) can change."""
        if select not in (None, self.select):
            raise GenctlError(f"{self.path}: exported with select={self.select}; select={select} needs "
                              "another export (or serve the run itself)")
        if candidates not in (None, self.n_select):
            raise GenctlError(f"{self.path}: exported with {self.n_select} candidate(s) per state; "
                              f"candidates={candidates} needs another export")
        if temperature is not None:
            if not (temperature >= 0 and np.isfinite(temperature)):
                raise GenctlError(f"temperature must be a finite number >= 0, got {temperature}")
            self.temperature = float(temperature)

    def history(self, obs: np.ndarray) -> np.ndarray:
        """(B, n_obs_steps, D) from (B, n_obs_steps, D), or from (B, D) / (D,) by repeating the observation."""
        return stack_history(obs, self.n_obs_steps, self.obs_dim)

    def predict_chunk(self, obs_history: np.ndarray, *, noise: np.ndarray | None = None,
                      rng: np.random.Generator | None = None) -> np.ndarray:
        """(B, horizon, action_dim) float32 actions in env units.

        ``noise``: standard-normal starting noise, (B, horizon * action_dim) or (B, horizon, action_dim), with
        a candidates axis after B for select=q (rows in ``LoadedPolicy``'s order: state-major); it is
        multiplied by the temperature here, as ``LoadedPolicy`` scales its own draw. Without it, it is drawn
        from ``rng`` (default: a fresh generator)."""
        hist = self.history(obs_history)
        b, n, d = hist.shape[0], self.n_select, self.horizon * self.action_dim
        shape = (b, d) if n == 1 else (b, n, d)
        if noise is None:
            noise = (rng or np.random.default_rng()).standard_normal(shape, dtype=np.float32)
        else:
            noise = np.asarray(noise, np.float32)
            if noise.size != b * n * d or noise.ndim < 2 or noise.shape[0] != b:
                raise GenctlError(f"noise of shape {noise.shape}: expected {shape} (B, "
                                  f"{'candidates, ' if n > 1 else ''}horizon * action_dim)")
            noise = noise.reshape(shape)
        if self.temperature != 1.0:
            noise = noise * np.float32(self.temperature)
        out = self.session.run(None, {"obs_history": hist, "noise": np.ascontiguousarray(noise)})[0]
        return np.asarray(out, np.float32)

    def act(self, obs: np.ndarray, *, noise: np.ndarray | None = None,
            rng: np.random.Generator | None = None) -> np.ndarray:
        """(B, action_dim): the first action of the predicted chunk."""
        return self.predict_chunk(obs, noise=noise, rng=rng)[:, 0]

    def check_env(self, obs_dim: int, action_dim: int, env_id: str) -> None:
        if obs_dim != self.obs_dim or action_dim != self.action_dim:
            raise DataError(f"{self.path}: policy expects obs {self.obs_dim} / action {self.action_dim}, "
                            f"env {env_id} has obs {obs_dim} / action {action_dim} (exported from another env?)")
