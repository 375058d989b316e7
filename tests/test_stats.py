"""Selection maths without Spark: ranks, Spearman, MAE, mask decisions, composite, keep counts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mira_spark.selection.stats import (
    average_ranks,
    composite,
    keep_count,
    mae,
    mask_decision,
    pearson,
    spearman,
)


@pytest.mark.parametrize(
    ("values", "ranks"),
    [
        ([], []),
        ([5.0], [1.0]),
        ([3, 1, 2], [3.0, 1.0, 2.0]),
        ([1, 1, 1], [2.0, 2.0, 2.0]),
        ([7, 7, 3, 9, 7], [3.0, 3.0, 1.0, 5.0, 3.0]),
    ],
)
def test_average_ranks(values: list[float], ranks: list[float]) -> None:
    assert average_ranks(values) == ranks


@pytest.mark.parametrize(
    ("xs", "ys", "rho"),
    [
        ([1, 2, 3, 4, 5], [5, 6, 7, 8, 7.5], 0.9),
        ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
        ([1, 2, 3], [1, 1, 1], None),  # constant side: undefined, never 0
        ([1], [2], None),
        ([1, 2, 2, 3], [1, 2, 3, 4], 0.9486832980505138),  # ties use average ranks
    ],
)
def test_spearman_table(xs: list[float], ys: list[float], rho: float | None) -> None:
    got = spearman(xs, ys)
    assert (got is None) if rho is None else got == pytest.approx(rho)


@settings(deadline=None)
@given(st.lists(st.integers(-100, 100), min_size=3, max_size=40, unique=True))
def test_spearman_is_one_under_monotone_transform(xs: list[int]) -> None:
    ys = [math.exp(x / 50) * 3 + 1 for x in xs]
    assert spearman(xs, ys) == pytest.approx(1.0)
    assert spearman(xs, [-y for y in ys]) == pytest.approx(-1.0)


def test_pearson_and_mae() -> None:
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    assert mae([], []) is None


@pytest.mark.parametrize(
    ("n", "mae_v", "rho", "masked", "reason_part"),
    [
        (50, 0.5, 0.9, False, "reliable"),
        (50, 2.5, 0.9, True, "mae 2.50 > 2.00"),
        (50, 0.5, 0.1, True, "spearman 0.10 < 0.30"),
        (50, 3.0, -0.2, True, "mae 3.00 > 2.00; spearman -0.20 < 0.30"),
        (50, 0.5, None, True, "spearman undefined"),
        (5, 9.0, -1.0, False, "insufficient"),
        (20, 2.0, 0.3, False, "reliable"),  # thresholds are inclusive
    ],
)
def test_mask_decision(n: int, mae_v: float, rho: float | None, masked: bool, reason_part: str) -> None:
    d = mask_decision(n, mae_v, rho, max_mae=2.0, min_spearman=0.3, min_n=20)
    assert d.masked is masked
    assert reason_part in d.reason


@pytest.mark.parametrize(
    ("scores", "mask", "expected"),
    [
        ([8.0, 6.0, 4.0], [False, False, False], 6.0),
        ([8.0, 6.0, 4.0], [False, False, True], 7.0),
        ([8.0, None, 4.0], [False, False, False], 6.0),  # a missing score is not a zero
        ([None, None], [False, False], None),
        ([9.0, 1.0], [True, True], None),
    ],
)
def test_composite(scores: list[float | None], mask: list[bool], expected: float | None) -> None:
    got = composite(scores, mask)
    assert (got is None) if expected is None else got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("n", "ratio", "k"),
    [
        (152, 0.4, 61),
        (151, 0.4, 60),
        (101, 0.6, 61),
        (10, 0.25, 3),  # 2.5 rounds half up
        (10, 0.0, 0),
        (10, 1.0, 10),
        (0, 0.5, 0),
        (1, 0.5, 1),
        (3, 0.1, 0),
        (1_000_000_000, 0.3, 300_000_000),  # no float error at scale
    ],
)
def test_keep_count_table(n: int, ratio: float, k: int) -> None:
    assert keep_count(n, ratio) == k


@settings(deadline=None)
@given(st.integers(0, 10**7), st.floats(0, 1), st.floats(0, 1))
def test_keep_count_is_bounded_and_monotone(n: int, r1: float, r2: float) -> None:
    lo, hi = sorted((r1, r2))
    assert 0 <= keep_count(n, lo) <= keep_count(n, hi) <= n
    assert abs(keep_count(n, hi) - n * hi) <= 0.5 + 1e-6 * n
