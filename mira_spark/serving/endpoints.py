"""Endpoint pool: per-endpoint load, service rate, circuit breaker, and least-expected-wait routing.

Takes the endpoint configs of a :class:`~mira_spark.config.PoolConfig` and a clock; gives
:class:`EndpointPool`, whose :meth:`EndpointPool.pick` reserves the endpoint where a new request is
expected to finish first, and whose ``release``/``mark_health``/``set_load`` methods feed back what
happened. Pure logic (no I/O, injectable clock) so it is tested with a fake clock.

Expected wait of a new request on an endpoint::

    (outstanding + 1 + max(0, server_load - outstanding)) / (weight * normalised_rate)

``outstanding`` is what this client has in flight there; ``server_load`` is running + waiting from the
last fresh ``/metrics`` scrape, which also counts other clients' requests (hence the ``max``);
``normalised_rate`` is the endpoint's EWMA service rate divided by the pool's mean (1.0 until known).
The ``+ 1`` counts the request being placed, so an idle fast endpoint beats an idle slow one.

When the pool knows each endpoint's batch size (``slots``, vLLM ``max_num_seqs``), a request that would
find a free slot is placed before any that would queue: with a bounded number of requests in flight,
a free slot anywhere adds a whole slot of throughput, whereas equalising expected latency piles the
budget onto the fastest endpoint's queue and leaves the slower ones' batches part-empty. Free slots
score ``(position / slots - 1) * weight * normalised_rate`` (negative: emptiest and fastest first);
a queued request scores ``(position - slots) / (weight * normalised_rate)``, its wait in the queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from mira_spark.config import EndpointConfig, PoolConfig
from mira_spark.serving.metrics import ServerLoad

# A scrape older than this many poll intervals no longer describes the server.
STALE_AFTER_POLLS = 3.0
# Weight of a new service-rate sample in the EWMA: ~10 completions to follow a change, few enough
# that one slow outlier does not swing routing.
RATE_EWMA_ALPHA = 0.1
# Routing compares rates relative to the pool; clamp so one bad estimate cannot starve an endpoint.
MIN_NORMALISED_RATE = 0.05
MAX_NORMALISED_RATE = 20.0

Outcome = Literal["success", "failure", "answered"]
"""``success``: a completion came back. ``failure``: retryable error or transport failure (counts
toward the breaker). ``answered``: the server replied with a non-retryable error (e.g. 400) — alive,
so the failure streak resets, but no service-rate sample."""


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class EndpointState:
    """What this client knows about one endpoint."""

    url: str
    weight: float = 1.0
    outstanding: int = 0
    server_load: float | None = None
    server_load_at: float | None = None
    rate: float | None = None  # EWMA of completions/s, by Little's law: outstanding / latency
    consecutive_failures: int = 0
    state: BreakerState = BreakerState.CLOSED
    probe_at: float = 0.0  # when an open endpoint may take one probe request
    probe_in_flight: bool = False
    down_since: float | None = None  # first opening since last closed
    completed: int = 0
    failed: int = 0

    @property
    def base_url(self) -> str:
        """URL without the trailing ``/v1``: where vLLM serves ``/health`` and ``/metrics``."""
        return self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url


class EndpointPool:
    """Routing and health state of a pool; single-threaded (one asyncio loop) by design."""

    def __init__(
        self,
        endpoints: Sequence[EndpointConfig],
        *,
        breaker_failures: int = 5,
        breaker_probe_s: float = 5.0,
        metrics_poll_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        slots: int | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("an endpoint pool needs at least one endpoint")
        self.endpoints = [EndpointState(url=e.url, weight=e.weight) for e in endpoints]
        self.breaker_failures = breaker_failures
        self.breaker_probe_s = breaker_probe_s
        self.stale_after_s = STALE_AFTER_POLLS * metrics_poll_s if metrics_poll_s > 0 else 0.0
        self.clock = clock
        self.slots = slots
        self._rr = 0  # rotates the starting point so ties are spread round robin

    @classmethod
    def from_config(cls, pool: PoolConfig, clock: Callable[[], float] = time.monotonic) -> EndpointPool:
        return cls(
            pool.endpoints,
            breaker_failures=pool.breaker_failures,
            breaker_probe_s=pool.breaker_probe_s,
            metrics_poll_s=pool.metrics_poll_s,
            clock=clock,
            slots=pool.slots_per_endpoint,
        )

    # ---- routing -------------------------------------------------------------------------------

    def _mean_rate(self) -> float | None:
        rates = [e.rate for e in self.endpoints if e.rate]
        return sum(rates) / len(rates) if rates else None

    def expected_wait(
        self, ep: EndpointState, now: float | None = None, mean_rate: float | None = None
    ) -> float:
        """Relative time a new request placed on ``ep`` would take (see module docstring)."""
        now = self.clock() if now is None else now
        backlog = 0.0
        fresh = ep.server_load_at is not None and (
            self.stale_after_s <= 0 or now - ep.server_load_at <= self.stale_after_s
        )
        if fresh and ep.server_load is not None:
            backlog = max(0.0, ep.server_load - ep.outstanding)
        mean = self._mean_rate() if mean_rate is None else mean_rate
        norm = 1.0
        if mean and ep.rate:
            norm = min(MAX_NORMALISED_RATE, max(MIN_NORMALISED_RATE, ep.rate / mean))
        position = ep.outstanding + 1 + backlog
        if self.slots:
            if position <= self.slots:
                return (position / self.slots - 1.0) * (ep.weight * norm)
            return (position - self.slots) / (ep.weight * norm)
        return position / (ep.weight * norm)

    def _usable(self, ep: EndpointState, now: float) -> bool:
        if ep.state is BreakerState.CLOSED:
            return True
        if ep.state is BreakerState.OPEN and now >= ep.probe_at:
            ep.state = BreakerState.HALF_OPEN
        return ep.state is BreakerState.HALF_OPEN and not ep.probe_in_flight

    def pick(self) -> EndpointState | None:
        """Reserve the endpoint with the lowest expected wait; None when none can take a request.

        The caller must :meth:`release` the endpoint when the request ends. A half-open endpoint is
        handed out to one request at a time (the probe).
        """
        now = self.clock()
        n = len(self.endpoints)
        best: EndpointState | None = None
        best_wait = float("inf")
        mean_rate = self._mean_rate()
        for i in range(n):
            ep = self.endpoints[(self._rr + i) % n]
            if not self._usable(ep, now):
                continue
            wait = self.expected_wait(ep, now, mean_rate)
            if wait < best_wait:  # strict: the first of equals in rotated order wins -> round robin
                best, best_wait = ep, wait
        if best is None:
            return None
        self._rr = (self._rr + 1) % n
        best.outstanding += 1
        if best.state is BreakerState.HALF_OPEN:
            best.probe_in_flight = True
        return best

    def next_probe_time(self) -> float | None:
        """Earliest time an open endpoint may be probed; None when some endpoint is usable now."""
        now = self.clock()
        times = []
        for ep in self.endpoints:
            if self._usable(ep, now):
                return None
            times.append(now if ep.state is BreakerState.HALF_OPEN else ep.probe_at)
        return min(times)

    def is_down(self) -> bool:
        """True when no endpoint is closed (every one is open or waiting for its probe)."""
        return all(ep.down_since is not None for ep in self.endpoints)

    def down_for(self) -> float:
        """Seconds every endpoint has been out of the closed state (0 while any is closed)."""
        if any(ep.down_since is None for ep in self.endpoints):
            return 0.0
        latest = max(ep.down_since for ep in self.endpoints if ep.down_since is not None)
        return max(0.0, self.clock() - latest)

    # ---- feedback ------------------------------------------------------------------------------

    def _open(self, ep: EndpointState, now: float) -> None:
        ep.state = BreakerState.OPEN
        ep.probe_at = now + self.breaker_probe_s
        if ep.down_since is None:
            ep.down_since = now

    def _close(self, ep: EndpointState) -> None:
        ep.state = BreakerState.CLOSED
        ep.consecutive_failures = 0
        ep.down_since = None

    def release(self, ep: EndpointState, outcome: Outcome, latency_s: float | None = None) -> None:
        """Record how a request reserved by :meth:`pick` ended."""
        now = self.clock()
        concurrency = ep.outstanding  # includes this request: the Little's-law L at completion
        ep.outstanding = max(0, ep.outstanding - 1)
        was_probe = ep.probe_in_flight
        ep.probe_in_flight = False
        if outcome == "failure":
            ep.failed += 1
            ep.consecutive_failures += 1
            if (
                was_probe
                or ep.state is BreakerState.HALF_OPEN
                or (ep.state is BreakerState.CLOSED and ep.consecutive_failures >= self.breaker_failures)
            ):
                self._open(ep, now)
            return
        self._close(ep)
        if outcome == "success":
            ep.completed += 1
            if latency_s is not None and latency_s > 0:
                sample = concurrency / latency_s
                ep.rate = sample if ep.rate is None else ep.rate + RATE_EWMA_ALPHA * (sample - ep.rate)

    def mark_health(self, ep: EndpointState, healthy: bool) -> None:
        """Result of a ``/health`` check: failing opens the breaker; passing lets an open one be probed."""
        now = self.clock()
        if not healthy:
            if ep.state is BreakerState.CLOSED:
                self._open(ep, now)
            elif ep.state is BreakerState.OPEN:
                ep.probe_at = max(ep.probe_at, now + self.breaker_probe_s)
            return
        if ep.state is BreakerState.OPEN:
            ep.probe_at = now  # one real request may go now; its success closes the breaker

    def set_load(self, ep: EndpointState, load: ServerLoad | None) -> None:
        """Result of a ``/metrics`` scrape (None: no vLLM metrics there; keep routing without)."""
        if load is None:
            return
        ep.server_load = load.total
        ep.server_load_at = self.clock()

    @property
    def outstanding(self) -> int:
        return sum(ep.outstanding for ep in self.endpoints)
