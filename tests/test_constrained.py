"""Constrained output builders (pure), the config switch, and the request body the runner sends."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from mira_spark.config import (
    ConfigError,
    EndpointConfig,
    PoolConfig,
    SamplingConfig,
    ScoringConfig,
    load_settings,
)
from mira_spark.parsing.parse import parse_output
from mira_spark.prompting.constrained import (
    OutputLimits,
    gbnf_literal,
    output_grammar,
    output_regex,
    regex_literal,
    request_fields,
)
from mira_spark.prompting.rubric import load_rubric, rubric_from_names
from mira_spark.scoring.stage import group_sampling
from mira_spark.serving.runner import RunnerOptions, run_requests
from mira_spark.serving.types import ScoreRequest

REPO = Path(__file__).resolve().parents[1]
ANCHORS = REPO / "anchors" / "text" / "group_B_dim_anchors.jsonl"
CALIBRATION = REPO / "anchors" / "text" / "group_B_calibration.jsonl"
ODD_NAMES = ["Code Readability & Organization", "Accessibility (a11y) Compliance", 'Say "hi" \\ [x] {1} a|b+c?*^$.']


def _seed_text(rubric: Any, scores: dict[str, str], rationales: dict[str, str], overall: str = "72",
               rec: str = "keep", tag: str = "form/login", brief: str = "A short summary.") -> str:
    lines = [f"[{d.slot}] {d.dimension}: {scores[d.slot]}/10 — {rationales[d.slot]}" for d in rubric.dimensions]
    lines += [f"overall: {overall}", f"training_recommendation: {rec}", f"domain_tag: {tag}", f"brief: {brief}"]
    return "\n".join(lines)


def test_rules_and_names_come_from_the_rubric() -> None:
    rubric = rubric_from_names("odd", ODD_NAMES)
    grammar = output_grammar(rubric)
    assert grammar.splitlines()[0] == "root ::= a1 a2 a3 summary"
    for d in rubric.dimensions:
        assert f"a{d.index} ::= {gbnf_literal(f'[{d.slot}] {d.dimension}: ')} score" in grammar
    big = load_rubric("text_group_b", ANCHORS)
    assert output_grammar(big).splitlines()[0] == "root ::= " + " ".join(f"a{i}" for i in range(1, 16)) + " summary"
    pattern = output_regex(big)
    assert all(regex_literal(f"[{d.slot}] {d.dimension}: ") in pattern for d in big.dimensions)


def test_calibration_references_in_the_seed_format_match_and_parse() -> None:
    """The model card's own format (the calibration references, rendered like the system prompt) is accepted."""
    rubric = load_rubric("text_group_b", ANCHORS, CALIBRATION)
    assert rubric.calibration
    pattern = output_regex(rubric)
    for ref in rubric.calibration:
        text = _seed_text(rubric, {s: f"{v:g}" for s, v in ref.scores.items()}, ref.rationales,
                          str(ref.overall), ref.training_recommendation, ref.domain_tag, ref.brief)
        assert re.fullmatch(pattern, text), ref.ref_id
        card = parse_output(text, rubric)
        assert card.parse_status == "ok" and card.scores == ref.scores and not card.parse_errors


_SCORE = st.sampled_from(["10"] + [str(i) for i in range(10)] + [f"{i}.{j}" for i in range(10) for j in range(10)])
_FIRST = st.characters(blacklist_characters="\n\r \t*_`\"'", blacklist_categories=("Cs",))
_REST = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=11)


@settings(max_examples=150, deadline=None)
@given(scores=st.lists(_SCORE, min_size=3, max_size=3), firsts=st.lists(_FIRST, min_size=3, max_size=3),
       rests=st.lists(_REST, min_size=3, max_size=3), overall=st.integers(0, 100),
       rec=st.sampled_from(["keep", "downsample", "drop"]))
def test_whatever_the_regex_admits_parses_ok_with_exactly_the_written_scores(
    scores: list[str], firsts: list[str], rests: list[str], overall: int, rec: str
) -> None:
    rubric = rubric_from_names("odd", ODD_NAMES)
    slots = rubric.slots
    text = _seed_text(rubric, dict(zip(slots, scores, strict=True)),
                      {s: f + r for s, f, r in zip(slots, firsts, rests, strict=True)}, str(overall), rec)
    assert re.fullmatch(output_regex(rubric, OutputLimits(rationale_chars=12)), text)
    card = parse_output(text, rubric)
    assert card.parse_status == "ok"
    assert card.scores == {s: float(v) for s, v in zip(slots, scores, strict=True)}
    assert card.overall == overall and card.training_recommendation == rec


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: t.replace("7/10", "11/10"),
        lambda t: t.replace("7/10", "10.5/10"),
        lambda t: t.replace("7/10", "-1/10"),
        lambda t: t.replace("7/10", "7 / 10"),
        lambda t: "Here are the scores:\n" + t,
        lambda t: "\n".join(line for line in t.splitlines() if not line.startswith("[A2]")),
        lambda t: t.replace("overall: 72", "overall: 101"),
        lambda t: t.replace("training_recommendation: keep", "training_recommendation: keep | drop"),
        lambda t: t.replace("— r1", "— " + "x" * 13),  # rationale over its bound
        lambda t: t.replace("— r1", "—  r1"),  # blank first character
        lambda t: t.replace("Accessibility (a11y)", "Accessibility"),  # dimension name not the rubric's
    ],
)
def test_regex_rejects_what_is_not_the_format(damage: Any) -> None:
    rubric = rubric_from_names("odd", ODD_NAMES)
    good = _seed_text(rubric, {"A1": "7", "A2": "3.5", "A3": "10"}, {"A1": "r1", "A2": "r2", "A3": "r3"})
    pattern = output_regex(rubric, OutputLimits(rationale_chars=12))
    assert re.fullmatch(pattern, good)
    bad = damage(good)
    assert bad != good and re.fullmatch(pattern, bad) is None


def test_grammar_is_valid_gbnf_for_llama_cpp() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    for rubric in (rubric_from_names("odd", ODD_NAMES), load_rubric("text_group_b", ANCHORS)):
        grammar = llama_cpp.LlamaGrammar.from_string(output_grammar(rubric), verbose=False)
        assert grammar is not None


@pytest.mark.parametrize(
    ("mode", "api", "keys"),
    [
        ("regex", "structured_outputs", {"structured_outputs": ["regex"]}),
        ("grammar", "structured_outputs", {"structured_outputs": ["grammar"]}),
        ("regex", "guided", {"guided_regex": None}),
        ("grammar", "guided", {"guided_grammar": None}),
        ("grammar", "llama_cpp", {"grammar": None}),
        ("off", "structured_outputs", {}),
    ],
)
def test_request_fields_per_server(mode: str, api: str, keys: dict[str, list[str] | None]) -> None:
    rubric = rubric_from_names("g", ["Clarity"])
    fields = request_fields(rubric, mode, api)
    assert sorted(fields) == sorted(keys)
    for key, inner in keys.items():
        if inner is not None:
            assert sorted(fields[key]) == inner


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"scoring": {"constrained_output": "regex", "structured_output_api": "llama_cpp"}},
         "llama.cpp takes a GBNF grammar, not a regex: set scoring.constrained_output: grammar"),
        ({"scoring": {"constrained_output": "json"}}, "scoring.constrained_output: Input should be 'off', 'regex' or 'grammar'"),
        ({"scoring": {"structured_output_api": "openai"}}, "scoring.structured_output_api: Input should be"),
        ({"sampling": {"extra_body": {"max_tokens": 5}}}, "extra_body may not set ['max_tokens']"),
        ({"scoring": {"constrained_output": "grammar"}, "sampling": {"extra_body": {"grammar": "root ::= \"x\""}}},
         "sampling.extra_body sets ['grammar'] and scoring.constrained_output is 'grammar'"),
    ],
)
def test_config_errors_say_what_to_change(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(REPO / "conf" / "local.yaml", overrides)
    assert message in str(info.value) and "local.yaml" in str(info.value)


def test_config_switch_defaults_off() -> None:
    settings_ = load_settings(REPO / "conf" / "local.yaml")
    assert settings_.scoring.constrained_output == "off" and settings_.sampling.extra_body == {}
    rubric = load_rubric("text_group_b", ANCHORS)
    assert group_sampling(settings_.sampling, rubric, settings_.scoring) is settings_.sampling


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def recording_server() -> Iterator[tuple[str, list[dict]]]:
    """A chat endpoint that records each request body and answers with a fixed completion."""
    bodies: list[dict] = []

    async def chat(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.json_response({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    loop = asyncio.new_event_loop()
    port = _free_port()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/v1", bodies
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


@pytest.mark.parametrize(("mode", "api"), [("grammar", "llama_cpp"), ("regex", "structured_outputs"),
                                           ("off", "structured_outputs")])
def test_runner_sends_the_constraint_next_to_the_sampling_fields(
    recording_server: tuple[str, list[dict]], mode: str, api: str
) -> None:
    url, bodies = recording_server
    rubric = rubric_from_names("g", ["Clarity", "Depth"])
    scoring = ScoringConfig(constrained_output=mode, structured_output_api=api, free_text_max_chars=50)
    sampling = group_sampling(SamplingConfig(max_tokens=300, seed=3, extra_body={"top_k": 20}), rubric, scoring)
    pool = PoolConfig(endpoints=(EndpointConfig(url=url),), api_key_env=None, startup_check=False,
                      metrics_poll_s=0)
    requests = [ScoreRequest(index=i, key=f"k{i}", messages=[{"role": "user", "content": "hi"}]) for i in range(2)]
    results = run_requests(requests, RunnerOptions(pool=pool, sampling=sampling, model="m", in_flight=2))
    assert [r.status for r in results] == ["ok", "ok"] and len(bodies) == 2
    body = bodies[0]
    assert (body["model"], body["max_tokens"], body["temperature"], body["top_k"]) == ("m", 300, 0.7, 20)
    expected = request_fields(rubric, mode, api, OutputLimits.from_max_chars(50))
    assert {k: body[k] for k in expected} == json.loads(json.dumps(expected))
    unexpected = ({"structured_outputs", "grammar", "guided_regex", "guided_grammar"} - set(expected)) & set(body)
    assert not unexpected  # only the field the configured server reads
