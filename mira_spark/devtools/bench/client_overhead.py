"""``mira-spark bench client-overhead``: requests/s one core of the scoring loop drives, 30 KB prompts.

Takes ``--requests N [--prompt-kb 30] [--in-flight 64] [--servers 1] [--check] [--clients ours,openai]``;
starts a zero-latency
OpenAI-compatible endpoint in separate processes (aiohttp: read the body, answer a fixed ~1.7 KB scorer
completion at once — no capacity model, no judging, so the server costs as little as possible), pins
this process to one core (the servers to the others where there are any) and runs
:func:`~mira_spark.serving.runner.run_requests` over N requests with ~30 KB prompts. ``--check`` adds the
scoring stage's output check (the parse of every answer), as in the real loop.

``--clients`` picks the transports measured one after the other on the same endpoints, prompts, sampling
and concurrency: ``ours`` (the scoring loop: aiohttp, routing, retry policy, breaker) and ``openai``
(the official ``openai.AsyncOpenAI`` client, ``max_retries=0``, the same number of asyncio workers, one
client per endpoint, round-robin). Each run is preceded by an untimed warm-up of ``--in-flight`` requests.

Gives a small table and a final JSON line ``{"bench": "client-overhead", "requests_per_cpu_s": ...,
"clients": {name: row}}`` (the top-level keys are the first client's row): requests per CPU-second of
this process (the per-core figure; CPU time counts every thread), per wall-second, and CPU ms per request.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import sys
import time
from typing import Any

from mira_spark.config import EndpointConfig, PoolConfig, SamplingConfig
from mira_spark.devtools.bench.common import CpuTimer, print_table
from mira_spark.serving.types import RunStats, ScoreRequest

DEFAULT_REQUESTS = 5000
CLIENTS = ("ours", "openai")
OPENAI_TIMEOUT_S = 900.0  # the pool's default request timeout
SERVER_START_TIMEOUT_S = 30.0
RATIONALE = "结构清晰，语义标签使用得当，但缺少无障碍属性与响应式细节 (missing aria labels)。"


def answer_text() -> str:
    """A well-formed scorer answer for the sample rubric (15 slot lines + summary), ~1.7 KB."""
    from mira_spark.devtools.bench.common import bench_rubric

    lines = [f"[{d.slot}] {d.dimension}: 7/10 — {RATIONALE}" for d in bench_rubric().dimensions]
    lines += ["overall: 70", "training_recommendation: keep", "domain_tag: landing-page", "brief: 一个落地页。"]
    return "\n".join(lines)


def _answer_body(text: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-echo", "object": "chat.completion", "created": 0, "model": "echo",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 8000, "completion_tokens": 600, "total_tokens": 8600},
    }).encode()


def _serve(port: int, cpus: list[int], text: str) -> None:
    """Entry point of a spawned echo-server process."""

    from aiohttp import web

    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
    body = _answer_body(text)

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", ok)
    app.router.add_get("/metrics", ok)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handle_signals=True)


def _wait_ready(port: int, proc: Any) -> None:
    import urllib.request

    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.exitcode is not None:
            raise RuntimeError(f"echo server on port {port} exited with code {proc.exitcode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"echo server on port {port} not ready within {SERVER_START_TIMEOUT_S:g}s")


def prompt_messages(prompt_kb: float) -> list[dict[str, str]]:
    """System + user messages of about ``prompt_kb`` KB of UTF-8, mixed Chinese, HTML and English."""
    unit = "<section class=\"card\"><h2>产品介绍</h2><p>This landing page uses flexbox 布局与媒体查询。</p></section>\n"
    target = int(prompt_kb * 1024)
    system = "You are a MIRA anchored data-quality judge. " * 40
    user = unit * max(1, (target - len(system.encode())) // len(unit.encode()))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def main(argv: list[str] | None = None) -> int:
    from mira_spark.devtools.simulator.launcher import free_ports

    parser = argparse.ArgumentParser(prog="mira-spark bench client-overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="requests to send")
    parser.add_argument("--prompt-kb", type=float, default=30.0, help="prompt size in KB")
    parser.add_argument("--in-flight", type=int, default=64, help="requests kept outstanding")
    parser.add_argument("--servers", type=int, default=1, help="echo server processes (one endpoint each)")
    parser.add_argument("--check", action="store_true", help="also run the scoring stage's output check")
    parser.add_argument("--clients", default="ours", help="comma-separated: ours, openai (default ours)")
    parser.add_argument("--json-only", action="store_true", help="print only the final JSON line")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.in_flight < 1 or args.servers < 1 or args.prompt_kb <= 0:
        parser.error("sizes must be positive")
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = sorted(set(clients) - set(CLIENTS))
    if unknown or not clients:
        print(f"bench client-overhead: unknown client(s) {unknown or clients}; choose from {', '.join(CLIENTS)}",
              file=sys.stderr)
        return 2
    if "openai" in clients and not _openai_available():
        print("bench client-overhead: --clients openai needs the openai package: pip install -e '.[test]'",
              file=sys.stderr)
        return 2

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    client_cpu, server_cpus = (cpus[:1], cpus[1:] or cpus) if cpus else ([], [])
    ctx = multiprocessing.get_context("spawn")
    ports = free_ports(args.servers)
    procs = [ctx.Process(target=_serve, args=(p, server_cpus, answer_text()), daemon=True, name=f"mira-echo-{p}") for p in ports]
    for proc in procs:
        proc.start()
    try:
        for port, proc in zip(ports, procs, strict=True):
            _wait_ready(port, proc)
        if client_cpu and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(client_cpu))
        rows = [_run(args, ports) if name == "ours" else _run_openai(args, ports) for name in clients]
    finally:
        for proc in procs:
            proc.terminate()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(cpus))

    if not args.json_only:
        print_table(rows, [("client", "client", "s"), ("requests", "requests", "d"), ("prompt_kb", "prompt KB", ".1f"),
                           ("requests_per_cpu_s", "req/CPU-s", ".0f"), ("requests_per_s", "req/s wall", ".0f"),
                           ("cpu_ms_per_request", "cpu ms/req", ".3f"), ("failed", "failed", "d")])
    print(json.dumps({"bench": "client-overhead", **rows[0], "clients": {r["client"]: r for r in rows}}))
    return 0


def _openai_available() -> bool:
    try:
        import openai  # noqa: F401
    except ImportError:
        return False
    return True


def _run(args: argparse.Namespace, ports: list[int]) -> dict[str, Any]:
    from mira_spark.serving.runner import RowHooks, RunnerOptions, run_requests

    pool = PoolConfig(endpoints=tuple(EndpointConfig(url=f"http://127.0.0.1:{p}/v1") for p in ports),
                      slots_per_endpoint=args.in_flight, api_key_env=None, metrics_poll_s=0)
    messages = prompt_messages(args.prompt_kb)
    prompt_bytes = len(json.dumps(messages, ensure_ascii=False).encode())
    requests = [ScoreRequest(index=i, key=f"doc-{i}", messages=messages) for i in range(args.requests)]
    check = None
    if args.check:
        from mira_spark.devtools.bench.common import bench_builder
        from mira_spark.scoring.stage import make_check_output

        builder = bench_builder()
        check = make_check_output(builder.rubric, builder, "keep")
    sampling = SamplingConfig()
    warm = requests[: min(len(requests), args.in_flight)]
    opts = RunnerOptions(pool=pool, sampling=sampling, model="echo", in_flight=args.in_flight,
                         hooks=RowHooks(check_output=check))
    run_requests(warm, opts)
    stats = RunStats()
    with CpuTimer() as t:
        results = run_requests(requests, opts, stats)
    return _row("ours", args, prompt_bytes, t, len(results), sum(r.status != "ok" for r in results))


def _row(client: str, args: argparse.Namespace, prompt_bytes: int, t: CpuTimer, n: int,
         failed: int) -> dict[str, Any]:
    return {
        "client": client,
        "requests": n,
        "prompt_kb": round(prompt_bytes / 1024, 1),
        "in_flight": args.in_flight,
        "check_output": bool(args.check),
        "requests_per_cpu_s": round(n / t.cpu, 1) if t.cpu > 0 else 0.0,
        "requests_per_s": round(n / t.wall, 1),
        "cpu_ms_per_request": round(1000 * t.cpu / n, 4),
        "failed": failed,
        "wall_s": round(t.wall, 3),
    }


def _run_openai(args: argparse.Namespace, ports: list[int]) -> dict[str, Any]:
    """The same requests through ``openai.AsyncOpenAI``: ``in_flight`` workers, one client per endpoint."""
    import openai

    messages = prompt_messages(args.prompt_kb)
    prompt_bytes = len(json.dumps(messages, ensure_ascii=False).encode())
    sampling = SamplingConfig()
    check = None
    if args.check:
        from mira_spark.devtools.bench.common import bench_builder
        from mira_spark.scoring.stage import make_check_output

        builder = bench_builder()
        check = make_check_output(builder.rubric, builder, "keep")
    probe = ScoreRequest(index=0, key="doc-0", messages=messages)

    async def send_all(n: int) -> int:
        clients = [openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{p}/v1", api_key="EMPTY", max_retries=0,
                                      timeout=OPENAI_TIMEOUT_S) for p in ports]
        counter = itertools.count()
        failed = 0

        async def worker() -> None:
            nonlocal failed
            while (i := next(counter)) < n:
                try:
                    resp = await clients[i % len(clients)].chat.completions.create(
                        model="echo", messages=messages, temperature=sampling.temperature, top_p=sampling.top_p,
                        max_tokens=sampling.max_tokens)
                    choice = resp.choices[0]
                    if check is not None:
                        check(probe, choice.message.content or "", choice.finish_reason)
                except openai.OpenAIError:
                    failed += 1

        try:
            await asyncio.gather(*(worker() for _ in range(min(args.in_flight, n))))
        finally:
            for c in clients:
                await c.close()
        return failed

    asyncio.run(send_all(min(args.requests, args.in_flight)))
    with CpuTimer() as t:
        failed = asyncio.run(send_all(args.requests))
    return _row("openai", args, prompt_bytes, t, args.requests, failed)


if __name__ == "__main__":
    sys.exit(main())
