"""Per-stage stats (issue 8 item 6) and live progress (issue 10 item 9).

Pure: the latency histogram against exact percentiles, record round trips, the progress line and the
terminal bar. Spark: one aggregation over a wave's rows (`scoring.accounting.wave_stats`) against the same
counts computed row by row in Python.
"""

from __future__ import annotations

import io
import math
import random
from datetime import datetime
from typing import Any

import pytest

from mira_spark.progress import TerminalProgress, WaveMeter
from mira_spark.runstats import (
    LATENCY_RESOLUTION,
    LatencyHistogram,
    StageStats,
    from_counts,
    latency_bucket,
    summary_lines,
)


def _exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]  # nearest rank


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_histogram_quantile_is_within_its_resolution_of_the_exact_one(seed: int, q: float) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(0.5, 1.2) for _ in range(5000)]
    got = LatencyHistogram.of(values).quantile(q)
    exact = _exact_quantile(values, q)
    assert got is not None and abs(got / exact - 1) <= LATENCY_RESOLUTION


def test_histograms_merge_by_adding_buckets() -> None:
    rng = random.Random(7)
    a = [rng.expovariate(1.0) for _ in range(700)]
    b = [rng.expovariate(0.1) for _ in range(300)]
    merged = LatencyHistogram.of(a)
    merged.add(LatencyHistogram.of(b))
    assert merged == LatencyHistogram.of(a + b) and merged.count == 1000
    assert LatencyHistogram().quantile(0.5) is None


def test_stage_stats_add_record_and_read_back() -> None:
    first = from_counts("score", {"rows_out": 10, "requests": 14, "retries": 3, "retry:http_503": 2,
                                  "retry:timeout": 1, "failed": 1, "failed:http_400": 1, "status:ok": 9,
                                  "status:failed": 1, "latency:10": 9, "latency:40": 1, "status:deferred": 0})
    second = from_counts("score", {"rows_out": 5, "requests": 5, "status:ok": 5, "latency:10": 5})
    first.add(second)
    assert (first.rows_out, first.requests, first.retries) == (15, 19, 3)
    assert first.by_prefix("retry") == {"http_503": 2, "timeout": 1}
    assert "status:deferred" not in first.counts  # zero counts are not stored
    assert first.latency.count == 15
    now = datetime(2026, 12, 2, 3, 0)
    row = first.record("r1", now)
    back = StageStats.from_record(row)
    assert (back.stage, back.rows_out, back.requests, back.counts) == ("score", 15, 19, first.counts)
    assert back.latency_quantile(0.5) == row["latency_p50_s"] == first.latency.quantile(0.5)
    assert back.latency_quantile(0.99) == first.latency.quantile(0.99) > back.latency_quantile(0.5)


def test_summary_lines_show_every_stage_from_its_record() -> None:
    route = StageStats("route", rows_in=12, rows_out=10, counts={"rejected:no_scorer": 2})
    score = from_counts("score", {"rows_out": 10, "requests": 13, "retries": 2, "retry:http_429": 2,
                                  "failed": 1, "failed:timeout": 1, "status:ok": 9, "latency:30": 10,
                                  "waves": 2, "wasted_requests": 1, "wasted_completion_tokens": 321})
    score.rows_in = 10
    lines = "\n".join(summary_lines("r1", {"route": route, "score": score}, stopped="pool down"))
    assert "12 documents in, 10 routed; rejected: no_scorer 2" in lines
    assert "10 rows of 10 pending in 2 waves" in lines
    assert "13 requests (2 retries: http_429 2; 0 repairs; 1 wasted, 321 tokens)" in lines
    assert "failed 1 (timeout 1)" in lines and "STOPPED: pool down" in lines


def test_wave_meter_eta_rates_and_gpu_hours() -> None:
    meter = WaveMeter(total_docs=1000, n_waves=5, started=10.0, gpus=8)
    totals = StageStats("score", rows_out=250, requests=300, prompt_tokens=50_000, completion_tokens=25_000,
                        counts={"failed:http_503": 3})
    p = meter.line(1, totals, now=110.0)
    assert p.eta_s == pytest.approx(300.0)  # 750 left at 2.5 documents/s
    assert p.requests_per_s == pytest.approx(3.0) and p.tokens_per_s == pytest.approx(750.0)
    assert p.gpu_hours == pytest.approx(8 * 100 / 3600)
    assert p.gpu_hours_projected == pytest.approx(4 * p.gpu_hours)
    assert "wave 1/5: 250/1000 documents (25.0%)" in p.text() and "http_503 3" in p.text()
    assert "ETA 5m00s" in p.text()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_progress_draws_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    meter = WaveMeter(total_docs=100, n_waves=2, started=0.0, gpus=8)
    half, done = StageStats("score", rows_out=50), StageStats("score", rows_out=100)
    plain, tty = io.StringIO(), _Tty()
    for sink in (TerminalProgress(plain), TerminalProgress(tty)):
        sink(meter.line(1, half, now=5.0))
        sink(meter.line(2, done, now=10.0))
    assert plain.getvalue().count("\n") == 2 and "\r" not in plain.getvalue()
    out = tty.getvalue()
    assert out.startswith("\r[" + "#" * 15 + "." * 15 + "]") and out.count("\r") == 2
    assert out.endswith("\n") and out.count("\n") == 1  # redrawn in place, one newline when done


def _raw_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = rng.choice(["ok", "ok", "ok", "retried", "failed", "unsent"])
        causes = [rng.choice(["http_503", "http_429", "timeout"]) for _ in range(rng.randint(1, 3))]
        rows.append({
            "doc_id": f"d{i}", "status": "failed" if kind in ("failed", "unsent") else "ok",
            "error": {"failed": "http_400: bad", "unsent": "empty_text"}.get(kind),
            "attempts": 0 if kind == "unsent" else 1 + (len(causes) if kind == "retried" else 0),
            "repairs": rng.randint(0, 1) if kind == "ok" else 0,
            "wasted_requests": rng.randint(0, 1), "wasted_completion_tokens": rng.randint(0, 400),
            "prompt_tokens": None if kind == "unsent" else rng.randint(100, 9000),
            "completion_tokens": None if kind == "unsent" else rng.randint(100, 900),
            "retry_causes": causes if kind == "retried" else [],
            "latency_s": None if kind == "unsent" else rng.lognormvariate(0.0, 1.0),
            "truncated": rng.random() < 0.1, "shrunk": rng.random() < 0.05,
        })
    return rows


def _expected(rows: list[dict[str, Any]]) -> StageStats:
    out = StageStats("score")
    for r in rows:
        out.rows_out += 1
        out.requests += r["attempts"]
        out.repairs += r["repairs"]
        out.wasted_requests += r["wasted_requests"]
        out.wasted_completion_tokens += r["wasted_completion_tokens"]
        out.prompt_tokens += r["prompt_tokens"] or 0
        out.completion_tokens += r["completion_tokens"] or 0
        out.retries += len(r["retry_causes"])
        out.failed += r["status"] == "failed"
        out.count(f"status:{r['status']}")
        if r["status"] == "failed":
            out.count("failed:" + r["error"].split(":")[0])
        for c in r["retry_causes"]:
            out.count(f"retry:{c}")
        out.count("truncated", int(r["truncated"]))
        out.count("shrunk", int(r["shrunk"]))
        if r["attempts"] > 0:
            b = latency_bucket(r["latency_s"])
            out.latency.buckets[b] = out.latency.buckets.get(b, 0) + 1
    return out


@pytest.mark.spark
def test_wave_stats_is_one_aggregation_equal_to_counting_row_by_row(spark: Any) -> None:
    from mira_spark.scoring.accounting import wave_stats

    rows = _raw_rows(400, seed=11)
    schema = ("doc_id string, status string, error string, attempts int, repairs int, wasted_requests int, "
              "wasted_completion_tokens long, prompt_tokens long, completion_tokens long, "
              "retry_causes array<string>, latency_s double, truncated boolean, shrunk boolean")
    df = spark.createDataFrame([tuple(r.values()) for r in rows], schema)
    got, want = wave_stats(df), _expected(rows)
    assert want.retries > 0 and want.failed > 0 and want.counts.get("failed:empty_text", 0) > 0  # cases exist
    for name in StageStats._SUMMED:
        assert getattr(got, name) == getattr(want, name), name
    assert got.counts == want.counts
    assert got.latency == want.latency
