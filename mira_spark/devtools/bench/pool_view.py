"""Pool-wide view of a run from the simulators' change-point logs: busy slots, queues, queued-while-idle.

Takes one change-point series per endpoint (``/sim/stats?changes=1``: times of the scheduler clock and
the ``(running, waiting)`` that holds from each time until the next) and a window; gives, per endpoint
and for the pool, exact time integrals over that window:

* ``busy`` — mean running ÷ slots (the endpoint's busy-slot fraction);
* ``queued`` — mean requests waiting in that endpoint's queue;
* ``queued_while_idle`` — mean requests waiting in that endpoint's queue *while another endpoint of the
  pool had a free slot*: the time integral of ``waiting_i(t) × [∃ j ≠ i: running_j(t) < slots_j]``
  divided by the window. A router that never leaves work queued behind a full server while another has
  room scores 0.

Why change-point logs and not polling: every simulator process stamps its changes with
``time.monotonic()`` — CLOCK_MONOTONIC, one clock for all processes of a Linux machine — so the logs
merge into one timeline and the integrals are exact (a poll of ``/metrics`` at any rate misses changes
between polls, and with 2-second service times a 256-slot pool changes state every few milliseconds).
The merge is a sweep over the union of change times; between two consecutive times every endpoint's
state is constant. Before its first point an endpoint counts as empty. Pure logic: no I/O.

>>> a = ChangeSeries(slots=1, t=[0.0, 1.0], running=[1, 1], waiting=[0, 1])
>>> b = ChangeSeries(slots=1, t=[0.0, 3.0], running=[0, 1], waiting=[0, 0])
>>> view = pool_view([a, b], 0.0, 4.0)
>>> view.endpoints[0].queued_while_idle  # 1 waiting at a from t=1 to 4, b had a free slot until t=3
0.5
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChangeSeries:
    """One endpoint's ``(running, waiting)`` change points, in time order."""

    slots: int
    t: Sequence[float]
    running: Sequence[int]
    waiting: Sequence[int]

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> ChangeSeries:
        """From one endpoint's ``/sim/stats?changes=1`` answer."""
        changes = stats["changes"]
        return cls(slots=int(stats["slots"]), t=changes["t"], running=changes["running"], waiting=changes["waiting"])


@dataclass(frozen=True)
class EndpointView:
    busy: float  # mean running / slots over the window
    mean_running: float
    queued: float  # mean waiting
    queued_while_idle: float  # mean waiting while another endpoint had a free slot


@dataclass(frozen=True)
class PoolView:
    window_s: float
    endpoints: tuple[EndpointView, ...]

    @property
    def queued(self) -> float:
        """Mean requests waiting at the servers (all queues)."""
        return sum(e.queued for e in self.endpoints)

    @property
    def queued_while_idle(self) -> float:
        """Mean requests waiting at some server while another server had a free slot."""
        return sum(e.queued_while_idle for e in self.endpoints)

    @property
    def mean_running(self) -> float:
        return sum(e.mean_running for e in self.endpoints)

    def utilization(self, speeds: Sequence[float], slots: int) -> float:
        """Speed-weighted busy-slot fraction of the pool over the window."""
        weight = sum(speeds) * slots
        return sum(sp * e.mean_running for sp, e in zip(speeds, self.endpoints, strict=True)) / weight


def pool_view(series: Sequence[ChangeSeries], start: float, end: float) -> PoolView:
    """Exact means over ``[start, end]`` of the merged change points (see the module docstring)."""
    k = len(series)
    window = end - start
    if k == 0 or window <= 0:
        return PoolView(max(window, 0.0), tuple(EndpointView(0.0, 0.0, 0.0, 0.0) for _ in series))
    running = [0] * k
    waiting = [0] * k
    run_area = [0.0] * k
    wait_area = [0.0] * k
    idle_area = [0.0] * k
    events = heapq.merge(*[_points(i, s) for i, s in enumerate(series)])
    at = start

    def advance(to: float) -> None:
        nonlocal at
        to = min(to, end)
        dt = to - at
        if dt <= 0:
            return
        free = [running[i] < series[i].slots for i in range(k)]
        n_free = sum(free)
        for i in range(k):
            run_area[i] += running[i] * dt
            wait_area[i] += waiting[i] * dt
            if waiting[i] and n_free - free[i] > 0:
                idle_area[i] += waiting[i] * dt
        at = to

    for t, i, r, w in events:
        if t >= end:
            break
        advance(t)
        running[i], waiting[i] = r, w
    advance(end)
    return PoolView(window, tuple(
        EndpointView(busy=run_area[i] / window / series[i].slots, mean_running=run_area[i] / window,
                     queued=wait_area[i] / window, queued_while_idle=idle_area[i] / window)
        for i in range(k)))


def _points(index: int, s: ChangeSeries) -> Iterator[tuple[float, int, int, int]]:
    for t, r, w in zip(s.t, s.running, s.waiting, strict=True):
        yield t, index, r, w


def steady_window(stats: Sequence[Mapping[str, Any]]) -> tuple[float, float] | None:
    """The pool's steady window on the scheduler clock: first to last admission over all endpoints."""
    starts = [s["first_start_clock"] for s in stats if s.get("first_start_clock") is not None]
    ends = [s["last_start_clock"] for s in stats if s.get("last_start_clock") is not None]
    if not starts:
        return None
    return min(starts), max(ends)
