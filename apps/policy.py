"""A trained run as a deployable policy: weights (EMA when present), normaliser and sampler settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from genctl.apps.obs_history import stack_history
from genctl.datasets import Normalizer, SeqSpec
from genctl.datasets.obs_spec import ObsSpec
from genctl.errors import DataError, GenctlError
from genctl.policies import IQLCritic, make_generative_model
from genctl.run import Checkpoint, latest_checkpoint, load_module


def find_checkpoint(run: str | Path) -> Checkpoint:
    """Accept a run folder or a checkpoint folder."""
    path = Path(run)
    if (path / "meta.json").exists():
        return Checkpoint(path)
    if not path.exists():
        raise GenctlError(f"{path} does not exist (expected a run folder such as runs/<name>)")
    ck = latest_checkpoint(path)
    if ck is None and (path / "zarr.json").exists():
        raise GenctlError(f"{path} is a dataset (a zarr store), not a run: train one first "
                          f"(genctl train data.store={path}) and pass its folder runs/<name>")
    if ck is None:
        raise GenctlError(f"{path} has no checkpoint yet (is it a run folder? train it with genctl train)")
    return Checkpoint(ck)


class LoadedPolicy:
    """``act(obs) -> action`` in env units; also Q/V when the run has a critic and candidate samples.

    A policy trained with observation history / action chunking (``n_obs_steps``, ``horizon`` in the meta)
    predicts ``horizon`` actions from the last ``n_obs_steps`` observations: ``predict_chunk(obs_history)``.
    Observation arguments are (B, D) or (D,) — the current observation, repeated as the history as at an episode
    start — or (B, n_obs_steps, D) histories, oldest first. Single-step policies have n_obs_steps = horizon = 1."""

    def __init__(self, ck: Checkpoint, *, device: str = "cpu", use_ema: bool = True):
        self.ck, self.meta = ck, ck.meta
        self.device = torch.device(device)
        self._field = "obs_dim"  # the meta.json field being read, for the error message
        try:
            self._build(ck, use_ema)
        except KeyError as e:
            raise DataError(f"checkpoint {ck.path / 'meta.json'}: field {e.args[0]!r} is missing") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise DataError(f"checkpoint {ck.path / 'meta.json'}: field {self._field!r} is not valid "
                            f"({type(e).__name__}: {e})") from None

    def _build(self, ck: Checkpoint, use_ema: bool) -> None:
        m = self.meta
        self.obs_dim, self.action_dim = int(m["obs_dim"]), int(m["action_dim"])
        self._field = "horizon"
        self.seq = SeqSpec.from_meta(m)
        self.n_obs_steps, self.horizon, self.n_action_steps = (self.seq.n_obs_steps, self.seq.horizon,
                                                               self.seq.n_action_steps)
        self._field = "model"
        self.model = make_generative_model(**m["model"]).to(self.device).eval()
        group = "ema" if use_ema and ck.has("ema") else "policy"
        self.weights = "ema" if group == "ema" else "raw"  # which weights act (eval.json records it)
        load_module(self.model, ck.group(group), f"checkpoint {ck.path} ({group})")
        if (self.model.action_dim, self.model.cond_dim) != (self.horizon * self.action_dim,
                                                            self.n_obs_steps * self.obs_dim):
            raise ValueError(f"model dims {self.model.action_dim}/{self.model.cond_dim} are not horizon x "
                             f"action_dim / n_obs_steps x obs_dim")
        self.critic: IQLCritic | None = None
        self._field = "config"
        if ck.has("critic"):
            c = m["config"]["critic"]
            self.critic = IQLCritic(self.obs_dim, self.action_dim, hidden=tuple(c["hidden"]),
                                    expectile=c["expectile"], gamma=c["gamma"], tau=c["tau"], lr=c["lr"],
                                    obs_encoder=m.get("critic_encoder"), ensemble=c.get("ensemble", 1))
            load_module(self.critic, ck.group("critic"), f"checkpoint {ck.path} (critic)")
            self.critic.to(self.device).eval()
        self._field = "obs_spec"  # data.obs_keys: which keys (and cameras) the policy sees; None = the env's obs
        self.obs_spec = ObsSpec.from_dict(m["obs_spec"]) if m.get("obs_spec") else None
        self.view: dict[str, Any] | None = m.get("images")  # the camera view the store was recorded with
        self._field = "obs_norm"
        self.obs_norm = Normalizer.from_dict(m["obs_norm"])
        self._field = "action_norm"
        self.act_norm = Normalizer.from_dict(m["action_norm"])
        self._field = "action_space"
        space = m.get("action_space") or {}
        self.low = np.asarray(space["low"], np.float32) if space.get("low") is not None else None
        self.high = np.asarray(space["high"], np.float32) if space.get("high") is not None else None
        self.env_info: dict[str, Any] | None = m.get("env")
        self._field = "config"
        ev = m["config"]["eval"]
        self.solver, self.steps = ev["solver"], int(ev["steps"])
        # deployment-time action selection (older runs predate these fields: plain sampling)
        self.select = str(ev.get("select", "sample"))
        self.n_select = int(ev.get("candidates", 16))
        self.temperature = float(ev.get("temperature", 1.0))
        self.last_selection: dict[str, np.ndarray] | None = None
        if self.select == "q" and self.critic is None:
            raise ValueError("eval.select=q needs a critic, and the checkpoint has none")

    @classmethod
    def from_run(cls, run: str | Path, **kw: Any) -> LoadedPolicy:
        return cls(find_checkpoint(run), **kw)

    @property
    def sees_cameras(self) -> bool:
        return self.obs_spec is not None and self.obs_spec.has_images

    def env_overrides(self) -> dict[str, Any]:
        """make_env arguments so the env renders what the policy was trained on (camera, size); {} without cameras."""
        if self.obs_spec is None:
            return {}
        return self.obs_spec.render_overrides(self.view, f"checkpoint {self.ck.path}")

    def observe(self, env_obs: np.ndarray, env: Any = None) -> np.ndarray:
        """The policy's observation (D,) from the env's flat observation: the selected keys, then the camera
        frame rendered by ``env`` (built with ``env_overrides()``). Unchanged for a policy of the whole obs."""
        spec = self.obs_spec
        if spec is None or spec.is_default:
            return np.asarray(env_obs, np.float32)
        return spec.observe(env_obs, env)

    def check_env(self, obs_dim: int, action_dim: int, env_id: str) -> None:
        if self.obs_spec is not None:  # the env's obs is mapped by observe(): compare what it reads
            if obs_dim != self.obs_spec.env_obs_dim or action_dim != self.action_dim:
                raise DataError(
                    f"checkpoint {self.ck.path}: policy reads env obs {self.obs_spec.env_obs_dim} / action "
                    f"{self.action_dim}, env {env_id} has obs {obs_dim} / action {action_dim}")
            return
        if obs_dim != self.obs_dim or action_dim != self.action_dim:
            raise DataError(
                f"checkpoint {self.ck.path}: policy expects obs {self.obs_dim} / action {self.action_dim}, "
                f"env {env_id} has obs {obs_dim} / action {action_dim} (checkpoint from another env?)")

    def history(self, obs: np.ndarray) -> np.ndarray:
        """(B, n_obs_steps, D) from (B, n_obs_steps, D), or from (B, D) / (D,) by repeating the observation."""
        return stack_history(obs, self.n_obs_steps, self.obs_dim)

    def _cond(self, obs: np.ndarray) -> torch.Tensor:
        """Normalised, flattened history (B, n_obs_steps * D); only the current observation with ``current``."""
        hist = self.history(obs)
        x = self.obs_norm.normalize(hist.reshape(-1, self.obs_dim)).reshape(len(hist), -1)
        return torch.as_tensor(x, dtype=torch.float32, device=self.device)

    def _current(self, obs: np.ndarray) -> torch.Tensor:
        return self._cond(obs)[:, -self.obs_dim:]

    def _to_env(self, a: torch.Tensor) -> np.ndarray:
        out = self.act_norm.unnormalize(a.float().cpu().numpy())
        if self.low is not None and self.high is not None:
            out = np.clip(out, self.low, self.high)
        return out.astype(np.float32)

    def configure(self, *, select: str | None = None, candidates: int | None = None,
                  temperature: float | None = None, bf16_sampler: bool | None = None) -> None:
        """Override the run's deployment settings (eval.select / eval.candidates / eval.temperature);
        ``bf16_sampler``: the CPU sampler's network in bfloat16 at >= 8 rows per call (batched envs or
        candidates) on CPUs with native bf16 — faster, ~1e-3 action error (benchmarks/policies.py)."""
        if bf16_sampler is not None:
            self.model.bf16_sampler = bool(bf16_sampler)
        if select is not None:
            if select not in ("sample", "q"):
                raise GenctlError(f"select must be 'sample' or 'q', got {select!r}")
            if select == "q" and self.critic is None:
                raise GenctlError(f"{self.ck.path}: select=q ranks candidates by Q, but this run has no critic "
                                  "(trained with critic.steps=0)")
            self.select = select
        if candidates is not None:
            if candidates < 1:
                raise GenctlError(f"candidates must be >= 1, got {candidates}")
            self.n_select = int(candidates)
        if temperature is not None:
            if not (temperature >= 0 and np.isfinite(temperature)):
                raise GenctlError(f"temperature must be a finite number >= 0, got {temperature}")
            self.temperature = float(temperature)

    def deployment(self) -> dict[str, Any]:
        return {"select": self.select, "candidates": self.n_select if self.select == "q" else 1,
                "temperature": self.temperature, "bf16_sampler": self.model.bf16_sampler}

    def _noise(self, rows: int, generator: torch.Generator | None) -> torch.Tensor | None:
        """Starting noise scaled by the temperature (None = the sampler's own standard normal)."""
        if self.temperature == 1.0:
            return None
        if self.temperature == 0.0:
            return torch.zeros(rows, self.model.action_dim, device=self.device)
        z = torch.randn(rows, self.model.action_dim, generator=generator, device=self.device)
        return z * self.temperature

    @torch.inference_mode()
    def predict_chunk(self, obs_history: np.ndarray, *, solver: str | None = None, steps: int | None = None,
                      generator: torch.Generator | None = None) -> np.ndarray:
        """(B, horizon, A) actions in env units from the current step on, for (B, n_obs_steps, D) histories.

        ``select='q'``: ``candidates`` chunks are sampled per state and the one whose first action has the
        highest Q is returned; the candidates, their Q and the choice stay in ``last_selection``."""
        cond = self._cond(obs_history)
        solver, steps = solver or self.solver, steps or self.steps
        b = len(cond)
        if self.select != "q":
            a = self.model.sample(cond, solver=solver, steps=steps, generator=generator,
                                  noise=self._noise(b, generator))
            return self._to_env(a.reshape(b, self.horizon, self.action_dim))
        assert self.critic is not None
        n = self.n_select
        a = self.model.sample(cond, n=n, solver=solver, steps=steps, generator=generator,
                              noise=self._noise(b * n, generator)).reshape(b, n, self.horizon, self.action_dim)
        # Q in the critic's (normalised) action units; the env clips to the box, so rank the clipped action
        first = self._to_env(a[:, :, 0].reshape(b * n, self.action_dim))
        s = cond[:, -self.obs_dim:].repeat_interleave(n, dim=0)
        first_n = torch.as_tensor(self.act_norm.normalize(first), device=self.device)
        q = self.critic.q(s, first_n).reshape(b, n)
        best = q.argmax(1)
        chunks = self._to_env(a[torch.arange(b, device=self.device), best])
        self.last_selection = {"candidates": first.reshape(b, n, self.action_dim), "q": q.cpu().numpy(),
                               "chosen": best.cpu().numpy()}
        return chunks

    def act(self, obs: np.ndarray, *, solver: str | None = None, steps: int | None = None,
            generator: torch.Generator | None = None) -> np.ndarray:
        """(B, A): the first action of the predicted chunk."""
        return self.predict_chunk(obs, solver=solver, steps=steps, generator=generator)[:, 0]

    @torch.inference_mode()
    def candidates(self, obs: np.ndarray, n: int, *, solver: str | None = None, steps: int | None = None,
                   generator: torch.Generator | None = None) -> np.ndarray:
        """``n`` actions sampled at one state: the policy's action distribution there, shape (n, A) (for a
        chunked policy: the first action of ``n`` sampled chunks)."""
        cond = self._cond(obs)[:1]
        a = self.model.sample(cond, n=n, solver=solver or self.solver, steps=steps or self.steps,
                              generator=generator)
        return self._to_env(a.reshape(n, self.horizon, self.action_dim)[:, 0])

    @torch.inference_mode()
    def q_v(self, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if self.critic is None:
            return None
        s = self._current(obs)
        a = torch.as_tensor(self.act_norm.normalize(np.asarray(action, np.float32).reshape(-1, self.action_dim)),
                            device=self.device)
        return self.critic.q(s, a).cpu().numpy(), self.critic.v(s).cpu().numpy()
