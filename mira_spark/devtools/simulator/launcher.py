"""Starting simulated scorer endpoints: in a thread (tests), in processes (benchmarks, the CLI).

Takes :class:`SimConfig` objects (or ``mira-spark serve-sim`` arguments); gives running endpoints on
127.0.0.1 as :class:`SimHandle` objects (``url`` for the OpenAI client, ``stats()``, ``reset()``,
``stop()``; also context managers). Each endpoint of ``start_processes`` runs in its own spawned
process, so endpoints do not share a GIL with each other or with the client under test.

After ``stop()``, ``stats()`` returns the counters as the endpoint left them once its listener closed
and its handlers finished, so a request that arrived while it was stopping is counted. Endpoints
started on port 0 bind a free port themselves and report it; :func:`free_ports` gives several
distinct ports at once for callers that need the ports before the endpoints start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from aiohttp import web

from mira_spark.devtools.simulator.faults import FaultProfile
from mira_spark.devtools.simulator.server import STATE_KEY, SimConfig, create_app

log = logging.getLogger("mira_spark.devtools.simulator")

DEFAULT_HOST = "127.0.0.1"
SHUTDOWN_TIMEOUT_S = 0.5  # hung requests are cancelled this long after stop()
START_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 5.0


FinalStats = Callable[[bool], dict[str, Any] | None]


class SimHandle:
    """A running simulated endpoint.

    ``final_stats(changes)`` (optional) gives the counters once ``stopper`` has returned, or None when
    they were not kept; ``stats()`` after ``stop()`` returns them.
    """

    def __init__(self, host: str, port: int, stopper: Callable[[], None], name: str = "sim",
                 final_stats: FinalStats | None = None) -> None:
        self.host = host
        self.port = port
        self.name = name
        self._stopper = stopper
        self._final_stats = final_stats
        self._stopped = False

    @property
    def base(self) -> str:
        """``http://host:port`` (health, metrics and /sim routes live here)."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """OpenAI base URL, ``http://host:port/v1``."""
        return f"{self.base}/v1"

    def _call(self, method: str, path: str) -> Any:
        req = urllib.request.Request(self.base + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def stats(self, changes: bool = False) -> dict[str, Any]:
        """The endpoint's ``/sim/stats`` counters (``changes``: with its change-point log).

        After :meth:`stop`: the final counters, taken after the server stopped (requests that arrived
        during the shutdown included); ``OSError`` when this handle kept none.
        """
        if self._stopped:
            final = self._final_stats(changes) if self._final_stats is not None else None
            if final is None:
                raise OSError(f"simulator endpoint {self.name} is stopped and kept no final counters")
            return final
        return self._call("GET", "/sim/stats?changes=1" if changes else "/sim/stats")

    def reset(self) -> None:
        """Zero the endpoint's counters (``POST /sim/reset``)."""
        self._call("POST", "/sim/reset")

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._stopper()

    def __enter__(self) -> SimHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SimHandle({self.name!r}, {self.url!r})"


async def _start_site(config: SimConfig, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``config`` on ``host:port`` (0: a free port); returns the runner and the bound port."""
    runner = web.AppRunner(create_app(config), shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    log.info("simulator endpoint %s (simulating %s, a stand-in for the 35B scorer) on http://%s:%d/v1",
             config.name, config.model, host, bound)
    return runner, bound


def start_in_thread(config: SimConfig, port: int = 0, host: str = DEFAULT_HOST) -> SimHandle:
    """Run one endpoint on its own event loop in a daemon thread; port 0 picks a free port."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            runner, bound = loop.run_until_complete(_start_site(config, host, port))
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            loop.close()
            return
        box["port"] = bound
        box["state"] = runner.app[STATE_KEY]
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            # Handlers whose client already left (a hung request) outlive the cleanup; cancel them.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    thread = threading.Thread(target=run, name=f"mira-simulator-{config.name}", daemon=True)
    thread.start()
    if not ready.wait(START_TIMEOUT_S):
        raise RuntimeError(f"simulator endpoint {config.name} did not start within {START_TIMEOUT_S:g}s")
    if "error" in box:
        raise RuntimeError(f"simulator endpoint {config.name} failed to start on {host}:{port}: {box['error']}")

    def stop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(SHUTDOWN_TIMEOUT_S + 5)

    def final_stats(changes: bool) -> dict[str, Any] | None:
        # The loop has stopped and the runner is cleaned up (its handlers done or cancelled), so the
        # state no longer changes; a thread that did not finish in time leaves no final counters.
        if thread.is_alive():
            return None
        return box["state"].stats(changes=changes)

    return SimHandle(host, box["port"], stop, config.name, final_stats=final_stats)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port that was free a moment ago (bind, read, release); for several ports use :func:`free_ports`."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = DEFAULT_HOST) -> list[int]:
    """``n`` distinct ports that were free a moment ago.

    All ``n`` sockets stay bound until every port is read, so the ports differ from each other
    (consecutive :func:`free_port` calls may return the same port). Another process may still take one
    before it is used.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


async def _serve_until_signal(config: SimConfig, host: str, port: int, conn: Connection | None = None) -> None:
    """Serve until SIGTERM/SIGINT; ``conn`` gets ``("port", bound)`` once listening and
    ``("stats", counters with changes)`` after the shutdown."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Loops without Unix signal support (Windows) raise here; the process is then stopped by terminate().
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    runner, bound = await _start_site(config, host, port)
    state = runner.app[STATE_KEY]
    if conn is not None:
        conn.send(("port", bound))
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        # Handlers still running after the grace period (hung requests) were counted on arrival.
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send(("stats", state.stats(changes=True)))
                conn.close()


def _process_main(config_json: str, host: str, port: int, conn: Connection | None = None) -> None:
    """Entry point of a spawned endpoint process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(_serve_until_signal(SimConfig.model_validate_json(config_json), host, port, conn))


def _wait_port(conn: Connection, proc: multiprocessing.process.BaseProcess, label: str, timeout_s: float) -> int:
    """The port a spawned endpoint reports once it listens."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if conn.poll(0.05):
            try:
                kind, value = conn.recv()
            except EOFError:
                break
            if kind == "port":
                return int(value)
        elif proc.exitcode is not None:
            break
    if proc.exitcode is not None or not proc.is_alive():
        raise RuntimeError(f"simulator process {label} exited with code {proc.exitcode} before it listened; "
                           "is the port already in use?")
    raise RuntimeError(f"simulator process {label} did not listen within {timeout_s:g}s; see its log on stderr")


def _wait_healthy(base: str, proc: multiprocessing.process.BaseProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.exitcode is not None:
            raise RuntimeError(f"simulator process for {base} exited with code {proc.exitcode} before it was "
                               "healthy; is the port already in use?")
        try:
            with urllib.request.urlopen(base + "/health", timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"simulator at {base} was not healthy within {timeout_s:g}s; see its log on stderr")


def start_processes(
    configs: list[SimConfig],
    ports: list[int] | None = None,
    host: str = DEFAULT_HOST,
    timeout_s: float = START_TIMEOUT_S,
) -> list[SimHandle]:
    """One spawned process per endpoint; returns once every ``/health`` answers (or raises, stopping all).

    A port of 0 (the default) lets the endpoint bind a free port itself; its handle carries the port.
    """
    ports = list(ports) if ports is not None else [0] * len(configs)
    if len(ports) != len(configs):
        raise ValueError(f"{len(configs)} configs but {len(ports)} ports")
    ctx = multiprocessing.get_context("spawn")
    handles: list[SimHandle] = []
    started: list[tuple[SimConfig, multiprocessing.process.BaseProcess, _ProcessStopper]] = []
    try:
        for config, port in zip(configs, ports, strict=True):
            parent_conn, child_conn = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_process_main, args=(config.model_dump_json(), host, port, child_conn),
                               name=f"mira-simulator-{config.name}", daemon=True)
            proc.start()
            child_conn.close()  # the child holds its end; EOF here means it exited
            started.append((config, proc, _ProcessStopper(proc, parent_conn)))
        deadline = time.monotonic() + timeout_s
        for config, proc, stopper in started:
            bound = _wait_port(stopper.conn, proc, config.name, max(0.0, deadline - time.monotonic()))
            handles.append(SimHandle(host, bound, stopper, config.name, final_stats=stopper.final_stats))
        for handle, (_, proc, _) in zip(handles, started, strict=True):
            _wait_healthy(handle.base, proc, timeout_s)
    except BaseException:
        for _, _, stopper in started:
            stopper()
        raise
    return handles


class _ProcessStopper:
    """Stops an endpoint process and keeps the final counters it sends on its way out."""

    def __init__(self, proc: multiprocessing.process.BaseProcess, conn: Connection) -> None:
        self.proc = proc
        self.conn = conn
        self.final: dict[str, Any] | None = None
        self._done = False

    def __call__(self) -> None:
        if self._done:
            return
        self._done = True
        proc = self.proc
        if proc.is_alive():
            proc.terminate()
            self._receive(SHUTDOWN_TIMEOUT_S + 5)  # read before join: a large message would block the child
            proc.join(SHUTDOWN_TIMEOUT_S + 5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        self.conn.close()

    def _receive(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.final is None and time.monotonic() < deadline:
            try:
                if not self.conn.poll(max(0.0, deadline - time.monotonic())):
                    return
                kind, value = self.conn.recv()
            except (EOFError, OSError):
                return
            if kind == "stats":
                self.final = value

    def final_stats(self, changes: bool) -> dict[str, Any] | None:
        if self.final is None:
            return None
        return self.final if changes else {k: v for k, v in self.final.items() if k != "changes"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mira-spark serve-sim",
                                description="Serve simulated MIRA scorer endpoints (OpenAI-compatible; no model runs).")
    p.add_argument("--port", type=int, default=18101, help="port of the first endpoint (others follow)")
    p.add_argument("--endpoints", type=int, default=None, help="number of endpoints (default 1, or len(--speeds))")
    p.add_argument("--host", default=DEFAULT_HOST, help="bind address (default 127.0.0.1)")
    p.add_argument("--slots", type=int, default=64, help="concurrent sequences per endpoint (max_num_seqs)")
    p.add_argument("--speed", type=float, default=1.0, help="relative speed of every endpoint")
    p.add_argument("--speeds", default=None, help="comma-separated speed per endpoint, e.g. 1,1,2,4")
    p.add_argument("--time-scale", type=float, default=None, help="wall s = model s / time-scale (default 150)")
    p.add_argument("--error-rate", type=float, default=0.0, help="probability of an injected HTTP 503")
    p.add_argument("--malformed-rate", type=float, default=0.0, help="probability of a garbage answer")
    p.add_argument("--sampling-noise", action="store_true",
                   help="at temperature > 0 perturb each choice's scores (seeded by the request's seed, the "
                   "document and the choice); default: deterministic scores at any temperature")
    p.add_argument("--sampling-prefix-share", type=float, default=0.0,
                   help="share (0..1) of the --sampling-noise variance that comes from the tokens sampled before "
                   "a score and so does not show in its logprobs (default 0: all of it does)")
    p.add_argument("--score-shift", default=None,
                   help="serve every slot score moved by this many points (a mis-served checkpoint, for the "
                   "canary drift guard): one value shifts the last endpoint only, a comma list one per endpoint")
    p.add_argument("--score-shift-after", type=int, default=0,
                   help="answer this many chat requests unshifted first (a node that starts drifting mid-run)")
    p.add_argument("--fault-profile", default=None, help="YAML file with fault rules")
    p.add_argument("--max-model-len", type=int, default=65536)
    p.add_argument("--model", default=None, help="model id listed by /v1/models")
    p.add_argument("--seed", type=int, default=0,
                   help="fault and service-time seed of the first endpoint (others: seed + i)")
    add_service_arguments(p)
    return p


def add_service_arguments(p: argparse.ArgumentParser) -> None:
    """``--service``, ``--service-s``, ``--service-dist``, ``--fifo`` (shared with ``bench throughput``)."""
    p.add_argument("--service", choices=["tokens", "fixed"], default="tokens",
                   help="tokens: service time from tokens and batch size (default); fixed: a drawn wall time "
                   "per request, independent of load and --time-scale")
    p.add_argument("--service-s", type=float, default=2.0,
                   help="--service fixed: mean wall seconds per request at speed 1 (divided by the speed)")
    p.add_argument("--service-dist", choices=["constant", "exponential", "lognormal"], default="constant",
                   help="--service fixed: distribution of the service time around --service-s")
    p.add_argument("--fifo", action="store_true",
                   help="strict FIFO: plain slots behind a FIFO queue, no KV budget (vLLM-like)")


def service_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`SimConfig` fields of the service arguments."""
    if args.service_s <= 0:
        raise ValueError("--service-s must be positive")
    return {"service": args.service, "service_s": args.service_s,
            "service_distribution": args.service_dist, "fifo": args.fifo}


def score_shifts(spec: str | None, n: int) -> list[float]:
    """Per-endpoint score shifts of ``--score-shift``: one value shifts the last endpoint, a list each one.

    >>> score_shifts("3", 2), score_shifts("0,-2,1", 3), score_shifts(None, 2)
    ([0.0, 3.0], [0.0, -2.0, 1.0], [0.0, 0.0])
    """
    if spec is None:
        return [0.0] * n
    values = [float(v) for v in spec.split(",")]
    if len(values) == 1:
        return [0.0] * (n - 1) + values
    if len(values) != n:
        raise ValueError(f"--score-shift lists {len(values)} shifts for {n} endpoints")
    return values


def configs_from_args(args: argparse.Namespace) -> list[SimConfig]:
    """One :class:`SimConfig` per endpoint from parsed ``serve-sim`` arguments."""
    speeds = [float(s) for s in args.speeds.split(",")] if args.speeds else None
    n = args.endpoints if args.endpoints is not None else (len(speeds) if speeds else 1)
    if n < 1:
        raise ValueError("--endpoints must be at least 1")
    if speeds is not None and len(speeds) != n:
        raise ValueError(f"--speeds lists {len(speeds)} speeds for {n} endpoints")
    profile = FaultProfile.from_yaml(args.fault_profile) if args.fault_profile else FaultProfile()
    shifts = score_shifts(args.score_shift, n)
    extra: dict[str, Any] = service_settings(args)
    if args.time_scale is not None:
        extra["time_scale"] = args.time_scale
    if args.model:
        extra["model"] = args.model
    return [
        SimConfig(name=f"sim-{i}", slots=args.slots, speed=speeds[i] if speeds else args.speed,
                  error_rate=args.error_rate, malformed_rate=args.malformed_rate, faults=profile,
                  max_model_len=args.max_model_len, seed=args.seed + i, sampling_noise=args.sampling_noise,
                  sampling_prefix_share=args.sampling_prefix_share,
                  score_shift=shifts[i], score_shift_after=args.score_shift_after, **extra)
        for i in range(n)
    ]


def serve_sim_main(argv: list[str] | None = None) -> int:
    """``mira-spark serve-sim``: start the endpoints, print one URL per line, run until SIGTERM/SIGINT."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        configs = configs_from_args(args)
    except ValueError as exc:
        print(f"serve-sim: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        handles = start_processes(configs, [args.port + i for i in range(len(configs))], host=args.host)
    except RuntimeError as exc:
        print(f"serve-sim: {exc}", file=sys.stderr)
        return 1
    try:
        for handle in handles:
            print(handle.url, flush=True)
        log.info("simulator: %d endpoint(s) up; stop with Ctrl+C or SIGTERM", len(handles))
        while not stop.wait(0.5):
            dead = [h for h in handles if not _alive(h)]
            if dead:
                log.error("simulator endpoint(s) %s died; stopping the rest", ", ".join(h.name for h in dead))
                return 1
        return 0
    finally:
        for handle in handles:
            handle.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _alive(handle: SimHandle) -> bool:
    try:
        with urllib.request.urlopen(handle.base + "/health", timeout=HTTP_TIMEOUT_S) as resp:
            return resp.status == 200
    except OSError:
        return False
