"""Constrained output: the seed's answer format as a regex and as a GBNF grammar, built from the rubric.

Takes a :class:`~mira_spark.prompting.rubric.Rubric` (slot count and dimension names) and :class:`OutputLimits`;
gives a regex (:func:`output_regex`), a GBNF grammar (:func:`output_grammar`) and the request-body
fields that ask a server to decode under one of them (:func:`request_fields`). The constrained text is
still the model card's line format, so :func:`~mira_spark.parsing.parse.parse_output` reads it unchanged::

    [A1] <dimension 1>: <score>/10 — <rationale>
    ...
    [A15] <dimension 15>: <score>/10 — <rationale>
    overall: <0-100>
    training_recommendation: <keep | downsample | drop>
    domain_tag: <short tag>
    brief: <one-sentence summary>

Scores are ``0``-``9`` with an optional single decimal, or ``10``: every number the grammar admits is
in the parser's range, so a constrained answer can never carry an out-of-range or invented score. Free
text (rationale, tag, brief) is one line of bounded length, so a small model cannot ramble: a
completion is at most a few hundred tokens.

Request fields per server (``scoring.structured_output_api``):

* ``structured_outputs`` — vLLM >= 0.10.2: ``{"structured_outputs": {"regex": ...}}`` or ``{"grammar": ...}``;
* ``guided`` — vLLM < 0.12 (0.6 ... 0.11): ``guided_regex`` / ``guided_grammar`` (removed in 0.12.0, where
  they are silently ignored);
* ``llama_cpp`` — llama.cpp server and llama-cpp-python: top-level ``grammar`` (GBNF); no regex field.

Pure logic: imports no Spark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mira_spark.prompting.rubric import RECOMMENDATIONS, Rubric

ConstrainedOutput = Literal["off", "regex", "grammar"]
StructuredOutputAPI = Literal["structured_outputs", "guided", "llama_cpp"]

CONSTRAINED_MODES: tuple[str, ...] = ("off", "regex", "grammar")
STRUCTURED_OUTPUT_APIS: tuple[str, ...] = ("structured_outputs", "guided", "llama_cpp")
# Every request-body key any mode can set: extra_body must not set them by hand as well.
CONSTRAINT_KEYS: tuple[str, ...] = ("structured_outputs", "guided_regex", "guided_grammar", "grammar")

SLOT_SEPARATOR = " — "  # the model card's "<score>/10 — <rationale>" (U+2014 between spaces)
DEFAULT_RATIONALE_CHARS = 120
DEFAULT_TAG_CHARS = 32
DEFAULT_BRIEF_CHARS = 120

# One line of free text: no line break; the first character is not blank and not one the parser strips
# (so a bounded field is never read back as empty).
_LINE_CHARS_RE = r"[^\n\r]"
_FIRST_CHAR_RE = "[^\\n\\r \\t*_`\"']"
_LINE_CHARS_GBNF = r"[^\n\r]"
_FIRST_CHAR_GBNF = "[^\\n\\r \\t*_`\"']"
_REGEX_META = set(r"\.^$|?*+()[]{}")


@dataclass(frozen=True)
class OutputLimits:
    """Longest free text the constraint admits, in characters (first character included)."""

    rationale_chars: int = DEFAULT_RATIONALE_CHARS
    tag_chars: int = DEFAULT_TAG_CHARS
    brief_chars: int = DEFAULT_BRIEF_CHARS

    @classmethod
    def from_max_chars(cls, max_chars: int) -> OutputLimits:
        """One bound for every free-text field (``scoring.free_text_max_chars``); tags stay short.

        >>> OutputLimits.from_max_chars(16)
        OutputLimits(rationale_chars=16, tag_chars=16, brief_chars=16)
        """
        return cls(rationale_chars=max_chars, tag_chars=min(DEFAULT_TAG_CHARS, max_chars), brief_chars=max_chars)

    def __post_init__(self) -> None:
        for name in ("rationale_chars", "tag_chars", "brief_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"OutputLimits.{name} must be at least 1, got {getattr(self, name)}")


def regex_literal(text: str) -> str:
    r"""``text`` as a regex matching exactly it; only metacharacters are escaped (engines such as
    xgrammar reject escapes of ordinary characters, which :func:`re.escape` would emit for ``&`` or ``#``).

    >>> regex_literal("Code Readability & Organization (a11y)")
    'Code Readability & Organization \\(a11y\\)'
    """
    out = []
    for ch in text:
        if ch in _REGEX_META:
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        else:
            out.append(ch)
    return "".join(out)


def gbnf_literal(text: str) -> str:
    r"""``text`` as a GBNF string literal.

    >>> gbnf_literal('say "hi"\n')
    '"say \\"hi\\"\\n"'
    """
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _slot_prefix(slot: str, dimension: str) -> str:
    return f"[{slot}] {dimension}: "


def output_regex(rubric: Rubric, limits: OutputLimits = OutputLimits()) -> str:
    """The whole answer as one regex (for ``structured_outputs.regex`` / ``guided_regex``).

    >>> import re
    >>> from mira_spark.prompting.rubric import rubric_from_names
    >>> pattern = output_regex(rubric_from_names("g", ["Clarity", "Depth"]), OutputLimits(rationale_chars=8))
    >>> text = ("[A1] Clarity: 7/10 — clear\\n[A2] Depth: 10/10 — deep\\noverall: 80\\n"
    ...         "training_recommendation: keep\\ndomain_tag: docs\\nbrief: Good.")
    >>> re.fullmatch(pattern, text) is not None
    True
    >>> re.fullmatch(pattern, text.replace("7/10", "11/10")) is None
    True
    """
    score = r"(?:10|[0-9](?:\.[0-9])?)"
    overall = r"(?:100|[1-9]?[0-9])"
    rec = "(?:" + "|".join(RECOMMENDATIONS) + ")"

    def free(n: int) -> str:
        return f"{_FIRST_CHAR_RE}{_LINE_CHARS_RE}{{0,{n - 1}}}"

    lines = [
        regex_literal(_slot_prefix(d.slot, d.dimension)) + score + regex_literal("/10" + SLOT_SEPARATOR)
        + free(limits.rationale_chars)
        for d in rubric.dimensions
    ]
    lines += [
        "overall: " + overall,
        "training_recommendation: " + rec,
        "domain_tag: " + free(limits.tag_chars),
        "brief: " + free(limits.brief_chars),
    ]
    return r"\n".join(lines) + r"\n?"


def output_grammar(rubric: Rubric, limits: OutputLimits = OutputLimits()) -> str:
    """The whole answer as a GBNF grammar (llama.cpp ``grammar``; vLLM ``structured_outputs.grammar``).

    One rule per rubric slot (``a1`` ... ``a15``), then the four summary lines. Bounded repetition
    (``{0,n}``) keeps every free-text field to one short line.

    >>> from mira_spark.prompting.rubric import rubric_from_names
    >>> print(output_grammar(rubric_from_names("g", ["Clarity"]), OutputLimits(4, 4, 4)))
    root ::= a1 summary
    a1 ::= "[A1] Clarity: " score "/10 — " rationale "\\n"
    score ::= "10" | [0-9] ("." [0-9])?
    rationale ::= [^\\n\\r \\t*_`"'] [^\\n\\r]{0,3}
    summary ::= "overall: " overall "\\ntraining_recommendation: " recommendation "\\ndomain_tag: " tag "\\nbrief: " brief "\\n"?
    overall ::= "100" | [1-9]? [0-9]
    recommendation ::= "keep" | "downsample" | "drop"
    tag ::= [^\\n\\r \\t*_`"'] [^\\n\\r]{0,3}
    brief ::= [^\\n\\r \\t*_`"'] [^\\n\\r]{0,3}
    """
    slot_rules = [f"a{d.index}" for d in rubric.dimensions]
    rules = ["root ::= " + " ".join([*slot_rules, "summary"])]
    for name, d in zip(slot_rules, rubric.dimensions, strict=True):
        rules.append(
            f"{name} ::= {gbnf_literal(_slot_prefix(d.slot, d.dimension))} score "
            f"{gbnf_literal('/10' + SLOT_SEPARATOR)} rationale \"\\n\""
        )

    def free(n: int) -> str:
        return f"{_FIRST_CHAR_GBNF} {_LINE_CHARS_GBNF}{{0,{n - 1}}}"

    rules += [
        'score ::= "10" | [0-9] ("." [0-9])?',
        f"rationale ::= {free(limits.rationale_chars)}",
        'summary ::= "overall: " overall "\\ntraining_recommendation: " recommendation '
        '"\\ndomain_tag: " tag "\\nbrief: " brief "\\n"?',
        'overall ::= "100" | [1-9]? [0-9]',
        "recommendation ::= " + " | ".join(gbnf_literal(r) for r in RECOMMENDATIONS),
        f"tag ::= {free(limits.tag_chars)}",
        f"brief ::= {free(limits.brief_chars)}",
    ]
    return "\n".join(rules)


def check_mode(mode: str, api: str) -> str | None:
    """Why ``mode`` cannot be sent with ``api`` (None when it can): the config validator's message."""
    if mode not in CONSTRAINED_MODES:
        return f"constrained_output must be one of {'|'.join(CONSTRAINED_MODES)}, got {mode!r}"
    if api not in STRUCTURED_OUTPUT_APIS:
        return f"structured_output_api must be one of {'|'.join(STRUCTURED_OUTPUT_APIS)}, got {api!r}"
    if mode == "regex" and api == "llama_cpp":
        return ("llama.cpp takes a GBNF grammar, not a regex: set scoring.constrained_output: grammar "
                "(or structured_output_api: structured_outputs for vLLM)")
    return None


def request_fields(rubric: Rubric, mode: str, api: str, limits: OutputLimits = OutputLimits()) -> dict[str, Any]:
    """Request-body fields that make the server decode under the answer format ({} when ``mode`` is off).

    >>> from mira_spark.prompting.rubric import rubric_from_names
    >>> rubric = rubric_from_names("g", ["Clarity"])
    >>> sorted(request_fields(rubric, "grammar", "structured_outputs")["structured_outputs"])
    ['grammar']
    >>> sorted(request_fields(rubric, "regex", "guided")), sorted(request_fields(rubric, "grammar", "llama_cpp"))
    (['guided_regex'], ['grammar'])
    >>> request_fields(rubric, "off", "llama_cpp")
    {}
    """
    problem = check_mode(mode, api)
    if problem is not None:
        raise ValueError(problem)
    if mode == "off":
        return {}
    body = output_regex(rubric, limits) if mode == "regex" else output_grammar(rubric, limits)
    if api == "structured_outputs":
        return {"structured_outputs": {mode: body}}
    if api == "guided":
        return {f"guided_{mode}": body}
    return {"grammar": body}


__all__ = [
    "CONSTRAINED_MODES",
    "CONSTRAINT_KEYS",
    "STRUCTURED_OUTPUT_APIS",
    "ConstrainedOutput",
    "OutputLimits",
    "StructuredOutputAPI",
    "check_mode",
    "gbnf_literal",
    "output_grammar",
    "output_regex",
    "regex_literal",
    "request_fields",
]
