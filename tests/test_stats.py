"""Intervals of dcspass.evaluation.stats against SciPy's."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from dcspass.evaluation.stats import (
    accuracy_interval,
    paired_difference,
    t_cdf,
    t_interval,
    t_quantile,
    wilson_interval,
)

fractions = st.lists(st.floats(0, 1), min_size=2, max_size=60)


@given(st.floats(-40, 40), st.integers(1, 500))
def test_t_cdf_matches_scipy(t, df):
    assert t_cdf(t, df) == pytest.approx(sps.t.cdf(t, df), abs=1e-8)


@settings(max_examples=15)
@given(st.floats(0.001, 0.999), st.integers(1, 500))
def test_t_quantile_matches_scipy(q, df):
    assert t_quantile(q, df) == pytest.approx(sps.t.ppf(q, df), rel=1e-6, abs=1e-6)


@given(fractions)
def test_t_interval_matches_scipy(values):
    lo, hi = t_interval(values)
    n = len(values)
    mean = sum(values) / n
    sem = sps.sem(values)
    if sem == 0:
        assert lo == pytest.approx(mean) and hi == pytest.approx(mean)
        return
    ref = sps.t.interval(0.95, n - 1, loc=mean, scale=sem)
    assert (lo, hi) == pytest.approx(ref, abs=1e-7)


@given(st.integers(1, 400), st.data())
def test_wilson_matches_scipy(n, data):
    k = data.draw(st.integers(0, n))
    ref = sps.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_accuracy_interval_picks_wilson_for_verdicts_and_t_for_probabilities():
    verdicts = [1.0] * 30 + [0.0] * 10
    assert accuracy_interval(verdicts) == wilson_interval(30, 40)
    assert accuracy_interval([1.0] * 8)[1] == 1.0 and accuracy_interval([1.0] * 8)[0] < 1.0
    probs = [0.9, 0.95, 1.0, 0.99, 0.97]
    lo, hi = accuracy_interval(probs)
    assert 0 <= lo < sum(probs) / 5 < hi == 1.0  # clipped to [0, 1]


@given(fractions, st.data())
def test_paired_difference_matches_scipy_ttest_rel(a, data):
    b = data.draw(st.lists(st.floats(0, 1), min_size=len(a), max_size=len(a)))
    d = paired_difference(a, b)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    assert d.mean == pytest.approx(sum(diffs) / len(diffs), abs=1e-12)
    # scipy's reference loses its precision (and warns) when the differences barely differ: skip
    # those; statistics.stdev is exact, so the guard itself cannot lose precision.
    if statistics.stdev(diffs) < 1e-6 * max(1.0, *map(abs, diffs)):
        return
    ref = sps.ttest_rel(a, b)
    assert d.p_value == pytest.approx(ref.pvalue, abs=1e-7)
    ci = ref.confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high), abs=1e-7)
    assert d.significant == (ref.pvalue < 0.05) or math.isclose(ref.pvalue, 0.05, abs_tol=1e-6)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 3)
    with pytest.raises(ValueError, match="same, non-zero length"):
        paired_difference([0.1, 0.2], [0.3])
