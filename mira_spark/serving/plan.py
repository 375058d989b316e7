"""The one in-flight planner: how many requests each task sharing a pool keeps in flight, and where.

Takes a :class:`~mira_spark.config.PoolConfig` and the number of tasks that score against it at the
same time; gives each task's share of the pool, its headroom (requests it may queue at one endpoint
beyond its share of the slots, to cover the round trip between a sequence finishing and the next
request arriving) and its requests in flight: enough to fill its share of every endpoint plus a
surplus that waits in the task with prompts built, so a slot that any endpoint frees is refilled at
once. Pure arithmetic, used by the runner, the scoring stage, the pipeline's task planner, the
benchmarks and the routing bench alike.
"""

from __future__ import annotations

import math

from mira_spark.config import PoolConfig

# In flight = slots x endpoints x this (at least): the part beyond the slots waits in the job.
IN_FLIGHT_HEADROOM = 1.1
# Requests the whole job may queue at one endpoint beyond its slots, as a fraction of the slots.
QUEUE_HEADROOM_FRACTION = 0.02


def _ceil(x: float) -> int:
    return math.ceil(round(x, 6))


def default_in_flight(pool: PoolConfig) -> int:
    """Requests to keep in flight across the whole pool: ``in_flight_target``, else slots x endpoints x
    ``IN_FLIGHT_HEADROOM``.

    >>> from mira_spark.config import EndpointConfig
    >>> default_in_flight(PoolConfig(endpoints=(EndpointConfig(url="http://a/v1"),) * 4, slots_per_endpoint=256))
    1127
    """
    if pool.in_flight_target is not None:
        return pool.in_flight_target
    return max(1, _ceil(pool.slots_per_endpoint * len(pool.endpoints) * IN_FLIGHT_HEADROOM))


def task_share(concurrent_tasks: int) -> float:
    """Fraction of each endpoint one of ``concurrent_tasks`` tasks plans to fill."""
    return 1.0 / max(concurrent_tasks, 1)


def job_headroom(slots: int) -> int:
    """Requests the job may queue at one endpoint beyond its slots.

    >>> job_headroom(16), job_headroom(64), job_headroom(256)
    (1, 2, 6)
    """
    return max(1, _ceil(QUEUE_HEADROOM_FRACTION * slots))


def task_headroom(slots: int, share: float) -> int:
    """This task's part of :func:`job_headroom` (rounded down: T tasks never queue more than the job's).

    >>> task_headroom(64, 1.0), task_headroom(64, 0.5), task_headroom(64, 0.25)
    (2, 1, 0)
    """
    return math.floor(round(job_headroom(slots) * share, 6))


def plan_in_flight(pool: PoolConfig, concurrent_tasks: int) -> int:
    """Requests each of ``concurrent_tasks`` tasks keeps in flight: the pool's target split evenly, and
    never fewer than the task's room on every endpoint plus one waiting request per endpoint (so its
    routing is bounded by room, never by having too few requests to place).

    >>> from mira_spark.config import EndpointConfig
    >>> pool = PoolConfig(endpoints=(EndpointConfig(url="http://a/v1"),) * 4, slots_per_endpoint=256)
    >>> plan_in_flight(pool, 1), plan_in_flight(pool, 2)
    (1127, 564)
    >>> plan_in_flight(pool.model_copy(update={"slots_per_endpoint": 16}), 4)
    20
    """
    split = max(1, _ceil(default_in_flight(pool) / max(concurrent_tasks, 1)))
    if pool.in_flight_target is not None:
        return split  # the user's explicit total wins
    share = task_share(concurrent_tasks)
    room = _ceil(pool.slots_per_endpoint * share) + task_headroom(pool.slots_per_endpoint, share)
    return max(split, len(pool.endpoints) * (room + 1))


def pool_share(pool: PoolConfig, in_flight: int) -> float:
    """Share of the pool implied by ``in_flight`` alone (for callers that do not say how many tasks
    share it): its part of the pool's target, at most 1.

    >>> from mira_spark.config import EndpointConfig
    >>> p = PoolConfig(endpoints=(EndpointConfig(url="http://a/v1"),) * 4, slots_per_endpoint=64)
    >>> pool_share(p, plan_in_flight(p, 1)), round(pool_share(p, plan_in_flight(p, 2)), 3)
    (1.0, 0.5)
    """
    return min(1.0, in_flight / default_in_flight(pool))
