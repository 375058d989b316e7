"""Request and result records exchanged between the scoring stage and the async runner.

The Spark side builds a list of :class:`ScoreRequest` (one per document, tagged with its index in the
batch), hands it to :func:`mira_spark.serving.runner.run_requests`, and gets back exactly one
:class:`ScoreResult` per request, re-aligned by index. A failed request is data (status, error code,
attempts), never an exception escaping a partition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from mira_spark.parsing.expected import ScoreTokens

Status = Literal["ok", "failed", "deferred"]

# Error codes written to raw_outputs.error (prefix before ": detail").
ERR_HTTP = "http_{status}"  # non-retryable HTTP status, or retryable one with attempts exhausted
ERR_TIMEOUT = "timeout"
ERR_CONNECTION = "connection_error"
ERR_CONTEXT_OVERFLOW = "context_overflow"
ERR_OUTPUT_INVALID = "output_invalid"  # malformed or truncated after all repairs
ERR_POOL_UNAVAILABLE = "pool_unavailable"  # every endpoint down: the row is deferred, not failed


@dataclass
class ScoreRequest:
    """One chat request. ``index`` re-aligns the result; ``key`` identifies the document (X-Request-Id)."""

    index: int
    key: str
    messages: list[dict[str, str]]
    est_prompt_tokens: int = 0
    sample: int = 0  # sample index of the document (scoring.samples): its own seed, seed + sample * stride
    n: int = 1  # choices asked in one request (one prefill): samples ``sample .. sample + n - 1``


# Seeds of sample i start at seed + i * SAMPLE_SEED_STRIDE: re-asks add 1, 2, ... (< stride), so a re-ask of
# one sample never reuses another sample's seed.
SAMPLE_SEED_STRIDE = 1000


@dataclass
class ScoreResult:
    """Outcome of one request after retries and repairs."""

    index: int
    status: Status
    text: str | None = None
    error: str | None = None
    attempts: int = 0
    endpoint: str | None = None
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    repairs: int = 0  # follow-up requests sent to fix malformed / partial outputs
    shrunk: bool = False  # the prompt was truncated further after a context-length 400
    wasted_requests: int = 0  # requests whose output was billed but not used
    wasted_completion_tokens: int = 0  # the completion tokens those answers cost
    retry_causes: list[str] = field(default_factory=list)  # error code of each send retried (http_429, timeout, ...)
    more: list[ScoreResult] = field(default_factory=list)  # a request with n > 1: samples sample+1 .. sample+n-1
    score_tokens: ScoreTokens | None = None  # logprobs of the kept answer's score tokens (not of a merged one)


@dataclass(frozen=True)
class OutputVerdict:
    """What to do with a completed answer.

    ``accept``: final. ``retry``: the answer is unusable (malformed / finish_reason=length); ask again
    from scratch. ``followup``: append ``followup`` as a user turn after the assistant answer and merge
    the two answers (partial salvage: only the missing slots are asked for).
    """

    action: Literal["accept", "retry", "followup"]
    reason: str = ""
    followup: str | None = None


# Hooks the scoring stage passes to the runner; both are pure functions.
CheckOutput = Callable[[ScoreRequest, str, str | None], OutputVerdict]
"""(request, completion text, finish_reason) -> verdict."""
ShrinkRequest = Callable[[ScoreRequest], "ScoreRequest | None"]
"""Rebuild a request with a smaller document after a context-length 400; None when it cannot shrink."""
MergeOutputs = Callable[[str, str], str]
"""(first answer, follow-up answer) -> merged answer text."""
PrepareRequest = Callable[[ScoreRequest], ScoreRequest]
"""Placeholder request -> the request to send (prompt built lazily, when a worker takes it)."""


@dataclass
class RunStats:
    """Counts of one runner invocation (summed per task and written next to the outputs)."""

    requests_sent: int = 0
    retries: int = 0
    repairs: int = 0
    wasted_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    max_in_flight: int = 0
