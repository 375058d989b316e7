"""Selection maths: reliability decisions, composite scores, retention counts. Pure: imports no Spark.

Spark computes the heavy aggregates (per-source counts, per-dimension agreement sums); the decisions on
those small aggregates are made here, where they are unit-tested without a SparkSession, and the Spark
stages apply the result. The same functions give the reference values the end-to-end tests compare to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MaskDecision:
    masked: bool
    reason: str


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks with ties sharing their average rank (the ranks Spearman's rho uses).

    >>> average_ranks([10, 20, 20, 30])
    [1.0, 2.5, 2.5, 4.0]
    """
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        i = j + 1
    return ranks


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation; None when either side is constant or there are fewer than 2 pairs."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rho with average ranks for ties.

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 40])
    1.0
    """
    return pearson(average_ranks(xs), average_ranks(ys))


def mae(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    if not xs:
        return None
    return sum(abs(x - y) for x, y in zip(xs, ys, strict=True)) / len(xs)


def mask_decision(n: int, mae_value: float | None, rho: float | None, max_mae: float, min_spearman: float,
                  min_n: int) -> MaskDecision:
    """Mask a (source, dimension) cell whose student disagrees with the teacher.

    Too few pairs is not evidence either way: the caller then uses the group-wide decision.

    >>> mask_decision(50, 2.6, 0.8, max_mae=2.0, min_spearman=0.3, min_n=20)
    MaskDecision(masked=True, reason='mae 2.60 > 2.00')
    >>> mask_decision(50, 0.7, 0.82, max_mae=2.0, min_spearman=0.3, min_n=20).masked
    False
    """
    if n < min_n:
        return MaskDecision(False, f"insufficient: n {n} < {min_n}")
    reasons = []
    if mae_value is None or mae_value > max_mae:
        reasons.append(f"mae {mae_value:.2f} > {max_mae:.2f}" if mae_value is not None else "mae undefined")
    if rho is None or rho < min_spearman:
        reasons.append(f"spearman {rho:.2f} < {min_spearman:.2f}" if rho is not None else "spearman undefined")
    if reasons:
        return MaskDecision(True, "; ".join(reasons))
    return MaskDecision(False, f"reliable: mae {mae_value:.2f}, spearman {rho:.2f}")


def composite(scores: Sequence[float | None], masked: Sequence[bool]) -> float | None:
    """Mean of the unmasked dimension scores that are present; None when none is.

    >>> composite([8.0, None, 2.0, 6.0], [False, False, True, False])
    7.0
    """
    kept = [s for s, m in zip(scores, masked, strict=True) if s is not None and not m]
    return sum(kept) / len(kept) if kept else None


def keep_count(n_eligible: int, retain_ratio: float) -> int:
    """Documents kept from ``n_eligible`` at ``retain_ratio``: round half up, within [0, n].

    Exact integer arithmetic on the ratio's decimal form so 0.4 x 152 gives 61, not 60 or 60.8.

    >>> keep_count(152, 0.4), keep_count(100, 0.6), keep_count(5, 0.5), keep_count(0, 0.3)
    (61, 60, 3, 0)
    """
    if n_eligible <= 0 or retain_ratio <= 0:
        return 0
    if retain_ratio >= 1:
        return n_eligible
    from fractions import Fraction

    exact = Fraction(str(retain_ratio)) * n_eligible
    return min(n_eligible, math.floor(exact + Fraction(1, 2)))
