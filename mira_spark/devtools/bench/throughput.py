"""``mira-spark bench throughput``: how much of a simulated endpoint pool each client keeps busy.

Takes ``--endpoints E --docs N [--slots S] [--speeds 1,1,2,4] [--tasks T] [--clients ...]
[--time-scale X] [--json-only]``; starts E simulated endpoints (one process each, capacity model of
:mod:`mira_spark.devtools.simulator.capacity`) and runs, one after another against the same servers (counters
reset in between), each client over the same N sample documents with the real prompts:

* ``ours`` — :func:`~mira_spark.serving.runner.run_requests` driven directly (the scoring loop without
  Spark), ``in_flight`` from :func:`~mira_spark.scoring.stage.plan_in_flight` for one task;
* ``spark`` — the real stage :func:`~mira_spark.scoring.stage.score_documents` on an in-process Sail session
  with T tasks (prompt building, the runner and the output check inside ``mapInArrow``);
* ``naive`` — a row-at-a-time synchronous UDF: one blocking ``urllib`` POST per row inside
  ``mapInArrow``, tasks = cores (capped at ``--naive-docs`` rows so it ends in reasonable time);
* ``static`` — static sharding: documents split evenly across endpoints, one client per endpoint capped
  at that endpoint's slots (what a peer taking one URL per runner does with several endpoints);
* ``datatrove`` — datatrove's ``InferenceRunner`` with ``server_type="endpoint"``, one runner per
  endpoint (it takes one URL), if ``datatrove`` is importable (``pip install 'mira-spark[peers]'``);
* ``plain`` — issue 7's reference: a ~30-line asyncio least-outstanding client that counts only its own
  outstanding requests per endpoint, caps each endpoint at its slots and keeps the surplus waiting in
  the client (not in the default client list).

``--jobs J`` runs ``ours`` as J independent jobs at once (one thread, event loop, runner and
``EndpointPool`` each, the documents dealt round-robin), each planning as if it owned the pool and seeing
the others only through ``/metrics``. ``--service fixed --service-s S [--service-dist ...] --fifo`` switch
the simulators to issue 7's vLLM-like regime (load-independent service times, strict FIFO); ``--metrics-poll-s``
is the pool's ``metrics_poll_s``. From the simulators' change-point logs (one monotonic clock) each row
also reports mean busy slots, mean requests queued at the servers, mean queued while another endpoint had a
free slot, and per-endpoint busy fractions over the same steady window (:mod:`mira_spark.devtools.bench.pool_view`).

Gives a table and a final JSON line ``{"bench": "throughput", "clients": {...}}`` with, per client,
utilization (capacity-weighted busy-slot fraction over the steady window, first to last admission —
the issue's definition), rate utilization (requests admitted in that window per second ÷
``pool_capacity`` for the mix served; biased high on runs only a few service times long, because the
first batch is admitted at once), requests/s, mean requests at the servers vs slots, p50/p99 latency, client CPU per request
(process CPU delta ÷ requests: the loop for ``ours``, the whole in-process Sail job for ``spark``),
the simulators' CPU share, and overflows (requests over max_model_len; must be 0).

The default time scale keeps the pool near ``--target-rps`` requests/s so the simulators stay well
below a core on a small machine; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from mira_spark.config import PoolConfig, SamplingConfig, ScoringConfig
from mira_spark.devtools.bench.common import (
    DEFAULT_TARGET_RPS,
    MAX_MODEL_LEN,
    CpuTimer,
    SimPool,
    auto_time_scale,
    bench_builder,
    bench_documents,
    bench_requests,
    expected_mix,
    mean,
    measure,
    own_sail_session,
    parse_speeds,
    percentile,
    print_table,
)
from mira_spark.devtools.bench.pool_view import ChangeSeries, pool_view, steady_window
from mira_spark.devtools.simulator.launcher import add_service_arguments, service_settings
from mira_spark.devtools.simulator.server import DEFAULT_MODEL
from mira_spark.prompting.prompts import PromptBuilder
from mira_spark.serving.types import RunStats, ScoreRequest

CLIENTS = ("ours", "spark", "naive", "static", "datatrove", "plain")
DEFAULT_CLIENTS = ("ours", "spark", "naive", "static", "datatrove")
DEFAULT_DOCS = 4096
DEFAULT_NAIVE_DOCS = 48
DATATROVE_TIMEOUT_S = 1800.0
GROUP = "text_group_b"
JSON_KEYS = ("utilization", "rate_utilization", "requests_per_s", "capacity_rps", "mean_load", "slots_total",
             "load_per_slot", "p50_s", "p99_s", "cpu_ms_per_request", "sim_cpu_share_max", "overflows",
             "requests", "docs", "failed", "wall_s")

log = logging.getLogger(__name__)


# ---- clients ----------------------------------------------------------------------------------------


def _hooks(builder: PromptBuilder) -> tuple[Any, Any]:
    from mira_spark.parsing.parse import merge_followup
    from mira_spark.scoring.stage import make_check_output

    return make_check_output(builder.rubric, builder, "reask"), merge_followup


def run_ours(pool: PoolConfig, requests: list[ScoreRequest], builder: PromptBuilder,
             sampling: SamplingConfig) -> dict[str, Any]:
    from mira_spark.serving.plan import plan_in_flight
    from mira_spark.serving.runner import RowHooks, RunnerOptions, run_requests

    check, merge = _hooks(builder)
    stats = RunStats()
    in_flight = plan_in_flight(pool, 1)
    with CpuTimer() as t:
        opts = RunnerOptions(pool=pool, sampling=sampling, model=DEFAULT_MODEL, in_flight=in_flight,
                             hooks=RowHooks(check_output=check, merge=merge))
        results = run_requests(requests, opts, stats)
    return {"cpu": t.cpu, "wall": t.wall, "latencies": [r.latency_s for r in results if r.status == "ok"],
            "failed": sum(r.status != "ok" for r in results), "docs": len(requests),
            "max_client_in_flight": stats.max_in_flight}


def run_static(pool: PoolConfig, requests: list[ScoreRequest], builder: PromptBuilder,
               sampling: SamplingConfig) -> dict[str, Any]:
    """Round-robin shards, one client per endpoint, each capped at that endpoint's slots."""
    from mira_spark.serving.runner import RowHooks, RunnerOptions, arun_requests

    check, merge = _hooks(builder)
    n = len(pool.endpoints)
    shards = [requests[i::n] for i in range(n)]
    stats = RunStats()

    async def all_shards() -> list[Any]:
        jobs = [arun_requests(shard, RunnerOptions(pool=pool.model_copy(update={"endpoints": (ep,)}),
                                                   sampling=sampling, model=DEFAULT_MODEL,
                                                   in_flight=pool.slots_per_endpoint,
                                                   hooks=RowHooks(check_output=check, merge=merge)), stats)
                for ep, shard in zip(pool.endpoints, shards, strict=True) if shard]
        return [r for part in await asyncio.gather(*jobs) for r in part]

    with CpuTimer() as t:
        results = asyncio.run(all_shards())
    return {"cpu": t.cpu, "wall": t.wall, "latencies": [r.latency_s for r in results if r.status == "ok"],
            "failed": sum(r.status != "ok" for r in results), "docs": len(requests)}


def run_jobs(pool: PoolConfig, requests: list[ScoreRequest], builder: PromptBuilder,
             sampling: SamplingConfig, jobs: int) -> dict[str, Any]:
    """``jobs`` independent runs of ``ours`` at once, each with its own thread, loop, runner and pool state."""
    shares = [requests[i::jobs] for i in range(jobs)]
    runs: list[dict[str, Any] | None] = [None] * jobs
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            runs[i] = run_ours(pool, shares[i], builder, sampling)
        except BaseException as exc:  # reported after join; a dead job must not look like a slow one
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,), name=f"bench-job-{i}") for i in range(jobs)]
    with CpuTimer() as t:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    if errors:
        raise errors[0]
    done = [r for r in runs if r is not None]
    return {"cpu": t.cpu, "wall": t.wall, "latencies": [x for r in done for x in r["latencies"]],
            "failed": sum(r["failed"] for r in done), "docs": len(requests), "jobs": jobs,
            "max_client_in_flight": [r["max_client_in_flight"] for r in done]}


async def _plain(urls: list[str], slots: int, requests: list[ScoreRequest],
                 sampling: SamplingConfig) -> tuple[list[float], int]:
    """Least outstanding of *own* requests per endpoint, each capped at its slots; the rest wait here."""
    import aiohttp

    outstanding = [0] * len(urls)
    free = asyncio.Condition()
    latencies: list[float] = []
    failed = 0

    async def one(session: aiohttp.ClientSession, req: ScoreRequest) -> None:
        nonlocal failed
        async with free:
            await free.wait_for(lambda: min(outstanding) < slots)
            i = min(range(len(urls)), key=outstanding.__getitem__)
            outstanding[i] += 1
        payload = {"model": DEFAULT_MODEL, "messages": req.messages, "temperature": sampling.temperature,
                   "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
        started = time.perf_counter()
        try:
            async with session.post(f"{urls[i]}/chat/completions", json=payload,
                                    headers={"X-Request-Id": req.key}) as resp:
                await resp.read()
                ok = resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            ok = False
        finally:
            async with free:
                outstanding[i] -= 1
                free.notify_all()  # every waiter re-checks: no wake-up can be spent on one that cannot go
        if ok:
            latencies.append(time.perf_counter() - started)
        else:
            failed += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(one(session, r) for r in requests))
    return latencies, failed


def run_plain(pool: PoolConfig, requests: list[ScoreRequest], sampling: SamplingConfig) -> dict[str, Any]:
    with CpuTimer() as t:
        latencies, failed = asyncio.run(_plain([e.url for e in pool.endpoints], pool.slots_per_endpoint,
                                               requests, sampling))
    return {"cpu": t.cpu, "wall": t.wall, "latencies": latencies, "failed": failed, "docs": len(requests)}


def _spark_plan(pool: PoolConfig, builder: PromptBuilder, sampling: SamplingConfig, concurrent: int) -> Any:
    from mira_spark.scoring.stage import GroupPlan, ScoringPlan
    from mira_spark.serving.plan import plan_in_flight

    group = GroupPlan(name=GROUP, model=DEFAULT_MODEL, rubric=builder.rubric, pool=pool,
                      prompt_version=builder.version)
    return ScoringPlan(groups={GROUP: group}, sampling=sampling, scoring=ScoringConfig(),
                       max_model_len=MAX_MODEL_LEN, in_flight_per_task={GROUP: plan_in_flight(pool, concurrent)},
                       concurrent_tasks=concurrent)


def _docs_frame(spark: Any, docs: Sequence[dict], directory: str) -> Any:
    """The documents as a parquet table the job reads, like the real job reads its Delta table.

    (``createDataFrame`` would ship every document through one gRPC message, capped at 128 MiB.)
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({k: [d[k] for d in docs] for k in ("doc_id", "source", "scorer", "text")})
    pq.write_table(table, f"{directory}/docs.parquet", row_group_size=512)
    return spark.read.parquet(directory)


def run_spark(spark: Any, pool: PoolConfig, docs: Sequence[dict], builder: PromptBuilder,
              sampling: SamplingConfig, tasks: int) -> dict[str, Any]:
    from mira_spark.scoring.stage import score_documents
    from mira_spark.store.engines import default_parallelism

    concurrent = min(tasks, default_parallelism(spark))
    plan = _spark_plan(pool, builder, sampling, concurrent)
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="mira-bench-docs-")
    try:
        frame = _docs_frame(spark, docs, directory)
        with CpuTimer() as t:
            rows = score_documents(frame, plan, tasks).select("status", "latency_s").collect()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"cpu": t.cpu, "wall": t.wall, "latencies": [r["latency_s"] for r in rows if r["status"] == "ok"],
            "failed": sum(r["status"] != "ok" for r in rows), "docs": len(docs),
            "in_flight_per_task": plan.in_flight_per_task[GROUP], "concurrent_tasks": concurrent}


def _naive_udf(urls: list[str], sampling: SamplingConfig) -> Callable[[Iterator[Any]], Iterator[Any]]:
    def fn(batches: Iterator[Any]) -> Iterator[Any]:
        import urllib.request

        import pyarrow as pa

        builder = bench_builder(sampling.max_tokens)
        for batch in batches:
            ids, statuses, latencies = [], [], []
            for row in batch.to_pylist():
                url = urls[zlib.crc32(row["doc_id"].encode()) % len(urls)] + "/chat/completions"
                payload = {"model": DEFAULT_MODEL, "messages": builder.build(row["source"], row["text"]).messages,
                           "temperature": sampling.temperature, "top_p": sampling.top_p,
                           "max_tokens": sampling.max_tokens}
                req = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                             headers={"Content-Type": "application/json",
                                                      "X-Request-Id": row["doc_id"]})
                started = time.perf_counter()
                try:
                    with urllib.request.urlopen(req, timeout=600) as resp:
                        json.loads(resp.read())
                        status = resp.status
                except OSError:
                    status = 0
                ids.append(row["doc_id"])
                statuses.append(status)
                latencies.append(time.perf_counter() - started)
            yield pa.RecordBatch.from_pydict({"doc_id": ids, "status": statuses, "latency_s": latencies})

    return fn


def run_naive(spark: Any, pool: PoolConfig, docs: Sequence[dict], sampling: SamplingConfig) -> dict[str, Any]:
    import shutil
    import tempfile

    from pyspark.sql import functions as F

    tasks = os.cpu_count() or 2
    fn = _naive_udf([e.url for e in pool.endpoints], sampling)
    directory = tempfile.mkdtemp(prefix="mira-bench-docs-")
    try:
        frame = _docs_frame(spark, docs, directory).repartition(tasks, F.xxhash64("doc_id"))
        with CpuTimer() as t:
            rows = frame.mapInArrow(fn, "doc_id string, status int, latency_s double").collect()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"cpu": t.cpu, "wall": t.wall, "latencies": [r["latency_s"] for r in rows if r["status"] == 200],
            "failed": sum(r["status"] != 200 for r in rows), "docs": len(docs)}


def datatrove_available() -> bool:
    try:
        import datatrove.pipeline.inference.run_inference  # noqa: F401
        import httpx  # noqa: F401  # its readiness probe imports httpx and loops forever without it
    except ImportError:
        return False
    return True


def run_datatrove(pool: PoolConfig, requests: list[ScoreRequest], sampling: SamplingConfig) -> dict[str, Any]:
    """One ``InferenceRunner`` per endpoint (it takes one URL), each in its own thread and loop."""
    from datatrove.data import Document
    from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
    from datatrove.pipeline.writers import JsonlWriter

    try:
        from loguru import logger as loguru_logger

        loguru_logger.remove()
        loguru_logger.add(sys.stderr, level="WARNING")
    except ImportError:  # pragma: no cover - datatrove depends on loguru
        pass
    messages = {r.key: r.messages for r in requests}
    latencies: list[float] = []
    failures: list[int] = []
    n = len(pool.endpoints)
    shards = [requests[i::n] for i in range(n)]

    async def rollout(document: Any, generate: Any) -> str:
        started = time.perf_counter()
        result = await generate({"messages": messages[document.id], "temperature": sampling.temperature,
                                 "top_p": sampling.top_p, "max_tokens": sampling.max_tokens})
        latencies.append(time.perf_counter() - started)
        return result.text[:0]  # keep the output files small; the text is not what is measured

    with tempfile.TemporaryDirectory(prefix="mira-bench-datatrove-") as tmp:

        def one(rank: int, ep_url: str, shard: list[ScoreRequest]) -> None:
            config = InferenceConfig(server_type="endpoint", model_name_or_path=DEFAULT_MODEL,
                                     endpoint_url=ep_url.removesuffix("/v1"), model_max_context=MAX_MODEL_LEN,
                                     max_concurrent_generations=pool.slots_per_endpoint, metric_interval=3600,
                                     request_timeout=600, server_ready_max_attempts=20,
                                     server_ready_delay_sec=0.5)
            runner = InferenceRunner(rollout, config, JsonlWriter(f"{tmp}/out-{rank}"), skip_bad_requests=True)
            docs = [Document(text="", id=r.key) for r in shard]
            try:
                runner.run(docs, rank=0)
            except Exception:
                log.exception("datatrove runner %d failed", rank)
                failures.append(len(shard))

        threads = [threading.Thread(target=one, args=(i, ep.url, shard), daemon=True)
                   for i, (ep, shard) in enumerate(zip(pool.endpoints, shards, strict=True))]
        with CpuTimer() as t:
            for th in threads:
                th.start()
            for th in threads:
                th.join(DATATROVE_TIMEOUT_S)
    return {"cpu": t.cpu, "wall": t.wall, "latencies": latencies,
            "failed": len(requests) - len(latencies), "docs": len(requests)}


# ---- driver -----------------------------------------------------------------------------------------


def _pool_rows(stats: Sequence[dict[str, Any]], speeds: Sequence[float], slots: int) -> dict[str, Any]:
    """Busy slots, queues and queued-while-idle over the pool's steady window, from the change-point logs."""
    window = steady_window(stats)
    if window is None:
        return {}
    view = pool_view([ChangeSeries.from_stats(s) for s in stats], *window)
    return {
        "utilization_pool_window": round(view.utilization(speeds, slots), 4),
        "busy_slots_mean": round(view.mean_running, 1),
        "queued_mean": round(view.queued, 2),
        "queued_while_idle_mean": round(view.queued_while_idle, 2),
        "busy_by_endpoint": [round(e.busy, 3) for e in view.endpoints],
        "queued_by_endpoint": [round(e.queued, 2) for e in view.endpoints],
        "queued_while_idle_by_endpoint": [round(e.queued_while_idle, 2) for e in view.endpoints],
        "change_log_truncated": any(s["changes"]["truncated"] for s in stats),
    }


def _summarise(name: str, run: dict[str, Any], sims: SimPool, sim_cpu: float) -> dict[str, Any]:
    stats = sims.stats(changes=True)
    m = measure(stats, sims.speeds, sims.slots, sims.model)
    lat = run.get("latencies", [])
    row: dict[str, Any] = {
        "client": name,
        "utilization": round(m.busy, 4),
        "rate_utilization": round(m.utilization, 4),
        "requests_per_s": round(m.requests_per_s, 2),
        "capacity_rps": round(m.capacity_rps, 2),
        "mean_load": round(m.mean_load, 1),
        "slots_total": m.slots_total,
        "load_per_slot": round(m.mean_load / m.slots_total, 3) if m.slots_total else 0.0,
        "p50_s": round(percentile(lat, 0.50), 3),
        "p99_s": round(percentile(lat, 0.99), 3),
        "mean_latency_s": round(mean(lat), 3),
        "cpu_ms_per_request": round(1000 * run["cpu"] / max(m.requests, 1), 3),
        "sim_cpu_share_max": round(sim_cpu / max(run["wall"], 1e-9), 3),
        "overflows": m.overflows,
        "requests": m.requests,
        "docs": run["docs"],
        "failed": run["failed"],
        "wall_s": round(run["wall"], 2),
        "window_s": round(m.window_s, 2),
        "max_requests_per_doc": m.max_requests_per_id,
        "mix": m.mix,
    }
    row.update(_pool_rows(stats, sims.speeds, sims.slots))
    for key in ("max_client_in_flight", "in_flight_per_task", "concurrent_tasks", "jobs"):
        if key in run:
            row[key] = run[key]
    return row


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mira-spark bench throughput", description=__doc__.splitlines()[0])
    p.add_argument("--endpoints", type=int, default=4, help="simulated endpoints (one process each)")
    p.add_argument("--docs", type=int, default=DEFAULT_DOCS, help="documents per client")
    p.add_argument("--slots", type=int, default=256, help="slots per endpoint (vLLM max_num_seqs)")
    p.add_argument("--speeds", default=None, help="relative speed per endpoint, e.g. 1,1,2,4")
    p.add_argument("--tasks", type=int, default=None, help="Spark tasks for the spark client (default: cores)")
    p.add_argument("--clients", default=",".join(DEFAULT_CLIENTS),
                   help=f"comma-separated subset of {','.join(CLIENTS)} (default: all but plain)")
    p.add_argument("--jobs", type=int, default=1,
                   help="run 'ours' as this many independent jobs sharing the pool at once (default 1)")
    p.add_argument("--metrics-poll-s", type=float, default=1.0,
                   help="the pool's metrics_poll_s for ours/spark/static (default 1.0, as before)")
    p.add_argument("--time-scale", type=float, default=None,
                   help="wall s = model s / X (default: chosen so the pool serves about --target-rps)")
    p.add_argument("--target-rps", type=float, default=DEFAULT_TARGET_RPS,
                   help="pool capacity in requests/s used to choose the time scale")
    p.add_argument("--naive-docs", type=int, default=DEFAULT_NAIVE_DOCS, help="cap of documents for naive")
    p.add_argument("--json-only", action="store_true", help="print only the final JSON line")
    add_service_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        speeds = parse_speeds(args.speeds, args.endpoints) if args.speeds else [1.0] * args.endpoints
    except ValueError as exc:
        print(f"bench throughput: {exc}", file=sys.stderr)
        return 2
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = sorted(set(clients) - set(CLIENTS))
    if unknown or args.docs < 1 or args.slots < 1 or args.jobs < 1 or args.metrics_poll_s < 0:
        print(f"bench throughput: unknown clients {unknown} or non-positive sizes", file=sys.stderr)
        return 2
    try:
        service = service_settings(args) if args.service == "fixed" or args.fifo else {}
    except ValueError as exc:
        print(f"bench throughput: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RUST_LOG", "error")
    say: Callable[[str], None] = (lambda _m: None) if args.json_only else (lambda m: print(m, flush=True))

    sampling = SamplingConfig()
    builder = bench_builder(sampling.max_tokens)
    docs = bench_documents(args.docs)
    with CpuTimer() as build:
        requests = bench_requests(docs, builder)
    build_ms = 1000 * build.cpu / len(requests)
    time_scale = args.time_scale or auto_time_scale(speeds, args.slots, expected_mix(requests, builder),
                                                    args.target_rps)
    tasks = args.tasks or (os.cpu_count() or 2)
    regime = (f"service {args.service}" + (f" {args.service_s:g} s {args.service_dist}" if args.service == "fixed"
                                           else "") + (", strict FIFO" if args.fifo else ""))
    say(f"{len(speeds)} endpoints x {args.slots} slots, speeds {speeds}, time scale {time_scale:.3g}, {regime}; "
        f"{len(docs)} documents (prompt build {build_ms:.2f} ms CPU/doc); Spark tasks {tasks}; "
        f"metrics poll {args.metrics_poll_s:g} s; jobs {args.jobs}")

    sims = SimPool.start(speeds, args.slots, time_scale, service)
    pool = sims.pool_config(metrics_poll_s=args.metrics_poll_s)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    spark_cm = None
    spark = None
    try:
        if {"spark", "naive"} & set(clients):
            spark_cm = own_sail_session("mira-bench")
            spark = spark_cm.__enter__()
        for name in clients:
            if name == "datatrove" and not datatrove_available():
                skipped[name] = "not installed (pip install 'mira-spark[peers]')"
                say("datatrove: not installed")
                continue
            sims.reset()
            cpu0 = sims.cpu_seconds()
            say(f"running {name} ...")
            if name == "ours" and args.jobs > 1:
                run = run_jobs(pool, requests, builder, sampling, args.jobs)
            elif name == "ours":
                run = run_ours(pool, requests, builder, sampling)
            elif name == "plain":
                run = run_plain(pool, requests, sampling)
            elif name == "static":
                run = run_static(pool, requests, builder, sampling)
            elif name == "datatrove":
                run = run_datatrove(pool, requests, sampling)
            elif name == "spark":
                run = run_spark(spark, pool, docs, builder, sampling, tasks)
            else:
                run = run_naive(spark, pool, docs[: args.naive_docs], sampling)
            sim_cpu = max((b - a for a, b in zip(cpu0, sims.cpu_seconds(), strict=True)), default=0.0)
            rows.append(_summarise(name, run, sims, sim_cpu))
    finally:
        if spark_cm is not None:
            spark_cm.__exit__(None, None, None)
        sims.stop()

    if not args.json_only:
        print_table(rows, [
            ("client", "client", ""), ("utilization", "util", ".3f"), ("rate_utilization", "rate util", ".3f"),
            ("requests_per_s", "req/s", ".1f"), ("capacity_rps", "capacity", ".1f"),
            ("load_per_slot", "load/slots", ".2f"), ("p50_s", "p50 s", ".2f"), ("p99_s", "p99 s", ".2f"),
            ("cpu_ms_per_request", "cpu ms/req", ".2f"), ("sim_cpu_share_max", "sim cpu", ".2f"),
            ("overflows", "overflow", "d"), ("failed", "failed", "d"), ("requests", "requests", "d"),
        ])
        print()
        print_table([{**r, "busy_by_endpoint": " ".join(f"{b:.2f}" for b in r.get("busy_by_endpoint", []))}
                     for r in rows], [
            ("client", "client", ""), ("utilization_pool_window", "util (log)", ".3f"),
            ("busy_slots_mean", "busy slots", ".1f"), ("queued_mean", "queued", ".1f"),
            ("queued_while_idle_mean", "queued while idle", ".1f"), ("busy_by_endpoint", "busy by endpoint", ""),
        ])
    print(json.dumps({
        "bench": "throughput",
        "endpoints": len(speeds),
        "slots": args.slots,
        "speeds": speeds,
        "time_scale": round(time_scale, 4),
        "docs": len(docs),
        "tasks": tasks,
        "jobs": args.jobs,
        "metrics_poll_s": args.metrics_poll_s,
        "service": service or {"service": "tokens"},
        "prompt_build_ms_per_doc": round(build_ms, 3),
        "clients": {r["client"]: {k: v for k, v in r.items() if k != "client"} for r in rows},
        "skipped": skipped,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
