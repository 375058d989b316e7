"""OpenAI chat ``logprobs`` for the simulator's answers, as vLLM gives them (simulator only).

Takes an answer text, the per-slot token-level distributions its scores were drawn from (or None) and the
request's ``top_logprobs``; gives the choice's ``{"content": [...]}``: one entry per token with ``token``,
``logprob``, ``bytes`` and ``top_logprobs`` (at most ``top_logprobs`` alternatives, most likely first; the
sampled token is among them whenever it is in the top K).

Tokens are cut like Qwen's tokenizer cuts numbers: every digit and every ``.`` is a token of its own; the
rest is coarse (a newline, a run of other whitespace, a run of anything else), which is all a simulator
needs: the tokens concatenate to the text and their ``bytes`` to its UTF-8 encoding. Their count is not
``usage.completion_tokens`` (that stays :func:`.capacity.sim_tokens`).

A score of a ``[Ai] name: <score>/10`` line carries the distribution it was sampled from
(:func:`.sampling.grid_distribution` of the slot's ``(m, sd_token)``): each character of ``<score>/`` is a
token whose alternatives are the next characters of the grid values' texts that share the prefix
sampled so far, with their conditional probabilities. So the first digit ``"1"`` holds the mass of 1,
1.5 and 10; after ``"7"`` come ``"."`` (7.5) and ``"/"`` (7); after ``"7."`` only ``"5"``. Every other
token, and every token of an answer without distributions (greedy, noise off, or changed by a fault or
the token budget), has logprob 0 and itself as its only alternative.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any

from mira_spark.devtools.simulator.judge import _fmt
from mira_spark.devtools.simulator.sampling import grid_distribution

MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
TOKEN = re.compile(r"\d|\.|\n|[^\S\n]+|[^\d.\s]+")
# The score of a rendered slot line and the "/" after it (slot names hold no colon, see judge.TEMPLATE_LINE).
SCORE_AT = re.compile(r"^\[(A\d{1,2})\][^:\n]*: ([0-9]+(?:\.[0-9]+)?/)", re.MULTILINE)
SCORE_END = "/"


def tokenize(text: str) -> list[str]:
    """Takes a text; gives its simulated tokens (digits and ``.`` alone, coarse chunks between).

    >>> tokenize("[A1] x: 10/10 — ok")
    ['[A', '1', ']', ' ', 'x:', ' ', '1', '0', '/', '1', '0', ' ', '—', ' ', 'ok']
    """
    return TOKEN.findall(text)


def score_token_probs(dist: dict[float, float], score_text: str) -> list[tuple[str, dict[str, float]]]:
    """Takes a grid distribution and a sampled score with its ``/`` (``"7.5/"``); gives, per character, the
    character and the conditional probabilities of the characters that can follow the prefix before it.

    >>> [(c, {k: round(v, 3) for k, v in alts.items()}) for c, alts in score_token_probs({7.0: 0.6, 7.5: 0.4},
    ...                                                                                    "7.5/")]
    [('7', {'7': 1.0}), ('.', {'/': 0.6, '.': 0.4}), ('5', {'5': 1.0}), ('/', {'/': 1.0})]
    """
    texts = {f"{_fmt(v)}{SCORE_END}": p for v, p in dist.items()}
    out: list[tuple[str, dict[str, float]]] = []
    for i, char in enumerate(score_text):
        prefix = score_text[:i]
        following: dict[str, float] = defaultdict(float)
        for text, p in texts.items():
            if len(text) > i and text.startswith(prefix):
                following[text[i]] += p
        mass = sum(following.values())
        if following.get(char, 0.0) <= 0.0:
            # A score off the distribution (it was not drawn from it): the text is all we know.
            out.append((char, {char: 1.0}))
        else:
            out.append((char, {c: p / mass for c, p in following.items() if p > 0.0}))
    return out


def _certain(token: str, top_k: int) -> dict[str, Any]:
    """One ``content`` entry for a token that had no alternative (logprob 0)."""
    encoded = list(token.encode("utf-8"))
    top = [{"token": token, "logprob": 0.0, "bytes": encoded}] if top_k > 0 else []
    return {"token": token, "logprob": 0.0, "bytes": encoded, "top_logprobs": top}


def _entry(token: str, alternatives: dict[str, float], top_k: int) -> dict[str, Any]:
    """One ``content`` entry: the token, its logprob and the ``top_k`` most likely alternatives."""
    ranked = sorted(alternatives.items(), key=lambda item: (-item[1], item[0]))[:top_k]
    return {
        "token": token,
        "logprob": math.log(alternatives[token]),
        "bytes": list(token.encode("utf-8")),
        "top_logprobs": [{"token": t, "logprob": math.log(p), "bytes": list(t.encode("utf-8"))} for t, p in ranked],
    }


def choice_logprobs(text: str, dists: dict[str, tuple[float, float]] | None, top_k: int) -> dict[str, Any]:
    """Takes a choice's final text, the ``(m, sd_token)`` per slot its scores were drawn from (None: none, every
    token certain) and ``top_logprobs``; gives the choice's ``logprobs`` object ``{"content": [...]}``.

    >>> out = choice_logprobs("[A1] x: 7/10", {"A1": (7.0, 0.0)}, top_k=2)
    >>> "".join(e["token"] for e in out["content"]) == "[A1] x: 7/10"
    True
    >>> choice_logprobs("ok", None, top_k=1)["content"][0]["top_logprobs"]
    [{'token': 'ok', 'logprob': 0.0, 'bytes': [111, 107]}]
    """
    content: list[dict[str, Any]] = []
    done = 0
    for match in SCORE_AT.finditer(text):
        slot = match.group(1)
        if dists is None or slot not in dists:
            continue
        start, end = match.span(2)
        content += [_certain(t, top_k) for t in tokenize(text[done:start])]
        dist = grid_distribution(*dists[slot])
        content += [_entry(c, alts, top_k) for c, alts in score_token_probs(dist, match.group(2))]
        done = end
    content += [_certain(t, top_k) for t in tokenize(text[done:])]
    return {"content": content}
