"""95% intervals for accuracies measured on a finite question set, and for the difference of two methods
answering the same questions.

``wilson(k, n)`` is the Wilson score interval of a proportion (it stays inside [0, 1] and keeps its coverage
near 0% and 100%, where the normal approximation does not). ``paired_difference(a, b)`` is the interval of
``accuracy(a) - accuracy(b)`` when ``a`` and ``b`` answered the same questions: Newcombe's method 10 (the square
and add of the two Wilson intervals, corrected for the correlation of paired answers; Statistics in Medicine
17:2635, 1998). Pairing matters: two methods that both fail the hard questions differ far less by chance than
two independent samples would, so a paired interval is several times narrower than the intervals of the two
accuracies suggest.

``mean_interval(values)`` is the normal-approximation interval of a mean of per-question scores that are not
right/wrong (a caption's F1): ``mean +- z * s / sqrt(n)``, ``s`` the sample standard deviation. It is the central
limit's interval, fair from a few dozen questions on; below that read it as rough.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Z95", "Difference", "mean_interval", "paired_difference", "plus_minus", "wilson"]

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials."""
    if not 0 <= k <= n or n <= 0:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def plus_minus(k: int, n: int) -> float:
    """The larger side of the Wilson interval around ``k / n``: ``k / n ± plus_minus`` covers the whole interval,
    which is asymmetric near 0% and 100%."""
    low, high = wilson(k, n)
    return max(k / n - low, high - k / n)


def mean_interval(
    values: Sequence[float], z: float = Z95, bounds: tuple[float, float] | None = None
) -> tuple[float, float]:
    """The normal 95% interval of the mean of ``values`` (at least two), clipped to ``bounds`` where given (a
    mean of scores in [0, 1] cannot leave it)."""
    n = len(values)
    if n < 2:
        raise ValueError(f"an interval of a mean needs at least two values, got {n}")
    mean = math.fsum(values) / n
    spread = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    low, high = mean - z * spread / math.sqrt(n), mean + z * spread / math.sqrt(n)
    if bounds is not None:
        low, high = max(bounds[0], low), min(bounds[1], high)
    return low, high


@dataclass(frozen=True)
class Difference:
    """``accuracy(a) - accuracy(b)`` on paired answers, with its 95% interval ``[low, high]``."""

    estimate: float
    low: float
    high: float

    @property
    def above_zero(self) -> bool:
        return self.low > 0


def paired_difference(a: Sequence[bool], b: Sequence[bool], z: float = Z95) -> Difference:
    """The difference of two methods' accuracies on the same questions (``a[i]``, ``b[i]``: question ``i``
    answered right), Newcombe's method 10."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty answer lists, got {len(a)} and {len(b)}")
    both = sum(x and y for x, y in zip(a, b))
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    neither = len(a) - both - only_a - only_b
    return _newcombe(both, only_a, only_b, neither, z)


def _newcombe(both: int, only_a: int, only_b: int, neither: int, z: float) -> Difference:
    n = both + only_a + only_b + neither
    right_a, right_b = both + only_a, both + only_b
    p_a, p_b = right_a / n, right_b / n
    low_a, high_a = wilson(right_a, n, z)
    low_b, high_b = wilson(right_b, n, z)
    phi = _phi(both, only_a, only_b, neither)
    below = math.sqrt(max(0.0, (p_a - low_a) ** 2 + (high_b - p_b) ** 2 - 2 * phi * (p_a - low_a) * (high_b - p_b)))
    above = math.sqrt(max(0.0, (high_a - p_a) ** 2 + (p_b - low_b) ** 2 - 2 * phi * (high_a - p_a) * (p_b - low_b)))
    return Difference(p_a - p_b, p_a - p_b - below, p_a - p_b + above)


def _phi(both: int, only_a: int, only_b: int, neither: int) -> float:
    """The correlation of the paired answers, shrunk towards zero by n/2 (Newcombe's continuity correction); 0
    when a margin is empty (then one of the methods answered everything, or nothing, right)."""
    n = both + only_a + only_b + neither
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    if margins == 0:
        return 0.0
    cross = both * neither - only_a * only_b
    corrected = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else cross)
    return corrected / math.sqrt(margins)
