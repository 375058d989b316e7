"""Endpoint pool: exact own load, others' load from ``/metrics``, learned speed, circuit breaker, routing.

Takes the endpoint configs of a :class:`~mira_spark.config.PoolConfig`, the share of the pool this
client plans to use, and a clock; gives :class:`EndpointPool`, whose :meth:`EndpointPool.pick`
reserves an endpoint with a free place for one more request (or returns None: the request waits in
the job), and whose ``release`` / ``mark_health`` / ``set_load`` methods feed back what happened. Pure
logic (no I/O, injectable clock), tested with a fake clock and driven by the discrete-event routing
bench (:mod:`mira_spark.devtools.simulator.des`).

The model, per endpoint:

* **Own load is exact.** ``outstanding`` counts this client's requests there; it is the first term of
  every decision and never comes from a scrape.
* **Others' load** (other Spark tasks of this job, other jobs, other users). The prior is the rest of
  the job's plan: a task of a job with T tasks fills ``share = 1/T`` of each endpoint, so the other
  tasks hold ``room * (1 - share)``, where ``room`` is the job's slots plus queue headroom there.
  ``/metrics`` corrects the prior with what it shows beyond our own requests — ``running + waiting -
  outstanding`` at the scrape (our count averaged over the scrape's round trip), never negative. A
  reading within ``FOREIGN_DEADBAND_FRACTION`` of the slots of the prior counts as the prior: the
  jitter of sibling tasks refilling their own slots never moves routing; a foreign client, another job
  or a sibling that has finished does. Every task of the job reads the same servers and reacts at
  once, so each moves its estimate only by its share of the difference (at most
  ``FOREIGN_ALPHA_MAX``): together they correct by the difference once, instead of all taking the
  same free slots (or all leaving the same full ones) and oscillating. A lone task takes a drop in
  others' load at once (a free slot must be filled now), and a rise once two readings agree. A scrape older than ``STALE_AFTER_POLLS``
  polls falls back to the prior; the first scrape is taken a second after the start, when every task
  has placed its first requests.
* **Capacity** for this client: ``room - others`` (rounded up, at least one request). The task's
  queue headroom (:func:`~mira_spark.serving.plan.task_headroom`: 2% of the slots for the whole job)
  keeps a slot that a finished sequence frees refilled from the server's queue instead of waiting a
  network round trip; beyond it the surplus waits in the job, where it can still go to whichever
  endpoint frees a slot first — never in one server's queue while another has a free slot.
  ``effective_slots`` is the configured batch size (vLLM ``max_num_seqs``), lowered to the server's
  observed ``running`` whenever a scrape shows requests waiting (a server whose KV cache binds, or a
  configured size that is too large), and back to the configured size when its queue is empty.
* **Speed is learned from completions**: an EWMA of the service time of requests that found a free
  slot when sent (their latency is service time, not queueing). The configured ``weight`` is only the
  prior until an endpoint has been measured, and never a cap.

Routing among endpoints with room: a free slot before a place in a queue; among free slots the
endpoint expected to finish the request first (shortest learned service time), then the emptiest,
then round robin; among queue places the shortest expected wait. In a saturated pool every freed slot
is refilled at once, so the order matters only when the job has fewer requests than slots (the tail
of a run), where it sends the remaining work to the fastest endpoints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from mira_spark.config import EndpointConfig, PoolConfig
from mira_spark.serving.metrics import ServerLoad
from mira_spark.serving.plan import task_headroom

# A scrape older than this many poll intervals no longer describes the server.
STALE_AFTER_POLLS = 3.0
# Weight of a new service-time sample in the EWMA: ~10 completions to follow a change, few enough
# that one slow outlier does not swing routing.
SERVICE_EWMA_ALPHA = 0.1
# Routing refreshes its copy of the learned service times at most this often (they move slowly).
SERVICE_REFRESH_S = 0.25
# Largest step toward a scrape's reading of others' load. N independent clients that react to the
# same scrape with step a converge while a < 2/N: two jobs of one task each do at 0.5.
FOREIGN_ALPHA_MAX = 0.5
# A scrape moves the estimate of others' load only when it differs from the prior by more than this
# fraction of the slots (at least one request): sibling tasks' refill jitter is not a signal.
FOREIGN_DEADBAND_FRACTION = 0.05
# An endpoint is never taken to be slower than this fraction of the fastest (one bad estimate must not
# make it look useless).
MIN_RELATIVE_SPEED = 0.05

Outcome = Literal["success", "failure", "answered"]
"""``success``: a completion came back. ``failure``: retryable error or transport failure (counts
toward the breaker). ``answered``: the server replied with a non-retryable error (e.g. 400) — alive,
so the failure streak resets, but no service-time sample."""


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class EndpointState:
    """What this client knows about one endpoint."""

    url: str
    weight: float = 1.0
    slots: int = 1  # configured batch size of the endpoint (whole server, all clients)
    effective_slots: int = 1  # slots, or the concurrency the server shows when it queues
    outstanding: int = 0  # this client's requests there: exact
    foreign: float | None = None  # others' requests there (running + waiting), from the last scrape
    foreign_at: float | None = None
    foreign_reading: float | None = None  # the last scrape's raw reading of others' load
    server_load: float | None = None  # raw running + waiting of the last scrape (diagnostics)
    server_load_at: float | None = None
    service_s: float | None = None  # EWMA of the service time of requests sent to a free slot
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
    """Routing and health state of a pool; single-threaded (one asyncio loop) by design.

    Parameters
    ----------
    endpoints : the pool's endpoints (url, weight).
    slots : batch size of each endpoint (vLLM ``max_num_seqs``), shared by every client.
    share : fraction of each endpoint this client plans to use (1/T for one of T tasks of a job).
    headroom : requests this client may queue per endpoint beyond its share of the slots (default
        :func:`~mira_spark.serving.plan.task_headroom`).
    breaker_failures, breaker_probe_s : circuit breaker.
    metrics_poll_s : how often the caller scrapes ``/metrics`` (staleness of others' load).
    clock : monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        endpoints: Sequence[EndpointConfig],
        *,
        slots: int = 256,
        share: float = 1.0,
        headroom: int | None = None,
        breaker_failures: int = 5,
        breaker_probe_s: float = 5.0,
        metrics_poll_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("an endpoint pool needs at least one endpoint")
        if slots < 1 or not 0 < share <= 1:
            raise ValueError(f"slots must be >= 1 and share in (0, 1], got {slots} and {share}")
        self.endpoints = [
            EndpointState(url=e.url, weight=e.weight, slots=slots, effective_slots=slots) for e in endpoints
        ]
        self.share = share
        self.headroom = task_headroom(slots, share) if headroom is None else headroom
        self.deadband = max(1.0, FOREIGN_DEADBAND_FRACTION * slots)
        self.breaker_failures = breaker_failures
        self.breaker_probe_s = breaker_probe_s
        self.stale_after_s = STALE_AFTER_POLLS * metrics_poll_s if metrics_poll_s > 0 else 0.0
        self.clock = clock
        self._rr = 0  # rotates the starting point so ties are spread round robin
        self._services: list[float] | None = None  # routing's copy of the service times
        self._services_at = 0.0
        self._services_dirty = False

    @classmethod
    def from_config(
        cls, pool: PoolConfig, share: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> EndpointPool:
        return cls(
            pool.endpoints,
            slots=pool.slots_per_endpoint,
            share=share,
            breaker_failures=pool.breaker_failures,
            breaker_probe_s=pool.breaker_probe_s,
            metrics_poll_s=pool.metrics_poll_s,
            clock=clock,
        )

    # ---- the model -----------------------------------------------------------------------------

    def _room(self, slots: float) -> float:
        """Requests the whole job plans to hold at an endpoint with ``slots`` slots."""
        return slots + self.headroom / self.share

    def prior_foreign(self, ep: EndpointState) -> float:
        """Others' load the plan expects at ``ep``: the other tasks' part of the job's room."""
        return self._room(ep.slots) * (1.0 - self.share)

    def _fresh(self, ep: EndpointState, now: float) -> bool:
        return ep.foreign is not None and ep.foreign_at is not None and (
            self.stale_after_s <= 0 or now - ep.foreign_at <= self.stale_after_s
        )

    def foreign_load(self, ep: EndpointState, now: float | None = None) -> float:
        """Others' requests at ``ep``: the estimate from fresh scrapes, else the prior."""
        now = self.clock() if now is None else now
        if self._fresh(ep, now) and ep.foreign is not None:
            return ep.foreign
        return self.prior_foreign(ep)

    def capacity(self, ep: EndpointState, now: float | None = None) -> int:
        """Requests this client may have outstanding at ``ep`` now (at least 1)."""
        room = self._room(ep.effective_slots) - self.foreign_load(ep, now)
        return max(1, math.ceil(room - 1e-9))

    def queued(self, ep: EndpointState, now: float | None = None) -> bool:
        """True when this client's newest request at ``ep`` (counted in ``outstanding``) is expected to
        wait in the server's queue rather than start at once."""
        return ep.outstanding - 1 + self.foreign_load(ep, now) >= ep.effective_slots - 1e-9

    def _routing_service_times(self, now: float) -> list[float]:
        """:meth:`_service_times`, recomputed at most every ``SERVICE_REFRESH_S`` (pick is the hot path)."""
        if self._services is None or (self._services_dirty and now - self._services_at >= SERVICE_REFRESH_S):
            self._services, self._services_at, self._services_dirty = self._service_times(), now, False
        return self._services

    def _service_times(self) -> list[float]:
        """Expected service time per endpoint: learned, else the weight-scaled mean of the learned ones."""
        known = [(ep.service_s, ep.weight) for ep in self.endpoints if ep.service_s]
        scale = sum(s * w for s, w in known) / len(known) if known else 1.0  # service x weight ~ const
        out = []
        for ep in self.endpoints:
            out.append(ep.service_s if ep.service_s else scale / ep.weight)
        slowest_allowed = min(out) / MIN_RELATIVE_SPEED
        return [min(s, slowest_allowed) for s in out]

    def relative_speeds(self) -> list[float]:
        """Each endpoint's speed relative to the pool's mean (1.0 each until anything is known)."""
        inv = [1.0 / s for s in self._service_times()]
        mean = sum(inv) / len(inv)
        return [v / mean for v in inv]

    def _score(self, ep: EndpointState, service: float, now: float) -> tuple[int, float, float]:
        """Sort key of placing one more request on ``ep`` (lower is better)."""
        position = ep.outstanding + self.foreign_load(ep, now)  # requests ahead of the new one
        slots = max(ep.effective_slots, 1)
        if position < slots - 1e-9:
            return (0, service, position / slots)  # a free slot: who finishes it first, then emptiest
        ahead = position - slots + 1  # completions needed before it starts
        return (1, service * (1.0 + ahead / slots), position / slots)

    # ---- routing -------------------------------------------------------------------------------

    def _usable(self, ep: EndpointState, now: float) -> bool:
        if ep.state is BreakerState.CLOSED:
            return True
        if ep.state is BreakerState.OPEN and now >= ep.probe_at:
            ep.state = BreakerState.HALF_OPEN
        return ep.state is BreakerState.HALF_OPEN and not ep.probe_in_flight

    def pick(self) -> EndpointState | None:
        """Reserve the best endpoint with room; None when none can take a request now.

        None means either that every usable endpoint is at this client's capacity (wait for a
        release; :meth:`has_usable` is True) or that no endpoint is usable (breakers open; see
        :meth:`next_probe_time`). The caller must :meth:`release` the endpoint when the request ends.
        A half-open endpoint is handed out to one request at a time (the probe), whatever its room.
        """
        now = self.clock()
        n = len(self.endpoints)
        services = self._routing_service_times(now)
        best: EndpointState | None = None
        best_key: tuple[int, float, float] | None = None
        for i in range(n):
            j = (self._rr + i) % n
            ep = self.endpoints[j]
            if not self._usable(ep, now):
                continue
            if ep.state is BreakerState.CLOSED and ep.outstanding >= self.capacity(ep, now):
                continue
            key = self._score(ep, services[j], now)
            if best_key is None or key < best_key:  # strict: first of equals in rotated order wins
                best, best_key = ep, key
        if best is None:
            return None
        self._rr = (self._rr + 1) % n
        best.outstanding += 1
        if best.state is BreakerState.HALF_OPEN:
            best.probe_in_flight = True
        return best

    def has_usable(self) -> bool:
        """True when some endpoint could take a request if it had room (closed, or ready to probe)."""
        now = self.clock()
        return any(self._usable(ep, now) for ep in self.endpoints)

    def spare(self) -> int:
        """Requests :meth:`pick` would place right now (room on closed endpoints)."""
        now = self.clock()
        return sum(
            max(0, self.capacity(ep, now) - ep.outstanding)
            for ep in self.endpoints
            if ep.state is BreakerState.CLOSED
        )

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

    def release(self, ep: EndpointState, outcome: Outcome, service_s: float | None = None) -> None:
        """Record how a request reserved by :meth:`pick` ended.

        ``service_s``: its latency, passed only when it was sent to a free slot (so the latency is the
        server's service time, not time spent in its queue); it updates the learned speed.
        """
        now = self.clock()
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
            if service_s is not None and service_s > 0:
                ep.service_s = (
                    service_s if ep.service_s is None else ep.service_s + SERVICE_EWMA_ALPHA * (service_s - ep.service_s)
                )
                self._services_dirty = True

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

    def set_load(self, ep: EndpointState, load: ServerLoad | None, own: float | None = None) -> None:
        """Result of a ``/metrics`` scrape (None: no vLLM metrics there; keep routing without).

        ``own``: this client's outstanding requests at ``ep`` while the scrape was answered (default:
        now); the server's count minus ours is others' load.
        """
        if load is None:
            return
        now = self.clock()
        ep.server_load, ep.server_load_at = load.total, now
        mine = ep.outstanding if own is None else own
        measured = max(0.0, load.total - mine)
        prior = self.prior_foreign(ep)
        if abs(measured - prior) <= self.deadband:
            measured = prior  # sibling tasks' jitter around the plan
        fresh = self._fresh(ep, now)
        previous = ep.foreign if fresh and ep.foreign is not None else prior
        if self.share >= 1.0 and (
            measured < previous  # others freed slots: use them now
            or (fresh and ep.foreign_reading is not None and abs(measured - ep.foreign_reading) <= self.deadband)
        ):
            step = 1.0  # alone, and the reading is a drop or the same as last time: not a transient
        else:
            step = min(self.share, FOREIGN_ALPHA_MAX)
        ep.foreign = previous + step * (measured - previous)
        ep.foreign_at = now
        ep.foreign_reading = measured
        if load.waiting > 0 and 0 < load.running < ep.slots:
            ep.effective_slots = max(1, math.floor(load.running))  # the server queues below its batch size
        elif load.waiting <= 0:
            ep.effective_slots = ep.slots

    @property
    def outstanding(self) -> int:
        return sum(ep.outstanding for ep in self.endpoints)
