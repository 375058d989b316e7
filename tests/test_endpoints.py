"""Endpoint pool routing and circuit breaker with a fake clock; /metrics parsing."""

from __future__ import annotations

from collections import Counter

import pytest

from mira_spark.config import EndpointConfig
from mira_spark.serving.endpoints import BreakerState, EndpointPool
from mira_spark.serving.metrics import ServerLoad, parse_server_load


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pool(n: int = 2, weights: list[float] | None = None, **kw) -> tuple[EndpointPool, FakeClock]:
    clock = FakeClock()
    weights = weights or [1.0] * n
    eps = [EndpointConfig(url=f"http://10.0.0.{i}:8000/v1", weight=w) for i, w in enumerate(weights)]
    kw.setdefault("breaker_failures", 3)
    kw.setdefault("breaker_probe_s", 5.0)
    kw.setdefault("metrics_poll_s", 5.0)
    return EndpointPool(eps, clock=clock, **kw), clock


def test_equal_endpoints_round_robin() -> None:
    pool, _ = make_pool(3)
    picked = []
    for _ in range(6):
        ep = pool.pick()
        assert ep is not None
        picked.append(ep.url)
        pool.release(ep, "answered")
    assert Counter(picked) == Counter({ep.url: 2 for ep in pool.endpoints})


def test_least_outstanding_then_weight() -> None:
    pool, _ = make_pool(2, weights=[1.0, 3.0])
    counts = Counter(pool.pick().url for _ in range(40))  # type: ignore[union-attr]
    a, b = (ep.url for ep in pool.endpoints)
    assert counts[b] == 30 and counts[a] == 10  # outstanding stays proportional to weight


def test_server_load_counts_other_clients() -> None:
    pool, _clock = make_pool(2)
    a, b = pool.endpoints
    pool.set_load(a, ServerLoad(running=50, waiting=10))  # someone else keeps a busy
    assert all(pool.pick() is b for _ in range(20))
    # our own outstanding requests are part of the server's count: no double counting
    assert pool.expected_wait(b) == pytest.approx(21.0)
    pool.set_load(b, ServerLoad(running=20, waiting=0))
    assert pool.expected_wait(b) == pytest.approx(21.0)


def test_stale_load_ignored() -> None:
    pool, clock = make_pool(2, metrics_poll_s=1.0)
    a, _ = pool.endpoints
    pool.set_load(a, ServerLoad(running=100, waiting=0))
    assert pool.expected_wait(a) == pytest.approx(101.0)
    clock.now += 3.5  # more than 3 poll intervals
    assert pool.expected_wait(a) == pytest.approx(1.0)


def test_set_load_none_keeps_previous() -> None:
    pool, _ = make_pool(1)
    (a,) = pool.endpoints
    pool.set_load(a, ServerLoad(2, 1))
    pool.set_load(a, None)
    assert a.server_load == 3


def test_faster_endpoint_preferred() -> None:
    pool, _ = make_pool(2)
    a, b = pool.endpoints
    for ep, latency in ((a, 1.0), (b, 4.0)):
        for _ in range(20):  # one at a time: concurrency 1 -> rate 1/latency
            ep.outstanding += 1
            pool.release(ep, "success", latency)
    assert a.rate is not None and b.rate is not None and a.rate > b.rate
    counts = Counter(pool.pick().url for _ in range(50))  # type: ignore[union-attr]
    assert counts[a.url] > 2.5 * counts[b.url]


def test_breaker_opens_after_consecutive_failures_and_probe_closes() -> None:
    pool, clock = make_pool(2, breaker_failures=3, breaker_probe_s=5.0)
    a, b = pool.endpoints
    for _ in range(2):
        a.outstanding += 1
        pool.release(a, "failure")
    assert a.state is BreakerState.CLOSED
    a.outstanding += 1
    pool.release(a, "failure")
    assert a.state is BreakerState.OPEN
    assert {pool.pick() is b for _ in range(5)} == {True}
    for ep in pool.endpoints:
        ep.outstanding = 0
    clock.now += 5.0
    probe = None
    for _ in range(4):
        ep = pool.pick()
        if ep is a:
            assert probe is None, "only one probe request while half-open"
            probe = ep
    assert probe is a and a.state is BreakerState.HALF_OPEN
    pool.release(a, "success", 0.5)
    assert a.state is BreakerState.CLOSED and a.consecutive_failures == 0


def test_failed_probe_reopens() -> None:
    pool, clock = make_pool(1, breaker_failures=1, breaker_probe_s=2.0)
    (a,) = pool.endpoints
    assert pool.pick() is a
    pool.release(a, "failure")
    assert pool.pick() is None
    assert pool.next_probe_time() == pytest.approx(clock.now + 2.0)
    clock.now += 2.0
    assert pool.pick() is a
    assert pool.pick() is None  # probe in flight
    pool.release(a, "failure")
    assert a.state is BreakerState.OPEN and a.probe_at == pytest.approx(clock.now + 2.0)


def test_answered_error_resets_streak() -> None:
    pool, _ = make_pool(1, breaker_failures=2)
    (a,) = pool.endpoints
    pool.pick()
    pool.release(a, "failure")
    pool.pick()
    pool.release(a, "answered")  # a 400 proves the server is alive
    pool.pick()
    pool.release(a, "failure")
    assert a.state is BreakerState.CLOSED


def test_health_opens_and_allows_probe() -> None:
    pool, _clock = make_pool(2)
    a, b = pool.endpoints
    pool.mark_health(a, healthy=False)
    assert a.state is BreakerState.OPEN
    pool.mark_health(a, healthy=True)  # healthy again: probe now rather than after breaker_probe_s
    got = {pool.pick().url for _ in range(2)}  # type: ignore[union-attr]
    assert got == {a.url, b.url}


def test_down_for_and_all_open() -> None:
    pool, clock = make_pool(2, breaker_failures=1, breaker_probe_s=10.0)
    a, b = pool.endpoints
    pool.mark_health(a, healthy=False)
    assert pool.next_probe_time() is None  # b is closed
    clock.now += 4
    assert pool.down_for() == 0.0 and not pool.is_down()
    pool.mark_health(b, healthy=False)
    assert pool.is_down() and pool.pick() is None
    assert pool.next_probe_time() == pytest.approx(1010.0)  # a's
    clock.now += 7
    assert pool.down_for() == pytest.approx(7.0)
    assert pool.next_probe_time() is None  # a's probe time has passed: it can be probed now
    pool.release(pool.pick(), "success", 0.1)  # type: ignore[arg-type]
    assert not pool.is_down() and pool.down_for() == 0.0


def test_base_url() -> None:
    pool, _ = make_pool(1)
    assert pool.endpoints[0].base_url == "http://10.0.0.0:8000"


METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="whw06/MIRA Text"} 3.0
vllm:num_requests_running{engine="1",model_name="whw06/MIRA Text"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
vllm:num_requests_waiting{engine="0",model_name="whw06/MIRA Text"} 4.0 1712345678000
vllm:num_requests_waiting_by_reason{reason="capacity"} 99
vllm:num_requests_swapped{model_name="x"} 7
vllm:gpu_cache_usage_perc{model_name="x"} 0.5
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (METRICS, ServerLoad(running=5.0, waiting=4.0)),
        ("vllm:num_requests_running 7\n", ServerLoad(running=7.0, waiting=0.0)),
        ("", None),
        ("# only comments\n", None),
        ("process_cpu_seconds_total 12.5\n", None),
        ('vllm:num_requests_running{a="b"} NaN\nvllm:num_requests_waiting{} 2\n', ServerLoad(0.0, 2.0)),
        ('vllm:num_requests_running{broken 3\nvllm:num_requests_waiting{x="1"} oops\n', None),
    ],
)
def test_parse_server_load(text: str, expected: ServerLoad | None) -> None:
    assert parse_server_load(text) == expected
