"""Expected scores from score-token logprobs (mira_spark/parsing/expected.py): pure, no Spark, no server.

Token streams are written out by hand in the shapes real servers send: whole-number tokens with a
leading space (GPT-style BPE), one token per digit (Qwen, the model card's base), a Chinese rationale
whose characters are split across tokens (``bytes`` give the real bytes), top-K lists that leave out the
sampled token, and streams that do not match the answer text.
"""

from __future__ import annotations

import json
import math

import pytest

from mira_spark.parsing.expected import MIN_NUMERIC_MASS, compact_logprobs, expected_scores
from mira_spark.prompting.rubric import Dimension, Rubric
from mira_spark.serving.client import _parse_completion

RUBRIC = Rubric(group="g", dimensions=(Dimension(slot="A1", dimension="Clarity", cluster_size=1),
                                       Dimension(slot="A2", dimension="Depth", cluster_size=1)))


def tok(token: str, p: float = 1.0, alts: dict[str, float] | None = None, raw: bytes | None = None) -> dict:
    """One ``logprobs.content`` entry: the sampled token (probability p) and its alternatives."""
    entry: dict = {"token": token, "logprob": math.log(p),
                   "top_logprobs": [{"token": t, "logprob": math.log(q)} for t, q in (alts or {token: p}).items()]}
    if raw is not None:
        entry["bytes"] = list(raw)
    return entry


def text_of(content: list[dict]) -> str:
    return b"".join(bytes(e["bytes"]) if "bytes" in e else e["token"].encode() for e in content).decode()


def expected(content: list[dict]) -> dict[str, float] | None:
    text = text_of(content)
    return expected_scores(text, RUBRIC, compact_logprobs(content, text))


def test_whole_number_tokens_with_a_leading_space() -> None:
    content = [tok("[A1] Clarity:"), tok(" 7", 0.5, {" 7": 0.5, " 8": 0.3, " 6": 0.2}), tok("/10 — ok\n"),
               tok("[A2] Depth:"), tok(" 3", 0.9, {" 3": 0.9, " three": 0.1}), tok("/10 — thin")]
    got = expected(content)
    assert got is not None
    assert got["A1"] == pytest.approx(0.5 * 7 + 0.3 * 8 + 0.2 * 6)
    assert got["A2"] == pytest.approx(3.0)  # " three" is not a number: renormalised over the numeric mass


def test_digit_split_ten_is_resolved_by_the_next_token() -> None:
    # Qwen writes "10" as "1", "0": the first-digit "1" holds 1, 1.5 and 10; the next token splits it.
    content = [tok("[A1] Clarity: "), tok("1", 0.7, {"1": 0.7, "9": 0.3}), tok("0", 0.8, {"0": 0.8, "/": 0.2}),
               tok("/10 — great")]
    got = expected(content)
    assert got is not None
    assert got["A1"] == pytest.approx(0.7 * 0.8 * 10 + 0.7 * 0.2 * 1 + 0.3 * 9)


def test_a_first_digit_one_off_the_sampled_path_goes_to_the_nearer_of_one_and_ten() -> None:
    high = [tok("[A1] Clarity: "), tok("9", 0.6, {"9": 0.6, "1": 0.4}), tok("/10 — fine")]
    low = [tok("[A1] Clarity: "), tok("2", 0.6, {"2": 0.6, "1": 0.4}), tok("/10 — weak")]
    assert expected(high)["A1"] == pytest.approx(0.6 * 9 + 0.4 * 10)
    assert expected(low)["A1"] == pytest.approx(0.6 * 2 + 0.4 * 1)


def test_half_points_take_the_dot_probability_on_the_sampled_path() -> None:
    with_half = [tok("[A1] Clarity: "), tok("7", 0.5, {"7": 0.5, "6": 0.5}), tok(".", 0.6, {".": 0.6, "/": 0.4}),
                 tok("5"), tok("/10 — ok")]
    without = [tok("[A1] Clarity: "), tok("7", 0.5, {"7": 0.5, "6": 0.5}), tok("/", 0.4, {".": 0.6, "/": 0.4}),
               tok("10 — ok")]
    assert expected(with_half)["A1"] == pytest.approx(6.5 + 0.6 * 0.5)
    assert expected(without)["A1"] == pytest.approx(6.5 + 0.6 * 0.5)  # unknown fraction: the half-point grid


def test_sampled_token_outside_the_top_k_still_counts() -> None:
    content = [tok("[A1] Clarity: "), tok("4", 0.1, {"6": 0.5, "5": 0.4}), tok("/10 — ok")]
    assert expected(content)["A1"] == pytest.approx((0.1 * 4 + 0.5 * 6 + 0.4 * 5) / 1.0)


def test_a_position_that_is_mostly_not_a_number_gives_no_expectation() -> None:
    mostly_words = 1.0 - MIN_NUMERIC_MASS + 0.2
    content = [tok("[A1] Clarity: "), tok("7", 1 - mostly_words, {"7": 1 - mostly_words, "N": mostly_words}),
               tok("/10 — ok")]
    got = expected(content)
    assert got is None or "A1" not in got


def test_chinese_rationale_split_across_tokens_keeps_byte_offsets() -> None:
    word = "很好".encode()
    content = [tok("[A1] Clarity: "), tok("8", 0.5, {"8": 0.5, "9": 0.5}), tok("/10 — "),
               tok("\ufffd", raw=word[:2]), tok("\ufffd", raw=word[2:]),  # one character split over two tokens
               tok("\n[A2] Depth: "), tok("5", 0.8, {"5": 0.8, "4": 0.2}), tok("/10 — 一般")]
    got = expected(content)
    assert got == {"A1": pytest.approx(8.5), "A2": pytest.approx(0.8 * 5 + 0.2 * 4)}


def test_tokens_that_do_not_spell_the_answer_give_nothing() -> None:
    content = [tok("[A1] Clarity: "), tok("7", 0.5, {"7": 0.5, "8": 0.5}), tok("/10 — ok")]
    assert compact_logprobs(content, "[A1] Clarity: 8/10 — ok") is None
    assert compact_logprobs(content[:2], text_of(content)) is None  # a stream cut short
    assert compact_logprobs(None, text_of(content)) is None
    assert compact_logprobs([{"token": 3}], "x") is None


def test_only_score_like_tokens_are_kept() -> None:
    content = [tok("[A1] Clarity: "), tok("7", 0.5, {"7": 0.5, "8": 0.5}), tok("/10"), tok(" — long words"),
               tok(" more words"), tok("\n")]
    kept = compact_logprobs(content, text_of(content))
    assert kept is not None
    # "[A1] ..." holds the digit 1, "7" and "/10" hold digits, " — long words" follows a digit token.
    assert [t.token for t in kept] == [b"[A1] Clarity: ", b"7", b"/10", b" \xe2\x80\x94 long words"]


@pytest.mark.parametrize("shift", [0.05, 0.2, 0.4])
def test_moving_mass_to_a_higher_score_raises_the_expectation(shift: float) -> None:
    def at(p7: float) -> float:
        content = [tok("[A1] Clarity: "), tok("7", p7, {"7": p7, "8": 1 - p7}), tok("/10 — ok")]
        return expected(content)["A1"]

    assert at(0.9 - shift) > at(0.9)


def test_the_chat_response_carries_each_choices_logprobs() -> None:
    one = [tok("[A1] Clarity: "), tok("7", 0.5, {"7": 0.5, "8": 0.5}), tok("/10 — ok")]
    two = [tok("[A1] Clarity: "), tok("8", 0.5, {"7": 0.5, "8": 0.5}), tok("/10 — ok")]
    body = {"choices": [
        {"index": 1, "message": {"content": text_of(two)}, "finish_reason": "stop", "logprobs": {"content": two}},
        {"index": 0, "message": {"content": text_of(one)}, "finish_reason": "stop", "logprobs": {"content": one}},
    ], "usage": {"prompt_tokens": 3, "completion_tokens": 6}}
    resp = _parse_completion(json.dumps(body).encode(), None)
    assert len(resp.logprobs) == 2
    assert expected_scores(resp.text, RUBRIC, resp.logprobs[0]) == {"A1": pytest.approx(7.5)}
    assert resp.logprobs[1] is not None and resp.logprobs[1][1].token == b"8"
    plain = _parse_completion(json.dumps({"choices": [{"message": {"content": "x"}}]}).encode(), None)
    assert plain.logprobs == ()


def test_llama_cpp_tokens_without_bytes_and_a_split_character() -> None:
    # llama-cpp-python sends bytes: null, and a character split over two tokens as two partial strings
    # (empty here, as recorded from its server): the tokens after it must still land on their offsets.
    content = [tok("[A1] Clarity: "), tok("6", 0.5, {"6": 0.5, "7": 0.5}), tok("/10 — "), tok(""), tok(""),
               tok("好\n[A2] Depth: "), tok("4", 0.5, {"4": 0.5, "2": 0.5}), tok("/10 — ok")]
    text = "[A1] Clarity: 6/10 — 很好\n[A2] Depth: 4/10 — ok"
    got = expected_scores(text, RUBRIC, compact_logprobs(content, text))
    assert got == {"A1": pytest.approx(6.5), "A2": pytest.approx(3.0)}
