"""Pool health: start-up check, ``/health`` probes of open endpoints, ``/metrics`` scrapes, pool-down.

Takes the endpoint pool (:mod:`mira_spark.serving.endpoints`), a session for probes (its own
connections: with every request connection busy, a scrape queued behind the workers would starve) and
the waiting room of the transport; gives :meth:`PoolHealth.monitor` (the background coroutine of one
runner call), :meth:`PoolHealth.startup_check`, and :attr:`PoolHealth.stopped`, set once every endpoint
has been down past the grace period (unfinished rows are then deferred to the next run). Also the
driver-side preflight :func:`check_pool_reachable`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from mira_spark.config import PoolConfig
from mira_spark.errors import PoolUnavailableError
from mira_spark.serving.client import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    get_status,
    session_factory,
)
from mira_spark.serving.endpoints import BreakerState, EndpointPool, EndpointState
from mira_spark.serving.metrics import parse_server_load
from mira_spark.serving.secrets import install_redaction
from mira_spark.serving.transport import WAIT_POLL_MIN_S, Room

logger = logging.getLogger(__name__)
install_redaction(logger)

# Seconds after the start of a call when /metrics is first read (at most one poll interval): once
# every task has placed its first requests (a scrape at the very start would show siblings' slots as
# free), well before the first full interval.
FIRST_SCRAPE_AFTER_S = 1.0


@dataclass(eq=False)
class PoolHealth:
    """Watches one pool for one runner call; single-threaded (the call's event loop)."""

    pool: EndpointPool
    cfg: PoolConfig
    probe_session: aiohttp.ClientSession
    room: Room
    grace_s: float
    clock: Callable[[], float]
    stopped: str | None = None  # set once the pool has been down past the grace period

    def check_pool_down(self) -> bool:
        """True (and :attr:`stopped` set) once every endpoint has been down for the grace period."""
        if self.stopped is None and self.pool.is_down() and self.pool.down_for() >= self.grace_s:
            urls = ", ".join(ep.url for ep in self.pool.endpoints)
            self.stopped = f"every endpoint down for over {self.grace_s:g}s ({urls})"
            logger.error("pool unavailable: %s; deferring unfinished requests to the next run", self.stopped)
        return self.stopped is not None

    async def startup_check(self) -> None:
        """Mark endpoints that fail ``/health`` as down; raise when none answers."""
        urls = [ep.url for ep in self.pool.endpoints]
        problems = await health_problems(self.probe_session, urls)
        for ep, problem in zip(self.pool.endpoints, problems, strict=True):
            if problem is not None:
                logger.warning("endpoint %s failed its startup health check: %s", ep.url, problem)
                self.pool.mark_health(ep, healthy=False)
        raise_if_none_healthy(urls, problems)

    async def probe_health(self, ep: EndpointState) -> None:
        try:
            status, _ = await get_status(self.probe_session, ep.base_url + "/health")
            self.pool.mark_health(ep, healthy=status == 200)
        except APIError:
            self.pool.mark_health(ep, healthy=False)
        self.room.wake_all()  # a probe may be allowed now

    async def scrape(self, ep: EndpointState) -> None:
        own_before = ep.outstanding
        try:
            status, text = await get_status(self.probe_session, ep.base_url + "/metrics")
        except APIConnectionError:
            self.pool.mark_health(ep, healthy=False)  # refused/reset: the server process is gone
            return
        except APITimeoutError:
            return  # a busy server answering slowly is not a dead one
        if status == 200:
            # The server counted our requests somewhere inside the round trip: average both ends.
            self.pool.set_load(ep, parse_server_load(text), own=(own_before + ep.outstanding) / 2)
            self.room.wake(self.pool.spare())

    async def monitor(self) -> None:
        """Scrape /metrics of live endpoints and /health of open ones until cancelled."""
        poll = self.cfg.metrics_poll_s
        tick = min(p for p in (poll, self.cfg.breaker_probe_s) if p > 0)
        last_scrape = self.clock() - max(0.0, poll - FIRST_SCRAPE_AFTER_S)
        while True:
            jobs = [self.probe_health(ep) for ep in self.pool.endpoints if ep.state is BreakerState.OPEN]
            now = self.clock()
            if poll > 0 and now - last_scrape >= poll:
                last_scrape = now
                jobs += [self.scrape(ep) for ep in self.pool.endpoints if ep.state is BreakerState.CLOSED]
            if jobs:
                await asyncio.gather(*jobs)
            self.check_pool_down()
            sleep = tick
            if poll > 0:  # wake for the next scrape on time, not a tick late
                sleep = min(tick, max(WAIT_POLL_MIN_S, last_scrape + poll - self.clock()))
            await asyncio.sleep(sleep)


async def health_problems(session: aiohttp.ClientSession, urls: Sequence[str]) -> list[str | None]:
    """GET ``/health`` of every endpoint (base URL without ``/v1``): None when healthy, else why not."""

    async def one(url: str) -> str | None:
        try:
            status, _ = await get_status(session, url.removesuffix("/v1") + "/health")
        except APIError as exc:
            return str(exc)
        return None if status == 200 else f"HTTP {status}"

    return list(await asyncio.gather(*(one(u) for u in urls)))


def raise_if_none_healthy(urls: Sequence[str], problems: Sequence[str | None]) -> None:
    if any(p is None for p in problems):
        return
    listing = "; ".join(f"{u} ({p})" for u, p in zip(urls, problems, strict=True))
    raise PoolUnavailableError(
        f"no endpoint answered GET /health: {listing}. Start the vLLM servers (or wait until they have "
        "loaded the model), or fix the endpoint urls in conf/scorers.yaml. Nothing was sent."
    )


def check_pool_reachable(pool: PoolConfig) -> list[str]:
    """Driver-side preflight: GET /health on every endpoint; returns the healthy URLs.

    Raises :class:`~mira_spark.errors.PoolUnavailableError` (nothing sent) when none answers, so a run
    with a wrong URL or servers still loading fails in seconds with a message, not inside a Spark task.
    """
    urls = [e.url for e in pool.endpoints]

    async def probe() -> list[str | None]:
        async with session_factory(pool, 0) as session:
            return await health_problems(session, urls)

    problems = asyncio.run(probe())
    raise_if_none_healthy(urls, problems)
    return [u for u, p in zip(urls, problems, strict=True) if p is None]
