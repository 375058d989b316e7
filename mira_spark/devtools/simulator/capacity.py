"""Capacity model of one vLLM server, for the simulator: continuous batching in a few lines of arithmetic.

Takes a request's shape (prompt tokens, of which cached, and completion tokens) and the server's state;
gives how long the request holds a batch slot, and schedules requests onto slots. Pure logic: no
aiohttp; the async part is only ``asyncio`` futures for waiting in the FIFO queue.

The model, in *model seconds* (what a real 8×GPU server would take), divided by ``speed`` and by
``time_scale`` to get wall seconds:

* ``slots`` (vLLM ``max_num_seqs``) sequences run at once, and their prompt + completion tokens must fit
  the KV budget ``kv_tokens``; otherwise a request waits in a FIFO queue (vLLM's default FCFS policy,
  head-of-line blocking included).
* Prefill costs ``(prompt_tokens - cached_tokens) / prefill_tokens_per_s``. A prompt whose prefix (system
  message + user message up to the document) was seen recently is cached: an LRU of prefix hashes
  stands in for vLLM's automatic prefix caching.
* Decoding costs ``completion_tokens * step_s`` with ``step_s = base_step_s + per_seq_step_s * running``:
  a bigger batch is slower per step but faster in aggregate.
* The step time is fixed when a request is admitted (``running`` then, itself included). That keeps the
  accounting exact: :func:`pool_capacity` uses the same formula with a full batch, so
  ``achieved requests/s / pool_capacity(...)`` is the pool's utilization, and ``busy_slot_seconds /
  (slots × elapsed)`` the same figure per endpoint.

A second regime stands in for a server the project did not write (issue 7): ``service="fixed"`` holds each
request's slot for a *wall-second* service time drawn from a seeded distribution (``constant``,
``exponential`` or ``lognormal`` with mean ``fixed_service_s``), divided by ``speed``, independent of tokens,
batch size and ``time_scale``; ``fifo=True`` is plain slots behind a strict FIFO queue (no KV budget).
The busy-slot and load integrals are the scheduler's either way, so they stay exact.

>>> m = CapacityModel(time_scale=1.0)
>>> round(m.service_s(RequestShape(prompt_tokens=4000, completion_tokens=500), running=1), 3)
7.8
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from mira_spark.prompting.tokens import char_classes

# Simulator's "true" tokenizer: lower weights than mira_spark.prompting.tokens, so its count never exceeds our
# conservative estimate for the same text (the client must never be surprised by a 400).
SIM_CJK_TOKENS = 0.85
SIM_ALNUM_TOKENS = 0.25
SIM_SPACE_TOKENS = 0.05
SIM_SYMBOL_TOKENS = 0.6
SIM_OTHER_TOKENS = 1.0
SIM_MESSAGE_OVERHEAD_TOKENS = 8
# Change points (time, running, waiting) one scheduler keeps between resets: 16 bytes each, so at most
# ~16 MB for an endpoint that is never reset; beyond it the log stops and says it was truncated.
CHANGE_LOG_MAX_POINTS = 1_000_000

ServiceKind = Literal["tokens", "fixed"]
ServiceDistribution = Literal["constant", "exponential", "lognormal"]


def sim_tokens(text: str) -> int:
    """The simulator's token count of ``text`` (always <= ``mira_spark.prompting.tokens.estimate_tokens(text)``).

    >>> sim_tokens(""), sim_tokens("页面设计")
    (0, 3)
    """
    if not text:
        return 0
    cjk, alnum, space, symbol, other = char_classes(text)
    return int(
        cjk * SIM_CJK_TOKENS
        + alnum * SIM_ALNUM_TOKENS
        + space * SIM_SPACE_TOKENS
        + symbol * SIM_SYMBOL_TOKENS
        + other * SIM_OTHER_TOKENS
    )


class CapacityModel(BaseModel):
    """Knobs of one simulated vLLM server (model seconds unless said otherwise)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slots: int = Field(default=64, ge=1, description="Concurrent sequences (vLLM max_num_seqs).")
    kv_tokens: int = Field(default=2_097_152, ge=1, description="KV-cache budget in tokens over running sequences.")
    prefill_tokens_per_s: float = Field(default=40_000.0, gt=0, description="Prefill speed for uncached prompt tokens.")
    base_step_s: float = Field(default=0.015, gt=0, description="Decode step time with an empty batch.")
    per_seq_step_s: float = Field(default=0.0004, ge=0, description="Extra decode step time per running sequence.")
    speed: float = Field(default=1.0, gt=0, description="Relative speed of this endpoint (2 = twice as fast).")
    time_scale: float = Field(default=150.0, gt=0, description="Wall seconds = model seconds / time_scale.")
    prefix_cache_entries: int = Field(default=256, ge=0, description="LRU size of cached prompt prefixes.")
    service: ServiceKind = Field(
        default="tokens",
        description="tokens: prefill + decode from the request's tokens and the batch size; fixed: a service "
        "time in wall seconds drawn per request, independent of tokens, batch size and time_scale.")
    fixed_service_s: float = Field(default=2.0, gt=0,
                                   description="fixed: mean wall seconds a request holds its slot at speed 1.")
    service_distribution: ServiceDistribution = Field(
        default="constant", description="fixed: distribution of the service time around its mean.")
    service_sigma: float = Field(default=0.5, gt=0, description="fixed + lognormal: sigma of log(service time).")
    service_seed: int = Field(default=0, description="fixed: seed of the service-time draws (reseeded on reset).")
    fifo: bool = Field(default=False, description="Strict FIFO: plain slots behind a FIFO queue, no KV budget.")
    _rng: random.Random = PrivateAttr(default_factory=random.Random)

    def model_post_init(self, context: Any, /) -> None:
        self.reseed()

    def reseed(self) -> None:
        """Restart the service-time draws (a reset simulator serves the same sequence again)."""
        self._rng.seed(self.service_seed)

    def step_s(self, running: int) -> float:
        """Model seconds of one decode step with ``running`` sequences in the batch."""
        return self.base_step_s + self.per_seq_step_s * max(running, 1)

    def mean_service_s(self, shape: RequestShape, running: int, speed: float | None = None) -> float:
        """Expected wall seconds a request holds its slot (no draw; what :func:`pool_capacity` prices)."""
        speed = self.speed if speed is None else speed
        if self.service == "fixed":
            return self.fixed_service_s / speed
        uncached = max(shape.prompt_tokens - shape.cached_tokens, 0)
        model_s = uncached / self.prefill_tokens_per_s + shape.completion_tokens * self.step_s(running)
        return model_s / speed / self.time_scale

    def service_s(self, shape: RequestShape, running: int, speed: float | None = None) -> float:
        """Wall seconds one request holds its slot.

        ``tokens``: uncached prefill plus decode at the batch's step time. ``fixed``: one draw of the
        seeded stream (the simulator calls this once per admitted request), divided by the speed.

        >>> m = CapacityModel(service="fixed", fixed_service_s=2.0, speed=4.0)
        >>> m.service_s(RequestShape(4000, 500), running=64)
        0.5
        """
        if self.service != "fixed":
            return self.mean_service_s(shape, running, speed)
        return self.draw_fixed_s() / (self.speed if speed is None else speed)

    def draw_fixed_s(self) -> float:
        """One service time at speed 1 from the configured distribution (mean ``fixed_service_s``)."""
        mean_s = self.fixed_service_s
        if self.service_distribution == "exponential":
            return self._rng.expovariate(1.0 / mean_s)
        if self.service_distribution == "lognormal":
            sigma = self.service_sigma
            return self._rng.lognormvariate(math.log(mean_s) - sigma * sigma / 2, sigma)
        return mean_s


@dataclass(frozen=True)
class RequestShape:
    """Token shape of one served request."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class RequestMix:
    """Sums over served requests; enough for capacity because service time is linear in the tokens."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def of(cls, shapes: Iterable[RequestShape]) -> RequestMix:
        mix = cls()
        for s in shapes:
            mix = mix + cls(1, s.prompt_tokens, s.cached_tokens, s.completion_tokens)
        return mix

    def __add__(self, other: RequestMix) -> RequestMix:
        return RequestMix(
            self.requests + other.requests,
            self.prompt_tokens + other.prompt_tokens,
            self.cached_tokens + other.cached_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    def mean_shape(self) -> RequestShape:
        """The average request; fractional token counts are fine for the linear cost model."""
        n = max(self.requests, 1)
        return RequestShape(self.prompt_tokens / n, self.completion_tokens / n, self.cached_tokens / n)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens, "completion_tokens": self.completion_tokens}


def effective_concurrency(model: CapacityModel, mean_kv_tokens: float) -> int:
    """Sequences that can run at once: slots, unless the KV budget fits fewer average requests."""
    if mean_kv_tokens <= 0 or model.fifo:
        return model.slots
    return max(1, min(model.slots, int(model.kv_tokens // mean_kv_tokens)))


def pool_capacity(
    endpoint_speeds: Sequence[float],
    slots: int,
    request_mix: RequestMix | Sequence[RequestShape],
    model: CapacityModel | None = None,
) -> float:
    """Theoretical requests/second of a pool serving ``request_mix`` with every batch kept full.

    Each endpoint runs ``c`` sequences at once (``slots``, or fewer if the KV budget binds) and each
    request holds its slot for ``service_s(mean request, running=c)``; the pool's rate is the sum of
    ``c / service_s`` over endpoints. The base model's ``speed`` is replaced by each endpoint's.

    >>> m = CapacityModel(time_scale=1.0)
    >>> one = pool_capacity([1.0], 64, [RequestShape(4000, 500)], m)
    >>> abs(pool_capacity([1.0, 1.0], 64, [RequestShape(4000, 500)], m) - 2 * one) < 1e-9
    True
    """
    base = (model or CapacityModel()).model_copy(update={"slots": slots})
    mix = request_mix if isinstance(request_mix, RequestMix) else RequestMix.of(request_mix)
    if mix.requests == 0:
        return 0.0
    mean = mix.mean_shape()
    concurrency = effective_concurrency(base, mean.prompt_tokens + mean.completion_tokens)
    total = 0.0
    for speed in endpoint_speeds:
        service = base.mean_service_s(mean, running=concurrency, speed=speed)
        total += concurrency / service if service > 0 else float("inf")
    return total


@dataclass
class Ticket:
    """A request admitted to a slot; give it back with :meth:`SlotScheduler.release`."""

    kv_tokens: int
    running_at_admit: int
    started: float  # scheduler clock


class SlotScheduler:
    """Continuous-batching admission for one endpoint: slots, KV budget, FIFO queue, prefix cache.

    Counts ``running``, ``waiting``, ``busy_slot_seconds`` (slot time actually held, by the scheduler's
    clock), ``admitted`` and the wall-clock ``first_start`` / ``last_start`` of admitted requests. Over the
    steady window (first to last admission, scheduler clock) it integrates running and running + waiting,
    so the busy-slot fraction and mean load of that window are exact (``steady_*`` attributes); the drain
    after the last admission, when the client has nothing left to send, is not part of it.
    ``clock`` and ``wall`` are injectable so the accounting can be tested without sleeping.

    It also logs every change of ``(running, waiting)`` with the scheduler clock (:meth:`change_log`):
    with the default ``time.monotonic`` (CLOCK_MONOTONIC, one clock for every process of a Linux machine)
    the logs of several simulator processes merge into one pool-wide timeline, from which the bench
    computes "queued here while another endpoint had a free slot" (:mod:`mira_spark.devtools.bench.pool_view`).
    A release that hands its slot straight to the head of the queue is logged once, after the hand-over.
    """

    def __init__(
        self,
        model: CapacityModel,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.model = model
        self._clock = clock
        self._wall = wall
        self._queue: deque[tuple[int, asyncio.Future[Ticket]]] = deque()
        self._prefixes: OrderedDict[str, int] = OrderedDict()
        self.running = 0
        self.kv_used = 0
        self.reset()

    def reset(self) -> None:
        """Clear counters (running requests keep their slots; their release is still counted)."""
        self.busy_slot_seconds = 0.0
        self.admitted = 0
        self.first_start: float | None = None
        self.last_start: float | None = None
        self.mix = RequestMix()
        self._prefixes.clear()
        self.model.reseed()
        self._tick_at = self._clock()
        self._running_area = 0.0  # integral of running over time since reset
        self._load_area = 0.0  # integral of running + waiting
        self._first_clock: float | None = None
        self._areas_at_first = (0.0, 0.0)
        self.steady_window_s = 0.0
        self.steady_busy_slot_seconds = 0.0
        self.steady_load_seconds = 0.0
        self.first_start_clock: float | None = None
        self.last_start_clock: float | None = None
        self._log_t = array("d")
        self._log_running = array("i")
        self._log_waiting = array("i")
        self.change_log_truncated = False
        self._log()

    def _log(self) -> None:
        """Record ``(last tick, running, waiting)`` if it differs from the last point logged."""
        running, waiting = self.running, len(self._queue)
        if self._log_t and self._log_running[-1] == running and self._log_waiting[-1] == waiting:
            return
        if len(self._log_t) >= CHANGE_LOG_MAX_POINTS:
            self.change_log_truncated = True
            return
        self._log_t.append(self._tick_at)
        self._log_running.append(running)
        self._log_waiting.append(waiting)

    def change_log(self) -> dict[str, Any]:
        """Change points since the last reset, columnar: ``{"t", "running", "waiting", "truncated"}``.

        ``t`` is the scheduler clock; the state holds from each point until the next one.
        """
        return {"t": self._log_t.tolist(), "running": self._log_running.tolist(),
                "waiting": self._log_waiting.tolist(), "truncated": self.change_log_truncated}

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def cached_prefix_tokens(self, prefix_key: str, prefix_tokens: int) -> int:
        """Tokens of the prompt already in the prefix cache (0 on a miss; the prefix is cached afterwards)."""
        if self.model.prefix_cache_entries == 0:
            return 0
        if prefix_key in self._prefixes:
            self._prefixes.move_to_end(prefix_key)
            return min(self._prefixes[prefix_key], prefix_tokens)
        self._prefixes[prefix_key] = prefix_tokens
        while len(self._prefixes) > self.model.prefix_cache_entries:
            self._prefixes.popitem(last=False)
        return 0

    def _tick(self) -> None:
        """Advance the running / load integrals to now (call before ``running`` or the queue changes)."""
        now = self._clock()
        dt = now - self._tick_at
        if dt > 0:
            self._running_area += self.running * dt
            self._load_area += (self.running + len(self._queue)) * dt
        self._tick_at = now

    def _fits(self, kv_tokens: int) -> bool:
        if self.running >= self.model.slots:
            return False
        if self.model.fifo:
            return True
        # A request bigger than the whole budget runs alone rather than never.
        return self.running == 0 or self.kv_used + kv_tokens <= self.model.kv_tokens

    def _admit(self, kv_tokens: int) -> Ticket:
        self._tick()
        if self._first_clock is None:
            self._first_clock = self._tick_at
            self._areas_at_first = (self._running_area, self._load_area)
            self.first_start_clock = self._tick_at
        self.last_start_clock = self._tick_at
        self.steady_window_s = self._tick_at - self._first_clock
        self.steady_busy_slot_seconds = self._running_area - self._areas_at_first[0]
        self.steady_load_seconds = self._load_area - self._areas_at_first[1]
        self.running += 1
        self.kv_used += kv_tokens
        self.admitted += 1
        now_wall = self._wall()
        if self.first_start is None:
            self.first_start = now_wall
        self.last_start = now_wall
        return Ticket(kv_tokens=kv_tokens, running_at_admit=self.running, started=self._clock())

    def try_admit(self, kv_tokens: int) -> Ticket | None:
        """Admit now if nobody waits ahead and a slot and KV room are free; else None."""
        if self._queue or not self._fits(kv_tokens):
            return None
        ticket = self._admit(kv_tokens)
        self._log()
        return ticket

    async def acquire(self, kv_tokens: int) -> Ticket:
        """Wait (FIFO) for a slot and KV room; cancellation leaves the queue consistent."""
        ticket = self.try_admit(kv_tokens)
        if ticket is not None:
            return ticket
        future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        entry = (kv_tokens, future)
        self._tick()
        self._queue.append(entry)
        self._log()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(future.result(), shape=None)
            elif entry in self._queue:
                self._tick()
                self._queue.remove(entry)
                self._wake()
                self._log()
            raise

    def release(self, ticket: Ticket, shape: RequestShape | None) -> None:
        """Free the slot, count the slot time held and (if served) the request's shape; wake waiters."""
        self._tick()
        self.running -= 1
        self.kv_used -= ticket.kv_tokens
        self.busy_slot_seconds += self._clock() - ticket.started
        if shape is not None:
            self.mix = self.mix + RequestMix.of([shape])
        self._wake()
        self._log()

    def _wake(self) -> None:
        while self._queue and self._fits(self._queue[0][0]):
            kv_tokens, future = self._queue.popleft()
            if future.cancelled():
                continue
            future.set_result(self._admit(kv_tokens))
