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


def fill(pool: EndpointPool) -> list[str]:
    """Pick until the pool has no room; the endpoint names in pick order."""
    names = []
    while (ep := pool.pick()) is not None:
        names.append(ep.url.split(".")[-1].split(":")[0])
        assert len(names) < 10_000
    return names


def test_fastest_free_slots_first_then_queue_places_then_wait() -> None:
    # slots 4, job headroom 1: 4 free slots each, then one queue place each, then the job waits
    pool, _ = make_pool(2, weights=[1.0, 3.0], slots=4)
    assert fill(pool) == ["1"] * 4 + ["0"] * 4 + ["1", "0"]
    assert pool.pick() is None and pool.has_usable() and pool.spare() == 0
    b = pool.endpoints[1]
    pool.release(b, "success")
    assert pool.spare() == 1 and pool.pick() is b  # a release makes room exactly where it happened


def test_weight_is_a_prior_not_a_cap() -> None:
    pool, _ = make_pool(2, weights=[1.0, 4.0], slots=8)
    a, b = pool.endpoints
    assert [pool.capacity(ep) for ep in (a, b)] == [9, 9]  # weights never limit an endpoint's room
    for ep, service in ((a, 1.0), (b, 4.0)):  # measured: the "4x" endpoint is the slow one
        for _ in range(30):
            ep.outstanding += 1
            pool.release(ep, "success", service)
    assert a.service_s == pytest.approx(1.0) and b.service_s == pytest.approx(4.0)
    assert pool.relative_speeds()[0] > 3 * pool.relative_speeds()[1]
    assert fill(pool)[:8] == ["0"] * 8  # the measured speed decides, not the configured weight


def test_service_time_learned_only_from_requests_sent_to_free_slots() -> None:
    pool, _ = make_pool(1, slots=2)
    (a,) = pool.endpoints
    assert pool.pick() is a and not pool.queued(a)
    assert pool.pick() is a and not pool.queued(a)
    assert pool.pick() is a and pool.queued(a)  # third request: 2 slots taken, it waits at the server


def test_other_clients_load_reduces_room_and_drop_is_taken_at_once() -> None:
    pool, _ = make_pool(2, slots=16)
    a, _b = pool.endpoints
    assert pool.capacity(a) == 17  # 16 slots + 1 headroom, nothing known of others
    pool.set_load(a, ServerLoad(running=12, waiting=0))  # someone else holds 12 of a's slots
    assert a.foreign == pytest.approx(6.0)  # a rise moves half way (two jobs converge, not oscillate)
    pool.set_load(a, ServerLoad(running=18, waiting=0))  # the other client moved: still a transient
    assert a.foreign == pytest.approx(12.0)
    pool.set_load(a, ServerLoad(running=18, waiting=0))  # the same reading twice: taken as it is
    assert a.foreign == pytest.approx(18.0) and pool.capacity(a) == 1  # never below one request
    pool.set_load(a, ServerLoad(running=12, waiting=0))  # a drop: taken at once
    assert a.foreign == pytest.approx(12.0) and pool.capacity(a) == 5
    names = fill(pool)
    assert names.count("0") == 5 and names.count("1") == 17
    for _ in range(5):
        pool.release(a, "success")
    pool.set_load(a, ServerLoad(running=0, waiting=0))  # the other client left
    assert a.foreign == 0.0 and pool.capacity(a) == 17  # alone: freed slots are used at once


def test_own_requests_are_not_counted_as_others() -> None:
    pool, _ = make_pool(1, slots=16)
    (a,) = pool.endpoints
    for _ in range(10):
        pool.pick()
    pool.set_load(a, ServerLoad(running=10, waiting=0), own=10)
    assert a.foreign == 0.0 and pool.capacity(a) == 17
    # a scrape answered while 2 of ours were still on the wire: negative "others" are clamped
    pool.set_load(a, ServerLoad(running=8, waiting=0), own=10)
    assert a.foreign == 0.0


def test_sibling_tasks_split_each_endpoint_and_ignore_jitter() -> None:
    # one of 4 tasks of a job, 64 slots: its plan is a quarter of each endpoint
    pool, _ = make_pool(2, slots=64, share=0.25)
    a, _b = pool.endpoints
    assert pool.headroom == 0 and pool.prior_foreign(a) == pytest.approx(48.0)
    assert pool.capacity(a) == 16
    assert fill(pool) == ["0", "1"] * 16
    pool.set_load(a, ServerLoad(running=64 - 2, waiting=0), own=16)  # siblings 2 short: jitter
    assert a.foreign == pytest.approx(48.0) and pool.capacity(a) == 16
    pool.set_load(a, ServerLoad(running=16, waiting=0), own=16)  # the 3 siblings have finished
    # every remaining task moves by its share, so together they take the freed room once
    assert a.foreign == pytest.approx(36.0) and pool.capacity(a) == 28


def test_stale_load_falls_back_to_the_prior() -> None:
    pool, clock = make_pool(1, metrics_poll_s=1.0, slots=16)
    (a,) = pool.endpoints
    pool.set_load(a, ServerLoad(running=16, waiting=10))
    assert pool.capacity(a) < 17
    clock.now += 3.5  # more than 3 poll intervals
    assert pool.foreign_load(a) == 0.0 and pool.capacity(a) == 17


def test_effective_slots_follow_a_server_that_queues_below_its_batch_size() -> None:
    pool, _ = make_pool(1, slots=64)
    (a,) = pool.endpoints
    for _ in range(66):
        pool.pick()
    pool.set_load(a, ServerLoad(running=40, waiting=26), own=66)  # KV cache binds at 40 sequences
    assert a.effective_slots == 40 and pool.capacity(a) == 42
    pool.set_load(a, ServerLoad(running=42, waiting=0), own=42)
    assert a.effective_slots == 64 and pool.capacity(a) == 66


def test_set_load_none_keeps_previous() -> None:
    pool, _ = make_pool(1)
    (a,) = pool.endpoints
    pool.set_load(a, ServerLoad(2, 1))
    pool.set_load(a, None)
    assert a.server_load == 3


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
