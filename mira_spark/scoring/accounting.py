"""Counts of a wave from its own output rows, in one aggregation (the Spark side of ``runstats``).

Every raw output row carries what its requests cost (attempts, retry causes, repairs, wasted requests
and tokens, prompt/completion tokens, latency), so a wave's counts are one pass over the wave's rows —
the rows the wave just wrote — with one small result: ``(key, n)`` pairs that
:func:`mira_spark.runstats.from_counts` turns into :class:`~mira_spark.runstats.StageStats`. No table
is scanned only to count, and nothing re-reads the whole run at the end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from mira_spark.runstats import _LOG_STEP, _MIN_LATENCY_S, StageStats, from_counts

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame


def _pair(key: Column | str, value: Column | int) -> Column:
    k = F.lit(key) if isinstance(key, str) else key
    v = F.lit(value) if isinstance(value, int) else value
    return F.struct(k.alias("k"), F.coalesce(v.cast("long"), F.lit(0).cast("long")).alias("v"))


def _row_pairs() -> Column:
    """Per row: ``(key, n)`` for every count the row contributes (nulls where it contributes none)."""
    status = F.col("status")
    code = F.split(F.coalesce(F.col("error"), F.lit("")), ":").getItem(0)
    sent = F.col("attempts") > 0
    bucket = F.floor(F.log(F.greatest(F.col("latency_s"), F.lit(_MIN_LATENCY_S))) / F.lit(_LOG_STEP)).cast("long")
    fixed = [
        _pair("rows_out", 1),
        _pair("requests", F.col("attempts")),
        _pair("repairs", F.col("repairs")),
        _pair("wasted_requests", F.col("wasted_requests")),
        _pair("wasted_completion_tokens", F.col("wasted_completion_tokens")),
        _pair("prompt_tokens", F.col("prompt_tokens")),
        _pair("completion_tokens", F.col("completion_tokens")),
        _pair("retries", F.size(F.coalesce(F.col("retry_causes"), F.array().cast("array<string>")))),
        _pair("failed", (status == "failed").cast("long")),
        _pair("truncated", F.col("truncated").cast("long")),
        _pair("shrunk", F.col("shrunk").cast("long")),
        _pair(F.concat(F.lit("status:"), status), 1),
        F.when(status == "failed", _pair(F.concat(F.lit("failed:"), code), 1)),
        F.when(sent & F.col("latency_s").isNotNull(),
               _pair(F.concat(F.lit("latency:"), bucket.cast("string")), 1)),
    ]
    causes = F.transform(F.coalesce(F.col("retry_causes"), F.array().cast("array<string>")),
                         lambda c: _pair(F.concat(F.lit("retry:"), c), 1))
    return F.concat(F.array(*fixed), causes)


def wave_stats(raw: DataFrame) -> StageStats:
    """The ``score`` stage's counts of the raw output rows ``raw`` (one Spark action, a few hundred rows back)."""
    pairs = raw.select(F.explode(_row_pairs()).alias("p")).filter(F.col("p").isNotNull())
    rows = pairs.groupBy(F.col("p.k").alias("k")).agg(F.sum("p.v").alias("n")).collect()
    return from_counts("score", {r["k"]: int(r["n"] or 0) for r in rows})
