"""Retry policy: pure functions, parametrized tables, seeded RNG, no sleeping."""

from __future__ import annotations

import email.utils
import random

import pytest

from mira_spark.serving.retry import (
    MAX_HONOURED_RETRY_AFTER_S,
    RETRY_AFTER_JITTER,
    backoff_delay,
    is_context_overflow,
    is_retryable_status,
    parse_retry_after,
    retry_delay,
)

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (408, True), (409, True), (425, True), (429, True),
        (500, True), (502, True), (503, True), (504, True),
        (400, False), (401, False), (403, False), (404, False), (413, False), (422, False),
        (501, False), (200, False),
    ],
)  # fmt: skip
def test_is_retryable_status(status: int, expected: bool) -> None:
    assert is_retryable_status(status) is expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"RETRY-AFTER": " 3 "}, 3.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # ms wins
        ({"retry-after-ms": "junk", "retry-after": "9"}, 9.0),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "601"}, None),  # absurd
        ({"retry-after": "600"}, 600.0),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"retry-after": email.utils.formatdate(NOW - 30, usegmt=True)}, None),  # in the past
        ({"retry-after": email.utils.formatdate(NOW + 3600, usegmt=True)}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    got = parse_retry_after(headers, now=NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1.0 if "GMT" in str(headers) else 1e-9)


@pytest.mark.parametrize(
    ("attempt", "initial", "cap", "low", "high"),
    [
        (1, 0.5, 30.0, 0.25, 0.5),
        (2, 0.5, 30.0, 0.5, 1.0),
        (3, 0.5, 30.0, 1.0, 2.0),
        (10, 0.5, 30.0, 15.0, 30.0),  # capped
        (60, 0.5, 30.0, 15.0, 30.0),  # no overflow at large attempts
        (1, 0.0, 30.0, 0.0, 0.0),
    ],
)
def test_backoff_delay_equal_jitter(
    attempt: int, initial: float, cap: float, low: float, high: float
) -> None:
    rng = random.Random(7)
    for _ in range(200):
        assert low <= backoff_delay(attempt, initial, cap, rng) <= high


@pytest.mark.parametrize(("attempt", "high"), [(1, 0.5), (4, 4.0), (20, 30.0)])
def test_backoff_delay_full_jitter(attempt: int, high: float) -> None:
    rng = random.Random(7)
    delays = [backoff_delay(attempt, 0.5, 30.0, rng, jitter="full") for _ in range(500)]
    assert all(0.0 <= d <= high for d in delays)
    assert min(delays) < high * 0.1  # full jitter reaches near zero
    assert len(set(delays)) > 400  # jittered, not a fixed schedule


def test_backoff_is_deterministic_with_seed() -> None:
    a = [backoff_delay(i, 0.5, 30, random.Random(3)) for i in range(1, 8)]
    b = [backoff_delay(i, 0.5, 30, random.Random(3)) for i in range(1, 8)]
    assert a == b


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        (None, 0.25, 0.5),  # attempt 1 backoff
        (2.0, 2.0, 2.0 * (1 + RETRY_AFTER_JITTER)),  # never earlier than asked
        (0.0, 0.0, 0.0),
        (500.0, MAX_HONOURED_RETRY_AFTER_S, MAX_HONOURED_RETRY_AFTER_S * (1 + RETRY_AFTER_JITTER)),
    ],
)
def test_retry_delay(retry_after: float | None, low: float, high: float) -> None:
    rng = random.Random(11)
    for _ in range(100):
        assert low <= retry_delay(1, retry_after, 0.5, 30.0, rng) <= high


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, "This model's maximum context length is 4096 tokens. However, you requested 5000", True),
        (400, '{"object":"error","message":"Input too long: context length exceeded"}', True),
        (400, "Prompt is too long for this model", True),
        (400, "Please reduce the length of the messages or completion.", True),
        (400, "temperature must be non-negative", False),
        (500, "maximum context length", False),  # only a 400 is the overflow refusal
        (413, "prompt is too long", False),
    ],
)
def test_is_context_overflow(status: int, body: str, expected: bool) -> None:
    assert is_context_overflow(status, body) is expected
