"""The request runner: score a batch of chat requests against an endpoint pool, exactly once each.

Takes a list of :class:`~mira_spark.serving.types.ScoreRequest` and one :class:`RunnerOptions` (the
pool, sampling, model, requests in flight, hooks, ...); gives one
:class:`~mira_spark.serving.types.ScoreResult` per request, in input order. A failed request is a
result with ``status="failed"`` and an error code; when the whole pool stays down past a grace period,
unfinished rows come back ``"deferred"`` (to be retried by the next run). Only "no endpoint answers at
start" raises (:class:`~mira_spark.errors.PoolUnavailableError`).

One call wires three parts on one asyncio loop: :class:`~mira_spark.serving.health.PoolHealth`
(start-up check, probes, ``/metrics``), :class:`~mira_spark.serving.transport.Transport` (routing,
retries, failover, breaker; surplus requests wait in the job for room) and
:class:`~mira_spark.serving.policy.RowPolicy` (shrink, check, repair). ``in_flight`` worker coroutines
share one iterator over the requests: each takes the next request the moment it finishes one, so a
slow request never holds back a chunk. :func:`run_requests` is safe to call from any thread (Sail runs
partitions as threads of one process).

Example::

    opts = RunnerOptions(pool=pool_cfg, sampling=sampling_cfg, model="m", in_flight=256,
                         api_key=resolve_api_key(pool_cfg), hooks=RowHooks(check_output=check))
    results = run_requests(requests, opts)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from mira_spark.config import PoolConfig, SamplingConfig
from mira_spark.errors import PoolUnavailableError
from mira_spark.serving import client as client_mod
from mira_spark.serving.endpoints import EndpointPool
from mira_spark.serving.health import PoolHealth
from mira_spark.serving.plan import pool_share
from mira_spark.serving.policy import RowHooks, RowPolicy
from mira_spark.serving.secrets import install_redaction, register_secret
from mira_spark.serving.transport import Room, Transport, detail
from mira_spark.serving.types import ERR_POOL_UNAVAILABLE, RunStats, ScoreRequest, ScoreResult

logger = logging.getLogger(__name__)
install_redaction(logger)

__all__ = ["PoolUnavailableError", "RowHooks", "RunnerOptions", "arun_requests", "run_requests"]

# Rows are deferred once every endpoint has been down this long: long enough to ride out a restart of
# one replica's neighbours, short enough that a dead pool does not pin a Spark task for minutes.
POOL_DOWN_GRACE_MIN_S = 30.0
POOL_DOWN_GRACE_PROBES = 3  # ... or this many probe intervals, whichever is longer
PROBE_CONNECTIONS_PER_ENDPOINT = 2  # one /health and one /metrics at a time

SessionFactory = Callable[[], aiohttp.ClientSession]


@dataclass(frozen=True)
class RunnerOptions:
    """Everything one runner call needs besides its requests.

    Parameters
    ----------
    pool, sampling : endpoint pool (timeouts, retries, breaker, polling) and sampling parameters.
    model : model name sent in each request.
    in_flight : requests kept outstanding (:func:`~mira_spark.serving.plan.plan_in_flight`).
    api_key : sent as ``Authorization: Bearer``; resolve it on the driver with
        :func:`~mira_spark.serving.secrets.resolve_api_key`. Never logged, never in ``repr``.
    hooks : check / shrink / prepare / merge (:class:`~mira_spark.serving.policy.RowHooks`).
    max_output_repairs : re-asks / follow-ups per row for outputs ``check_output`` rejects.
    share : fraction of each endpoint this call plans to fill (1/T for one of T tasks sharing the pool;
        :func:`~mira_spark.serving.plan.task_share`); default: implied by ``in_flight``.
    session_factory : ``() -> aiohttp.ClientSession``, called inside the loop, twice: one session for
        requests, one for /health and /metrics (tests inject their own).
    seed : seeds the retry-jitter RNG (the server's sampling seed is ``sampling.seed``).
    pool_down_grace_s : defer unfinished rows once every endpoint has been down this long
        (default ``max(30 s, 3 x breaker_probe_s)``).
    clock : monotonic seconds; the loop's own clock in the virtual-time routing bench.
    """

    pool: PoolConfig
    sampling: SamplingConfig
    model: str
    in_flight: int
    api_key: str | None = field(default=None, repr=False)
    hooks: RowHooks = field(default_factory=RowHooks)
    max_output_repairs: int = 2
    share: float | None = None
    session_factory: SessionFactory | None = None
    seed: int | None = None
    pool_down_grace_s: float | None = None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, got {self.in_flight}")

    def grace_s(self) -> float:
        if self.pool_down_grace_s is not None:
            return self.pool_down_grace_s
        return max(POOL_DOWN_GRACE_MIN_S, POOL_DOWN_GRACE_PROBES * self.pool.breaker_probe_s)


def _deferred(request: ScoreRequest, reason: str) -> ScoreResult:
    return ScoreResult(index=request.index, status="deferred", error=detail(ERR_POOL_UNAVAILABLE, reason))


def _count(stats: RunStats, results: Sequence[ScoreResult]) -> None:
    for res in results:
        stats.wasted_requests += res.wasted_requests
        stats.prompt_tokens += res.prompt_tokens or 0
        stats.completion_tokens += res.completion_tokens or 0
        if res.status != "ok" and res.error:
            reason = res.error.split(":", 1)[0]
            stats.failed_by_reason[reason] = stats.failed_by_reason.get(reason, 0) + 1


def _sessions(opts: RunnerOptions, workers: int) -> tuple[SessionFactory, SessionFactory]:
    if opts.session_factory is not None:
        return opts.session_factory, opts.session_factory
    pool = opts.pool
    return (lambda: client_mod.session_factory(pool, workers),
            lambda: client_mod.session_factory(pool, PROBE_CONNECTIONS_PER_ENDPOINT * len(pool.endpoints)))


async def arun_requests(requests: list[ScoreRequest], opts: RunnerOptions,
                        stats: RunStats | None = None) -> list[ScoreResult]:
    """Async core of :func:`run_requests`; see there."""
    positions = {req.index: pos for pos, req in enumerate(requests)}
    if len(positions) != len(requests):
        raise ValueError("ScoreRequest.index values must be unique within one call")
    if not requests:
        return []
    register_secret(opts.api_key)  # executors are separate processes: register here too
    stats = stats if stats is not None else RunStats()
    workers = min(opts.in_flight, len(requests))
    make_session, make_probe_session = _sessions(opts, workers)
    results: list[ScoreResult | None] = [None] * len(requests)
    share = pool_share(opts.pool, opts.in_flight) if opts.share is None else opts.share

    async with make_session() as session, make_probe_session() as probe_session:
        pool = EndpointPool.from_config(opts.pool, share=share, clock=opts.clock)
        room = Room()
        health = PoolHealth(pool=pool, cfg=opts.pool, probe_session=probe_session, room=room,
                            grace_s=opts.grace_s(), clock=opts.clock)
        transport = Transport(pool=pool, cfg=opts.pool, sampling=opts.sampling, model=opts.model,
                              api_key=opts.api_key, session=session, room=room, stopped=lambda: health.stopped,
                              check_pool_down=health.check_pool_down, stats=stats,
                              rng=random.Random(opts.seed), clock=opts.clock, on_send=opts.hooks.on_send)
        policy = RowPolicy(transport=transport, hooks=opts.hooks, max_output_repairs=opts.max_output_repairs,
                           stats=stats, clock=opts.clock)
        if opts.pool.startup_check:
            await health.startup_check()
        next_request = iter(requests)  # shared: a free worker takes the next request at once

        async def worker() -> None:
            for req in next_request:
                if health.stopped is not None:
                    results[positions[req.index]] = _deferred(req, health.stopped)
                else:
                    results[positions[req.index]] = await policy.score(req)
                    if opts.hooks.on_result is not None:
                        opts.hooks.on_result(results[positions[req.index]])

        monitor = asyncio.create_task(health.monitor())
        try:
            await asyncio.gather(*(worker() for _ in range(workers)))
        finally:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)

    missing = [requests[i].index for i, r in enumerate(results) if r is None]
    assert not missing, f"runner lost {len(missing)} rows (first indices {missing[:5]})"
    final = [r for r in results if r is not None]
    assert all(r.index == q.index for r, q in zip(final, requests, strict=True)), "results out of order"
    _count(stats, final)
    logger.info(
        "scored %d requests: %d ok, %d failed, %d deferred; %d sent, %d retries, %d repairs",
        len(final), sum(r.status == "ok" for r in final), sum(r.status == "failed" for r in final),
        sum(r.status == "deferred" for r in final), stats.requests_sent, stats.retries, stats.repairs,
    )
    return final


def run_requests(requests: list[ScoreRequest], opts: RunnerOptions,
                 stats: RunStats | None = None) -> list[ScoreResult]:
    """Send every request and return exactly one result per request, in input order.

    ``requests`` : one partition's requests; ``index`` must be unique and re-aligns results.
    ``opts`` : see :class:`RunnerOptions`. ``stats`` : counts are added to this object.

    Raises :class:`~mira_spark.errors.PoolUnavailableError` when ``pool.startup_check`` is on and no
    endpoint answers ``/health``. Works from any thread; when the calling thread already runs an event
    loop (a notebook), the runner gets its own loop in a helper thread.
    """
    coro = arun_requests(requests, opts, stats)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, coro).result()
