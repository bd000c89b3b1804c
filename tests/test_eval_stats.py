"""Known answers for the intervals eval.json reports."""

from __future__ import annotations

import numpy as np
import pytest

from genctl.apps.evaluate import summarise, wilson_interval


def test_wilson_interval_known_answers() -> None:
    # 27 of 30: the textbook Wilson 95 % interval (z = 1.96) is [0.744, 0.965]
    lo, hi = wilson_interval(27, 30)
    assert lo == pytest.approx(0.7438, abs=5e-4) and hi == pytest.approx(0.9654, abs=5e-4)
    # all or none: never degenerate, never outside [0, 1]
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=5e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0.0) and hi == pytest.approx(0.2775, abs=5e-4)


def test_binary_returns_get_a_possible_interval() -> None:
    r = summarise(np.array([1.0] * 27 + [0.0] * 3))
    assert 0.0 <= r["ci95_low"] < r["mean"] < r["ci95_high"] <= 1.0  # the t interval was [0.79, 1.01]
    # continuous returns keep the t interval, symmetric about the mean
    r = summarise(np.array([1.0, 2.0, 3.0, 4.0]))
    assert r["ci95_high"] - r["mean"] == pytest.approx(r["mean"] - r["ci95_low"])
    assert r["ci95_high"] - r["mean"] == pytest.approx(3.182446 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-3)
