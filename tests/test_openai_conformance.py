"""The simulator against a client we did not write: the official ``openai`` package (sync and async).

Everything README "About the simulator" says the simulator mirrors of vLLM is exercised here through
``openai.OpenAI`` / ``openai.AsyncOpenAI``: ``/v1/models``, a chat completion with the model card's
sampling (temperature 0.7, top_p 0.95, max_tokens 2048), ``n`` choices (independent, reproducible
samples at temperature > 0), ``stream=True`` (chunks, a usage chunk on request, ``data: [DONE]``), the
400 for prompts over ``max_model_len`` (``BadRequestError`` with vLLM's message), 429 with
``Retry-After`` (``RateLimitError``; the client's own retry loop waits what the header says) and 503
(``InternalServerError``).

The main endpoint is the real ``mira-spark serve-sim`` command in a subprocess (``--sampling-noise``
on, a free port on 127.0.0.1); fault cases use one in-thread endpoint each, so every case starts from
its own seeded fault stream.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai", reason="the reference client is in the test extra: pip install -e '.[test]'")

from mira_spark.devtools.simulator.capacity import sim_tokens  # noqa: E402
from mira_spark.devtools.simulator.faults import FaultInjector, FaultProfile  # noqa: E402
from mira_spark.devtools.simulator.judge import judge_document, parse_template_dimensions, render_completion  # noqa: E402
from mira_spark.devtools.simulator.launcher import SimHandle, free_port, start_in_thread  # noqa: E402
from mira_spark.devtools.simulator.server import SimConfig, overflow_message  # noqa: E402
from mira_spark.parsing.parse import parse_output  # noqa: E402
from mira_spark.prompting.prompts import PromptBuilder  # noqa: E402
from mira_spark.prompting.rubric import Rubric, load_rubric  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "whw06/MIRA-Text-Group1"
CARD_SAMPLING: dict[str, Any] = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 2048}  # the model card's
MAX_MODEL_LEN = 65536
RETRY_AFTER_S = 0.123  # neither 0 nor anything the client's own backoff (0.375 s and up) could produce
DOC = """<!DOCTYPE html><html lang="zh"><head><meta name="viewport" content="width=device-width">
<style>.card { display: flex; transition: all .3s; } @media (max-width: 600px) { .card { display: grid; } }</style>
</head><body><header><nav aria-label="主导航"><ul><li><a href="#">首页</a></li></ul></nav></header>
<main><section><h1>待办清单</h1><label for="t">任务</label><input id="t"></section></main>
<script defer>const list = document.querySelector('ul');
document.getElementById('t').addEventListener('keydown', (e) => { list.append(e.target.value); });</script>
</body></html>
本页面实现了一个简洁的待办清单，采用语义化标签组织结构，并通过媒体查询适配移动端。"""


@pytest.fixture(scope="module")
def builder() -> PromptBuilder:
    rubric = load_rubric("text_group_b", ROOT / "anchors/text/group_B_dim_anchors.jsonl")
    return PromptBuilder(rubric, MODEL, MAX_MODEL_LEN, 2048)


@pytest.fixture(scope="module")
def rubric(builder: PromptBuilder) -> Rubric:
    return builder.rubric


@pytest.fixture(scope="module")
def messages(builder: PromptBuilder) -> list[dict[str, str]]:
    return builder.build("html_cpt", DOC).messages


@pytest.fixture(scope="module")
def expected_text(messages: list[dict[str, str]]) -> str:
    """The deterministic answer (temperature 0) the simulator's judge gives for DOC."""
    dims = parse_template_dimensions(messages[-1]["content"])
    return render_completion(judge_document(DOC, "html_cpt", dims), dims)


@pytest.fixture(scope="module")
def serve_sim() -> Iterator[str]:
    """``mira-spark serve-sim --sampling-noise`` in a subprocess on a free port; yields its /v1 URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mira_spark.cli", "serve-sim", "--port", str(port), "--endpoints", "1",
         "--time-scale", "2000", "--max-model-len", str(MAX_MODEL_LEN), "--model", MODEL, "--sampling-noise"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()  # serve-sim prints one URL per endpoint once all are healthy
        assert url == f"http://127.0.0.1:{port}/v1", f"serve-sim did not start (exit {proc.poll()}): {url!r}"
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.fixture(scope="module")
def client(serve_sim: str) -> Iterator[Any]:
    with openai.OpenAI(base_url=serve_sim, api_key="EMPTY", max_retries=0, timeout=30) as c:
        yield c


def _stats(url: str) -> dict[str, Any]:
    import json

    with urllib.request.urlopen(url.removesuffix("/v1") + "/sim/stats", timeout=5) as resp:
        return json.loads(resp.read())


# ---------------------------------------------------------------- models, one completion


def test_models_list(client: Any) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].object == "model"
    assert models[0].model_extra["max_model_len"] == MAX_MODEL_LEN  # vLLM adds it; the client keeps extras


def test_completion_with_the_model_cards_sampling(client: Any, messages: list[dict[str, str]], rubric: Rubric,
                                                  expected_text: str) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=messages, **CARD_SAMPLING)
    assert resp.object == "chat.completion" and resp.model == MODEL and resp.id
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0 and choice.finish_reason == "stop" and choice.message.role == "assistant"
    card = parse_output(choice.message.content, rubric)
    assert card.parse_status == "ok" and all(v is not None for v in card.scores.values())
    assert resp.usage.completion_tokens == sim_tokens(choice.message.content) + 1
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    # At temperature 0 the answer is the judge's, exactly.
    greedy = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=2048)
    assert greedy.choices[0].message.content == expected_text


# ---------------------------------------------------------------- n choices


def test_n_choices_are_independent_reproducible_samples(client: Any, messages: list[dict[str, str]],
                                                        rubric: Rubric) -> None:
    k = 4
    resp = client.chat.completions.create(model=MODEL, messages=messages, n=k, seed=123, **CARD_SAMPLING)
    assert [c.index for c in resp.choices] == list(range(k))
    texts = [c.message.content for c in resp.choices]
    cards = [parse_output(t, rubric) for t in texts]
    assert all(c.parse_status == "ok" for c in cards)
    assert len({tuple(c.scores.values()) for c in cards}) >= 3  # samples, not k copies
    assert resp.usage.completion_tokens == sum(sim_tokens(t) + 1 for t in texts)

    again = client.chat.completions.create(model=MODEL, messages=messages, n=k, seed=123, **CARD_SAMPLING)
    assert [c.message.content for c in again.choices] == texts  # same seed, same samples
    other = client.chat.completions.create(model=MODEL, messages=messages, n=k, seed=124, **CARD_SAMPLING)
    assert [c.message.content for c in other.choices] != texts


def test_n_choices_at_temperature_zero_are_identical(client: Any, messages: list[dict[str, str]],
                                                     expected_text: str) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=messages, n=3, temperature=0, max_tokens=2048)
    assert [c.message.content for c in resp.choices] == [expected_text] * 3


def test_n_below_one_is_a_bad_request(client: Any, messages: list[dict[str, str]]) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=messages, n=0, max_tokens=64)
    assert err.value.status_code == 400 and "n must be at least 1" in err.value.message


# ---------------------------------------------------------------- streaming


def test_stream_chunks_then_usage(client: Any, messages: list[dict[str, str]], expected_text: str) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=2048)
    stream = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=2048,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert len(content_chunks) > 2  # really streamed, not one blob
    assert "".join(c.choices[0].delta.content or "" for c in content_chunks) == expected_text
    finish = [c.choices[0].finish_reason for c in content_chunks]
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}
    assert all(c.usage is None for c in content_chunks)
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.model_dump() == plain.usage.model_dump()


def test_stream_without_include_usage_has_no_usage_chunk(client: Any, messages: list[dict[str, str]]) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=2048,
                                                 stream=True))
    assert chunks and all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_stream_ends_with_done(client: Any, messages: list[dict[str, str]]) -> None:
    with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=messages, temperature=0, max_tokens=2048, stream=True) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in raw.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1


def test_async_stream_of_n_samples_matches_the_plain_answer(serve_sim: str, messages: list[dict[str, str]]) -> None:
    async def run() -> tuple[list[str], list[str]]:
        async with openai.AsyncOpenAI(base_url=serve_sim, api_key="EMPTY", max_retries=0, timeout=30) as c:
            plain = await c.chat.completions.create(model=MODEL, messages=messages, n=2, seed=7, **CARD_SAMPLING)
            stream = await c.chat.completions.create(model=MODEL, messages=messages, n=2, seed=7, stream=True,
                                                     **CARD_SAMPLING)
            parts: dict[int, list[str]] = {0: [], 1: []}
            async for chunk in stream:
                for choice in chunk.choices:
                    parts[choice.index].append(choice.delta.content or "")
            return [c.message.content for c in plain.choices], ["".join(parts[0]), "".join(parts[1])]

    plain, streamed = asyncio.run(run())
    assert streamed == plain and plain[0] != plain[1]


# ---------------------------------------------------------------- errors


def test_prompt_over_max_model_len_is_bad_request_with_vllms_message(client: Any, serve_sim: str,
                                                                     messages: list[dict[str, str]]) -> None:
    before = _stats(serve_sim)["overflows"]
    huge = [messages[0], {"role": "user", "content": "页" * 80_000}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=huge, **CARD_SAMPLING)
    exc = err.value
    assert exc.status_code == 400 and exc.type == "BadRequestError"
    message = exc.body["message"]
    m = re.fullmatch(r"This model's maximum context length is 65536 tokens\. However, you requested (\d+) tokens "
                     r"\((\d+) in the messages, 2048 in the completion\)\. Please reduce the length of the "
                     r"messages or completion\.", message)
    assert m is not None, message
    assert message == overflow_message(MAX_MODEL_LEN, int(m.group(2)), 2048)
    assert message in exc.message
    assert _stats(serve_sim)["overflows"] == before + 1


def _fault_sim(rule: dict[str, Any], seed: int = 0) -> SimHandle:
    return start_in_thread(SimConfig(name="conformance-faults", time_scale=2000.0, seed=seed,
                                     faults=FaultProfile.model_validate({"rules": [rule]})))


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every ``time.sleep`` the sync client's retry loop makes (each still sleeps for real)."""
    import openai._base_client as base

    real = time.sleep
    seen: list[float] = []
    test_thread = threading.get_ident()  # the patch is the global time.sleep: other threads' sleeps are not ours

    def record(seconds: float) -> None:
        if threading.get_ident() == test_thread:
            seen.append(seconds)
        real(seconds)

    monkeypatch.setattr(base.time, "sleep", record)
    return seen


def test_429_is_rate_limit_error_after_the_clients_retries_each_waiting_retry_after(
        messages: list[dict[str, str]], sleeps: list[float]) -> None:
    rule = {"kind": "rate_limit", "probability": 1, "retry_after_s": RETRY_AFTER_S}
    with _fault_sim(rule) as sim, openai.OpenAI(base_url=sim.url, api_key="EMPTY", max_retries=2) as c:
        with pytest.raises(openai.RateLimitError) as err:
            c.chat.completions.create(model=MODEL, messages=messages, **CARD_SAMPLING)
        stats = sim.stats()
    assert err.value.status_code == 429
    assert float(err.value.response.headers["retry-after"]) == RETRY_AFTER_S
    assert stats["requests"] == 3 and stats["faults"]["rate_limit"] == 3  # 1 try + max_retries
    assert sleeps == [pytest.approx(RETRY_AFTER_S)] * 2  # the header's wait, not the client's backoff


def test_429_then_success_waits_retry_after_once(messages: list[dict[str, str]], sleeps: list[float],
                                                 expected_text: str) -> None:
    rule = {"kind": "rate_limit", "probability": 0.5, "retry_after_s": RETRY_AFTER_S}
    profile = FaultProfile.model_validate({"rules": [rule]})

    def limited_then_served(seed: int) -> bool:
        injector = FaultInjector(profile, seed)
        return injector.decide(0.0) is not None and injector.decide(0.0) is None

    seed = next(s for s in range(1000) if limited_then_served(s))
    with _fault_sim(rule, seed=seed) as sim, openai.OpenAI(base_url=sim.url, api_key="EMPTY", max_retries=1) as c:
        resp = c.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=2048)
        stats = sim.stats()
    assert resp.choices[0].message.content == expected_text
    assert stats["requests"] == 2 and stats["faults"]["rate_limit"] == 1
    assert sleeps == [pytest.approx(RETRY_AFTER_S)]


def test_503_is_internal_server_error(messages: list[dict[str, str]]) -> None:
    with _fault_sim({"kind": "http_error", "probability": 1, "status": 503}) as sim, \
            openai.OpenAI(base_url=sim.url, api_key="EMPTY", max_retries=0) as c:
        with pytest.raises(openai.InternalServerError) as err:
            c.chat.completions.create(model=MODEL, messages=messages, **CARD_SAMPLING)
        stats = sim.stats()
    assert err.value.status_code == 503
    assert "retry-after" not in err.value.response.headers
    assert stats["requests"] == 1 and stats["faults"]["http_error"] == 1
