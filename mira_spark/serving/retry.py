"""Retry policy as small pure functions.

Takes an HTTP status, response headers / body and an attempt number; gives whether to retry, how long
to wait, and whether a 400 is vLLM's context-length refusal. No I/O, no clock reads unless ``now`` is
omitted; randomness comes from a caller-supplied :class:`random.Random` so tests are deterministic.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from typing import Literal

# Transient statuses: timeouts (408), conflicts/too-early (409, 425) and rate limits (429) clear on their
# own; 5xx from vLLM or a proxy in front of it usually means a restart or an overloaded replica.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

# A Retry-After longer than this is treated as garbage (a misconfigured proxy), not as an instruction.
MAX_PARSED_RETRY_AFTER_S = 600.0
# Even a valid Retry-After is honoured only up to this: a worker slot idle for minutes costs GPU time,
# and the circuit breaker, not one request's sleep, is what handles a replica that is really down.
MAX_HONOURED_RETRY_AFTER_S = 60.0
# Up to this fraction of the Retry-After is added on top, so hundreds of workers told "retry in 1 s"
# do not all come back in the same millisecond.
RETRY_AFTER_JITTER = 0.1

# Phrases vLLM (and OpenAI-compatible servers in front of it) use in the 400 body when prompt +
# max_tokens exceeds the model's context window.
CONTEXT_OVERFLOW_PHRASES = (
    "maximum context length",
    "context length",
    "prompt is too long",
    "reduce the length",
)

Jitter = Literal["full", "equal"]


def is_retryable_status(status: int) -> bool:
    """True for statuses worth retrying (408, 409, 425, 429 and 500/502/503/504).

    >>> is_retryable_status(503), is_retryable_status(400)
    (True, False)
    """
    return status in RETRYABLE_STATUSES


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp gives a case-insensitive multidict, tests and proxies give plain dicts.
    value = headers.get(name)
    if value is not None:
        return value
    for key, val in headers.items():
        if key.lower() == name:
            return val
    return None


def _plausible(seconds: float) -> float | None:
    if seconds != seconds or seconds < 0 or seconds > MAX_PARSED_RETRY_AFTER_S:  # NaN, negative, absurd
        return None
    return seconds


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP-date), else None.

    ``now`` is a Unix timestamp used for HTTP-dates (default: the current time). Negative values and
    values above ``MAX_PARSED_RETRY_AFTER_S`` are ignored.

    >>> parse_retry_after({"Retry-After": "2"})
    2.0
    >>> parse_retry_after({"retry-after-ms": "250"})
    0.25
    """
    ms = _header(headers, "retry-after-ms")
    if ms is not None:
        try:
            parsed = _plausible(float(ms) / 1000.0)
        except ValueError:
            parsed = None
        if parsed is not None:
            return parsed
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return _plausible(float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return _plausible(when.timestamp() - current)


def backoff_delay(
    attempt: int, initial: float, cap: float, rng: random.Random, jitter: Jitter = "equal"
) -> float:
    """Capped exponential backoff after the ``attempt``-th failure (1-based), with jitter.

    ``equal`` jitter (default) waits between half and all of ``min(cap, initial * 2**(attempt-1))``,
    so a recovering server always gets some breathing room; ``full`` waits anywhere from 0.
    """
    base = min(cap, initial * (2.0 ** max(0, attempt - 1)))
    if jitter == "full":
        return rng.uniform(0.0, base)
    return base / 2.0 + rng.uniform(0.0, base / 2.0)


def retry_delay(
    attempt: int, retry_after: float | None, initial: float, cap: float, rng: random.Random
) -> float:
    """Delay before the next attempt: the server's Retry-After when given, else jittered backoff.

    A Retry-After is never undercut (only a little jitter is added above it) but is capped at
    ``MAX_HONOURED_RETRY_AFTER_S``.
    """
    if retry_after is not None:
        honoured = min(retry_after, MAX_HONOURED_RETRY_AFTER_S)
        return honoured + rng.uniform(0.0, honoured * RETRY_AFTER_JITTER)
    return backoff_delay(attempt, initial, cap, rng)


def is_context_overflow(status: int, body: str) -> bool:
    """True when a 400 says the prompt does not fit the context window (shrinking it can help)."""
    if status != 400:
        return False
    lowered = body.lower()
    return any(phrase in lowered for phrase in CONTEXT_OVERFLOW_PHRASES)
