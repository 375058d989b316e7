"""The simulator's ``logprobs`` and the prefix share of its sampling noise.

Pure parts first (the grid distribution, the draws, the score tokens' conditional probabilities), then
the HTTP surface of an in-thread endpoint on 127.0.0.1: token strings and bytes spell the answer, each
score's tokens carry the distribution it was drawn from, vLLM's 400s, faults and streaming; last, the
statistics an expected score computed from the logprobs must have.

Tolerances are sampling theory: a frequency within 5 binomial standard errors of its probability, a mean
within 4 standard errors (estimated from the data), a sample variance within 4 standard errors of a
normal variable's, ``sigma^2 * sqrt(2 / df)``. Every draw is seeded, so a run repeats exactly.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from statistics import NormalDist, fmean
from typing import Any

import pytest

from mira_spark.devtools.simulator.faults import FaultProfile
from mira_spark.devtools.simulator.judge import Judgement, judge_document, parse_template_dimensions
from mira_spark.devtools.simulator.launcher import SimHandle, start_in_thread
from mira_spark.devtools.simulator.logprobs import score_token_probs, tokenize
from mira_spark.devtools.simulator.sampling import (
    NOISE_SD_PER_TEMPERATURE,
    grid_distribution,
    sample_judgement,
    sample_judgement_with_dists,
)
from mira_spark.devtools.simulator.server import SimConfig
from mira_spark.prompting.prompts import PromptBuilder
from mira_spark.prompting.rubric import load_rubric

ROOT = Path(__file__).resolve().parents[1]
MODEL = "whw06/MIRA-Text-Group1"
GRID = [i / 2 for i in range(21)]
TEMPERATURE = 0.7  # the model card's
SD = NOISE_SD_PER_TEMPERATURE * TEMPERATURE
SCORE_LINE = re.compile(r"^\[(A\d{1,2})\][^:\n]*: ([0-9.]+/)", re.MULTILINE)
# What the characters after a score's first digit add to its leading integer ("10" is "1" then 9 more).
REST_OF = {"/": 0.0, ".": 0.5, "0": 9.0}
PARTS = ["<header><nav aria-label='导航'>首页</nav></header>", "<main><section><h1>标题</h1></section></main>",
         "<style>.c{display:flex;transition:all .3s} @media (max-width:600px){.c{display:grid}}</style>",
         "<script defer>const a = 1; document.addEventListener('click', () => { a; });</script>",
         "本页面实现了一个简洁的清单，采用语义化标签，并通过媒体查询适配移动端。", "<img src='a.png' alt='图' loading='lazy'>",
         "<div onclick='go()'>x</div>", "<footer role='contentinfo'>页脚</footer>"]
# 15 documents whose judgements spread over 0..8 (146 of their 225 slot scores lie within 2.5..7.5).
DOCS = ["".join(PARTS[k] for k in range(len(PARTS)) if (i >> k) & 1) * (1 + i % 3) for i in range(1, 256, 17)]


# ---------------------------------------------------------------- grid distribution (pure)


@pytest.mark.parametrize("m, sd", [(5.0, 0.7), (6.3, 0.2), (0.1, 1.0), (9.9, 0.7), (-1.0, 0.5), (12.0, 2.0),
                                   (5.0, 1e-6)])
def test_grid_distribution_is_the_normal_binned_on_the_grid(m: float, sd: float) -> None:
    dist = grid_distribution(m, sd)
    assert list(dist) == GRID
    assert sum(dist.values()) == pytest.approx(1.0, abs=1e-12)
    reference = NormalDist(m, sd)  # an independent CDF; 0 and 10 take the clamped tails
    for v, p in dist.items():
        lo = reference.cdf(v - 0.25) if v > 0 else 0.0
        hi = reference.cdf(v + 0.25) if v < 10 else 1.0
        assert p == pytest.approx(hi - lo, abs=1e-12)


@pytest.mark.parametrize("m, sd, edge", [(9.9, 0.7, 10.0), (10.4, 0.5, 10.0), (0.1, 1.0, 0.0), (-1.0, 0.5, 0.0)])
def test_mass_beyond_the_range_piles_on_the_edge(m: float, sd: float, edge: float) -> None:
    dist = grid_distribution(m, sd)
    beyond = 1 - NormalDist(m, sd).cdf(10.0) if edge == 10 else NormalDist(m, sd).cdf(0.0)
    assert dist[edge] > beyond > 0.1  # the edge holds its own bin and everything past the range
    assert dist[edge] == max(dist.values())


@pytest.mark.parametrize("m, point", [(6.2, 6.0), (6.25, 6.0), (6.75, 7.0), (-3.0, 0.0), (11.0, 10.0)])
def test_no_token_spread_is_the_point_where_the_grid_rounds(m: float, point: float) -> None:
    dist = grid_distribution(m, 0.0)
    assert dist[point] == 1.0 and sum(dist.values()) == 1.0  # 6.25 -> 6.0: round() halves to even, as _grid


def _one_slot(mu: float) -> Judgement:
    return Judgement(scores={"A1": mu}, rationales={}, overall=50, training_recommendation="downsample",
                     domain_tag="t", brief="综合 50 分。")


@pytest.mark.parametrize("mu, temperature, rho", [(5.0, 0.7, 0.0), (9.6, 1.0, 0.0), (0.3, 1.0, 0.0),
                                                  (6.3, 0.7, 0.5), (9.4, 1.0, 0.8)])
def test_draws_follow_the_distributions_they_report(mu: float, temperature: float, rho: float) -> None:
    draws = 20_000
    judgement = _one_slot(mu)
    counts: Counter[float] = Counter()
    reported: dict[float, float] = defaultdict(float)
    for choice in range(draws):
        sample, dists = sample_judgement_with_dists(judgement, temperature, seed=11, digest=b"hist", choice=choice,
                                                    prefix_share=rho)
        counts[sample.scores["A1"]] += 1
        for v, p in grid_distribution(*dists["A1"]).items():
            reported[v] += p / draws
    assert sum(p > 0.05 for p in reported.values()) >= 3  # a real spread, not a point mass
    for v in GRID:
        p = reported[v]
        # count/draws - p is a mean of `draws` independent zero-mean terms of variance <= p(1 - p).
        assert abs(counts[v] / draws - p) <= 5 * math.sqrt(p * (1 - p) / draws), v


# ---------------------------------------------------------------- prefix share (pure)

PIN = Judgement(scores={"A1": 6.0, "A2": 3.5, "A3": 9.5, "A4": 0.5}, rationales={}, overall=50,
                training_recommendation="downsample", domain_tag="t", brief="综合 50 分。")


# Samples of the code before prefix_share existed (main at 1f09c34), pinned: the draws must not move.
@pytest.mark.parametrize("seed, temperature, choice, scores, overall", [
    (1, 0.7, 0, {"A1": 6.0, "A2": 3.0, "A3": 9.5, "A4": 1.0}, 50),
    (1, 0.7, 1, {"A1": 5.5, "A2": 4.0, "A3": 9.5, "A4": 1.5}, 52),
    (42, 1.5, 3, {"A1": 5.0, "A2": 0.5, "A3": 10.0, "A4": 0.0}, 40),
    (7, 2.0, 5, {"A1": 8.0, "A2": 4.0, "A3": 9.5, "A4": 0.0}, 55),
])
def test_no_prefix_share_keeps_the_samples_of_before(seed: int, temperature: float, choice: int,
                                                     scores: dict[str, float], overall: int) -> None:
    for sample in (sample_judgement(PIN, temperature, seed=seed, digest=b"pin", choice=choice),
                   sample_judgement(PIN, temperature, seed=seed, digest=b"pin", choice=choice, prefix_share=0.0)):
        assert sample.scores == scores and sample.overall == overall
    sample, dists = sample_judgement_with_dists(PIN, temperature, seed=seed, digest=b"pin", choice=choice)
    assert sample.scores == scores
    assert dists == {slot: (mu, NOISE_SD_PER_TEMPERATURE * temperature) for slot, mu in PIN.scores.items()}


def test_prefix_share_moves_that_share_of_the_variance_into_the_centre() -> None:
    rho, temperature, draws = 0.5, 1.0, 4000
    sd = NOISE_SD_PER_TEMPERATURE * temperature
    judgement = Judgement(scores={f"A{i}": 4.0 + 0.5 * i for i in range(1, 5)}, rationales={}, overall=50,
                          training_recommendation="downsample", domain_tag="t", brief="b")  # 4.5..6: no clamping
    scores: dict[str, list[float]] = defaultdict(list)
    centres: dict[str, list[float]] = defaultdict(list)
    for choice in range(draws):
        sample, dists = sample_judgement_with_dists(judgement, temperature, seed=5, digest=b"var", choice=choice,
                                                    prefix_share=rho)
        for slot, (m, sd_token) in dists.items():
            assert sd_token == pytest.approx(sd * math.sqrt(1 - rho))
            scores[slot].append(sample.scores[slot])
            centres[slot].append(m)
    df = len(judgement.scores) * (draws - 1)
    # The 0.5 grid adds its rounding variance 0.5^2 / 12 to a score's (Sheppard).
    for values, target in ((centres, rho * sd**2), (scores, sd**2 + 0.5**2 / 12)):
        assert _pooled_variance(values.values()) == pytest.approx(target, rel=4 * math.sqrt(2 / df))


@pytest.mark.parametrize("rho", [-0.1, 1.5])
def test_prefix_share_outside_0_to_1_is_refused(rho: float) -> None:
    with pytest.raises(ValueError, match="prefix_share"):
        sample_judgement(PIN, 0.7, seed=1, digest=b"d", prefix_share=rho)


def _pooled_variance(groups: Iterable[Sequence[float]]) -> float:
    """Takes groups of values; gives their pooled within-group sample variance."""
    squares, df = 0.0, 0
    for values in groups:
        centre = fmean(values)
        squares += sum((x - centre) ** 2 for x in values)
        df += len(values) - 1
    return squares / df


# ---------------------------------------------------------------- score tokens (pure)


def test_score_tokens_follow_the_grid_texts() -> None:
    dist = {1.0: 0.1, 1.5: 0.2, 2.0: 0.3, 9.5: 0.1, 10.0: 0.3}
    first = {"1": 0.6, "2": 0.3, "9": 0.1}  # "1" holds 1, 1.5 and 10
    after_one = {"0": 0.5, ".": 2 / 6, "/": 1 / 6}
    cases = {
        "10/": [first, after_one, {"/": 1.0}],
        "1.5/": [first, after_one, {"5": 1.0}, {"/": 1.0}],
        "1/": [first, after_one],
        "2/": [first, {"/": 1.0}],  # no 2.5 in this distribution: the "." alternative has no mass
        "9.5/": [first, {".": 1.0}, {"5": 1.0}, {"/": 1.0}],
    }
    for text, expected in cases.items():
        got = score_token_probs(dist, text)
        assert [c for c, _ in got] == list(text)
        assert [alts.keys() for _, alts in got] == [e.keys() for e in expected], text
        for (_, alts), want in zip(got, expected, strict=True):
            assert alts == pytest.approx(want)


def test_tokens_split_digits_and_dots_and_spell_the_text() -> None:
    text = "[A12] 视觉: 7.5/10 — 阴影 3 处\noverall: 61"
    tokens = tokenize(text)
    assert "".join(tokens) == text
    assert [t for t in tokens if t[0].isdigit() or t == "."] == list("127.5103") + list("61")
    assert all(len(t) == 1 for t in tokens if any(c.isdigit() or c == "." for c in t))


# ---------------------------------------------------------------- HTTP


@pytest.fixture(scope="module")
def builder() -> PromptBuilder:
    rubric = load_rubric("text_group_b", ROOT / "anchors/text/group_B_dim_anchors.jsonl")
    return PromptBuilder(rubric, MODEL, 65536, 2048)


@pytest.fixture(scope="module")
def dims(builder: PromptBuilder) -> list[tuple[str, str]]:
    return parse_template_dimensions(builder.build("html_cpt", DOCS[0]).messages[-1]["content"])


@pytest.fixture(scope="module")
def noisy() -> Iterator[SimHandle]:
    with start_in_thread(SimConfig(name="logprobs", time_scale=2000.0, sampling_noise=True)) as handle:
        yield handle


def post(handle: SimHandle, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(handle.url + "/chat/completions", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def chat(builder: PromptBuilder, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": builder.build("html_cpt", text).messages, "max_tokens": 2048,
            "temperature": TEMPERATURE, **extra}


def assert_spells(choice: dict[str, Any], top_k: int) -> list[dict[str, Any]]:
    """Takes a choice; gives its logprob entries, having checked they spell its content and are well formed."""
    content = choice["message"]["content"]
    entries = choice["logprobs"]["content"]
    assert "".join(e["token"] for e in entries) == content
    assert b"".join(bytes(e["bytes"]) for e in entries) == content.encode("utf-8")
    for e in entries:
        top = e["top_logprobs"]
        assert len(top) <= top_k and [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert all(bytes(t["bytes"]) == t["token"].encode("utf-8") for t in top)
    return entries


def score_entries(choice: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Takes a choice with logprobs; gives per slot the entries of its score and the ``/`` after it."""
    content = choice["message"]["content"]
    entries = choice["logprobs"]["content"]
    starts, offset = [], 0
    for e in entries:
        starts.append(offset)
        offset += len(e["token"])
    index = {start: i for i, start in enumerate(starts)}
    out = {}
    for match in SCORE_LINE.finditer(content):
        first = index[match.start(2)]
        out[match.group(1)] = entries[first:first + len(match.group(2))]
    return out


def probs(entry: dict[str, Any]) -> dict[str, float]:
    return {t["token"]: math.exp(t["logprob"]) for t in entry["top_logprobs"]}


def test_logprobs_spell_the_answer_and_carry_the_score_distributions(
        noisy: SimHandle, builder: PromptBuilder, dims: list[tuple[str, str]]) -> None:
    doc = DOCS[6]
    request = chat(builder, doc, n=3, seed=5)
    status_full, full = post(noisy, {**request, "logprobs": True, "top_logprobs": 20})
    status_top, top5 = post(noisy, {**request, "logprobs": True, "top_logprobs": 5})
    status_plain, plain = post(noisy, request)
    assert status_full == status_top == status_plain == 200
    texts = [c["message"]["content"] for c in plain["choices"]]
    assert len(set(texts)) == 3  # samples, and the same ones with or without logprobs
    assert [c["message"]["content"] for c in full["choices"]] == texts
    assert [c["message"]["content"] for c in top5["choices"]] == texts
    assert all(c["logprobs"] is None for c in plain["choices"])

    judged = judge_document(doc, "html_cpt", dims).scores
    uncertain = 0
    for choice_full, choice_top in zip(full["choices"], top5["choices"], strict=True):
        assert_spells(choice_full, 20)
        assert_spells(choice_top, 5)
        scores_full, scores_top = score_entries(choice_full), score_entries(choice_top)
        assert sorted(scores_full) == sorted(judged)
        for slot, entries in scores_full.items():
            first, first_top = entries[0], scores_top[slot][0]
            # At prefix share 0 the score was drawn from grid(mu + N(0, sd)), mu the judge's score.
            expected: dict[str, float] = defaultdict(float)
            for v, p in grid_distribution(judged[slot], SD).items():
                expected[f"{v:g}"[0]] += p
            got = probs(first)
            assert sum(got.values()) == pytest.approx(1.0, abs=1e-9)
            assert got == pytest.approx({d: p for d, p in expected.items() if p > 0}, abs=1e-12)
            assert first["logprob"] == pytest.approx(math.log(got[first["token"]]))
            # Top 5: the five largest of the full distribution, with the sampled digit when it is one of them.
            assert first_top["top_logprobs"] == first["top_logprobs"][:5]
            rank = [t["token"] for t in first["top_logprobs"]].index(first["token"])
            assert (first["token"] in probs(first_top)) == (rank < 5)
            uncertain += first["logprob"] < 0
    assert uncertain > 0  # scores had a spread


def test_the_official_client_reads_the_logprobs(noisy: SimHandle, builder: PromptBuilder) -> None:
    openai = pytest.importorskip("openai", reason="the reference client is in the test extra")
    with openai.OpenAI(base_url=noisy.url, api_key="EMPTY", max_retries=0, timeout=30) as client:
        resp = client.chat.completions.create(model=MODEL, messages=builder.build("html_cpt", DOCS[2]).messages,
                                              temperature=TEMPERATURE, max_tokens=2048, seed=4, logprobs=True,
                                              top_logprobs=3)
    choice = resp.choices[0]
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    assert any(t.logprob < 0 and len(t.top_logprobs) == 3 for t in choice.logprobs.content)


def test_greedy_answers_carry_certain_tokens(noisy: SimHandle, builder: PromptBuilder) -> None:
    status, body = post(noisy, chat(builder, DOCS[3], temperature=0, logprobs=True, top_logprobs=3))
    assert status == 200
    entries = assert_spells(body["choices"][0], 3)
    assert all(e["logprob"] == 0.0 for e in entries)
    assert all(e["top_logprobs"] == [{"token": e["token"], "logprob": 0.0, "bytes": e["bytes"]}] for e in entries)


@pytest.mark.parametrize("extra, message", [
    ({"logprobs": True, "top_logprobs": 21}, "Requested sample logprobs of 21, which is greater than max allowed: 20"),
    ({"logprobs": True, "top_logprobs": -1}, "`top_logprobs` must be a positive value."),
    ({"top_logprobs": 3}, "when using `top_logprobs`, `logprobs` must be set to true."),
])
def test_bad_logprobs_requests_get_vllms_400(noisy: SimHandle, builder: PromptBuilder, extra: dict[str, Any],
                                             message: str) -> None:
    status, body = post(noisy, chat(builder, DOCS[0], **extra))
    assert status == 400 and body["message"] == message and body["type"] == "BadRequestError"


@pytest.mark.parametrize("kind", ["truncated", "malformed", "missing_dims"])
def test_answers_changed_by_faults_still_spell_their_text(builder: PromptBuilder, kind: str) -> None:
    profile = FaultProfile.model_validate({"rules": [{"kind": kind, "probability": 1}]})
    config = SimConfig(name="logprob-faults", time_scale=2000.0, sampling_noise=True, faults=profile)
    with start_in_thread(config) as handle:
        status, body = post(handle, chat(builder, DOCS[8], n=2, seed=1, logprobs=True, top_logprobs=4))
        faults = handle.stats()["faults"][kind]
    assert status == 200 and faults == 1
    for choice in body["choices"]:
        entries = assert_spells(choice, 4)
        assert all(e["logprob"] == 0.0 for e in entries)


def test_a_budget_cut_answer_still_spells_its_text(noisy: SimHandle, builder: PromptBuilder) -> None:
    status, body = post(noisy, chat(builder, DOCS[8], max_tokens=40, seed=2, logprobs=True, top_logprobs=2))
    assert status == 200 and body["choices"][0]["finish_reason"] == "length"
    assert all(e["logprob"] == 0.0 for e in assert_spells(body["choices"][0], 2))


def test_streamed_chunks_carry_the_logprobs_of_their_tokens(noisy: SimHandle, builder: PromptBuilder) -> None:
    request = chat(builder, DOCS[9], n=2, seed=3, logprobs=True, top_logprobs=2)
    _, plain = post(noisy, request)
    req = urllib.request.Request(noisy.url + "/chat/completions", data=json.dumps({**request, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        events = [line[6:] for line in resp.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    streamed: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for event in events[:-1]:
        (choice,) = json.loads(event)["choices"]
        piece = choice["delta"].get("content", "")
        if choice["delta"].get("role"):
            assert choice["logprobs"] is None and piece == ""
            continue
        assert "".join(e["token"] for e in choice["logprobs"]["content"]) == piece
        streamed[choice["index"]] += choice["logprobs"]["content"]
    assert [streamed[c["index"]] for c in plain["choices"]] == [c["logprobs"]["content"] for c in plain["choices"]]


# ---------------------------------------------------------------- what an expected score from the logprobs removes


def expected_score(entries: list[dict[str, Any]]) -> float:
    """Takes a score's logprob entries (top 20); gives its expected score: the leading integer's expectation
    over the first position's full distribution, plus the expected rest given the sampled first digit
    (unbiased: the sampled digit is drawn from that first distribution)."""
    return leading_expectation(entries) + sum(p * REST_OF[c] for c, p in probs(entries[1]).items())


def leading_expectation(entries: list[dict[str, Any]]) -> float:
    """Takes a score's logprob entries; gives the expectation of its leading integer (its first digit)."""
    return sum(p * int(d) for d, p in probs(entries[0]).items())


@pytest.fixture(scope="module", params=[0.0, 0.5], ids=["share0", "share0.5"])
def many_samples(request: pytest.FixtureRequest, builder: PromptBuilder,
                 dims: list[tuple[str, str]]) -> tuple[float, list[tuple[float, list[tuple[float, list[Any]]]]]]:
    """Takes a prefix share; gives it with, per (document, slot), the judge's score and 64 samples'
    ``(sampled score, score entries)`` from an endpoint with that share."""
    rho = request.param
    groups = []
    with start_in_thread(SimConfig(name="logprob-stats", time_scale=2000.0, sampling_noise=True,
                                   sampling_prefix_share=rho)) as handle:
        for i, doc in enumerate(DOCS):
            status, body = post(handle, chat(builder, doc, n=64, seed=100 + i, logprobs=True, top_logprobs=20))
            assert status == 200
            per_slot: dict[str, list[tuple[float, list[Any]]]] = defaultdict(list)
            for choice in body["choices"]:
                for slot, entries in score_entries(choice).items():
                    per_slot[slot].append((float("".join(e["token"] for e in entries)[:-1]), entries))
            judged = judge_document(doc, "html_cpt", dims).scores
            groups += [(judged[slot], samples) for slot, samples in per_slot.items()]
    return rho, groups


def test_expected_scores_from_logprobs_are_unbiased(many_samples: tuple[float, list[Any]]) -> None:
    _, groups = many_samples
    diffs = [score - expected_score(entries) for _, samples in groups for score, entries in samples]
    assert len(diffs) == len(DOCS) * 15 * 64
    bias = fmean(diffs)
    se = math.sqrt(fmean((d - bias) ** 2 for d in diffs) / len(diffs))
    assert abs(bias) <= 4 * se


def test_expected_scores_keep_only_the_prefix_share_of_the_noise(many_samples: tuple[float, list[Any]]) -> None:
    rho, groups = many_samples
    # Slots whose samples stay clear of the edges (no clamping at 0, no "1" that means 10): there the
    # expectation of the leading integer moves with the sample's centre m one for one.
    inner = [samples for mu, samples in groups if 2.5 <= mu <= 7.0]
    assert len(inner) >= 100
    df = sum(len(samples) - 1 for samples in inner)
    tolerance = 4 * math.sqrt(2 / df)
    sampled = _pooled_variance([score for score, _ in samples] for samples in inner)
    assert sampled == pytest.approx(SD**2 + 0.5**2 / 12, rel=tolerance)  # the whole noise, as before
    leading = _pooled_variance([leading_expectation(entries) for _, entries in samples] for samples in inner)
    if rho == 0:
        assert leading == pytest.approx(0.0, abs=1e-18)  # the same distribution in every sample
    else:
        assert leading == pytest.approx(rho * SD**2, rel=tolerance)
