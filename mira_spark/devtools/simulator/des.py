"""Discrete-event routing bench: the real runner and endpoint pool against a model of vLLM, in virtual time.

Takes a :class:`Scenario` (K servers with S slots each and a strict FIFO queue behind the slots,
service times drawn from a seeded distribution and divided by each server's speed, a ``/metrics``
scrape every P seconds, 1-4 tasks of one job — or several independent jobs — sharing the pool, and
optionally a foreign client holding part of one server); gives :class:`Outcome`: utilization (speed-
weighted busy-slot fraction at the servers over the steady window), mean requests queued at servers,
mean requests queued while another server had a free slot, and per-server busy fractions.

Nothing is mocked in the client: each task runs :func:`mira_spark.serving.runner.arun_requests`
unchanged, with a session whose ``post``/``get`` reach the modelled servers instead of sockets, on an
asyncio loop whose clock is virtual (:class:`VirtualTimeLoop`: when nothing is ready, time jumps to the
next timer). A run of hundreds of virtual seconds takes a fraction of a second of CPU, and the result
depends only on the scenario and its seed.

Steady window: from two mean service times after the start (the first scrape has been taken, the
initial burst has been served once) to the moment the first task sends its last request (after that
the job's demand falls below the pool's capacity by construction).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import random
import selectors
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mira_spark.config import EndpointConfig, PoolConfig, SamplingConfig
from mira_spark.serving.plan import plan_in_flight, task_share
from mira_spark.serving.types import ScoreRequest

COMPLETION_BODY = json.dumps({
    "id": "cmpl-des",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}).encode()
WARMUP_SERVICE_TIMES = 2.0
MAX_VIRTUAL_S = 1e7


# ---- virtual time -------------------------------------------------------------------------------


class _VirtualSelector(selectors.BaseSelector):
    """Delegates I/O to a real selector, polled without blocking; a timeout advances virtual time."""

    def __init__(self, loop_clock: list[float]) -> None:
        self._real = selectors.DefaultSelector()
        self._now = loop_clock

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready:
            return ready
        if timeout is None:
            raise RuntimeError("virtual-time loop: nothing scheduled and nothing ready (a deadlock)")
        if timeout > 0:
            self._now[0] += timeout
            if self._now[0] > MAX_VIRTUAL_S:
                raise RuntimeError("virtual-time loop: the run did not end in virtual time")
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` only moves when every coroutine waits for a timer."""

    def __init__(self) -> None:
        self._virtual_now = [0.0]
        super().__init__(selector=_VirtualSelector(self._virtual_now))

    def time(self) -> float:
        return self._virtual_now[0]


# ---- the modelled servers -----------------------------------------------------------------------


ServiceSampler = Callable[[random.Random], float]


def service_sampler(kind: str, mean_s: float) -> ServiceSampler:
    """Service-time distribution with the given mean: ``constant``, ``exponential`` or ``lognormal``
    (coefficient of variation 0.5, the spread of completion lengths of one rubric).

    >>> rng = random.Random(0)
    >>> service_sampler("constant", 2.0)(rng)
    2.0
    """
    if kind == "constant":
        return lambda _rng: mean_s
    if kind == "exponential":
        return lambda rng: rng.expovariate(1.0 / mean_s)
    if kind == "lognormal":
        sigma = math.sqrt(math.log(1 + 0.5**2))
        mu = math.log(mean_s) - sigma**2 / 2
        return lambda rng: rng.lognormvariate(mu, sigma)
    raise ValueError(f"unknown service distribution {kind!r}; use constant, exponential or lognormal")


class Tracker:
    """Piecewise-constant record of every server's running and queued counts, for exact integrals."""

    def __init__(self, loop: asyncio.AbstractEventLoop, servers: Sequence[FifoServer]) -> None:
        self.loop = loop
        self.servers = servers
        self.times: list[float] = [0.0]
        self.states: list[tuple[tuple[int, ...], tuple[int, ...]]] = [((0,) * len(servers), (0,) * len(servers))]

    def changed(self) -> None:
        now = self.loop.time()
        state = (tuple(s.running for s in self.servers), tuple(len(s.queue) for s in self.servers))
        if now == self.times[-1]:
            self.states[-1] = state
        else:
            self.times.append(now)
            self.states.append(state)

    def integrals(self, t0: float, t1: float) -> dict[str, Any]:
        """Busy slots, queued and queued-while-another-server-had-a-free-slot, integrated over [t0, t1]."""
        k = len(self.servers)
        busy = [0.0] * k
        queued = [0.0] * k
        queued_idle = 0.0
        start = max(0, bisect.bisect_right(self.times, t0) - 1)
        for i in range(start, len(self.times)):
            a = max(self.times[i], t0)
            b = min(self.times[i + 1] if i + 1 < len(self.times) else t1, t1)
            if b <= a:
                continue
            dt = b - a
            running, queue = self.states[i]
            free = [running[j] < self.servers[j].slots for j in range(k)]
            for j in range(k):
                busy[j] += running[j] * dt
                queued[j] += queue[j] * dt
                if queue[j] and any(free[m] for m in range(k) if m != j):
                    queued_idle += queue[j] * dt
        return {"busy": busy, "queued": queued, "queued_idle": queued_idle}


@dataclass
class FifoServer:
    """One vLLM-like server: ``slots`` sequences at once, a strict FIFO queue behind them."""

    url: str
    slots: int
    speed: float
    sampler: ServiceSampler
    rng: random.Random
    loop: asyncio.AbstractEventLoop
    tracker: Tracker | None = None
    running: int = 0
    queue: deque[asyncio.Future[None]] = field(default_factory=deque)
    served: int = 0

    def submit(self) -> asyncio.Future[None]:
        """A future that completes when the request has been served."""
        fut: asyncio.Future[None] = self.loop.create_future()
        if self.running < self.slots and not self.queue:
            self._start(fut)
        else:
            self.queue.append(fut)
            self._changed()
        return fut

    def _changed(self) -> None:
        if self.tracker is not None:
            self.tracker.changed()

    def _start(self, fut: asyncio.Future[None]) -> None:
        self.running += 1
        self._changed()
        self.loop.call_later(self.sampler(self.rng) / self.speed, self._finish, fut)

    def _finish(self, fut: asyncio.Future[None]) -> None:
        self.running -= 1
        self.served += 1
        if not fut.done():
            fut.set_result(None)
        while self.queue and self.running < self.slots:
            nxt = self.queue.popleft()
            if not nxt.cancelled():
                self._start(nxt)
        self._changed()

    def metrics_text(self) -> str:
        return (f'vllm:num_requests_running{{model_name="m"}} {float(self.running)}\n'
                f'vllm:num_requests_waiting{{model_name="m"}} {float(len(self.queue))}\n')


# ---- the transport the runner sees --------------------------------------------------------------


class _Response:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.headers: dict[str, str] = {}
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def text(self, errors: str = "strict") -> str:
        return self._body.decode("utf-8", errors)


class _Call:
    def __init__(self, coro: Any) -> None:
        self._coro = coro

    async def __aenter__(self) -> _Response:
        return await self._coro

    async def __aexit__(self, *exc: object) -> bool:
        return False


class Cluster:
    """The modelled servers plus what the bench records of the clients' sends."""

    def __init__(self, servers: Sequence[FifoServer], rtt_s: float) -> None:
        self.by_url = {s.url: s for s in servers}
        self.servers = list(servers)
        self.rtt_s = rtt_s
        self.last_send: dict[str, float] = {}  # client name -> time of its last first attempt

    async def chat(self, client: str, url: str) -> _Response:
        server = self.by_url[url.removesuffix("/chat/completions")]
        loop = asyncio.get_running_loop()
        self.last_send[client] = loop.time()
        if self.rtt_s:
            await asyncio.sleep(self.rtt_s / 2)
        await server.submit()
        if self.rtt_s:
            await asyncio.sleep(self.rtt_s / 2)
        return _Response(200, COMPLETION_BODY)

    async def get(self, url: str) -> _Response:
        if self.rtt_s:
            await asyncio.sleep(self.rtt_s / 2)
        base, _, path = url.rpartition("/")
        server = self.by_url[base + "/v1"]
        text = server.metrics_text() if path == "metrics" else "ok"
        if self.rtt_s:
            await asyncio.sleep(self.rtt_s / 2)
        return _Response(200, text.encode())


class FakeSession:
    """Stands in for ``aiohttp.ClientSession`` (the two calls the runner makes)."""

    def __init__(self, cluster: Cluster, client: str) -> None:
        self.cluster = cluster
        self.client = client

    async def __aenter__(self) -> FakeSession:
        return self

    async def __aexit__(self, *exc: object) -> bool:
        return False

    def post(self, url: str, json: Any = None, headers: Any = None) -> _Call:
        return _Call(self.cluster.chat(self.client, url))

    def get(self, url: str, timeout: Any = None) -> _Call:
        return _Call(self.cluster.get(url))


# ---- scenarios ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One cell of the routing matrix."""

    servers: int = 4
    slots: int = 16
    speeds: tuple[float, ...] | None = None  # true speeds (default all 1)
    weights: tuple[float, ...] | None = None  # configured weights (default = speeds)
    service_s: float = 2.0
    distribution: str = "lognormal"
    poll_s: float = 5.0
    tasks: int = 1  # tasks of one job (split the in-flight target)
    jobs: int = 1  # independent jobs (each plans for the whole pool)
    foreign: int = 0  # requests a foreign client keeps in flight on server 0
    rtt_s: float = 0.001
    cycles: float = 12.0  # steady-state length in mean service times ...
    polls_in_window: float = 6.0  # ... and at least this many /metrics polls
    seed: int = 0

    def true_speeds(self) -> tuple[float, ...]:
        return self.speeds or (1.0,) * self.servers

    def label(self) -> str:
        speeds = ":".join(f"{s:g}" for s in self.true_speeds())
        weights = ":".join(f"{w:g}" for w in self.weights) if self.weights else "="
        return (f"S={self.servers}x{self.slots} speeds={speeds} weights={weights} service={self.service_s:g}s "
                f"poll={self.poll_s:g}s tasks={self.tasks} jobs={self.jobs} foreign={self.foreign}")


@dataclass
class Outcome:
    scenario: Scenario
    utilization: float
    mean_queued: float
    mean_queued_while_idle: float
    busy_fraction: list[float]
    window_s: float
    requests: int
    failed: int
    virtual_s: float

    @property
    def slots_total(self) -> int:
        return self.scenario.servers * self.scenario.slots

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.label(),
            "utilization": round(self.utilization, 4),
            "mean_queued": round(self.mean_queued, 2),
            "queued_per_slot": round(self.mean_queued / self.slots_total, 4),
            "mean_queued_while_idle": round(self.mean_queued_while_idle, 3),
            "busy_fraction": [round(b, 3) for b in self.busy_fraction],
            "window_s": round(self.window_s, 1),
            "requests": self.requests,
            "failed": self.failed,
        }


def requests_needed(sc: Scenario) -> int:
    """Requests for ``cycles`` mean service times of steady state (and ``polls_in_window`` polls), plus warm-up."""
    speeds = sc.true_speeds()
    per_service_time = sc.slots * sum(speeds)  # completions per mean service time, pool saturated
    steady = max(sc.cycles, sc.polls_in_window * sc.poll_s / sc.service_s)
    return math.ceil(per_service_time * (steady + WARMUP_SERVICE_TIMES + 1.0))


def pool_config(sc: Scenario, urls: Sequence[str]) -> PoolConfig:
    weights = sc.weights or sc.true_speeds()
    return PoolConfig(
        endpoints=tuple(EndpointConfig(url=u, weight=w) for u, w in zip(urls, weights, strict=True)),
        slots_per_endpoint=sc.slots,
        metrics_poll_s=sc.poll_s,
        api_key_env=None,
        request_timeout_s=1e6,
        startup_check=False,
    )


def run_scenario(sc: Scenario) -> Outcome:
    """Run one scenario to completion in virtual time and measure it."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(_run(sc, loop))
    finally:
        loop.close()


async def _run(sc: Scenario, loop: asyncio.AbstractEventLoop) -> Outcome:
    from mira_spark.serving.runner import RunnerOptions, arun_requests

    rng = random.Random(sc.seed)
    sampler = service_sampler(sc.distribution, sc.service_s)
    servers = [FifoServer(url=f"http://des-{i}.invalid:8000/v1", slots=sc.slots, speed=speed,
                          sampler=sampler, rng=random.Random(rng.random()), loop=loop)
               for i, speed in enumerate(sc.true_speeds())]
    tracker = Tracker(loop, servers)
    for s in servers:
        s.tracker = tracker
    cluster = Cluster(servers, sc.rtt_s)
    pool = pool_config(sc, [s.url for s in servers])
    total = requests_needed(sc)
    clients = [(f"job{j}-task{t}", sc.tasks) for j in range(sc.jobs) for t in range(sc.tasks)]
    per_client = math.ceil(total / len(clients))
    sampling = SamplingConfig()

    stop_foreign = asyncio.Event()

    async def foreign_client() -> None:
        async def one() -> None:
            while not stop_foreign.is_set():
                await servers[0].submit()

        await asyncio.gather(*(one() for _ in range(sc.foreign)))

    async def client(name: str, tasks: int) -> list[Any]:
        reqs = [ScoreRequest(index=i, key=f"{name}-{i}", messages=[{"role": "user", "content": "x"}])
                for i in range(per_client)]
        opts = RunnerOptions(pool=pool, sampling=sampling, model="m", in_flight=plan_in_flight(pool, tasks),
                             share=task_share(tasks), session_factory=lambda: FakeSession(cluster, name),
                             clock=loop.time, seed=sc.seed)
        return await arun_requests(reqs, opts)

    foreign = asyncio.ensure_future(foreign_client()) if sc.foreign else None
    results = await asyncio.gather(*(client(name, tasks) for name, tasks in clients))
    stop_foreign.set()
    if foreign is not None:
        await foreign
    end = loop.time()
    t0 = WARMUP_SERVICE_TIMES * sc.service_s
    t1 = min(cluster.last_send.values())
    window = max(t1 - t0, 0.0)
    if window <= 0:
        raise RuntimeError(f"no steady window for {sc.label()} (last send {t1:.1f}s <= warm-up {t0:.1f}s)")
    area = tracker.integrals(t0, t1)
    speeds = sc.true_speeds()
    capacity = sum(sc.slots * s for s in speeds) * window
    util = sum(b * s for b, s in zip(area["busy"], speeds, strict=True)) / capacity
    failed = sum(r.status != "ok" for rs in results for r in rs)
    return Outcome(
        scenario=sc,
        utilization=util,
        mean_queued=sum(area["queued"]) / window,
        mean_queued_while_idle=area["queued_idle"] / window,
        busy_fraction=[b / (sc.slots * window) for b in area["busy"]],
        window_s=window,
        requests=sum(len(rs) for rs in results),
        failed=failed,
        virtual_s=end,
    )
