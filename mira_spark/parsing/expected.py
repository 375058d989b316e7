"""Expected scores from the score tokens' logprobs: the mean of the scorer's own distribution, per slot.

Takes a completion's text, its rubric and the token logprobs an OpenAI-compatible server returned
with ``logprobs: true, top_logprobs: K`` (``choices[i].logprobs.content``); gives ``{slot: expected
score}`` (0-10) for the slots whose score tokens carry a usable distribution.

Why: at the model card's temperature a sampled score is one draw from the model's distribution over
score tokens. Two runs draw differently, so documents near a cut flip between runs. The mean of that
distribution (G-Eval's probability-weighted score) is what many samples would average to at that
position, and it is free: it needs no extra request, only the logprobs of tokens already generated. It
removes the token-level part of the noise only; what earlier sampled tokens (rationales, earlier scores)
do to a later score's distribution stays, so it complements k samples rather than replacing them.

How a score's distribution is read (a score is written ``7``, ``7.5`` or ``10`` before ``/10``):

* **integer part**: the alternatives at the score's first token whose text (after the same leading
  whitespace as the sampled token) is a whole number 0-10 (``"7"``, ``"10"``; ``"7."`` counts as 7), plus
  the sampled token itself; their probabilities are renormalised over those numeric alternatives. When
  they hold less than :data:`MIN_NUMERIC_MASS` of the probability (the position is not really a score,
  or the top K are mostly other tokens), no expectation is taken for the slot.
* **digit-split tokenizers** (Qwen writes "10" as "1", "0"): a first-token alternative "1" may mean 1,
  1.5 or 10. When the sampled score starts with "1", the next token's alternatives tell how it splits
  (``"0"`` -> 10); otherwise the mass goes to whichever of 1 and 10 is nearer the sampled score (a
  unimodal distribution puts little mass on the far one).
* **fraction**: the probability of ``"."`` right after the integer part, times the expected tenth digit
  after it. Both are read on the sampled path: conditional on the sampled integer part (the server only
  reports alternatives along the path it took). When the sampled score has no fraction, an expected
  fraction of 0.5 is assumed for the ``"."`` mass (the half-point grid of the scorers).

Token positions are byte offsets (the ``bytes`` of each token when the server gives them, else the
token's UTF-8): a server whose tokens do not concatenate to the answer's bytes gives no expectations,
never misplaced ones. Pure logic: imports no Spark, no network.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mira_spark.parsing.parse import score_spans
from mira_spark.prompting.rubric import SCORE_MAX, SCORE_MIN, Rubric

MIN_NUMERIC_MASS = 0.5
"""A score position's numeric alternatives must hold at least this probability for an expectation."""
DEFAULT_FRACTION = 0.5
"""Fraction assumed for the mass on "." when the sampled score has none (half-point grid)."""
_NUMBER = re.compile(r"(\d{1,2})(\.?)")
_DIGIT = re.compile(rb"[0-9.]")


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: byte offset in the answer, its bytes, its logprob, the top alternatives."""

    offset: int
    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...]


ScoreTokens = tuple[TokenLogprob, ...]


def _token_bytes(entry: Mapping[str, Any]) -> bytes:
    raw = entry.get("bytes")
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return bytes(raw)
    token = entry.get("token")
    return token.encode("utf-8") if isinstance(token, str) else b""


RESYNC_CHARS = 16
"""How far ahead a token's text is looked for when the server dropped a split character (see below)."""


def _offsets(content: list, text: str) -> list[int] | None:
    """Byte offset of every token in ``text``'s UTF-8, or None when the tokens do not spell ``text``.

    With every token's ``bytes`` (vLLM, OpenAI) the bytes must concatenate exactly. Without them
    (llama-cpp-python sends ``bytes: null``) a character split over two tokens comes as two partial
    strings, often empty or U+FFFD; such tokens are stepped over and the next token is looked for up to
    :data:`RESYNC_CHARS` characters ahead. Digits are single-byte, so a score's tokens always align.
    """
    body = text.encode("utf-8")
    if all(isinstance(e.get("bytes"), list) for e in content):
        offsets, at = [], 0
        for entry in content:
            token = _token_bytes(entry)
            if body[at:at + len(token)] != token:
                return None
            offsets.append(at)
            at += len(token)
        return offsets if at == len(body) else None
    offsets, pos, at = [], 0, 0  # pos: characters of text consumed; at: their UTF-8 bytes
    for entry in content:
        token = entry.get("token")
        if not isinstance(token, str):
            return None
        clean = token.replace("\ufffd", "")
        if clean and not text.startswith(clean, pos):
            found = text.find(clean, pos, pos + RESYNC_CHARS + len(clean))
            if found < 0:
                return None
            at += len(text[pos:found].encode("utf-8"))
            pos = found
        offsets.append(at)
        pos += len(clean)
        at += len(clean.encode("utf-8"))
    rest = text[pos:]  # a last character split over tokens may be missing; nothing an ASCII token could spell
    return offsets if len(rest) <= 4 and not any(c.isascii() and not c.isspace() for c in rest) else None


def compact_logprobs(content: Any, text: str) -> ScoreTokens | None:
    """The tokens of ``choices[i].logprobs.content`` that can belong to a score, or None.

    Keeps a token when it holds a digit or "." or follows one (the "." or "/" after an integer part); a
    long answer keeps a few dozen tokens, not its hundreds. None when ``content`` is missing or malformed,
    or its tokens do not spell ``text`` (offsets would be wrong; :func:`_offsets`).

    >>> toks = [{"token": "A", "logprob": 0.0}, {"token": "7", "logprob": -0.1,
    ...          "top_logprobs": [{"token": "7", "logprob": -0.1}, {"token": "8", "logprob": -2.4}]},
    ...         {"token": "/10", "logprob": 0.0}]
    >>> [(t.offset, t.token) for t in compact_logprobs(toks, "A7/10")]
    [(1, b'7'), (2, b'/10')]
    >>> compact_logprobs(toks, "A8/10") is None
    True
    """
    if not isinstance(content, list) or not text or not all(isinstance(e, Mapping) for e in content):
        return None
    try:
        offsets = _offsets(content, text)
        if offsets is None:
            return None
        kept: list[TokenLogprob] = []
        previous_numeric = False
        for entry, offset in zip(content, offsets, strict=True):
            token = _token_bytes(entry)
            if not isinstance(entry.get("bytes"), list):
                token = token.replace("\ufffd".encode(), b"")
            numeric = _DIGIT.search(token) is not None
            if numeric or previous_numeric:
                top = tuple((_token_bytes(alt), float(alt["logprob"])) for alt in entry.get("top_logprobs") or ()
                            if isinstance(alt, Mapping) and isinstance(alt.get("logprob"), (int, float)))
                kept.append(TokenLogprob(offset, token, float(entry.get("logprob") or 0.0), top))
            previous_numeric = numeric
    except (TypeError, ValueError, AttributeError, KeyError):
        return None
    return tuple(kept)


def _alternatives(tok: TokenLogprob) -> dict[bytes, float]:
    """Probability of each alternative at a position, the sampled token included."""
    out = {alt: math.exp(lp) for alt, lp in tok.top if lp > -math.inf}
    out.setdefault(tok.token, math.exp(tok.logprob))
    return out


def _token_at(tokens: Sequence[TokenLogprob], offset: int) -> int | None:
    for i, tok in enumerate(tokens):
        if tok.offset <= offset < tok.offset + len(tok.token):
            return i
        if tok.offset > offset:
            return None
    return None


def _next(tokens: Sequence[TokenLogprob], i: int) -> TokenLogprob | None:
    """Token i+1 when it directly follows token i (the kept tokens may have gaps)."""
    if i + 1 < len(tokens) and tokens[i + 1].offset == tokens[i].offset + len(tokens[i].token):
        return tokens[i + 1]
    return None


def expected_score(text_bytes: bytes, start: int, end: int, tokens: Sequence[TokenLogprob]) -> float | None:
    """Expected score of the number at bytes ``[start, end)`` of the answer (see module), or None."""
    sampled = text_bytes[start:end].decode("ascii", "replace")
    m = _NUMBER.fullmatch(sampled) or _NUMBER.match(sampled)
    if m is None:
        return None
    sampled_value = float(sampled) if re.fullmatch(r"\d{1,2}(\.\d+)?", sampled) else float(m.group(1))
    i = _token_at(tokens, start)
    if i is None:
        return None
    first = tokens[i]
    lead = first.token[: start - first.offset]  # e.g. b" " when the token is " 7"
    sampled_first = first.token[start - first.offset:]
    split_one = None  # P("0" | "1") when the tokenizer splits "10" and the path went through "1"
    nxt = _next(tokens, i)
    if sampled_first == b"1" and nxt is not None:
        cont = _alternatives(nxt)
        total = sum(cont.values())
        split_one = cont.get(b"0", 0.0) / total if total > 0 else None
    mass: dict[int, float] = {}
    total = 0.0
    for alt, p in _alternatives(first).items():
        total += p
        if not alt.startswith(lead):
            continue
        core = alt[len(lead):].decode("ascii", "replace")
        digits = re.fullmatch(r"(\d{1,2})\.?", core)
        if digits is None:
            continue
        value = int(digits.group(1))
        if value > SCORE_MAX:
            continue
        if core == "1" and split_one is not None:
            mass[10] = mass.get(10, 0.0) + p * split_one
            mass[1] = mass.get(1, 0.0) + p * (1.0 - split_one)
        elif core == "1" and not any(a[len(lead):] == b"10" for a, _ in first.top):
            near = 10 if sampled_value >= (1 + SCORE_MAX) / 2 else 1
            mass[near] = mass.get(near, 0.0) + p
        else:
            mass[value] = mass.get(value, 0.0) + p
    numeric = sum(mass.values())
    if total <= 0 or numeric < MIN_NUMERIC_MASS * min(1.0, total):
        return None
    expected = sum(v * p for v, p in mass.items()) / numeric
    expected += _expected_fraction(start, end, tokens, sampled)
    return min(SCORE_MAX, max(SCORE_MIN, expected))


def _expected_fraction(start: int, end: int, tokens: Sequence[TokenLogprob], sampled: str) -> float:
    """P("." after the integer part) times the expected fraction, on the sampled path."""
    integer_end = start + len(sampled.split(".")[0])
    j = _token_at(tokens, integer_end)
    if j is None or tokens[j].offset != integer_end:
        return 0.0  # the integer part and what follows share a token ("7." merged): read as written
    alts = _alternatives(tokens[j])
    total = sum(alts.values())
    if total <= 0:
        return 0.0
    p_dot = sum(p for alt, p in alts.items() if alt.startswith(b".")) / total
    if p_dot == 0.0:
        return 0.0
    if "." not in sampled:
        return p_dot * DEFAULT_FRACTION
    k = _token_at(tokens, integer_end + 1)
    if k is None or integer_end + 1 >= end:
        return p_dot * DEFAULT_FRACTION
    digits = {alt[:1]: p for alt, p in _alternatives(tokens[k]).items() if alt[:1].isdigit()}
    dsum = sum(digits.values())
    if dsum <= 0:
        return p_dot * DEFAULT_FRACTION
    return p_dot * sum(int(d) / 10 * p for d, p in digits.items()) / dsum


def expected_scores(text: str | None, rubric: Rubric, tokens: ScoreTokens | None) -> dict[str, float] | None:
    """``{slot: expected score}`` of an answer, or None without usable logprobs (see module).

    >>> from mira_spark.prompting.rubric import Dimension, Rubric
    >>> r = Rubric(group="g", dimensions=(Dimension(slot="A1", dimension="Clarity", cluster_size=1),))
    >>> text = "[A1] Clarity: 7/10 — ok"
    >>> body = text.encode()
    >>> at = body.index(b"7")
    >>> toks = (TokenLogprob(at, b"7", math.log(0.5), ((b"7", math.log(0.5)), (b"8", math.log(0.5)))),
    ...         TokenLogprob(at + 1, b"/", 0.0, ((b"/", 0.0),)))
    >>> expected_scores(text, r, toks)
    {'A1': 7.5}
    """
    if not text or not tokens:
        return None
    body = text.encode("utf-8")
    out: dict[str, float] = {}
    for slot, (start, end) in score_spans(text, rubric).items():
        b_start = len(text[:start].encode("utf-8"))
        b_end = b_start + len(text[start:end].encode("utf-8"))
        value = expected_score(body, b_start, b_end, tokens)
        if value is not None:
            out[slot] = value
    return out
