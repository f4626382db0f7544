"""How sure is an accuracy? Intervals for accuracies measured on a validation set.

An accuracy measured on n validation images is an estimate: another n images of
the same classes would give another number, and the fewer the images, the more it
moves (20 in the smoke profile, 300 in quick, 10,000 at full scale). The book prints
an interval beside the accuracies it compares, and calls a difference a result only
when it is larger than that noise.

These intervals cover only the luck of the validation sample. Training varies from
run to run too (another random seed, another order of the batches), and a run's
*best* validation accuracy is the largest of several epochs' values, which flatters
it a little. Neither is in the interval: read it as the least uncertainty there is.
Standard library only, so importing this module starts no framework.
"""

from __future__ import annotations

import math
from statistics import NormalDist

__all__ = ["accuracy_interval", "mcnemar_p", "within_noise"]


def accuracy_interval(correct, n, confidence=0.95) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` for ``correct`` right answers out of ``n``.

    Wilson's interval rather than the textbook ``p ± z·sqrt(p(1-p)/n)`` (Wald's):
    Wald's shrinks to a single point at 0% or 100% accuracy, can reach below 0 or
    above 1, and covers the true accuracy less often than it claims at the small n
    of the smoke and quick profiles. Wilson's stays inside [0, 1] and keeps close to
    its stated confidence (Brown, Cai and DasGupta, Statistical Science, 2001). It equals
    ``scipy.stats.binomtest(correct, n).proportion_ci(confidence, method="wilson")``.
    """
    n = int(n)
    count = int(round(correct))
    if n <= 0:
        raise ValueError(f"n must be a positive number of images, got {n}")
    if abs(count - correct) > 1e-6 or not 0 <= count <= n:
        raise ValueError(f"correct must be a whole number of images between 0 and n={n}, got {correct}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = count / n
    shrink = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / shrink
    # At 0 and n the bounds are exactly 0 and 1 (no image can be less than wrong);
    # the formula reaches them only up to rounding.
    low = 0.0 if count == 0 else max(0.0, centre - half)
    high = 1.0 if count == n else min(1.0, centre + half)
    return low, high


def within_noise(acc_a, n_a, acc_b, n_b, confidence=0.95) -> bool:
    """True when the difference between accuracies ``acc_a`` (on ``n_a`` images) and ``acc_b``
    (on ``n_b``) is not shown beyond noise: their Wilson intervals (``accuracy_interval``) overlap.

    "Within noise" means "not shown", never "the same": intervals can overlap while a
    two-proportion z-test calls the difference significant at 5% (z between 1.96 and about
    2.8 for intervals of equal width), so the book words it as a difference not shown,
    not as two equal accuracies.  The overlap test was chosen over a
    two-proportion z-test for three reasons. The verdict can be checked by eye against
    the intervals the book prints, with no second statistic to explain. It is cautious:
    two 95% intervals of equal width that just fail to overlap correspond to a
    two-sided test at about the 0.6% level, so "beyond noise" is a strong statement,
    and a claim that an ingredient helped should err towards "cannot tell". And the
    runs the book compares are scored on the same validation images, so they are
    paired, not independent samples as the z-test assumes; the paired test
    (McNemar's) needs every image's prediction, which run records do not keep.
    Accuracies are fractions (0.25 for 25%); each times its n is rounded to a count.
    """
    low_a, high_a = accuracy_interval(round(acc_a * n_a), n_a, confidence)
    low_b, high_b = accuracy_interval(round(acc_b * n_b), n_b, confidence)
    return low_a <= high_b and low_b <= high_a


def p_text(p: float) -> str:
    """"p = 0.031", as a sentence prints a p-value: two significant digits, and one below the
    floats' range (an exact p that underflows to 0) as "p < 1e-300", never "p = 0"."""
    return f"p = {p:.2g}" if p >= 1e-300 else "p < 1e-300"


def mcnemar_p(only_a: int, only_b: int) -> float:
    """McNemar's exact two-sided p-value for two scorings of the *same* images: ``only_a``
    images right only in the first, ``only_b`` right only in the second.

    The images both get right, or both wrong, say nothing about which scoring is better;
    under "no difference" each of the others is equally likely to fall either way, so the
    smaller count is a binomial tail at one half. Where every image's prediction is kept
    (a model scored twice), this is the paired test ``within_noise`` cannot make.
    """
    only_a, only_b = int(only_a), int(only_b)
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts of images must be >= 0, got {only_a} and {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2 ** n)
