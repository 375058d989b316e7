"""What each stage of a run did: counts that travel with the rows, summed once, one record per stage.

Takes the counts a stage reports (for scoring: one aggregation over a wave's own output rows, which
carry every request's attempts, retries by cause, repairs, wasted requests, tokens and latency; see
:func:`mira_spark.scoring.accounting.wave_stats`) and gives :class:`StageStats` — one row of the
``run_stats`` table per (run, stage) — plus the summary lines the CLI prints from that table.

Latency percentiles are exact to the resolution of a log-spaced histogram (:data:`LATENCY_RESOLUTION`
wide buckets), so waves and tasks merge by adding bucket counts; nothing keeps every latency.
Pure: imports no Spark.

>>> h = LatencyHistogram.of([0.5] * 98 + [3.0, 9.0])
>>> round(h.quantile(0.5), 2), round(h.quantile(0.99), 1)
(0.5, 3.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime

LATENCY_RESOLUTION = 0.02  # bucket width: each bucket's upper edge is 2% above its lower edge
_LOG_STEP = math.log1p(LATENCY_RESOLUTION)
_MIN_LATENCY_S = 1e-4


def latency_bucket(seconds: float) -> int:
    """Index of the log-spaced bucket holding ``seconds`` (the same formula runs in Spark)."""
    return math.floor(math.log(max(seconds, _MIN_LATENCY_S)) / _LOG_STEP)


@dataclass
class LatencyHistogram:
    """Counts per log-spaced latency bucket; mergeable across tasks, waves and runs."""

    buckets: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, latencies: Iterable[float]) -> LatencyHistogram:
        h = cls()
        for s in latencies:
            b = latency_bucket(s)
            h.buckets[b] = h.buckets.get(b, 0) + 1
        return h

    def add(self, other: LatencyHistogram) -> None:
        for b, n in other.buckets.items():
            self.buckets[b] = self.buckets.get(b, 0) + n

    @property
    def count(self) -> int:
        return sum(self.buckets.values())

    def quantile(self, q: float) -> float | None:
        """The nearest-rank ``q`` quantile, as its bucket's geometric midpoint (within 1% of the value)."""
        total = self.count
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for b in sorted(self.buckets):
            seen += self.buckets[b]
            if seen >= rank:
                return math.exp((b + 0.5) * _LOG_STEP)
        raise AssertionError("unreachable: rank <= total")


@dataclass
class StageStats:
    """One stage's counts in one run (one ``run_stats`` row). Sums add up across waves with :meth:`add`."""

    stage: str
    started_at: datetime | None = None
    seconds: float = 0.0
    rows_in: int = 0
    rows_out: int = 0
    requests: int = 0  # every HTTP request sent, retries and repairs included
    retries: int = 0  # transport retries (429, 5xx, timeouts, connection errors); by cause in counts
    repairs: int = 0  # follow-ups and re-asks for malformed or partial answers
    wasted_requests: int = 0  # billed answers nothing downstream uses
    wasted_completion_tokens: int = 0
    resent_requests: int = 0  # requests for documents a fault made us send again
    resent_completion_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed: int = 0  # rows with status failed; by reason in counts
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    counts: dict[str, int] = field(default_factory=dict)  # e.g. status:ok, failed:http_503, retry:timeout
    stored_p50_s: float | None = None  # read back from run_stats, where only the percentiles are kept
    stored_p99_s: float | None = None

    _SUMMED = ("rows_in", "rows_out", "requests", "retries", "repairs", "wasted_requests",
               "wasted_completion_tokens", "resent_requests", "resent_completion_tokens", "prompt_tokens",
               "completion_tokens", "failed")

    def add(self, other: StageStats) -> None:
        for name in self._SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latency.add(other.latency)
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v

    def count(self, key: str, n: int = 1) -> None:
        if n:
            self.counts[key] = self.counts.get(key, 0) + n

    def by_prefix(self, prefix: str) -> dict[str, int]:
        """``counts`` whose key starts with ``prefix:``, keyed by the rest (e.g. ``failed`` -> codes)."""
        p = prefix + ":"
        return {k[len(p):]: v for k, v in self.counts.items() if k.startswith(p)}

    def latency_quantile(self, q: float) -> float | None:
        if self.latency.count:
            return self.latency.quantile(q)
        return self.stored_p50_s if q == 0.5 else self.stored_p99_s if q == 0.99 else None

    def record(self, run_id: str, recorded_at: datetime) -> dict[str, object]:
        """The ``run_stats`` row of this stage (column names of ``store.schemas.RUN_STATS``)."""
        row: dict[str, object] = {"run_id": run_id, "stage": self.stage, "started_at": self.started_at,
                                  "seconds": float(self.seconds)}
        row.update({name: int(getattr(self, name)) for name in self._SUMMED})
        row["latency_p50_s"] = self.latency_quantile(0.5)
        row["latency_p99_s"] = self.latency_quantile(0.99)
        row["counts"] = dict(sorted(self.counts.items()))
        row["recorded_at"] = recorded_at
        return row

    @classmethod
    def from_record(cls, row: Mapping[str, object]) -> StageStats:
        """A stage's counts read back from ``run_stats`` (latency keeps only its two percentiles)."""
        names = {f.name for f in fields(cls)} - {"latency", "counts", "stored_p50_s", "stored_p99_s"}
        out = cls(**{k: row[k] for k in names if k in row and row[k] is not None})  # type: ignore[arg-type]
        out.counts = dict(row.get("counts") or {})  # type: ignore[call-overload]
        out.stored_p50_s, out.stored_p99_s = row.get("latency_p50_s"), row.get("latency_p99_s")  # type: ignore[assignment]
        return out


def from_counts(stage: str, counts: Mapping[str, int]) -> StageStats:
    """A stage's stats from aggregated ``(key, n)`` pairs (what one Spark aggregation over rows returns).

    Keys: the :attr:`StageStats._SUMMED` names; ``latency:<bucket>``; anything else (``status:ok``,
    ``failed:<code>``, ``retry:<cause>``, ``truncated``, ...) goes to ``counts``.
    """
    out = StageStats(stage)
    summed = set(StageStats._SUMMED)
    for key, n in counts.items():
        n = int(n or 0)
        if key in summed:
            setattr(out, key, n)
        elif key.startswith("latency:"):
            out.latency.buckets[int(key.split(":", 1)[1])] = n
        elif n:
            out.counts[key] = n
    return out


def _fmt(d: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "0"


def summary_lines(run_id: str, stages: Mapping[str, StageStats], stopped: str | None = None) -> list[str]:
    """What ``mira-spark run`` prints: one block per stage that ran, read from ``run_stats``."""
    lines = [f"run {run_id}"]
    if (r := stages.get("route")) is not None:
        lines.append(f"  route        {r.rows_in} documents in, {r.rows_out} routed; rejected: "
                     f"{_fmt(r.by_prefix('rejected'))}  ({r.seconds:.1f}s)")
    if (s := stages.get("score")) is not None:
        p50, p99 = s.latency_quantile(0.5), s.latency_quantile(0.99)
        latency = f"latency p50 {p50:.2f}s p99 {p99:.2f}s" if p50 is not None and p99 is not None else "no requests"
        lines += [
            f"  score        {s.rows_out} rows of {s.rows_in} pending in {s.counts.get('waves', 0)} waves "
            f"({s.counts.get('recovered_raw', 0)} recovered from an earlier run)  ({s.seconds:.1f}s)",
            f"               ok {s.counts.get('status:ok', 0)}, failed {s.failed} ({_fmt(s.by_prefix('failed'))}), "
            f"deferred {s.counts.get('status:deferred', 0)}",
            f"               {s.requests} requests ({s.retries} retries: {_fmt(s.by_prefix('retry'))}; "
            f"{s.repairs} repairs; {s.wasted_requests} wasted, {s.wasted_completion_tokens} tokens), {latency}",
            f"               tokens {s.prompt_tokens} prompt + {s.completion_tokens} completion; "
            f"resent {s.resent_requests} ({s.resent_completion_tokens} completion tokens)",
        ]
    if (p := stages.get("parse")) is not None:
        lines.append(f"  parse        {p.rows_out} rows merged into scores  ({p.seconds:.1f}s)")
    if (rel := stages.get("reliability")) is not None:
        lines.append(f"  reliability  {rel.rows_out} cells, {rel.counts.get('masked', 0)} masked; basis: "
                     f"{_fmt(rel.by_prefix('basis'))}  ({rel.seconds:.1f}s)")
    if (sel := stages.get("select")) is not None:
        lines.append(f"  select       {sel.rows_out} kept of {sel.rows_in}  ({sel.seconds:.1f}s)")
        lines += [f"    kept {k:<16} {v}" for k, v in sorted(sel.by_prefix("kept").items())]
    if stopped:
        lines.append(f"  STOPPED: {stopped}")
    return lines
