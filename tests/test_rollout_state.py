"""The per-env rollout state shared by evaluate and realtime, and option errors named as CLI flags."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genctl.apps.evaluate import EvalOptions
from genctl.apps.rollout_state import Episode, LatencyStats, OptionError, RolloutState
from genctl.errors import GenctlError


def test_history_starts_with_the_reset_observation_and_slides() -> None:
    st = RolloutState(n_obs_steps=3, obs_dim=2, n_action_steps=2)
    st.start(Episode(0, 7), np.array([1.0, 2.0]))
    h = st.history()
    assert h.dtype == np.float32 and h.shape == (3, 2) and (h == [1, 2]).all()
    st.observe(np.array([3.0, 4.0]))
    assert st.history().tolist() == [[1, 2], [1, 2], [3, 4]]
    st.start(Episode(1, 8), np.array([5.0, 6.0]))  # a new episode forgets the old history and queue
    assert st.history().tolist() == [[5, 6]] * 3 and st.needs_plan


def test_queue_executes_the_first_n_action_steps_of_a_chunk() -> None:
    st = RolloutState(n_obs_steps=1, obs_dim=1, n_action_steps=2)
    st.start(Episode(0, 0), np.zeros(1))
    assert st.needs_plan
    st.queue(np.arange(4.0).reshape(4, 1))
    assert not st.needs_plan
    assert [st.next_action().item() for _ in range(2)] == [0.0, 1.0]
    assert st.needs_plan and st.live
    assert st.finish().index == 0 and not st.live


def test_episode_record_books_return_success_and_action_delta() -> None:
    ep = Episode(0, 0)
    ep.record(np.array([0.0, 0.0]), 1.0, {"success": True})
    ep.record(np.array([1.0, -1.0]), math.nan, {})
    assert ep.length == 2 and ep.ret == 1.0 and math.isnan(ep.rewards[1])
    assert ep.success and not ep.final_success and ep.action_delta == 1.0


def test_latency_summary() -> None:
    lat = LatencyStats()
    assert lat.timed(lambda x: x + 1, 1) == 2 and len(lat) == 1
    assert LatencyStats().summary_ms() == {"p50": 0.0, "p99": 0.0, "mean": 0.0, "calls": 0}
    s = LatencyStats([0.001, 0.003]).summary_ms()
    assert s["calls"] == 2 and s["mean"] == pytest.approx(2.0)


def test_option_errors_name_the_option_and_the_cli_names_the_flag() -> None:
    from genctl.cli import _flags

    with pytest.raises(OptionError, match="^episodes must be >= 1, got 0$"):
        EvalOptions(episodes=0).check()
    with pytest.raises(GenctlError, match="^--frame-every must be >= 0, got -1$"), _flags():
        EvalOptions(frame_every=-1).check()
    with pytest.raises(GenctlError, match="^--seed must"), _flags({"seed_start": "--seed"}):
        raise OptionError("seed_start", "must be >= 0")
