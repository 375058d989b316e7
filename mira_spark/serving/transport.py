"""Transport: one chat request from reserving an endpoint to its final answer, with retries and failover.

Takes the endpoint pool (:mod:`mira_spark.serving.endpoints`), the pool's health
(:mod:`mira_spark.serving.health`), an HTTP session and the request's messages; gives a
:class:`~mira_spark.serving.client.ChatResponse` or a :class:`SendFailure` (the row's error code, and
whether the row is deferred to the next run or its prompt overflowed the context). Retryable failures
(5xx, 429, timeouts, connection errors) go to another attempt after a capped, jittered backoff, on
whichever endpoint routing picks then; every attempt feeds the breaker. A request waits in the job
(:class:`Room`) while every endpoint is at this client's capacity — never in a server's queue while
another has a free slot.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from mira_spark.config import PoolConfig, SamplingConfig
from mira_spark.serving.client import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    ChatResponse,
    build_headers,
    post_chat,
)
from mira_spark.serving.endpoints import BreakerState, EndpointPool, EndpointState, Outcome
from mira_spark.serving.retry import is_context_overflow, is_retryable_status, retry_delay
from mira_spark.serving.secrets import install_redaction, redact
from mira_spark.serving.types import (
    ERR_CONNECTION,
    ERR_CONTEXT_OVERFLOW,
    ERR_HTTP,
    ERR_POOL_UNAVAILABLE,
    ERR_TIMEOUT,
    RunStats,
    ScoreResult,
)

logger = logging.getLogger(__name__)
install_redaction(logger)

# A worker waiting for an open pool re-checks at least this often (probe times move with /health).
WAIT_POLL_MAX_S = 0.25
WAIT_POLL_MIN_S = 0.005
# A worker waiting for room (every endpoint at this client's capacity) is woken by a release, a
# scrape or a health change; this is only the backstop re-check.
CAPACITY_RECHECK_S = 5.0
ERROR_DETAIL_CHARS = 200


def detail(code: str, text: str) -> str:
    """``code: one redacted line of text`` (the error column's format), cut to a readable length."""
    text = redact(" ".join(text.split()))[:ERROR_DETAIL_CHARS]
    return f"{code}: {text}" if text else code


@dataclass
class SendFailure:
    """Terminal outcome of one send that produced no answer (after transport retries)."""

    error: str
    deferred: bool = False
    overflow: bool = False


class Room:
    """Workers waiting until some endpoint has room for one more request, oldest first."""

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    def wake(self, n: int = 1) -> None:
        """Let up to ``n`` waiting workers try again."""
        while n > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1

    def wake_all(self) -> None:
        self.wake(len(self._waiters))

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        backstop = loop.call_later(CAPACITY_RECHECK_S, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            backstop.cancel()


@dataclass(eq=False)
class Transport:
    """Sends chat requests over one session, with routing, retries, failover and the breaker."""

    pool: EndpointPool
    cfg: PoolConfig
    sampling: SamplingConfig
    model: str
    api_key: str | None = field(repr=False)
    session: aiohttp.ClientSession
    room: Room
    stopped: Callable[[], str | None]  # the pool's stop reason, once it has been down past its grace
    check_pool_down: Callable[[], bool]
    stats: RunStats
    rng: random.Random
    clock: Callable[[], float]
    in_flight: int = 0
    first_send: dict[int, float] = field(default_factory=dict)  # request index -> time of its first POST
    on_send: Callable[[int], None] | None = None  # called with the request index before its first POST

    async def acquire(self) -> EndpointState | None:
        """An endpoint reserved for one request; None once the run has stopped (pool down)."""
        while True:
            if self.stopped() is not None:
                return None
            ep = self.pool.pick()
            if ep is not None:
                return ep
            if self.check_pool_down():
                continue
            if self.pool.has_usable():
                await self.room.wait()
                continue
            probe_at = self.pool.next_probe_time()
            wait = WAIT_POLL_MAX_S if probe_at is None else probe_at - self.clock()
            await asyncio.sleep(min(WAIT_POLL_MAX_S, max(WAIT_POLL_MIN_S, wait)))

    def release(self, ep: EndpointState, outcome: Outcome, service_s: float | None = None) -> None:
        """Feed the outcome back to the pool, wake one waiting worker, log breaker transitions."""
        before = ep.state
        self.pool.release(ep, outcome, service_s)
        self.room.wake()
        if ep.state is not before:
            level = logging.WARNING if ep.state is BreakerState.OPEN else logging.INFO
            logger.log(level, "endpoint %s: circuit %s -> %s (%d consecutive failures)", ep.url,
                       before.value, ep.state.value, ep.consecutive_failures)

    def payload(self, messages: list[dict[str, str]], seed_offset: int, n: int = 1) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "max_tokens": self.sampling.max_tokens,
        }
        if self.sampling.seed is not None:
            # A re-ask with the same seed would reproduce the rejected answer token for token.
            payload["seed"] = self.sampling.seed + seed_offset
        if n > 1:
            payload["n"] = n  # several samples of one prompt: prefilled once
        # Server-specific fields, e.g. the constrained-output grammar (mira_spark.prompting.constrained); the
        # config forbids them to override the keys above.
        payload.update(self.sampling.extra_body)
        return payload

    async def send(
        self, messages: list[dict[str, str]], key: str, res: ScoreResult, seed_offset: int = 0, n: int = 1
    ) -> ChatResponse | SendFailure:
        """POST until an answer, a non-retryable error, exhausted attempts or a stopped pool."""
        payload = self.payload(messages, seed_offset, n)
        headers = build_headers(self.api_key, key if self.cfg.request_id_header else None)
        attempt = 0
        while True:
            ep = await self.acquire()
            if ep is None:
                return SendFailure(detail(ERR_POOL_UNAVAILABLE, self.stopped() or "pool stopped"), deferred=True)
            to_free_slot = not self.pool.queued(ep)
            attempt += 1
            if res.attempts == 0:  # latency runs from the first send, not from waiting for the pool
                self.first_send[res.index] = self.clock()
                if self.on_send is not None:
                    self.on_send(res.index)
            res.attempts += 1
            self.stats.requests_sent += 1
            self.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.in_flight)
            started = self.clock()
            retry_after: float | None = None
            try:
                response = await post_chat(self.session, ep.url, payload, headers)
            except APIStatusError as exc:
                if is_context_overflow(exc.status, exc.body_excerpt):
                    self.release(ep, "answered")
                    return SendFailure(detail(ERR_CONTEXT_OVERFLOW, exc.body_excerpt), overflow=True)
                error = detail(ERR_HTTP.format(status=exc.status), exc.body_excerpt)
                if not is_retryable_status(exc.status):
                    self.release(ep, "answered")
                    return SendFailure(error)
                self.release(ep, "failure")
                retry_after = exc.retry_after
            except APITimeoutError as exc:
                self.release(ep, "failure")
                error = detail(ERR_TIMEOUT, str(exc))
            except APIConnectionError as exc:
                self.release(ep, "failure")
                error = detail(ERR_CONNECTION, str(exc))
            except APIResponseError as exc:
                self.release(ep, "failure")
                error = detail(ERR_HTTP.format(status=200), str(exc))
            else:
                self.release(ep, "success", self.clock() - started if to_free_slot else None)
                res.endpoint = ep.url
                return response
            finally:
                self.in_flight -= 1
            if attempt >= self.cfg.max_attempts:
                if self.pool.is_down():
                    # The row is not at fault when the whole pool is down: let the next run retry it.
                    return SendFailure(detail(ERR_POOL_UNAVAILABLE, "every endpoint down; last error " + error),
                                       deferred=True)
                return SendFailure(error)
            self.stats.retries += 1
            res.retry_causes.append(error.split(":", 1)[0])
            delay = retry_delay(attempt, retry_after, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self.rng)
            await asyncio.sleep(delay)
