"""Routing under every regime: the real runner against modelled strict-FIFO vLLM servers in virtual time.

Each cell runs :func:`mira_spark.serving.runner.arun_requests` unchanged (the endpoint pool, the
waiting-for-room logic, the /metrics monitor) against :mod:`mira_spark.devtools.simulator.des`; the targets are
issue 7's: utilization >= 0.99 on uniform pools, >= 0.97 on mixed speeds, mean queued at the servers
<= 0.1 x slots and (near) nothing queued while another server has a free slot; two jobs >= 0.97.
The full matrix is ``mira-spark bench routing``; here its hardest corners and the service x poll grid.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from mira_spark.devtools.bench.routing import POOLS, check, target_for
from mira_spark.devtools.simulator.des import (
    FifoServer,
    Scenario,
    Tracker,
    VirtualTimeLoop,
    requests_needed,
    run_scenario,
    service_sampler,
)
from mira_spark.serving.endpoints import EndpointPool

SLOTS = 16
FOREIGN = SLOTS // 2  # a foreign client holding half of endpoint 0


def _assert_cell(sc: Scenario) -> None:
    outcome = run_scenario(sc)
    # the case we meant to create happened: every request answered, a steady window of several
    # service times, and the foreign client really held endpoint 0's slots
    assert outcome.requests >= requests_needed(sc) and outcome.failed == 0
    assert outcome.window_s >= 3 * sc.service_s
    if sc.foreign:
        assert outcome.busy_fraction[0] > 0.99
    assert check(outcome) == [], (sc.label(), outcome.as_dict())
    assert outcome.utilization >= target_for(sc)


@pytest.mark.parametrize("service_s", [1.0, 2.0, 8.0, 30.0, 120.0])
@pytest.mark.parametrize("poll_s", [1.0, 5.0, 10.0])
def test_uniform_pool_every_service_and_poll(service_s: float, poll_s: float) -> None:
    _assert_cell(Scenario(slots=SLOTS, service_s=service_s, poll_s=poll_s, cycles=8, polls_in_window=3))


@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("tasks", [1, 2, 4])
@pytest.mark.parametrize("foreign", [0, FOREIGN])
def test_short_service_long_poll(pool: str, tasks: int, foreign: int) -> None:
    # service 1 s against a 10 s poll: every /metrics reading is ten service times old
    speeds, weights = POOLS[pool]
    _assert_cell(Scenario(slots=SLOTS, speeds=speeds, weights=weights, service_s=1.0, poll_s=10.0,
                          tasks=tasks, foreign=foreign, cycles=8, polls_in_window=3))


@pytest.mark.parametrize(("pool", "tasks", "foreign"), [("1:1:2:4", 4, FOREIGN), ("half-weight", 2, 0)])
def test_long_service_fast_poll(pool: str, tasks: int, foreign: int) -> None:
    speeds, weights = POOLS[pool]
    _assert_cell(Scenario(slots=SLOTS, speeds=speeds, weights=weights, service_s=120.0, poll_s=1.0,
                          tasks=tasks, foreign=foreign, cycles=6))


@pytest.mark.parametrize(("service_s", "poll_s"), [(1.0, 10.0), (2.0, 5.0), (120.0, 1.0)])
def test_two_jobs_sharing_the_pool(service_s: float, poll_s: float) -> None:
    # each job plans for the whole pool and sees the other only through /metrics
    _assert_cell(Scenario(slots=SLOTS, service_s=service_s, poll_s=poll_s, jobs=2, cycles=8, polls_in_window=3))


def test_exponential_service_and_64_slots() -> None:
    _assert_cell(Scenario(slots=64, speeds=(1.0, 1.0, 2.0, 4.0), service_s=2.0, poll_s=5.0,
                          distribution="exponential", cycles=6))


def test_bench_detects_a_router_that_queues_while_others_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    # The bench must be able to fail: a router with unbounded room that always prefers endpoint 0
    # piles the surplus into one server's queue while the others idle.
    monkeypatch.setattr(EndpointPool, "capacity", lambda self, ep, now=None: 10**6)
    monkeypatch.setattr(EndpointPool, "_score", lambda self, ep, service, now: (self.endpoints.index(ep), 0.0, 0.0))
    sc = Scenario(slots=SLOTS, service_s=2.0, poll_s=5.0, cycles=4)
    outcome = run_scenario(sc)
    assert outcome.utilization < 0.5 and outcome.mean_queued_while_idle > SLOTS
    assert any("utilization" in m for m in check(outcome))


# ---- the instruments themselves -----------------------------------------------------------------


def test_virtual_time_jumps_to_the_next_timer() -> None:
    loop = VirtualTimeLoop()
    try:
        async def main() -> tuple[float, float]:
            t0 = loop.time()
            await asyncio.sleep(3600.0)
            return t0, loop.time()

        t0, t1 = loop.run_until_complete(main())
        assert t0 == 0.0 and t1 == pytest.approx(3600.0)
        with pytest.raises(RuntimeError, match="deadlock"):
            loop.run_until_complete(loop.create_future())  # nothing will ever resolve it
    finally:
        loop.close()


def test_fifo_server_serves_in_arrival_order_within_its_slots() -> None:
    loop = VirtualTimeLoop()
    try:
        async def main() -> list[int]:
            server = FifoServer(url="u", slots=2, speed=2.0, sampler=service_sampler("constant", 4.0),
                                rng=random.Random(0), loop=loop)
            done: list[int] = []

            async def one(i: int) -> None:
                await server.submit()
                done.append(i)
                assert loop.time() == pytest.approx(2.0 * (1 + i // 2))  # 4 s / speed 2, two at a time

            await asyncio.gather(*(one(i) for i in range(5)))
            assert server.served == 5 and server.running == 0 and not server.queue
            return done

        assert loop.run_until_complete(main()) == [0, 1, 2, 3, 4]
    finally:
        loop.close()


def test_tracker_integrals_on_a_known_series() -> None:
    class _S:
        def __init__(self, slots: int) -> None:
            self.slots, self.running, self.queue = slots, 0, []

    a, b = _S(2), _S(2)
    tracker = Tracker(loop=None, servers=[a, b])  # type: ignore[arg-type]
    tracker.times = [0.0, 1.0, 3.0, 4.0]
    tracker.states = [((2, 1), (3, 0)),  # b has a free slot while a queues 3: 3 x 1 s
                      ((2, 2), (1, 0)),  # both full: a's queue of 1 is not "while idle"
                      ((1, 2), (0, 2)),  # a has a free slot while b queues 2: 2 x 1 s
                      ((0, 0), (0, 0))]
    area = tracker.integrals(0.0, 4.0)
    assert area["busy"] == [2 + 4 + 1, 1 + 4 + 2]
    assert area["queued"] == [3 + 2, 2]
    assert area["queued_idle"] == pytest.approx(3 + 2)
    assert tracker.integrals(0.5, 1.5)["queued_idle"] == pytest.approx(1.5)


@pytest.mark.parametrize("kind", ["constant", "exponential", "lognormal"])
def test_service_distributions_have_the_mean(kind: str) -> None:
    rng = random.Random(1)
    draw = service_sampler(kind, 2.0)
    values = [draw(rng) for _ in range(20_000)]
    assert sum(values) / len(values) == pytest.approx(2.0, rel=0.03)
    with pytest.raises(ValueError, match="unknown service distribution"):
        service_sampler("gamma", 1.0)
