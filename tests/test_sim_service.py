"""The simulator's fixed-service / strict-FIFO regime (issue 7) and the pool-wide queued-while-idle view.

Scheduler tests use an injected clock: no sleeping, exact integrals.
"""

from __future__ import annotations

import asyncio
import statistics

import pytest

from mira_spark.devtools.bench.pool_view import ChangeSeries, pool_view, steady_window
from mira_spark.devtools.simulator.capacity import CapacityModel, RequestShape, SlotScheduler, pool_capacity
from mira_spark.devtools.simulator.server import SimConfig, SimState

BIG = RequestShape(prompt_tokens=40_000, completion_tokens=2_000)
SMALL = RequestShape(prompt_tokens=100, completion_tokens=10)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_fixed_service_ignores_tokens_batch_and_time_scale() -> None:
    m = CapacityModel(service="fixed", fixed_service_s=2.0, speed=2.0, time_scale=123.0)
    assert m.service_s(BIG, running=256) == m.service_s(SMALL, running=1) == pytest.approx(1.0)
    tokens = CapacityModel(time_scale=123.0)
    assert tokens.service_s(BIG, running=256) > tokens.service_s(SMALL, running=1)


@pytest.mark.parametrize("dist", ["exponential", "lognormal"])
def test_fixed_service_draws_are_seeded_with_the_configured_mean(dist: str) -> None:
    def draws(seed: int) -> list[float]:
        m = CapacityModel(service="fixed", fixed_service_s=2.0, service_distribution=dist, service_seed=seed)
        return [m.service_s(SMALL, running=1) for _ in range(20_000)]

    first = draws(1)
    assert first == draws(1)  # same seed, same stream
    assert first[:10] != draws(2)[:10]
    assert len(set(first[:100])) == 100  # a distribution, not a constant
    assert statistics.fmean(first) == pytest.approx(2.0, rel=0.03)


def test_reset_replays_the_same_service_times() -> None:
    sched = SlotScheduler(CapacityModel(service="fixed", service_distribution="exponential", service_seed=3))
    before = [sched.model.service_s(SMALL, 1) for _ in range(5)]
    sched.reset()
    assert [sched.model.service_s(SMALL, 1) for _ in range(5)] == before


def test_capacity_of_a_fixed_fifo_pool_is_slots_times_speed_over_service() -> None:
    m = CapacityModel(service="fixed", fixed_service_s=2.0, fifo=True, kv_tokens=1)  # KV budget ignored
    assert pool_capacity([1, 1, 1, 1], 64, [BIG], m) == pytest.approx(4 * 64 / 2.0)
    assert pool_capacity([1, 1, 2, 4], 64, [BIG], m) == pytest.approx(8 * 64 / 2.0)


def test_strict_fifo_admits_by_slots_only() -> None:
    clock = FakeClock()
    kv = SlotScheduler(CapacityModel(slots=3, kv_tokens=1000), clock=clock, wall=clock)
    fifo = SlotScheduler(CapacityModel(slots=3, kv_tokens=1000, fifo=True), clock=clock, wall=clock)
    assert kv.try_admit(900) and kv.try_admit(900) is None  # KV budget binds
    assert fifo.try_admit(900) and fifo.try_admit(900) and fifo.try_admit(900)
    assert fifo.try_admit(1) is None  # slots bind


def test_fifo_scheduler_integrals_and_change_log_with_fake_clock() -> None:
    """2 slots, 3 requests of fixed 2 s: the third queues from 0 to 2 s; integrals and log exact."""
    clock = FakeClock()
    model = CapacityModel(slots=2, service="fixed", fixed_service_s=2.0, fifo=True)
    sched = SlotScheduler(model, clock=clock, wall=clock)

    async def scenario() -> None:
        a = await sched.acquire(10)
        b = await sched.acquire(10)
        c_task = asyncio.create_task(sched.acquire(10))
        await asyncio.sleep(0)
        assert (sched.running, sched.waiting) == (2, 1)
        clock.t = model.service_s(SMALL, 2)  # 2.0: a is done, c takes its slot
        sched.release(a, SMALL)
        c = await c_task
        clock.t = 2.0 + model.service_s(SMALL, 2) / 2  # 3.0
        sched.release(b, SMALL)
        clock.t = 4.0
        sched.release(c, SMALL)

    asyncio.run(scenario())
    assert sched.busy_slot_seconds == pytest.approx(2 + 3 + 2)
    assert (sched.first_start_clock, sched.last_start_clock) == (0.0, 2.0)
    # steady window 0..2 s: 2 running throughout, 1 waiting throughout
    assert sched.steady_window_s == pytest.approx(2.0)
    assert sched.steady_busy_slot_seconds == pytest.approx(4.0)
    assert sched.steady_load_seconds == pytest.approx(6.0)
    log = sched.change_log()
    points = list(zip(log["t"], log["running"], log["waiting"], strict=True))
    # the release at 2.0 hands its slot to the queued request: logged once, after the hand-over
    assert points == [(0.0, 0, 0), (0.0, 1, 0), (0.0, 2, 0), (0.0, 2, 1), (2.0, 2, 0), (3.0, 1, 0), (4.0, 0, 0)]
    assert log["truncated"] is False


def test_sim_stats_carry_the_change_log_and_service_fields() -> None:
    state = SimState(SimConfig(slots=4, service="fixed", service_s=8.0, fifo=True, seed=5))
    assert state.scheduler.model.service == "fixed" and state.scheduler.model.fixed_service_s == 8.0
    assert state.scheduler.model.fifo and state.scheduler.model.service_seed == 5
    stats = state.stats(changes=True)
    assert stats["service"] == "fixed" and stats["fifo"] is True
    assert stats["changes"]["running"] == [0] and "changes" not in state.stats()
    assert stats["first_start_clock"] is None


# ---- queued while another endpoint had a free slot ---------------------------------------------------


def test_queued_while_idle_on_a_hand_built_series() -> None:
    """Two endpoints of 2 slots over [0, 10]:

    A: full from 0; 1 waiting on [2, 6), 3 waiting on [6, 8), 0 after.
    B: 1 running on [0, 4) (a free slot), full on [4, 7), 0 running on [7, 10).
    A's queue while B had room: 1 x [2, 4) + 3 x [7, 8) = 2 + 3 = 5 -> mean 0.5.
    B never queues. A is full throughout, so B's (empty) queue never counts.
    """
    a = ChangeSeries(slots=2, t=[0.0, 2.0, 6.0, 8.0], running=[2, 2, 2, 2], waiting=[0, 1, 3, 0])
    b = ChangeSeries(slots=2, t=[0.0, 4.0, 7.0], running=[1, 2, 0], waiting=[0, 0, 0])
    view = pool_view([a, b], 0.0, 10.0)
    ea, eb = view.endpoints
    assert ea.queued_while_idle == pytest.approx(0.5)
    assert ea.queued == pytest.approx((1 * 4 + 3 * 2) / 10)
    assert eb.queued_while_idle == 0.0 and eb.queued == 0.0
    assert ea.busy == pytest.approx(1.0)
    assert eb.busy == pytest.approx((1 * 4 + 2 * 3) / 10 / 2)
    assert view.queued_while_idle == pytest.approx(0.5)
    assert view.utilization([1.0, 3.0], 2) == pytest.approx((1 * 2.0 + 3 * 1.0) / (4 * 2))


def test_queued_while_idle_clips_to_the_window_and_ignores_own_free_slot() -> None:
    # A queues while it has a free slot itself (head-of-line blocking) but B is full: not "another's" slot.
    a = ChangeSeries(slots=4, t=[0.0], running=[3], waiting=[2])
    b = ChangeSeries(slots=1, t=[0.0, 5.0], running=[1, 0], waiting=[0, 0])
    view = pool_view([a, b], 1.0, 7.0)  # window 6 s; B free on [5, 7) only
    assert view.endpoints[0].queued_while_idle == pytest.approx(2 * 2 / 6)
    assert view.endpoints[0].queued == pytest.approx(2.0)
    assert view.window_s == 6.0


def test_steady_window_from_stats() -> None:
    stats = [{"first_start_clock": 5.0, "last_start_clock": 9.0}, {"first_start_clock": 4.0,
                                                                   "last_start_clock": 8.0},
             {"first_start_clock": None, "last_start_clock": None}]
    assert steady_window(stats) == (4.0, 9.0)
    assert steady_window([{"first_start_clock": None}]) is None


def test_serve_sim_arguments_reach_the_capacity_model() -> None:
    from mira_spark.devtools.simulator.launcher import _parser, configs_from_args

    args = _parser().parse_args(["--endpoints", "2", "--speeds", "1,4", "--service", "fixed", "--service-s", "3",
                                 "--service-dist", "lognormal", "--fifo", "--seed", "10"])
    models = [c.capacity_model() for c in configs_from_args(args)]
    assert [(m.service, m.fixed_service_s, m.service_distribution, m.fifo) for m in models] == [
        ("fixed", 3.0, "lognormal", True)] * 2
    assert [m.service_seed for m in models] == [10, 11]
    assert models[1].mean_service_s(SMALL, running=1) == pytest.approx(0.75)
    default = configs_from_args(_parser().parse_args([]))[0].capacity_model()
    assert (default.service, default.fifo) == ("tokens", False)
    with pytest.raises(ValueError, match="service-s"):
        configs_from_args(_parser().parse_args(["--service", "fixed", "--service-s", "0"]))
