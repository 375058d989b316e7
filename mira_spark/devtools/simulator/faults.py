"""Seeded fault injection for one simulated endpoint.

Takes a :class:`FaultProfile` (rules loaded from a dict or YAML) and a seed; gives, per request, the
fault to inject (or none) from the endpoint's own ``random.Random(seed)``, so a run with the same seed
and the same request order fails the same way. Time windows (``start_s``/``end_s``) are relative to
server start; ``end_after_requests`` closes a rule's window after the endpoint's first N requests
instead, which does not depend on how fast the client gets going. Also the pure text mutations for answer faults (malformed, truncated, missing_dims).

Kinds: ``http_error`` (500/502/503), ``rate_limit`` (429 with Retry-After), ``hang`` (no answer for far
longer than any client timeout), ``reset`` (the connection is aborted without a response),
``malformed`` (text without any ``[A..]`` line), ``truncated`` (cut mid-way, ``finish_reason="length"``),
``missing_dims`` (2-4 slot lines dropped).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

FaultKind = Literal["http_error", "rate_limit", "hang", "reset", "malformed", "truncated", "missing_dims"]
FAULT_KINDS: tuple[str, ...] = ("http_error", "rate_limit", "hang", "reset", "malformed", "truncated",
                                "missing_dims")
ANSWER_FAULTS = frozenset({"malformed", "truncated", "missing_dims"})  # a completion is produced, then spoiled
DEFAULT_STATUS = {"http_error": 503, "rate_limit": 429}
HANG_S = 600.0  # wall seconds; far beyond any client timeout, and cancelled when the server stops

MALFORMED_TEXTS = (
    "抱歉，我无法对该文档进行评分。",
    "The document appears to be a web page. Overall it is fine.\n\nScore: good",
    "```json\n{\"error\": \"unexpected token\"}\n```",
    "overall overall overall overall overall overall",
)


class FaultRule(BaseModel):
    """Inject ``kind`` with ``probability`` into requests arriving in ``[start_s, end_s)`` after start
    (and, with ``end_after_requests``, among the endpoint's first ``end_after_requests`` requests)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FaultKind = Field(description="What goes wrong.")
    probability: float = Field(ge=0.0, le=1.0, description="Chance per request while the window is open.")
    start_s: float = Field(default=0.0, ge=0.0, description="Window start, seconds after server start.")
    end_s: float | None = Field(default=None, description="Window end (exclusive); None = forever.")
    end_after_requests: int | None = Field(
        default=None, ge=1,
        description="Window end in requests: only the endpoint's first N chat requests that reach the fault "
        "decision (since start or /sim/reset) are eligible; None = no request limit.")
    status: int | None = Field(default=None, description="HTTP status for http_error (500/502/503) / rate_limit.")
    retry_after_s: float = Field(default=1.0, ge=0.0, description="Retry-After seconds sent with rate_limit.")

    @model_validator(mode="after")
    def _check(self) -> FaultRule:
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        if self.kind == "http_error" and self.status is not None and self.status not in (500, 502, 503):
            raise ValueError(f"http_error status must be 500, 502 or 503, got {self.status}")
        return self

    def active(self, elapsed_s: float, request_number: int | None = None) -> bool:
        """Open at ``elapsed_s`` for the endpoint's ``request_number``-th request (1-based; None: unknown)."""
        if self.end_after_requests is not None and request_number is not None \
                and request_number > self.end_after_requests:
            return False
        return elapsed_s >= self.start_s and (self.end_s is None or elapsed_s < self.end_s)

    @property
    def http_status(self) -> int:
        return self.status or DEFAULT_STATUS.get(self.kind, 200)


class FaultProfile(BaseModel):
    """An ordered list of rules; the first rule that fires for a request wins."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: tuple[FaultRule, ...] = Field(default=(), description="Fault rules, checked in order.")
    hang_s: float = Field(default=HANG_S, gt=0, description="How long a hung request sleeps (wall seconds).")

    @classmethod
    def from_yaml(cls, path: str | Path) -> FaultProfile:
        """Load ``{rules: [...]}`` (or a bare list of rules) from a YAML file."""
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return cls.model_validate({"rules": data} if isinstance(data, list) else data)

    @classmethod
    def shorthand(cls, error_rate: float = 0.0, malformed_rate: float = 0.0) -> FaultProfile:
        """Rules for the ``--error-rate`` / ``--malformed-rate`` knobs (503s and garbage answers)."""
        rules = []
        if error_rate > 0:
            rules.append(FaultRule(kind="http_error", probability=error_rate, status=503))
        if malformed_rate > 0:
            rules.append(FaultRule(kind="malformed", probability=malformed_rate))
        return cls(rules=tuple(rules))

    def plus(self, other: FaultProfile) -> FaultProfile:
        return FaultProfile(rules=self.rules + other.rules, hang_s=min(self.hang_s, other.hang_s))


class FaultInjector:
    """Per-endpoint decisions: one draw per active rule per request from ``random.Random(seed)``."""

    def __init__(self, profile: FaultProfile, seed: int) -> None:
        self.profile = profile
        self.rng = random.Random(seed)
        self.decisions = 0  # requests decided so far; the request number of end_after_requests

    def decide(self, elapsed_s: float) -> FaultRule | None:
        """The rule to apply to a request arriving ``elapsed_s`` after server start, or None."""
        self.decisions += 1
        for rule in self.profile.rules:
            if rule.active(elapsed_s, self.decisions) and self.rng.random() < rule.probability:
                return rule
        return None

    def malformed(self) -> str:
        """Garbage answer without any ``[A..]`` line."""
        return self.rng.choice(MALFORMED_TEXTS)

    def truncate(self, text: str) -> str:
        """Cut the answer somewhere between 30% and 80% of its length (mid-line)."""
        if len(text) < 2:
            return ""
        cut = max(1, int(len(text) * self.rng.uniform(0.3, 0.8)))
        return text[:cut]

    def drop_dims(self, text: str) -> tuple[str, list[str]]:
        """Remove 2-4 slot lines; returns the text and the dropped slots."""
        lines = text.split("\n")
        slot_idx = [i for i, line in enumerate(lines) if line.startswith("[A")]
        if not slot_idx:
            return text, []
        k = min(len(slot_idx), self.rng.randint(2, 4))
        drop = set(self.rng.sample(slot_idx, k))
        dropped = [lines[i][1 : lines[i].index("]")] for i in sorted(drop)]
        return "\n".join(line for i, line in enumerate(lines) if i not in drop), dropped
