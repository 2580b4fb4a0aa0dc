"""Summary statistics and bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_speedbench.metrics import stats

finite_floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def test_summarize_hand_computed():
    s = stats.summarize([4.0, 1.0, 3.0, 2.0])
    assert s["mean"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))  # sample std: sum sq dev 5 / (n-1)
    assert s["p50"] == pytest.approx(2.5)
    assert s["p90"] == pytest.approx(3.7)  # linear: 1 + 0.9 * 3 = 3.7 on sorted 1..4
    assert s["p99"] == pytest.approx(3.97)
    assert all(isinstance(v, float) for v in s.values())


def test_summarize_empty_and_non_finite():
    assert stats.summarize([]) == dict.fromkeys(stats.SUMMARY_KEYS)
    assert stats.summarize([None, float("nan")]) == dict.fromkeys(stats.SUMMARY_KEYS)
    s = stats.summarize([None, 2.0, float("inf"), float("nan")])
    assert s == {"mean": 2.0, "std": 0.0, "p50": 2.0, "p90": 2.0, "p99": 2.0}


@given(st.lists(finite_floats, min_size=1, max_size=50))
def test_summarize_order_and_bounds(values):
    s = stats.summarize(values)
    lo, hi = min(values), max(values)
    tol = 1e-9 * max(1.0, abs(lo), abs(hi))
    assert lo - tol <= s["p50"] <= s["p90"] + tol <= s["p99"] + 2 * tol <= hi + 3 * tol
    assert lo - tol <= s["mean"] <= hi + tol
    assert s["std"] >= 0


def test_bootstrap_ci_constant_sample_is_a_point():
    assert stats.bootstrap_ci([3.0] * 20) == [3.0, 3.0]
    assert stats.bootstrap_ci([7.0]) == [7.0, 7.0]


def test_bootstrap_ci_empty_is_none():
    assert stats.bootstrap_ci([]) is None
    assert stats.bootstrap_ci([None, float("nan")]) is None
    assert stats.bootstrap_ratio_ci([], [1.0]) is None
    assert stats.bootstrap_ratio_ci([1.0], []) is None


def test_bootstrap_ci_covers_the_mean_and_is_reproducible():
    values = np.random.default_rng(42).normal(10.0, 2.0, size=200)
    lo, hi = stats.bootstrap_ci(values, seed=1)
    assert lo < values.mean() < hi
    # standard error is 2 / sqrt(200) ~ 0.14, so the 95% interval is ~0.55 wide
    assert 0.3 < hi - lo < 0.9
    assert stats.bootstrap_ci(values, seed=1) == [lo, hi]
    assert stats.bootstrap_ci(values, seed=2) != [lo, hi]


def test_bootstrap_ci_narrower_at_lower_level():
    values = np.random.default_rng(0).exponential(1.0, size=100)
    lo95, hi95 = stats.bootstrap_ci(values, level=0.95)
    lo50, hi50 = stats.bootstrap_ci(values, level=0.5)
    assert lo95 <= lo50 <= hi50 <= hi95
    assert hi50 - lo50 < hi95 - lo95


def test_bootstrap_ci_other_statistics():
    values = [1.0, 2.0, 3.0, 100.0]
    lo, hi = stats.bootstrap_ci(values, statistic=np.median)
    assert 1.0 <= lo <= hi <= 100.0
    # a statistic that takes no `axis` still works (applied row by row)
    lo, hi = stats.bootstrap_ci(values, statistic=lambda x: float(np.max(x)))
    assert lo in values and hi == 100.0


def test_bootstrap_ci_rejects_bad_level():
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_ci([1.0, 2.0], level=1.5)


def test_bootstrap_ratio_ci_exact_ratio():
    assert stats.bootstrap_ratio_ci([4.0] * 10, [2.0] * 7) == [2.0, 2.0]


def test_bootstrap_ratio_ci_covers_true_ratio():
    rng = np.random.default_rng(3)
    num = rng.normal(30.0, 3.0, size=300)
    den = rng.normal(10.0, 1.0, size=200)
    lo, hi = stats.bootstrap_ratio_ci(num, den, seed=5)
    assert lo < num.mean() / den.mean() < hi
    assert lo < 3.0 < hi


def test_bootstrap_ratio_ci_drops_zero_denominators():
    lo, hi = stats.bootstrap_ratio_ci([1.0, 1.0], [0.0, 1.0], n_boot=200)
    assert math.isfinite(lo) and math.isfinite(hi)
    assert 1.0 <= lo <= hi


def test_bootstrap_samples_pairs_rows():
    # columns a and b = 2a: every paired resample has mean(b)/mean(a) exactly 2
    a = np.arange(1.0, 11.0)
    samples = stats.bootstrap_samples(
        [a, 2 * a], lambda x, y: y.mean(axis=1) / x.mean(axis=1), n_boot=50, rng=np.random.default_rng(0)
    )
    assert samples.shape == (50,)
    assert np.allclose(samples, 2.0)


def test_bootstrap_samples_in_batches(monkeypatch):
    values = np.random.default_rng(1).normal(size=100)
    full = stats.bootstrap_samples([values], lambda x: x.mean(axis=1), n_boot=400, rng=np.random.default_rng(0))
    monkeypatch.setattr(stats, "_MAX_BATCH_ELEMENTS", 250)  # 2 rows per batch
    batched = stats.bootstrap_samples([values], lambda x: x.mean(axis=1), n_boot=400, rng=np.random.default_rng(0))
    assert batched.shape == (400,) and np.all(np.isfinite(batched))
    # same distribution: spreads agree within sampling noise
    assert batched.std() == pytest.approx(full.std(), rel=0.25)


def test_bootstrap_samples_validates():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="equally long"):
        stats.bootstrap_samples([[1.0, 2.0], [1.0]], lambda a, b: a.mean(axis=1), rng=rng)
    with pytest.raises(ValueError, match="n_boot"):
        stats.bootstrap_samples([[1.0]], lambda a: a.mean(axis=1), n_boot=0, rng=rng)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=0.1, max_value=100.0), min_size=2, max_size=40))
def test_bootstrap_ci_within_sample_range(values):
    lo, hi = stats.bootstrap_ci(values, n_boot=200)
    assert min(values) - 1e-9 <= lo <= hi <= max(values) + 1e-9
