"""Accuracy intervals: Wilson's, checked against scipy; 'within noise' is their overlap."""

from __future__ import annotations

import pytest
from scipy import stats as scipy_stats

from tinylib import stats

CASES = [  # (correct, n): the profiles' validation sizes, and the edges 0 and n
    (0, 1), (1, 1), (0, 20), (7, 20), (20, 20), (1, 300), (87, 300), (299, 300),
    (1419, 10_000), (2488, 10_000), (4314, 10_000), (10_000, 10_000),
]


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
@pytest.mark.parametrize("correct, n", CASES)
def test_accuracy_interval_is_scipys_wilson_interval(correct, n, confidence):
    expected = scipy_stats.binomtest(correct, n).proportion_ci(confidence, method="wilson")
    low, high = stats.accuracy_interval(correct, n, confidence)
    assert low == pytest.approx(expected.low, abs=1e-12)
    assert high == pytest.approx(expected.high, abs=1e-12)
    assert 0.0 <= low <= correct / n <= high <= 1.0


def test_interval_narrows_with_more_images_and_widens_with_more_confidence():
    widths = [high - low for low, high in (stats.accuracy_interval(n // 4, n) for n in (20, 300, 10_000))]
    assert widths[0] > widths[1] > widths[2]
    low95, high95 = stats.accuracy_interval(75, 300)
    low99, high99 = stats.accuracy_interval(75, 300, confidence=0.99)
    assert low99 < low95 and high99 > high95


@pytest.mark.parametrize("correct, n, confidence", [
    (-1, 10, 0.95), (11, 10, 0.95), (2.5, 10, 0.95), (0, 0, 0.95), (3, 10, 0.0), (3, 10, 1.0),
])
def test_accuracy_interval_refuses_what_is_not_a_count_out_of_n(correct, n, confidence):
    with pytest.raises(ValueError):
        stats.accuracy_interval(correct, n, confidence)


def test_within_noise_is_whether_the_intervals_overlap():
    for a, n_a, b, n_b in [(0.25, 20, 0.45, 20), (0.30, 300, 0.38, 300), (0.30, 300, 0.42, 300),
                           (0.2272, 10_000, 0.2488, 10_000), (0.40, 10_000, 0.41, 10_000)]:
        low_a, high_a = scipy_stats.binomtest(round(a * n_a), n_a).proportion_ci(method="wilson")
        low_b, high_b = scipy_stats.binomtest(round(b * n_b), n_b).proportion_ci(method="wilson")
        overlap = bool(low_a <= high_b and low_b <= high_a)
        assert stats.within_noise(a, n_a, b, n_b) is overlap
        assert stats.within_noise(b, n_b, a, n_a) is overlap  # symmetric


def test_the_studys_neighbouring_models_differ_beyond_noise_but_not_on_a_quick_subset():
    # Models 2 and 3 of the study: 22.72% and 24.88% on 10,000 validation images.
    assert not stats.within_noise(0.2272, 10_000, 0.2488, 10_000)
    # The same two accuracies measured on the quick profile's 300 images.
    assert stats.within_noise(0.2272, 300, 0.2488, 300)
    assert stats.within_noise(0.5, 20, 0.5, 20)  # equal accuracies: always within noise
