"""Request runner against a minimal fake OpenAI-compatible server on 127.0.0.1.

The fake is this file's own (the real simulator lives elsewhere): each chat request takes the next
action of ``plan`` (or ``default``), after a random latency. Actions: ``"ok"``, ``("text", content,
finish_reason)``, ``("status", code, headers, body)``, ``"overflow"``, ``"reset"``, ``"hang"``,
``"garbage"``, ``("choices", [texts])`` (one choice per text), or a callable ``(body) -> action``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from mira_spark.config import EndpointConfig, PoolConfig, SamplingConfig, SecretRef
from mira_spark.devtools.simulator.des import COMPLETION_BODY, VirtualTimeLoop
from mira_spark.serving import secrets as secrets_mod
from mira_spark.serving.plan import default_in_flight
from mira_spark.serving.retry import RETRY_AFTER_JITTER
from mira_spark.serving.runner import (
    PoolUnavailableError,
    RowHooks,
    RunnerOptions,
    arun_requests,
    run_requests,
)
from mira_spark.serving.secrets import (
    RedactingFilter,
    SecretUnavailableError,
    register_secret,
    resolve_api_key,
)
from mira_spark.serving.types import OutputVerdict, RunStats, ScoreRequest, ScoreResult

OVERFLOW_BODY = (
    '{"object":"error","message":"This model\'s maximum context length is 4096 tokens. However, you '
    'requested 9000 tokens. Please reduce the length of the messages or completion.","code":400}'
)


class FakeServer:
    def __init__(self, latency: tuple[float, float] = (0.0, 0.0), seed: int = 0) -> None:
        self.plan: deque[Any] = deque()
        self.default: Any = "ok"
        self.latency = latency
        self.rng = random.Random(seed)
        self.healthy = True
        self.metrics_text = ""
        self.requests: list[tuple[float, Any, dict[str, Any]]] = []
        self.concurrent = 0
        self.max_concurrent = 0
        self.url = ""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((time.monotonic(), request.headers.copy(), body))
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            action = self.plan.popleft() if self.plan else self.default
            if callable(action):
                action = action(body)
            lo, hi = self.latency
            if hi > 0:
                await asyncio.sleep(self.rng.uniform(lo, hi))
            kind = action if isinstance(action, str) else action[0]
            if kind == "ok":
                return completion(f"ok {request.headers.get('X-Request-Id')}")
            if kind == "text":
                return completion(action[1], action[2] if len(action) > 2 else "stop")
            if kind == "choices":
                return choices(action[1])
            if kind == "json":  # a whole chat-completion body, e.g. with logprobs
                return web.json_response(action[1])
            if kind == "status":
                _, code, headers, text = action
                return web.Response(status=code, headers=headers, text=text)
            if kind == "overflow":
                return web.Response(status=400, text=OVERFLOW_BODY, content_type="application/json")
            if kind == "garbage":
                return web.Response(status=200, text="<html>proxy error</html>")
            if kind == "hang":
                await asyncio.sleep(10)
            if kind == "reset":
                assert request.transport is not None
                request.transport.abort()
                await asyncio.sleep(0.01)
            return web.Response(status=500, text="unknown action")
        finally:
            self.concurrent -= 1

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics_text)

    def served(self) -> int:
        return len(self.requests)


def completion(text: str, finish_reason: str = "stop") -> web.Response:
    return web.json_response(
        {
            "id": "cmpl-1",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
    )


class ServerLoop:
    """One background event loop hosting the fake servers of a test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def start(self, server: FakeServer) -> FakeServer:
        async def _start() -> str:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", server.chat)
            app.router.add_get("/health", server.health)
            app.router.add_get("/metrics", server.metrics)
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.runners.append(runner)
            host, port = runner.addresses[0][:2]
            return f"http://{host}:{port}/v1"

        server.url = asyncio.run_coroutine_threadsafe(_start(), self.loop).result(5)
        return server

    def close(self) -> None:
        async def _stop() -> None:
            for runner in self.runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def servers():
    loop = ServerLoop()

    def make(latency: tuple[float, float] = (0.0, 0.0), seed: int = 0) -> FakeServer:
        return loop.start(FakeServer(latency, seed))

    yield make
    loop.close()


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens: connection refused


def pool_for(*urls: str, **kw: Any) -> PoolConfig:
    settings: dict[str, Any] = {
        "endpoints": [EndpointConfig(url=u) for u in urls],
        "api_key_env": None,
        "backoff_initial_s": 0.001,
        "backoff_max_s": 0.01,
        "breaker_probe_s": 0.2,
        "metrics_poll_s": 0.0,
        "request_timeout_s": 5.0,
        "connect_timeout_s": 1.0,
    }
    settings.update(kw)
    return PoolConfig(**settings)


def make_requests(n: int, content: str = "score this", shuffle_seed: int | None = None) -> list[ScoreRequest]:
    reqs = [
        ScoreRequest(
            index=7 * i + 3, key=f"doc-{i}", messages=[{"role": "user", "content": f"{content} {i}"}]
        )
        for i in range(n)
    ]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(reqs)
    return reqs


HOOKS = ("check_output", "shrink", "prepare", "merge")


def run(reqs: list[ScoreRequest], pool: PoolConfig, in_flight: int = 4, stats: RunStats | None = None,
        **kw: Any) -> list[ScoreResult]:
    hooks = RowHooks(**{k: kw.pop(k) for k in HOOKS if k in kw})
    kw.setdefault("sampling", SamplingConfig())
    opts = RunnerOptions(pool=pool, model="m", in_flight=in_flight, seed=1, hooks=hooks, **kw)
    return run_requests(reqs, opts, stats)


# ---- virtual time: a scripted session on a loop whose clock only moves on timers --------------------


class _Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict(headers))
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def text(self, errors: str = "strict") -> str:
        return self._body.decode("utf-8", errors)


class ScriptedSession:
    """``aiohttp.ClientSession`` stand-in: each POST takes the next ``(status, headers, latency_s)`` of
    ``script`` (then 200 after ``latency_s``) and records the loop's time and the URL; GETs answer 200,
    ``/metrics`` with ``metrics[endpoint url]``. With ``refuse`` every call fails as a refused connection does."""

    def __init__(self, script: list[tuple[int, dict[str, str], float]] | None = None, refuse: bool = False,
                 latency_s: float = 0.0, metrics: dict[str, str] | None = None) -> None:
        self.script = deque(script or [])
        self.refuse = refuse
        self.latency_s = latency_s
        self.metrics = metrics or {}
        self.sent: list[float] = []
        self.urls: list[str] = []

    async def __aenter__(self) -> ScriptedSession:
        return self

    async def __aexit__(self, *exc: object) -> bool:
        return False

    @contextlib.asynccontextmanager
    async def post(self, url: str, json: Any = None, headers: Any = None):
        self.sent.append(asyncio.get_running_loop().time())
        self.urls.append(url.removesuffix("/chat/completions"))
        if self.refuse:
            raise aiohttp.ClientConnectionError(f"{url}: connection refused")
        status, answer_headers, latency_s = self.script.popleft() if self.script else (200, {}, self.latency_s)
        if latency_s:
            await asyncio.sleep(latency_s)
        yield _Answer(status, answer_headers, COMPLETION_BODY if status == 200 else b'{"error": "scripted"}')

    @contextlib.asynccontextmanager
    async def get(self, url: str, timeout: Any = None):
        if self.refuse:
            raise aiohttp.ClientConnectionError(f"{url}: connection refused")
        base, _, path = url.rpartition("/")
        yield _Answer(200, {}, self.metrics.get(base + "/v1", "").encode() if path == "metrics" else b"")


def run_virtual(reqs: list[ScoreRequest], pool: PoolConfig, session: ScriptedSession, in_flight: int = 4,
                stats: RunStats | None = None, **kw: Any) -> tuple[list[ScoreResult], float]:
    """Run the real runner on a :class:`VirtualTimeLoop` with its clock; return results and virtual seconds."""
    loop = VirtualTimeLoop()
    try:
        opts = RunnerOptions(pool=pool, model="m", in_flight=in_flight, seed=1, sampling=SamplingConfig(),
                             session_factory=lambda: session, clock=loop.time, **kw)
        results = loop.run_until_complete(arun_requests(reqs, opts, stats))
        return results, loop.time()
    finally:
        loop.close()


def virtual_pool(n: int = 1, **kw: Any) -> PoolConfig:
    return pool_for(*(f"http://virtual-{i}.invalid:8000/v1" for i in range(n)), startup_check=False, **kw)


def assert_aligned(reqs: list[ScoreRequest], results: list[ScoreResult]) -> None:
    assert len(results) == len(reqs)
    assert [r.index for r in results] == [q.index for q in reqs]


# ---- throughput shape ---------------------------------------------------------------------------


def test_exactly_once_realignment_1000_requests(servers) -> None:
    a, b = servers((0.0, 0.004), seed=1), servers((0.0, 0.008), seed=2)
    reqs = make_requests(1000, shuffle_seed=5)
    stats = RunStats()
    results = run(reqs, pool_for(a.url, b.url), in_flight=64, stats=stats)
    assert_aligned(reqs, results)
    for req, res in zip(reqs, results, strict=True):
        assert res.status == "ok" and res.text == f"ok {req.key}"
        assert res.attempts == 1 and res.endpoint in (a.url, b.url)
        assert res.prompt_tokens == 10 and res.completion_tokens == 5 and 0 < res.latency_s < 5
    seen = Counter(h["X-Request-Id"] for s in (a, b) for _, h, _ in s.requests)
    assert len(seen) == 1000 and set(seen.values()) == {1}
    assert stats.requests_sent == 1000 and stats.prompt_tokens == 10_000 and stats.failed_by_reason == {}


def test_in_flight_reached_never_exceeded(servers) -> None:
    a, b = servers((0.01, 0.03), seed=1), servers((0.0, 0.01), seed=2)
    stats = RunStats()
    results = run(make_requests(300), pool_for(a.url, b.url), in_flight=16, stats=stats)
    assert all(r.status == "ok" for r in results)
    assert stats.max_in_flight == 16
    # per server concurrency adds up to at most the limit; the slower one holds more (Little's law)
    assert a.max_concurrent + b.max_concurrent >= 16
    assert max(a.max_concurrent, b.max_concurrent) <= 16


def test_payload_and_headers(servers) -> None:
    a = servers()
    reqs = make_requests(2)
    run(reqs, pool_for(a.url), sampling=SamplingConfig(temperature=0.2, top_p=0.9, max_tokens=128, seed=42))
    _, headers, body = a.requests[0]
    assert body["model"] == "m" and body["temperature"] == 0.2 and body["top_p"] == 0.9
    assert body["max_tokens"] == 128 and body["seed"] == 42
    assert body["messages"] == reqs[0].messages or body["messages"] == reqs[1].messages
    assert "Authorization" not in headers  # no key configured
    assert {h["X-Request-Id"] for _, h, _ in a.requests} == {"doc-0", "doc-1"}


def test_default_in_flight() -> None:
    assert default_in_flight(pool_for(dead_url(), dead_url(), slots_per_endpoint=100)) == 220
    assert default_in_flight(pool_for(dead_url(), in_flight_target=7)) == 7


def test_empty_input_sends_nothing() -> None:
    assert run([], pool_for(dead_url())) == []


# ---- transport retries --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failures",
    [
        [("status", 503, {}, "overloaded"), ("status", 503, {}, "overloaded")],
        ["reset", ("status", 500, {}, "boom")],
        ["garbage", ("status", 502, {}, "bad gateway")],
    ],
)
def test_retries_then_success(servers, failures: list[Any]) -> None:
    a = servers()
    a.plan.extend(failures)
    stats = RunStats()
    (res,) = run(make_requests(1), pool_for(a.url), stats=stats)
    assert res.status == "ok" and res.attempts == len(failures) + 1
    assert stats.retries == len(failures) and stats.requests_sent == len(failures) + 1


def test_timeout_is_retried(servers) -> None:
    a = servers()
    a.plan.append("hang")
    # 2 s: far below the 10 s hang, and room for the retry's new connection on a loaded machine
    (res,) = run(make_requests(1), pool_for(a.url, request_timeout_s=2.0))
    assert res.status == "ok" and res.attempts == 2


def test_attempts_exhausted(servers) -> None:
    a, b = servers(), servers()
    a.default = ("status", 503, {}, "still loading")
    b.default = ("status", 503, {}, "still loading")
    stats = RunStats()
    (res,) = run(make_requests(1), pool_for(a.url, b.url, max_attempts=3, breaker_failures=10), stats=stats)
    assert res.status == "failed" and res.error is not None and res.error.startswith("http_503")
    assert res.attempts == 3 and stats.failed_by_reason == {"http_503": 1}


@pytest.mark.parametrize(
    ("headers", "told_s"),
    [
        ({"retry-after-ms": "300"}, 0.3),
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "0"}, 0.0),  # now: also overrides the 5 s backoff
    ],
)
def test_retry_after_honoured(headers: dict[str, str], told_s: float) -> None:
    session = ScriptedSession([(429, headers, 0.0)])
    stats = RunStats()
    (res,), _ = run_virtual(make_requests(1), virtual_pool(backoff_initial_s=5.0, backoff_max_s=5.0), session,
                            stats=stats)
    assert res.status == "ok" and res.attempts == 2 and stats.retries == 1
    waited = session.sent[1] - session.sent[0]
    # waited as told (never less), with at most the documented jitter on top; not the 2.5-5 s backoff
    assert told_s <= waited <= told_s * (1 + RETRY_AFTER_JITTER) + 1e-9


def test_backoff_without_retry_after_is_capped_and_jittered() -> None:
    session = ScriptedSession([(503, {}, 0.0)] * 4)
    (res,), _ = run_virtual(make_requests(1), virtual_pool(backoff_initial_s=1.0, backoff_max_s=2.0,
                                                           breaker_failures=10), session)
    assert res.status == "ok" and res.attempts == 5
    waits = [b - a for a, b in zip(session.sent, session.sent[1:], strict=False)]
    assert len(waits) == 4 and all(0 < w <= 2.0 for w in waits)  # capped at backoff_max_s
    assert len(set(waits)) > 1  # jittered, not a fixed step


def test_latency_is_virtual_not_wall_clock() -> None:
    session = ScriptedSession([(200, {}, 30.0)] * 4)  # four answers of 30 virtual seconds each
    stats = RunStats()
    results, elapsed = run_virtual(make_requests(4), virtual_pool(), session, in_flight=4, stats=stats)
    assert all(r.status == "ok" for r in results)
    assert elapsed == pytest.approx(30.0, abs=0.5)  # concurrent: one latency, not four
    assert session.sent == [0.0] * 4


def test_non_retryable_400_not_retried(servers) -> None:
    a = servers()
    a.default = ("status", 400, {}, "x" * 1000)
    stats = RunStats()
    reqs = make_requests(1, content="PROMPT-TEXT")
    (res,) = run(reqs, pool_for(a.url), stats=stats)
    assert res.status == "failed" and res.attempts == 1 and a.served() == 1
    assert res.error is not None and res.error.startswith("http_400: ")
    assert len(res.error) <= len("http_400: ") + 200 and "PROMPT-TEXT" not in res.error
    assert stats.failed_by_reason == {"http_400": 1} and stats.retries == 0


# ---- context overflow ---------------------------------------------------------------------------


def overflow_when_long(body: dict[str, Any]) -> Any:
    return "overflow" if len(body["messages"][-1]["content"]) > 20 else "ok"


def halve(req: ScoreRequest) -> ScoreRequest | None:
    text = req.messages[-1]["content"]
    if len(text) <= 4:
        return None
    return replace(req, messages=[{"role": "user", "content": text[: len(text) // 2]}])


@pytest.mark.parametrize(
    ("content", "shrink", "status", "shrunk", "attempts"),
    [
        ("y" * 30, halve, "ok", True, 2),  # 30 -> 15 chars fits
        ("y" * 100, halve, "failed", True, 2),  # 100 -> 50 still too long: shrink once only
        ("y" * 30, lambda r: None, "failed", False, 1),
        ("y" * 30, None, "failed", False, 1),
    ],
)
def test_context_overflow_shrink(servers, content, shrink, status, shrunk, attempts) -> None:
    a = servers()
    a.default = overflow_when_long
    stats = RunStats()
    (res,) = run(make_requests(1, content=content), pool_for(a.url), shrink=shrink, stats=stats)
    assert (res.status, res.shrunk, res.attempts) == (status, shrunk, attempts)
    if status == "failed":
        assert res.error is not None and res.error.startswith("context_overflow")
        assert stats.failed_by_reason == {"context_overflow": 1}


# ---- output checks ------------------------------------------------------------------------------


def accept_only(good: str) -> Callable[[ScoreRequest, str, str | None], OutputVerdict]:
    def check(req: ScoreRequest, text: str, finish_reason: str | None) -> OutputVerdict:
        if text == good and finish_reason == "stop":
            return OutputVerdict("accept")
        return OutputVerdict("retry", reason="malformed" if finish_reason == "stop" else "truncated")

    return check


def test_check_output_retry_then_accept(servers) -> None:
    a = servers()
    a.plan.extend([("text", "garbled"), ("text", "half", "length"), ("text", "GOOD")])
    stats = RunStats()
    (res,) = run(
        make_requests(1), pool_for(a.url), sampling=SamplingConfig(seed=5), check_output=accept_only("GOOD"),
        max_output_repairs=2, stats=stats,
    )  # fmt: skip
    assert res.status == "ok" and res.text == "GOOD" and res.finish_reason == "stop"
    assert res.repairs == 2 and res.wasted_requests == 2 and res.attempts == 3
    assert res.prompt_tokens == 30 and res.completion_tokens == 15  # every billed request counted
    assert [body["seed"] for _, _, body in a.requests] == [5, 6, 7]  # a re-ask must not replay the seed
    assert stats.repairs == 2 and stats.wasted_requests == 2 and stats.completion_tokens == 15


def test_check_output_gives_up(servers) -> None:
    a = servers()
    a.default = ("text", "garbled")
    stats = RunStats()
    (res,) = run(
        make_requests(1), pool_for(a.url), check_output=accept_only("GOOD"), max_output_repairs=2, stats=stats
    )
    assert res.status == "failed" and res.error == "output_invalid: malformed"
    assert res.text == "garbled" and res.repairs == 2 and a.served() == 3
    assert stats.failed_by_reason == {"output_invalid": 1}


def test_check_output_followup_merges(servers) -> None:
    a = servers()

    def answer(body: dict[str, Any]) -> Any:
        return ("text", "part2") if len(body["messages"]) > 1 else ("text", "part1")

    a.default = answer

    def check(req: ScoreRequest, text: str, finish_reason: str | None) -> OutputVerdict:
        if "part2" in text:
            return OutputVerdict("accept")
        return OutputVerdict("followup", reason="partial", followup="now part2 only")

    (res,) = run(make_requests(1), pool_for(a.url), check_output=check, merge=lambda x, y: f"{x}|{y}")
    assert res.status == "ok" and res.text == "part1|part2"
    assert res.repairs == 1 and res.wasted_requests == 0 and res.completion_tokens == 10
    followup_messages = a.requests[1][2]["messages"]
    assert [m["role"] for m in followup_messages] == ["user", "assistant", "user"]
    assert followup_messages[1]["content"] == "part1" and followup_messages[2]["content"] == "now part2 only"


def test_check_output_hook_error_is_one_failed_row(servers) -> None:
    a = servers()

    def broken(req: ScoreRequest, text: str, finish_reason: str | None) -> OutputVerdict:
        if req.key == "doc-1":
            raise KeyError("bug")
        return OutputVerdict("accept")

    results = run(make_requests(3), pool_for(a.url), check_output=broken)
    assert [r.status for r in results] == ["ok", "failed", "ok"]


# ---- breaker, dead pool, startup ----------------------------------------------------------------


def test_breaker_opens_and_probe_closes(servers, caplog) -> None:
    a, b = servers(), servers((0.005, 0.01))
    for _ in range(3):
        a.plan.append(("status", 503, {}, "restarting"))
    caplog.set_level(logging.INFO, logger="mira_spark")
    # one request at a time, so no success already in flight closes the breaker before the probe
    results = run(
        make_requests(150), pool_for(a.url, b.url, breaker_failures=3, breaker_probe_s=0.1), in_flight=1
    )
    assert all(r.status == "ok" for r in results)
    transitions = [
        r.getMessage() for r in caplog.records if "circuit" in r.getMessage() and a.url in r.getMessage()
    ]
    assert [m.split(": ")[1].split(" (")[0] for m in transitions] == [
        "circuit closed -> open",
        "circuit half_open -> closed",
    ]
    assert a.served() > 10  # back in rotation after the probe


def test_all_endpoints_dead_defers_rows() -> None:
    stats = RunStats()
    reqs = make_requests(40)
    pool = virtual_pool(2, breaker_failures=2, breaker_probe_s=0.05, max_attempts=3)
    session = ScriptedSession(refuse=True)
    results, elapsed = run_virtual(reqs, pool, session, in_flight=8, stats=stats, pool_down_grace_s=0.3)
    # rows are deferred once the pool has been down for the grace, not after each row's own retries
    assert 0.3 <= elapsed < 0.3 + 2 * 0.05, elapsed
    assert len(session.sent) < len(reqs)  # most rows were never sent to a dead pool
    assert_aligned(reqs, results)
    assert {r.status for r in results} == {"deferred"}
    assert all(r.error is not None and r.error.startswith("pool_unavailable") for r in results)
    assert stats.failed_by_reason == {"pool_unavailable": 40}


def test_pool_dies_mid_run(servers) -> None:
    a = servers((0.001, 0.003))

    def dies_after_20(body: dict[str, Any]) -> Any:
        if a.served() > 20:
            a.healthy = False
            return "reset"
        return "ok"

    a.default = dies_after_20
    reqs = make_requests(200)
    results = run(reqs, pool_for(a.url, breaker_failures=3, breaker_probe_s=0.05), in_flight=4,
                  pool_down_grace_s=0.3)  # fmt: skip
    assert_aligned(reqs, results)
    statuses = Counter(r.status for r in results)
    assert statuses["ok"] >= 16 and statuses["failed"] == 0
    assert statuses["ok"] + statuses["deferred"] == 200


def test_startup_check_fails_fast() -> None:
    url = dead_url()
    with pytest.raises(PoolUnavailableError) as info:
        run(make_requests(3), pool_for(url))
    assert url in str(info.value) and "conf/scorers.yaml" in str(info.value)


def test_startup_check_skips_dead_endpoint(servers) -> None:
    a, dead = servers(), dead_url()
    results = run(make_requests(20), pool_for(dead, a.url, breaker_probe_s=30.0))
    assert all(r.status == "ok" and r.attempts == 1 and r.endpoint == a.url for r in results)


# ---- routing ------------------------------------------------------------------------------------


def test_routing_prefers_faster_endpoint(servers) -> None:
    # 20x apart, so the preference shows even on a loaded 2-core CI machine
    fast, slow = servers((0.002, 0.004), seed=1), servers((0.05, 0.07), seed=2)
    results = run(make_requests(400), pool_for(fast.url, slow.url), in_flight=8)
    assert all(r.status == "ok" for r in results)
    assert fast.served() > 2 * slow.served()


def test_routing_avoids_server_loaded_by_others() -> None:
    pool = virtual_pool(2, metrics_poll_s=0.05)
    busy, idle = (e.url for e in pool.endpoints)
    session = ScriptedSession(latency_s=0.005, metrics={
        busy: 'vllm:num_requests_running{model_name="m"} 200.0\nvllm:num_requests_waiting{model_name="m"} 50\n',
        idle: 'vllm:num_requests_running{model_name="m"} 0\n',
    })
    results, _ = run_virtual(make_requests(300), pool, session, in_flight=8)
    assert all(r.status == "ok" for r in results)
    served = Counter(session.urls)
    assert served[busy] + served[idle] == 300 and served[idle] > 0.8 * 300
    # once the first scrape (at one poll interval, 0.05 s virtual) is in, nothing more goes to the busy server
    after_scrape = [url for t, url in zip(session.sent, session.urls, strict=True) if t > 0.05 + 0.005 + 1e-9]
    assert len(after_scrape) > 200 and set(after_scrape) == {idle}


# ---- secrets ------------------------------------------------------------------------------------

KEY = "sk-test-Zq9vUr3mKx7"


def test_api_key_sent_but_never_logged(servers, caplog) -> None:
    a, b = servers(), servers()

    def echo_auth(body: dict[str, Any]) -> Any:
        return ("status", 400, {}, "bad request from " + a.requests[-1][1].get("Authorization", ""))

    a.plan.extend([("status", 503, {}, "busy"), "reset"])
    b.default = echo_auth  # a hostile proxy echoing the header: must be redacted from the error
    caplog.set_level(logging.DEBUG)
    results = run(make_requests(6), pool_for(a.url, b.url, breaker_failures=1, breaker_probe_s=0.05),
                  api_key=KEY, in_flight=2)  # fmt: skip
    assert all(h.get("Authorization") == f"Bearer {KEY}" for s in (a, b) for _, h, _ in s.requests)
    assert any(r.status == "failed" for r in results)
    for res in results:
        assert KEY not in repr(res)
    assert caplog.records
    for record in caplog.records:
        assert KEY not in record.getMessage() and KEY not in (record.exc_text or "")


def test_redacting_filter() -> None:
    register_secret("hunter2-secret")
    record = logging.LogRecord("mira_spark.x", logging.INFO, __file__, 1, "key=%s", ("hunter2-secret",), None)
    assert RedactingFilter().filter(record) and record.getMessage() == "key=***"


def test_resolve_api_key(monkeypatch) -> None:
    monkeypatch.setenv("MY_KEY_ENV", "env-key-123")
    assert resolve_api_key(pool_for(dead_url(), api_key_env="MY_KEY_ENV")) == "env-key-123"
    assert "env-key-123" not in secrets_mod.redact("x env-key-123 y")
    monkeypatch.delenv("MY_KEY_ENV")
    assert resolve_api_key(pool_for(dead_url(), api_key_env="MY_KEY_ENV")) is None
    monkeypatch.setattr(secrets_mod, "_find_dbutils", lambda: None)
    with pytest.raises(SecretUnavailableError, match="MY_KEY_ENV"):
        resolve_api_key(
            pool_for(dead_url(), api_key_env="MY_KEY_ENV", api_key_secret=SecretRef(scope="s", key="k"))
        )


def test_resolve_api_key_from_dbutils(monkeypatch) -> None:
    class FakeSecrets:
        def get(self, scope: str, key: str) -> str:
            assert (scope, key) == ("mira", "vllm")
            return "dbx-key-456"

    class FakeDbutils:
        secrets = FakeSecrets()

    monkeypatch.setattr(secrets_mod, "_find_dbutils", lambda: FakeDbutils())
    pool = pool_for(dead_url(), api_key_env=None, api_key_secret=SecretRef(scope="mira", key="vllm"))
    assert resolve_api_key(pool) == "dbx-key-456"


# ---- calling contexts ---------------------------------------------------------------------------


def test_partitions_as_threads(servers) -> None:
    """Sail runs partitions as threads of one process: one loop each, no interference."""
    a = servers((0.0, 0.003))
    out: dict[int, list[ScoreResult]] = {}

    def partition(p: int) -> None:
        reqs = [
            ScoreRequest(index=i, key=f"p{p}-{i}", messages=[{"role": "user", "content": "x"}])
            for i in range(100)
        ]
        out[p] = run(reqs, pool_for(a.url), in_flight=16)

    threads = [threading.Thread(target=partition, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(out) == [0, 1, 2, 3]
    for p, results in out.items():
        assert [r.text for r in results] == [f"ok p{p}-{i}" for i in range(100)]


def test_callable_inside_running_loop(servers) -> None:
    a = servers()

    async def notebook_cell() -> list[ScoreResult]:
        return run(make_requests(5), pool_for(a.url))

    results = asyncio.run(notebook_cell())
    assert [r.status for r in results] == ["ok"] * 5


def test_json_body_shape() -> None:
    body = json.loads(completion("hi").body)  # type: ignore[arg-type]
    assert body["choices"][0]["message"]["content"] == "hi"


def choices(texts: list[str]) -> web.Response:
    return web.json_response({
        "id": "cmpl-n", "object": "chat.completion",
        "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                    for i, t in enumerate(texts)],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5 * len(texts), "total_tokens": 10 + 5 * len(texts)},
    })


def _accept_good(req: ScoreRequest, text: str, finish_reason: str | None) -> OutputVerdict:
    return OutputVerdict("accept") if text.startswith("good") else OutputVerdict("retry", reason="malformed_output")


def test_n_choices_are_samples_and_a_rejected_choice_is_asked_alone(servers) -> None:
    """Extra samples 1..3 of a document in one request (n=3): each choice is checked on its own."""
    a = servers()

    a.default = lambda body: ("choices", ["good-a", "bad", "good-c"] if body.get("n") == 3 else ["good-again"])
    req = ScoreRequest(index=5, key="doc|g|v|1", messages=[{"role": "user", "content": "x"}], sample=1, n=3)
    stats = RunStats()
    (res,) = run([req], pool_for(a.url), stats=stats, check_output=_accept_good, sampling=SamplingConfig(seed=1))
    first, second, third = res, *res.more
    assert [r.status for r in (first, second, third)] == ["ok", "ok", "ok"]
    assert [r.text for r in (first, second, third)] == ["good-a", "good-again", "good-c"]
    bodies = [b for _, _, b in a.requests]
    assert len(bodies) == 2 and bodies[0]["n"] == 3 and bodies[0]["seed"] == 1 + 1000  # one prefill for 3 samples
    assert "n" not in bodies[1] and bodies[1]["seed"] == 1 + 2 * 1000 + 1  # sample 2 re-asked, its own seed
    assert [r.attempts for r in (first, second, third)] == [1, 1, 0]  # the rows' attempts sum to the requests
    assert second.repairs == 1 and stats.repairs == 1
    assert first.completion_tokens == 15 and first.prompt_tokens == 10  # the n-request billed once


def test_a_server_that_ignores_n_gets_the_missing_samples_one_by_one(servers) -> None:
    a = servers()
    a.default = ("text", "good-one")  # one choice whatever n says (llama.cpp)
    req = ScoreRequest(index=0, key="doc|g|v|1", messages=[{"role": "user", "content": "x"}], sample=1, n=3)
    (res,) = run([req], pool_for(a.url), check_output=_accept_good, sampling=SamplingConfig(seed=1))
    assert [r.status for r in (res, *res.more)] == ["ok", "ok", "ok"]
    assert [b["seed"] for _, _, b in a.requests] == [1001, 2001, 3001]
    assert a.requests[0][2]["n"] == 3 and all("n" not in b for _, _, b in a.requests[1:])


def _with_logprobs(text: str) -> dict[str, Any]:
    content = [{"token": ch, "logprob": 0.0, "top_logprobs": [{"token": ch, "logprob": 0.0}]} for ch in text]
    return {"choices": [{"index": 0, "message": {"content": text}, "finish_reason": "stop",
                         "logprobs": {"content": content}}], "usage": {"prompt_tokens": 5, "completion_tokens": 5}}


def test_score_tokens_follow_the_kept_answer_and_not_a_merged_one(servers) -> None:
    """An answer kept as sent keeps its tokens' logprobs; an answer merged with a follow-up has none (its
    positions no longer match one stream), so no expected score is read from misplaced tokens."""
    a = servers()
    a.default = lambda body: ("json", _with_logprobs("part2" if len(body["messages"]) > 1 else "part1 7"))

    (kept,) = run(make_requests(1), pool_for(a.url), check_output=lambda r, t, f: OutputVerdict("accept"))
    assert kept.status == "ok" and kept.score_tokens is not None
    assert [t.token for t in kept.score_tokens] == [b"1", b" ", b"7"]  # digits and the token after one

    def check(req: ScoreRequest, text: str, finish_reason: str | None) -> OutputVerdict:
        return OutputVerdict("accept") if "part2" in text else OutputVerdict("followup", followup="part2 only")

    (merged,) = run(make_requests(1), pool_for(a.url), check_output=check, merge=lambda x, y: f"{x}|{y}")
    assert merged.status == "ok" and merged.text == "part1 7|part2" and merged.repairs == 1
    assert merged.score_tokens is None
