"""Per-env rollout state shared by closed-loop evaluation (``evaluate``) and real-time control (``realtime``).

A ``RolloutState`` is one env's episode in progress: its observation history (the reset observation repeated
at the episode start, as ``stack_history`` does for a single observation), its receding-horizon action queue
(the first ``n_action_steps`` actions of each predicted chunk) and its ``Episode`` record. ``LatencyStats``
times policy calls. ``OptionError`` is a bad option value raised by the apps under the option's own name; the
CLI turns the name into its flag.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from genctl.apps.obs_history import stack_history
from genctl.errors import GenctlError

T = TypeVar("T")


class OptionError(GenctlError):
    """``option`` (a keyword argument / config field name) has a bad value: ``problem`` says what is wrong."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option} {problem}")
        self.option, self.problem = option, problem


@dataclass
class Episode:
    index: int
    seed: int
    ret: float = 0.0
    length: int = 0
    success: bool = False
    final_success: bool = False
    end: str = ""
    rewards: list[float] = field(default_factory=list)
    prev_action: np.ndarray | None = None
    action_delta: float = 0.0  # sum over steps of mean_d |a_t - a_{t-1}| (how jumpy the executed actions are)

    def record(self, action: Any, reward: float, info: dict[str, Any]) -> None:
        """Book one executed step (a non-finite reward is kept in ``rewards`` but not added to the return)."""
        act = np.asarray(action, np.float64)
        if self.prev_action is not None:
            self.action_delta += float(np.mean(np.abs(act - self.prev_action)))
        self.prev_action = act
        self.ret += reward if math.isfinite(reward) else 0.0
        self.length += 1
        self.rewards.append(reward)
        succ = bool(info.get("success", False))
        self.success |= succ
        self.final_success = succ


class LatencyStats:
    """Wall-clock seconds of each policy call (appending is safe from a policy thread)."""

    def __init__(self, seconds: list[float] | None = None):
        self.seconds: list[float] = list(seconds or [])

    def timed(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds.append(time.perf_counter() - t0)
        return out

    def __len__(self) -> int:
        return len(self.seconds)

    def summary_ms(self) -> dict[str, float]:
        """p50, p99 and mean in milliseconds (zeros without a call) and the number of calls."""
        lat = np.array(self.seconds) * 1e3 if self.seconds else np.zeros(1)
        return {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                "mean": float(lat.mean()), "calls": len(self.seconds)}


class RolloutState:
    """One env's episode in progress: observation history, queued actions, the episode record."""

    def __init__(self, n_obs_steps: int, obs_dim: int, n_action_steps: int):
        self.n_obs_steps, self.obs_dim, self.n_action_steps = n_obs_steps, obs_dim, n_action_steps
        self.hist: deque[np.ndarray] = deque(maxlen=n_obs_steps)
        self.plan: deque[np.ndarray] = deque()
        self.episode: Episode | None = None
        self.obs: Any = None

    def start(self, episode: Episode, obs: Any) -> None:
        """A new episode from its reset observation (repeated over the whole history)."""
        self.episode, self.obs = episode, obs
        self.hist.clear()
        self.hist.extend(stack_history(obs, self.n_obs_steps, self.obs_dim)[0])
        self.plan.clear()

    def finish(self) -> Episode:
        ep, self.episode = self.episode, None
        assert ep is not None
        return ep

    @property
    def live(self) -> bool:
        return self.episode is not None

    def history(self) -> np.ndarray:
        """(n_obs_steps, D) float32, oldest first: what the policy is called on."""
        return np.stack(self.hist)

    def observe(self, obs: Any) -> None:
        self.obs = obs
        self.hist.append(np.asarray(obs, np.float32))

    @property
    def needs_plan(self) -> bool:
        """The queued actions are used up: call the policy."""
        return not self.plan

    def queue(self, chunk: np.ndarray) -> None:
        """Queue the first ``n_action_steps`` actions of a predicted chunk (H, A)."""
        self.plan.extend(chunk[: self.n_action_steps])

    def next_action(self) -> np.ndarray:
        return self.plan.popleft()
