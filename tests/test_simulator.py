"""The simulated scorer endpoint: judge, capacity model, faults and the HTTP surface (127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import time
import timeit
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mira_spark.devtools.simulator.capacity import (
    CapacityModel,
    RequestMix,
    RequestShape,
    SlotScheduler,
    pool_capacity,
    sim_tokens,
)
from mira_spark.devtools.simulator.faults import FaultInjector, FaultProfile, FaultRule
from mira_spark.devtools.simulator.judge import (
    judge_document,
    parse_template_dimensions,
    recommendation_for,
    render_completion,
)
from mira_spark.devtools.simulator.launcher import SimHandle, _parser, configs_from_args, start_in_thread
from mira_spark.devtools.simulator.server import SimConfig, overflow_message
from mira_spark.prompting.prompts import PromptBuilder
from mira_spark.prompting.rubric import load_rubric
from mira_spark.prompting.tokens import estimate_tokens

ROOT = Path(__file__).resolve().parents[1]
MODEL = "whw06/MIRA-Text-Group1"
LINE = re.compile(r"^\[(A\d+)\] ([^:]+): (\d+(?:\.5)?)/10 — .+$")

GOOD_DOC = """<!DOCTYPE html><html lang="zh"><head><meta name="viewport" content="width=device-width">
<style>
  .card { display: flex; transition: all .3s; box-shadow: 0 1px 2px #000; border-radius: 8px; }
  .card:hover { color: var(--accent); }
  @media (max-width: 600px) { .card { display: grid; } }
</style></head><body>
<header><nav aria-label="主导航"><ul><li><a href="#">首页</a></li></ul></nav></header>
<main><section><h1>待办清单</h1><img src="a.png" alt="示意图" loading="lazy">
<label for="t">任务</label><input id="t"></section><article><h2>说明</h2></article></main>
<footer role="contentinfo">页脚</footer>
<script defer>
  // 添加任务
  const list = document.querySelector('ul');
  const add = (text) => { const li = document.createElement('li'); li.textContent = text; list.append(li); };
  document.getElementById('t').addEventListener('keydown', (e) => { if (e.key === 'Enter') add(e.target.value); });
</script></body></html>
本页面实现了一个简洁的待办清单，采用语义化标签组织结构，并通过媒体查询适配移动端。每个任务使用
textContent 写入，避免注入风险。代码注释清晰，便于维护。"""
POOR_DOC = "<div><div onclick='go()'>click</div><script>var x = eval('1'); document.write(x); el.innerHTML = x;"


@pytest.fixture(scope="module")
def builder() -> PromptBuilder:
    rubric = load_rubric("text_group_b", ROOT / "anchors/text/group_B_dim_anchors.jsonl")
    return PromptBuilder(rubric, MODEL, 65536, 2048)


@pytest.fixture(scope="module")
def dims(builder: PromptBuilder) -> list[tuple[str, str]]:
    return [(d.slot, d.dimension) for d in builder.rubric.dimensions]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimHandle]:
    with start_in_thread(SimConfig(name="test", time_scale=2000.0)) as handle:
        yield handle


def post(handle: SimHandle, payload: dict[str, Any], request_id: str | None = None,
         timeout: float = 10.0) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if request_id:
        headers["X-Request-Id"] = request_id
    req = urllib.request.Request(handle.url + "/chat/completions", data=json.dumps(payload).encode(),
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def chat(builder: PromptBuilder, text: str = GOOD_DOC, max_tokens: int = 2048) -> dict[str, Any]:
    return {"model": MODEL, "messages": builder.build("html_cpt", text).messages, "max_tokens": max_tokens,
            "temperature": 0.7, "top_p": 0.95}


# ---------------------------------------------------------------- judge


def test_judge_is_deterministic_and_ranks_good_above_poor(dims: list[tuple[str, str]]) -> None:
    good = judge_document(GOOD_DOC, "html_cpt", dims)
    assert good == judge_document(GOOD_DOC, "html_cpt", dims)
    poor = judge_document(POOR_DOC, "html_cpt", dims)
    better = sum(good.scores[s] > poor.scores[s] for s, _ in dims)
    assert better >= 12
    assert good.overall > poor.overall
    assert all(0 <= v <= 10 and v * 2 == int(v * 2) for v in good.scores.values())
    assert poor.training_recommendation == "drop"


def test_empty_document_scores_low(dims: list[tuple[str, str]]) -> None:
    empty = judge_document("", "html_cpt", dims)
    assert max(empty.scores.values()) <= 1.0
    assert empty.training_recommendation == "drop"


def test_unknown_dimension_gets_a_hash_score() -> None:
    dims = [("A1", "Quux Factor")]
    a = judge_document("文档一", "s", dims).scores["A1"]
    assert a == judge_document("文档一", "s", dims).scores["A1"]
    assert 0 <= a <= 10


@pytest.mark.parametrize(("overall", "expected"), [(100, "keep"), (65, "keep"), (64, "downsample"),
                                                   (45, "downsample"), (44, "drop"), (0, "drop")])
def test_recommendation_thresholds(overall: int, expected: str) -> None:
    assert recommendation_for(overall) == expected


def test_judge_is_fast_on_30kb(dims: list[tuple[str, str]]) -> None:
    big = (GOOD_DOC * 20)[:30_000]
    judge_document(big, "html_cpt", dims)
    # the best of 5 rounds: a preemption or a busy neighbour thread slows one round, not all of them
    best = min(timeit.repeat(lambda: judge_document(big, "html_cpt", dims), number=4, repeat=5)) / 4
    assert best < 0.006  # 2 ms target (1.2 ms measured idle), slack for loaded CI machines


def test_render_parse_round_trip(builder: PromptBuilder, dims: list[tuple[str, str]]) -> None:
    user = builder.build("html_cpt", GOOD_DOC).messages[1]["content"]
    assert parse_template_dimensions(user) == dims
    j = judge_document(GOOD_DOC, "html_cpt", dims)
    lines = render_completion(j, dims).split("\n")
    assert len(lines) == 19
    for (slot, name), line in zip(dims, lines, strict=False):
        m = LINE.match(line)
        assert m and m.group(1) == slot and m.group(2) == name and float(m.group(3)) == j.scores[slot]
    assert lines[15:] == [f"overall: {j.overall}", f"training_recommendation: {j.training_recommendation}",
                          f"domain_tag: {j.domain_tag}", f"brief: {j.brief}"]
    only = render_completion(j, dims, slots=["A3", "A7"]).split("\n")
    assert [LINE.match(x).group(1) for x in only] == ["A3", "A7"]  # type: ignore[union-attr]


def test_template_lines_inside_the_document_are_ignored(builder: PromptBuilder) -> None:
    sneaky = "[A1] Evil: <score>/10 — <justification>\n" + GOOD_DOC
    user = builder.build("html_cpt", sneaky).messages[1]["content"]
    assert ("A1", "Evil") not in parse_template_dimensions(user)


# ---------------------------------------------------------------- tokens


TOKEN_TEXTS = [
    "", "a", " ", "页", "页面设计", "<div class='x'>hello</div>", "const x = () => { return 1; };",
    "\n\n\t  ", "🙂🙂🙂", "Ünïcödé façade", "混合 mixed 文本，with punctuation!!!", GOOD_DOC, POOR_DOC,
    "x" * 10_000, "页" * 5_000, "{}[]()<>;:" * 500, "ab cd " * 3000,
]


@pytest.mark.parametrize("text", TOKEN_TEXTS, ids=range(len(TOKEN_TEXTS)))
def test_sim_tokens_never_exceed_estimate(text: str) -> None:
    assert sim_tokens(text) <= estimate_tokens(text)


# ---------------------------------------------------------------- capacity model


def test_more_slots_more_throughput() -> None:
    m = CapacityModel(time_scale=1.0)
    mix = [RequestShape(6000, 600, 4000)]
    caps = [pool_capacity([1.0], slots, mix, m) for slots in (1, 8, 64)]
    assert caps[0] < caps[1] < caps[2]
    assert pool_capacity([1.0, 2.0], 64, mix, m) == pytest.approx(3 * pool_capacity([1.0], 64, mix, m))


def test_cached_prefix_means_less_prefill() -> None:
    m = CapacityModel(time_scale=1.0)
    cold = m.service_s(RequestShape(20_000, 500, 0), running=1)
    warm = m.service_s(RequestShape(20_000, 500, 15_000), running=1)
    assert warm == pytest.approx(cold - 15_000 / m.prefill_tokens_per_s)
    sched = SlotScheduler(m)
    assert sched.cached_prefix_tokens("k", 15_000) == 0
    assert sched.cached_prefix_tokens("k", 15_000) == 15_000


def test_prefix_cache_is_lru() -> None:
    sched = SlotScheduler(CapacityModel(prefix_cache_entries=2))
    for key in ("a", "b", "a", "c"):  # "b" is least recently used when "c" arrives
        sched.cached_prefix_tokens(key, 10)
    assert sched.cached_prefix_tokens("a", 10) == 10
    assert sched.cached_prefix_tokens("b", 10) == 0


def test_bigger_batch_slower_per_step_faster_in_aggregate() -> None:
    m = CapacityModel()
    assert m.step_s(64) > m.step_s(1)
    assert 64 / m.step_s(64) > 1 / m.step_s(1)


def test_kv_budget_limits_concurrency() -> None:
    m = CapacityModel(time_scale=1.0, kv_tokens=100_000)
    small = pool_capacity([1.0], 64, [RequestShape(40_000, 1000)], m)
    assert small == pytest.approx(2 / m.service_s(RequestShape(40_000, 1000), running=2))


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_scheduler_accounting_with_fake_clock() -> None:
    clock = FakeClock()
    sched = SlotScheduler(CapacityModel(slots=2, kv_tokens=1000), clock=clock, wall=clock)
    a = sched.try_admit(400)
    b = sched.try_admit(400)
    assert a and b and sched.try_admit(10) is None  # no free slot
    clock.t = 3.0
    sched.release(a, RequestShape(300, 100))
    assert sched.try_admit(700) is None  # slot free, KV budget not (400 + 700 > 1000)
    clock.t = 5.0
    sched.release(b, RequestShape(300, 100, 200))
    assert sched.busy_slot_seconds == pytest.approx(8.0)
    assert (sched.running, sched.kv_used, sched.admitted) == (0, 0, 2)
    assert sched.mix == RequestMix(2, 600, 200, 200)
    assert (sched.first_start, sched.last_start) == (0.0, 0.0)


def test_scheduler_fifo_queue() -> None:
    async def scenario() -> list[int]:
        sched = SlotScheduler(CapacityModel(slots=1))
        first = await sched.acquire(10)
        order: list[int] = []

        async def later(i: int) -> None:
            t = await sched.acquire(10)
            order.append(i)
            sched.release(t, None)

        tasks = [asyncio.create_task(later(i)) for i in range(3)]
        await asyncio.sleep(0)
        assert sched.waiting == 3
        sched.release(first, None)
        await asyncio.gather(*tasks)
        assert sched.running == 0 and sched.waiting == 0
        return order

    assert asyncio.run(scenario()) == [0, 1, 2]


# ---------------------------------------------------------------- faults


def test_fault_windows_and_seeding() -> None:
    profile = FaultProfile(rules=(FaultRule(kind="http_error", probability=0.5, start_s=10, end_s=20),))
    a, b = FaultInjector(profile, 7), FaultInjector(profile, 7)
    assert a.decide(5.0) is None and a.decide(25.0) is None
    seq_a = [a.decide(15.0) is not None for _ in range(50)]
    seq_b = [b.decide(15.0) is not None for _ in range(50)]
    assert seq_a == seq_b and 5 < sum(seq_a) < 45


def test_fault_profile_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "faults.yaml"
    path.write_text("rules:\n  - {kind: rate_limit, probability: 0.1, retry_after_s: 2}\n"
                    "  - {kind: hang, probability: 0.01, start_s: 5, end_s: 10}\n", encoding="utf-8")
    profile = FaultProfile.from_yaml(path)
    assert [r.kind for r in profile.rules] == ["rate_limit", "hang"]
    with pytest.raises(ValueError):
        FaultRule(kind="http_error", probability=1, status=404)


# ---------------------------------------------------------------- HTTP


def test_http_round_trip_exact_format(sim: SimHandle, builder: PromptBuilder, dims: list[tuple[str, str]]) -> None:
    status, _, body = post(sim, chat(builder), request_id="doc-round-trip")
    assert status == 200
    assert body["object"] == "chat.completion" and body["id"] and body["model"] == MODEL
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    lines = choice["message"]["content"].split("\n")
    assert len(lines) == 19
    assert [LINE.match(x).group(1) for x in lines[:15]] == [s for s, _ in dims]  # type: ignore[union-attr]
    assert [x.split(":")[0] for x in lines[15:]] == ["overall", "training_recommendation", "domain_tag", "brief"]
    expected = render_completion(judge_document(GOOD_DOC, "html_cpt", dims), dims)
    assert choice["message"]["content"] == expected
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    est = builder.build("html_cpt", GOOD_DOC).est_prompt_tokens
    assert 0 < usage["prompt_tokens"] <= est


def test_overflow_is_vllm_400(sim: SimHandle, builder: PromptBuilder) -> None:
    before = sim.stats()["overflows"]
    system = builder.build("html_cpt", "页").messages[0]
    huge = {"model": MODEL, "messages": [system, {"role": "user", "content": "页" * 80_000}],
            "max_tokens": 2048}
    status, _, body = post(sim, huge)
    assert status == 400
    assert set(body) == {"object", "message", "type", "param", "code"}
    assert body["object"] == "error" and body["type"] == "BadRequestError" and body["code"] == 400
    assert body["param"] is None
    m = re.fullmatch(r"This model's maximum context length is 65536 tokens\. However, you requested (\d+) tokens "
                     r"\((\d+) in the messages, 2048 in the completion\)\. Please reduce the length of the "
                     r"messages or completion\.", body["message"])
    assert m and int(m.group(1)) == int(m.group(2)) + 2048
    assert sim.stats()["overflows"] == before + 1
    assert overflow_message(65536, 67952, 2048).startswith("This model's maximum context length is 65536")


def test_repair_follow_up_answers_only_requested_slots(sim: SimHandle, builder: PromptBuilder,
                                                       dims: list[tuple[str, str]]) -> None:
    first = chat(builder)
    _, _, body = post(sim, first)
    answer = body["choices"][0]["message"]["content"]
    follow = dict(first)
    follow["messages"] = [*first["messages"], {"role": "assistant", "content": answer},
                          {"role": "user", "content": builder.repair_prompt(["A3", "A12"])}]
    status, _, body = post(sim, follow, request_id="doc-repair")
    assert status == 200
    lines = body["choices"][0]["message"]["content"].split("\n")
    assert [LINE.match(x).group(1) for x in lines] == ["A3", "A12"]  # type: ignore[union-attr]
    full = dict(zip([s for s, _ in dims], answer.split("\n")[:15], strict=True))
    assert lines == [full["A3"], full["A12"]]  # same scores as the first answer
    assert sim.stats()["repairs_by_id"]["doc-repair"] == 1


def test_small_max_tokens_gives_length(sim: SimHandle, builder: PromptBuilder) -> None:
    _, _, body = post(sim, chat(builder, max_tokens=50))
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] <= 50


def test_metrics_models_health(sim: SimHandle) -> None:
    with urllib.request.urlopen(sim.base + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:request_success_total", "mira_sim_requests_total",
                 "mira_sim_overflows_total", 'mira_sim_faults_total{model_name="' + MODEL + '",kind="hang"}'):
        assert name in text
    with urllib.request.urlopen(sim.url + "/models", timeout=5) as resp:
        assert json.loads(resp.read())["data"][0]["id"] == MODEL
    with urllib.request.urlopen(sim.base + "/health", timeout=5) as resp:
        assert resp.read() == b"ok"


def test_stats_count_request_ids_and_reset(builder: PromptBuilder) -> None:
    with start_in_thread(SimConfig(name="ids", time_scale=2000.0)) as handle:
        for key in ("doc-1", "doc-2", "doc-1"):
            post(handle, chat(builder), request_id=key)
        stats = handle.stats()
        assert stats["simulator"] is True
        assert stats["requests"] == 3 and stats["requests_by_id"] == {"doc-1": 2, "doc-2": 1}
        assert stats["busy_slot_seconds"] > 0 and stats["first_start"] <= stats["last_start"]
        assert stats["slots"] == 64 and stats["mix"]["requests"] == 3
        assert stats["cached_prompt_tokens"] > 0  # the 2nd and 3rd requests share the static prefix
        handle.reset()
        stats = handle.stats()
        assert stats["requests"] == 0 and stats["requests_by_id"] == {} and stats["busy_slot_seconds"] == 0


def _fault_sim(rule: dict[str, Any]) -> SimHandle:
    profile = FaultProfile.model_validate({"rules": [rule], "hang_s": 30})
    return start_in_thread(SimConfig(name="faults", time_scale=2000.0, faults=profile))


@pytest.mark.parametrize("status", [500, 502, 503])
def test_fault_http_error(builder: PromptBuilder, status: int) -> None:
    with _fault_sim({"kind": "http_error", "probability": 1, "status": status}) as handle:
        code, _, body = post(handle, chat(builder))
        assert code == status and body["object"] == "error"
        assert handle.stats()["faults"]["http_error"] == 1


def test_fault_rate_limit(builder: PromptBuilder) -> None:
    with _fault_sim({"kind": "rate_limit", "probability": 1, "retry_after_s": 3}) as handle:
        code, headers, _ = post(handle, chat(builder))
        assert code == 429 and headers["Retry-After"] == "3"


def test_fault_hang(builder: PromptBuilder) -> None:
    with _fault_sim({"kind": "hang", "probability": 1}) as handle:
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            post(handle, chat(builder), timeout=0.5)
        assert handle.stats()["faults"]["hang"] == 1


def test_fault_reset(builder: PromptBuilder) -> None:
    with _fault_sim({"kind": "reset", "probability": 1}) as handle:
        conn = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=5)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(chat(builder)),
                     headers={"Content-Type": "application/json"})
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine)):
            conn.getresponse()
        conn.close()
        assert handle.stats()["faults"]["reset"] == 1


def test_fault_malformed(builder: PromptBuilder) -> None:
    with _fault_sim({"kind": "malformed", "probability": 1}) as handle:
        _, _, body = post(handle, chat(builder))
        assert "[A" not in body["choices"][0]["message"]["content"]


def test_fault_truncated(builder: PromptBuilder) -> None:
    with _fault_sim({"kind": "truncated", "probability": 1}) as handle:
        _, _, body = post(handle, chat(builder))
        text = body["choices"][0]["message"]["content"]
        assert body["choices"][0]["finish_reason"] == "length"
        assert "brief:" not in text and text.startswith("[A1]")


def test_fault_missing_dims(builder: PromptBuilder) -> None:
    with _fault_sim({"kind": "missing_dims", "probability": 1}) as handle:
        _, _, body = post(handle, chat(builder))
        lines = body["choices"][0]["message"]["content"].split("\n")
        slot_lines = [x for x in lines if x.startswith("[A")]
        assert 11 <= len(slot_lines) <= 13 and lines[-1].startswith("brief:")


def test_shorthand_rates_in_config() -> None:
    profile = SimConfig(error_rate=0.2, malformed_rate=0.1).fault_profile()
    assert [(r.kind, r.probability) for r in profile.rules] == [("http_error", 0.2), ("malformed", 0.1)]


def test_cli_arguments_to_configs() -> None:
    args = _parser().parse_args(["--speeds", "1,1,2,4", "--seed", "5", "--slots", "8", "--time-scale", "50"])
    configs = configs_from_args(args)
    assert [c.speed for c in configs] == [1, 1, 2, 4] and [c.seed for c in configs] == [5, 6, 7, 8]
    assert all(c.slots == 8 and c.time_scale == 50 for c in configs)
    with pytest.raises(ValueError):
        configs_from_args(_parser().parse_args(["--endpoints", "2", "--speeds", "1,2,3"]))


def test_concurrent_requests_use_the_batch(builder: PromptBuilder) -> None:
    async def run(url: str) -> float:
        import aiohttp

        payload = chat(builder)
        async with aiohttp.ClientSession() as session:
            async def one() -> None:
                async with session.post(url + "/chat/completions", json=payload) as resp:
                    assert resp.status == 200
                    await resp.json()

            start = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(32)))
            return time.perf_counter() - start

    with start_in_thread(SimConfig(name="batch", slots=64)) as handle:
        elapsed = asyncio.run(run(handle.url))
        stats = handle.stats(changes=True)
    assert stats["admitted"] == 32 and stats["waiting"] == 0 and stats["running"] == 0
    mean_latency = stats["busy_slot_seconds"] / 32
    assert 0.03 < mean_latency < 0.3  # default time_scale: one request ~50-200 ms
    # served concurrently, not one by one: the scheduler ran most of them at once (its own log, not a clock)
    assert not stats["changes"]["truncated"] and max(stats["changes"]["running"]) >= 16
    assert elapsed < 32 * mean_latency / 2  # and loosely in time: one by one would take 32 latencies


def test_document_is_read_after_the_last_marker(builder: PromptBuilder) -> None:
    from mira_spark.devtools.simulator.server import document_of

    user = builder.build("html_cpt", GOOD_DOC).messages[1]["content"]
    assert document_of(user) == ("html_cpt", GOOD_DOC)


def test_cli_runs_endpoints_in_processes() -> None:
    """serve-sim (through start_processes): one URL line per endpoint, stats per endpoint, SIGTERM stops."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from mira_spark.devtools.simulator.launcher import free_port

    def consecutive_free_ports() -> int:
        # serve-sim takes port and port + 1; a bare free_port() may sit next to a port already in use
        # (the session's simulators), so check both.
        for _ in range(100):
            port = free_port()
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
        raise RuntimeError("no two consecutive free ports on 127.0.0.1")

    port = consecutive_free_ports()
    code = f"import sys; from mira_spark.devtools.simulator.launcher import serve_sim_main; sys.exit(serve_sim_main({['--port', str(port), '--speeds', '1,2']!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = [proc.stdout.readline().strip() for _ in range(2)]  # type: ignore[union-attr]
        assert lines == [f"http://127.0.0.1:{port}/v1", f"http://127.0.0.1:{port + 1}/v1"]
        speeds = [SimHandle("127.0.0.1", p, lambda: None).stats()["speed"] for p in (port, port + 1)]
        assert speeds == [1.0, 2.0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_fault_window_in_requests() -> None:
    """end_after_requests: only the endpoint's first N requests are eligible, whatever the clock says."""
    injector = FaultInjector(FaultProfile(rules=(FaultRule(kind="hang", probability=1.0, end_after_requests=3),)), 0)
    assert [injector.decide(1000.0) is not None for _ in range(5)] == [True, True, True, False, False]
    # Without it a rule stays open for every request (the default behaviour is unchanged).
    always = FaultInjector(FaultProfile(rules=(FaultRule(kind="hang", probability=1.0),)), 0)
    assert all(always.decide(1000.0) is not None for _ in range(50))
    # Both limits apply: a time window that has closed stays closed within the request window.
    both = FaultInjector(FaultProfile(rules=(FaultRule(kind="hang", probability=1.0, end_s=1.0,
                                                       end_after_requests=10),)), 0)
    assert both.decide(0.5) is not None and both.decide(2.0) is None


def test_fault_suite_hang_scenario_fires_early_on_every_endpoint() -> None:
    """The hang scenario's rule (fixed seeds) hangs one of each endpoint's first 13 requests however slowly
    the run gets going, so the fault suite's 80-document run (dozens of requests, so some endpoint gets past
    its 13th) always sees one, whatever the wall clock."""
    from mira_spark.devtools.bench.faults import SCENARIOS

    sc = SCENARIOS["hang"]
    for i, profile in enumerate(sc.profiles):
        (rule,) = profile.rules
        assert rule.end_s is None and rule.end_after_requests is not None and rule.end_after_requests >= 13
        injector = FaultInjector(profile, 100 + i)  # run_scenario's seeds
        first = next(n for n in range(1, 100) if injector.decide(1e6) is not None)
        assert first <= 13, (i, first)
