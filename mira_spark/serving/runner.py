"""The request runner: score a batch of chat requests against an endpoint pool, exactly once each.

Takes a list of :class:`~mira_spark.serving.types.ScoreRequest`, a :class:`~mira_spark.config.PoolConfig`
and :class:`~mira_spark.config.SamplingConfig`; gives one :class:`~mira_spark.serving.types.ScoreResult`
per request, in input order. A failed request is a result with ``status="failed"`` and an error code;
when the whole pool stays down past a grace period, unfinished rows come back ``"deferred"`` (to be
retried by the next run). Only "no endpoint answers at start" raises (:class:`PoolUnavailableError`).

``in_flight`` worker coroutines share one iterator over the requests: each takes the next request the
moment it finishes one, so the pool sees a constant ``in_flight`` outstanding requests and a slow
request never holds back a chunk. One asyncio loop per call; :func:`run_requests` is safe to call from
any thread (Sail runs partitions as threads of one process).

Example::

    results = run_requests(requests, pool=pool_cfg, sampling=sampling_cfg, model="m", in_flight=256,
                           api_key=resolve_api_key(pool_cfg), check_output=check)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from mira_spark.config import PoolConfig, SamplingConfig
from mira_spark.serving import client as client_mod
from mira_spark.serving.client import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    ChatResponse,
    build_headers,
    get_status,
    post_chat,
    session_factory,
)
from mira_spark.serving.endpoints import BreakerState, EndpointPool, EndpointState, Outcome
from mira_spark.serving.metrics import parse_server_load
from mira_spark.serving.plan import pool_share
from mira_spark.serving.retry import is_context_overflow, is_retryable_status, retry_delay
from mira_spark.serving.secrets import install_redaction, redact, register_secret
from mira_spark.serving.types import (
    ERR_CONNECTION,
    ERR_CONTEXT_OVERFLOW,
    ERR_HTTP,
    ERR_OUTPUT_INVALID,
    ERR_POOL_UNAVAILABLE,
    ERR_TIMEOUT,
    CheckOutput,
    MergeOutputs,
    OutputVerdict,
    PrepareRequest,
    RunStats,
    ScoreRequest,
    ScoreResult,
    ShrinkRequest,
)

logger = logging.getLogger(__name__)
install_redaction(logger)

# Rows are deferred once every endpoint has been down this long: long enough to ride out a restart of
# one replica's neighbours, short enough that a dead pool does not pin a Spark task for minutes.
POOL_DOWN_GRACE_MIN_S = 30.0
POOL_DOWN_GRACE_PROBES = 3  # ... or this many probe intervals, whichever is longer
# A worker waiting for an open pool re-checks at least this often (probe times move with /health).
WAIT_POLL_MAX_S = 0.25
WAIT_POLL_MIN_S = 0.005
# A worker waiting for room (every endpoint at this client's capacity) is woken by a release, a
# scrape or a health change; this is only the backstop re-check.
CAPACITY_RECHECK_S = 5.0
# Seconds after the start of a call when /metrics is first read (at most one poll interval).
FIRST_SCRAPE_AFTER_S = 1.0
ERROR_DETAIL_CHARS = 200
PROBE_CONNECTIONS_PER_ENDPOINT = 2  # one /health and one /metrics at a time

SessionFactory = Callable[[], aiohttp.ClientSession]


class PoolUnavailableError(RuntimeError):
    """No endpoint of the pool answered at start; nothing was sent."""


@dataclass
class _Final:
    """Terminal outcome of one send (after transport retries)."""

    error: str
    deferred: bool = False
    overflow: bool = False


def _detail(code: str, detail: str) -> str:
    detail = redact(" ".join(detail.split()))[:ERROR_DETAIL_CHARS]
    return f"{code}: {detail}" if detail else code


def default_pool_down_grace(pool: PoolConfig) -> float:
    return max(POOL_DOWN_GRACE_MIN_S, POOL_DOWN_GRACE_PROBES * pool.breaker_probe_s)


class _Runner:
    def __init__(
        self,
        *,
        pool_cfg: PoolConfig,
        sampling: SamplingConfig,
        model: str,
        api_key: str | None,
        check_output: CheckOutput | None,
        shrink: ShrinkRequest | None,
        prepare: PrepareRequest | None,
        merge: MergeOutputs | None,
        max_output_repairs: int,
        session: aiohttp.ClientSession,
        probe_session: aiohttp.ClientSession,
        stats: RunStats,
        rng: random.Random,
        grace_s: float,
        clock: Callable[[], float],
        share: float = 1.0,
    ) -> None:
        self.cfg = pool_cfg
        self.sampling = sampling
        self.model = model
        self.api_key = api_key
        self.check_output = check_output
        self.shrink = shrink
        self.prepare = prepare
        self.merge = merge
        self.max_output_repairs = max_output_repairs
        self.session = session
        # /health and /metrics get their own connections: with every request connection busy, a
        # scrape queued behind the workers would starve (or, unqueued, steal an in-flight slot).
        self.probe_session = probe_session
        self.stats = stats
        self.rng = rng
        self.grace_s = grace_s
        self.clock = clock
        self.pool = EndpointPool.from_config(pool_cfg, share=share, clock=clock)
        self.stopped: str | None = None  # set once the pool has been down past the grace period
        self.in_flight = 0
        self._first_send: dict[int, float] = {}  # request index -> time of its first POST
        self._waiters: deque[asyncio.Future[None]] = deque()  # workers waiting for room, oldest first

    # ---- waiting for room ----------------------------------------------------------------------

    def _wake(self, n: int = 1) -> None:
        """Let up to ``n`` workers waiting for room try again."""
        while n > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1

    async def _wait_for_room(self) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        backstop = loop.call_later(CAPACITY_RECHECK_S, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            backstop.cancel()

    async def _acquire(self) -> EndpointState | None:
        """An endpoint reserved for one request; None once the run has stopped (pool down).

        Surplus requests wait here, in the job, until some endpoint has room: never in a server's
        queue while another server has a free slot.
        """
        while True:
            if self.stopped is not None:
                return None
            ep = self.pool.pick()
            if ep is not None:
                return ep
            if self._check_pool_down():
                continue
            if self.pool.has_usable():
                await self._wait_for_room()
                continue
            probe_at = self.pool.next_probe_time()
            wait = WAIT_POLL_MAX_S if probe_at is None else probe_at - self.clock()
            await asyncio.sleep(min(WAIT_POLL_MAX_S, max(WAIT_POLL_MIN_S, wait)))

    # ---- pool health ---------------------------------------------------------------------------

    def _release(self, ep: EndpointState, outcome: Outcome, service_s: float | None = None) -> None:
        before = ep.state
        self.pool.release(ep, outcome, service_s)
        self._wake()
        if ep.state is not before:
            level = logging.WARNING if ep.state is BreakerState.OPEN else logging.INFO
            logger.log(
                level,
                "endpoint %s: circuit %s -> %s (%d consecutive failures)",
                ep.url,
                before.value,
                ep.state.value,
                ep.consecutive_failures,
            )

    def _check_pool_down(self) -> bool:
        if self.stopped is None and self.pool.is_down() and self.pool.down_for() >= self.grace_s:
            urls = ", ".join(ep.url for ep in self.pool.endpoints)
            self.stopped = f"every endpoint down for over {self.grace_s:g}s ({urls})"
            logger.error("pool unavailable: %s; deferring unfinished requests to the next run", self.stopped)
        return self.stopped is not None

    async def startup_check(self) -> None:
        urls = [ep.url for ep in self.pool.endpoints]
        problems = await health_problems(self.probe_session, urls)
        for ep, problem in zip(self.pool.endpoints, problems, strict=True):
            if problem is not None:
                logger.warning("endpoint %s failed its startup health check: %s", ep.url, problem)
                self.pool.mark_health(ep, healthy=False)
        raise_if_none_healthy(urls, problems)

    async def _probe_health(self, ep: EndpointState) -> None:
        try:
            status, _ = await get_status(self.probe_session, ep.base_url + "/health")
            self.pool.mark_health(ep, healthy=status == 200)
        except APIError:
            self.pool.mark_health(ep, healthy=False)
        self._wake(len(self._waiters))  # a probe may be allowed now

    async def _scrape(self, ep: EndpointState) -> None:
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
            self._wake(self.pool.spare())

    async def monitor(self) -> None:
        """Scrape /metrics of live endpoints and /health of open ones until cancelled."""
        periods = [p for p in (self.cfg.metrics_poll_s, self.cfg.breaker_probe_s) if p > 0]
        tick = min(periods)
        # The first scrape comes once every task has placed its first requests (a scrape at the very
        # start would show siblings' slots as free), and well before the first full poll interval.
        last_scrape = self.clock() - max(0.0, self.cfg.metrics_poll_s - FIRST_SCRAPE_AFTER_S)
        while True:
            jobs = [self._probe_health(ep) for ep in self.pool.endpoints if ep.state is BreakerState.OPEN]
            now = self.clock()
            if self.cfg.metrics_poll_s > 0 and now - last_scrape >= self.cfg.metrics_poll_s:
                last_scrape = now
                jobs += [self._scrape(ep) for ep in self.pool.endpoints if ep.state is BreakerState.CLOSED]
            if jobs:
                await asyncio.gather(*jobs)
            self._check_pool_down()
            sleep = tick
            if self.cfg.metrics_poll_s > 0:  # wake for the next scrape on time, not a tick late
                sleep = min(tick, max(WAIT_POLL_MIN_S, last_scrape + self.cfg.metrics_poll_s - self.clock()))
            await asyncio.sleep(sleep)

    # ---- one HTTP request with transport retries -----------------------------------------------

    def _payload(self, messages: list[dict[str, str]], seed_offset: int) -> dict[str, Any]:
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
        # Server-specific fields, e.g. the constrained-output grammar (mira_spark.constrained); the
        # config forbids them to override the keys above.
        payload.update(self.sampling.extra_body)
        return payload

    async def _send(
        self, messages: list[dict[str, str]], key: str, res: ScoreResult, seed_offset: int = 0
    ) -> ChatResponse | _Final:
        payload = self._payload(messages, seed_offset)
        headers = build_headers(self.api_key, key)
        attempt = 0
        while True:
            ep = await self._acquire()
            if ep is None:
                assert self.stopped is not None
                return _Final(_detail(ERR_POOL_UNAVAILABLE, self.stopped), deferred=True)
            to_free_slot = not self.pool.queued(ep)
            attempt += 1
            if res.attempts == 0:  # latency runs from the first send, not from waiting for the pool
                self._first_send[res.index] = self.clock()
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
                    self._release(ep, "answered")
                    return _Final(_detail(ERR_CONTEXT_OVERFLOW, exc.body_excerpt), overflow=True)
                error = _detail(ERR_HTTP.format(status=exc.status), exc.body_excerpt)
                if not is_retryable_status(exc.status):
                    self._release(ep, "answered")
                    return _Final(error)
                self._release(ep, "failure")
                retry_after = exc.retry_after
            except APITimeoutError as exc:
                self._release(ep, "failure")
                error = _detail(ERR_TIMEOUT, str(exc))
            except APIConnectionError as exc:
                self._release(ep, "failure")
                error = _detail(ERR_CONNECTION, str(exc))
            except APIResponseError as exc:
                self._release(ep, "failure")
                error = _detail(ERR_HTTP.format(status=200), str(exc))
            else:
                self._release(ep, "success", self.clock() - started if to_free_slot else None)
                res.endpoint = ep.url
                return response
            finally:
                self.in_flight -= 1
            if attempt >= self.cfg.max_attempts:
                if self.pool.is_down():
                    # The row is not at fault when the whole pool is down: let the next run retry it.
                    return _Final(
                        _detail(ERR_POOL_UNAVAILABLE, "every endpoint down; last error " + error),
                        deferred=True,
                    )
                return _Final(error)
            self.stats.retries += 1
            delay = retry_delay(
                attempt, retry_after, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self.rng
            )
            await asyncio.sleep(delay)

    # ---- one row: shrink, check, repair ----------------------------------------------------------

    def _bill(self, res: ScoreResult, response: ChatResponse) -> None:
        if response.prompt_tokens is not None:
            res.prompt_tokens = (res.prompt_tokens or 0) + response.prompt_tokens
        if response.completion_tokens is not None:
            res.completion_tokens = (res.completion_tokens or 0) + response.completion_tokens
        res.finish_reason = response.finish_reason

    def _check(self, request: ScoreRequest, text: str, finish_reason: str | None) -> OutputVerdict:
        if self.check_output is None:
            return OutputVerdict("accept")
        return self.check_output(request, text, finish_reason)

    async def score(self, request: ScoreRequest) -> ScoreResult:
        res = ScoreResult(index=request.index, status="failed")
        try:
            if self.prepare is not None:  # build the prompt only when a worker takes the request
                request = self.prepare(request)
            return await self._score(request, res)
        except Exception as exc:  # a bug in a hook must cost one row, not the partition
            logger.exception("request %s: unexpected error", request.key)
            res.status, res.error = "failed", _detail("internal_error", f"{type(exc).__name__}: {exc}")
            return res
        finally:
            first_send = self._first_send.pop(res.index, None)
            if first_send is not None:
                res.latency_s = self.clock() - first_send

    def _end(self, res: ScoreResult, final: _Final) -> ScoreResult:
        res.status = "deferred" if final.deferred else "failed"
        res.error = final.error
        return res

    async def _score(self, request: ScoreRequest, res: ScoreResult) -> ScoreResult:
        current = request
        while True:
            out = await self._send(current.messages, request.key, res)
            if not (isinstance(out, _Final) and out.overflow):
                break
            if res.shrunk or self.shrink is None:
                return self._end(res, out)
            smaller = self.shrink(current)
            if smaller is None:
                return self._end(res, _Final(_detail(ERR_CONTEXT_OVERFLOW, "prompt cannot shrink further")))
            current, res.shrunk = smaller, True
        if isinstance(out, _Final):
            return self._end(res, out)
        self._bill(res, out)
        text, finish = out.text, out.finish_reason

        while True:
            verdict = self._check(current, text, finish)
            if verdict.action == "accept":
                res.status, res.text, res.error = "ok", text, None
                return res
            if res.repairs >= self.max_output_repairs:
                if verdict.action == "followup":
                    # Still missing slots after the last follow-up: the scores it has are usable
                    # (parsed as partial); failing the row would throw away paid-for answers.
                    res.status, res.text, res.error = "ok", text, None
                    return res
                res.text = text
                res.wasted_requests += 1  # billed, but the row fails: nothing downstream uses it
                return self._end(res, _Final(_detail(ERR_OUTPUT_INVALID, verdict.reason)))
            res.repairs += 1
            self.stats.repairs += 1
            if verdict.action == "followup" and verdict.followup:
                messages = [
                    *current.messages,
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": verdict.followup},
                ]
                out = await self._send(messages, request.key, res)
                if isinstance(out, _Final) and not out.overflow:
                    res.text = text
                    return self._end(res, out)
                if not isinstance(out, _Final):
                    self._bill(res, out)
                    text = self.merge(text, out.text) if self.merge else text + "\n" + out.text
                    finish = out.finish_reason
                    continue
                # The follow-up turn no longer fits the context: ask again from scratch instead.
            res.wasted_requests += 1
            out = await self._send(current.messages, request.key, res, seed_offset=res.repairs)
            if isinstance(out, _Final):
                res.text = text
                return self._end(res, out)
            self._bill(res, out)
            text, finish = out.text, out.finish_reason


def _deferred(request: ScoreRequest, reason: str) -> ScoreResult:
    return ScoreResult(index=request.index, status="deferred", error=_detail(ERR_POOL_UNAVAILABLE, reason))


def _count(stats: RunStats, results: Sequence[ScoreResult]) -> None:
    for res in results:
        stats.wasted_requests += res.wasted_requests
        stats.prompt_tokens += res.prompt_tokens or 0
        stats.completion_tokens += res.completion_tokens or 0
        if res.status != "ok" and res.error:
            reason = res.error.split(":", 1)[0]
            stats.failed_by_reason[reason] = stats.failed_by_reason.get(reason, 0) + 1


async def arun_requests(
    requests: list[ScoreRequest],
    *,
    pool: PoolConfig,
    sampling: SamplingConfig,
    model: str,
    in_flight: int,
    api_key: str | None = None,
    check_output: CheckOutput | None = None,
    shrink: ShrinkRequest | None = None,
    prepare: PrepareRequest | None = None,
    merge: MergeOutputs | None = None,
    max_output_repairs: int = 2,
    session_factory: SessionFactory | None = None,
    stats: RunStats | None = None,
    seed: int | None = None,
    pool_down_grace_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    share: float | None = None,
) -> list[ScoreResult]:
    """Async core of :func:`run_requests`; see there."""
    if in_flight < 1:
        raise ValueError(f"in_flight must be at least 1, got {in_flight}")
    positions = {req.index: pos for pos, req in enumerate(requests)}
    if len(positions) != len(requests):
        raise ValueError("ScoreRequest.index values must be unique within one call")
    if not requests:
        return []
    register_secret(api_key)  # executors are separate processes: register here too
    stats = stats if stats is not None else RunStats()
    workers = min(in_flight, len(requests))
    if session_factory is None:

        def make_session() -> aiohttp.ClientSession:
            return client_mod.session_factory(pool, workers)

        def make_probe_session() -> aiohttp.ClientSession:
            return client_mod.session_factory(pool, PROBE_CONNECTIONS_PER_ENDPOINT * len(pool.endpoints))

    else:
        make_session = make_probe_session = session_factory
    results: list[ScoreResult | None] = [None] * len(requests)

    async with make_session() as session, make_probe_session() as probe_session:
        runner = _Runner(
            pool_cfg=pool,
            sampling=sampling,
            model=model,
            api_key=api_key,
            check_output=check_output,
            shrink=shrink,
            prepare=prepare,
            merge=merge,
            max_output_repairs=max_output_repairs,
            session=session,
            probe_session=probe_session,
            stats=stats,
            rng=random.Random(seed),
            grace_s=default_pool_down_grace(pool) if pool_down_grace_s is None else pool_down_grace_s,
            clock=clock,
            share=pool_share(pool, in_flight) if share is None else share,
        )
        if pool.startup_check:
            await runner.startup_check()
        next_request = iter(requests)  # shared: a free worker takes the next request at once

        async def worker() -> None:
            for req in next_request:
                if runner.stopped is not None:
                    results[positions[req.index]] = _deferred(req, runner.stopped)
                else:
                    results[positions[req.index]] = await runner.score(req)

        monitor = asyncio.create_task(runner.monitor())
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
        len(final),
        sum(r.status == "ok" for r in final),
        sum(r.status == "failed" for r in final),
        sum(r.status == "deferred" for r in final),
        stats.requests_sent,
        stats.retries,
        stats.repairs,
    )
    return final


def run_requests(
    requests: list[ScoreRequest],
    *,
    pool: PoolConfig,
    sampling: SamplingConfig,
    model: str,
    in_flight: int,
    api_key: str | None = None,
    check_output: CheckOutput | None = None,
    shrink: ShrinkRequest | None = None,
    prepare: PrepareRequest | None = None,
    merge: MergeOutputs | None = None,
    max_output_repairs: int = 2,
    session_factory: SessionFactory | None = None,
    stats: RunStats | None = None,
    seed: int | None = None,
    pool_down_grace_s: float | None = None,
    share: float | None = None,
) -> list[ScoreResult]:
    """Send every request and return exactly one result per request, in input order.

    Parameters
    ----------
    requests : requests of one partition; ``index`` must be unique and re-aligns results.
    pool, sampling : endpoint pool (timeouts, retries, breaker, polling) and sampling parameters.
    model : model name sent in each request.
    in_flight : requests kept outstanding across the pool (e.g. ``pool.in_flight_target``).
    api_key : sent as ``Authorization: Bearer``; resolve it on the driver with
        :func:`~mira_spark.serving.secrets.resolve_api_key`. Never logged.
    check_output, shrink, merge, prepare : hooks (see :mod:`mira_spark.serving.types`); ``prepare``
        turns a placeholder request into the real one when a worker takes it, so a task holds only its
        in-flight prompts in memory and sends its first request without building every prompt first.
    max_output_repairs : re-asks / follow-ups per row for outputs ``check_output`` rejects.
    session_factory : ``() -> aiohttp.ClientSession``, called inside the loop, twice: one session for
        requests, one for /health and /metrics (tests inject their own).
    stats : counts are added to this object.
    seed : seeds the retry-jitter RNG (the server's sampling seed is ``sampling.seed``).
    pool_down_grace_s : defer unfinished rows once every endpoint has been down this long
        (default ``max(30 s, 3 x breaker_probe_s)``).
    share : fraction of each endpoint this call plans to fill (1/T for one of T tasks sharing the pool;
        :func:`~mira_spark.serving.plan.task_share`); default: implied by ``in_flight``.

    Raises
    ------
    PoolUnavailableError : ``pool.startup_check`` is on and no endpoint answers ``/health``.

    Works from any thread; when the calling thread already runs an event loop (a notebook), the
    runner gets its own loop in a helper thread.
    """
    coro = arun_requests(
        requests,
        pool=pool,
        sampling=sampling,
        model=model,
        in_flight=in_flight,
        api_key=api_key,
        check_output=check_output,
        shrink=shrink,
        prepare=prepare,
        merge=merge,
        max_output_repairs=max_output_repairs,
        session_factory=session_factory,
        stats=stats,
        seed=seed,
        pool_down_grace_s=pool_down_grace_s,
        share=share,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, coro).result()


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

    Raises :class:`PoolUnavailableError` (nothing sent) when none answers, so a run with a wrong URL
    or servers still loading fails in seconds with a message, not inside a Spark task.
    """
    urls = [e.url for e in pool.endpoints]

    async def probe() -> list[str | None]:
        async with session_factory(pool, 0) as session:
            return await health_problems(session, urls)

    problems = asyncio.run(probe())
    raise_if_none_healthy(urls, problems)
    return [u for u, p in zip(urls, problems, strict=True) if p is None]
