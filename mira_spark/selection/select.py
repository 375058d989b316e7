"""Selection: the one place rows are split into kept and excluded; excluded rows keep a reason.

Takes score rows with ``composite`` (see ``aggregation``), the rows routing rejected, and the routed
documents still pending; gives

* ``thresholds`` (source, scorer, retain_ratio, threshold, n_in, n_eligible, n_kept, kept_fraction):
  per source, the top ``keep_count(n_eligible, retain_ratio)`` documents by composite are kept, exactly,
  with ties broken by a hash of doc_id (never ``rand()``: Sail's is not repeatable);
* ``decisions``: every input row once, ``kept`` or ``excluded`` with a reason;
* the kept score rows (the caller joins them to the documents for the ``selected`` table).

Per-source counts are aggregated in Spark and turned into keep counts by ``stats.keep_count``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import Window
from pyspark.sql import functions as F

from mira_spark.config import SelectionConfig
from mira_spark.selection.stats import keep_count
from mira_spark.store.schemas import DECISIONS_SCHEMA, THRESHOLDS_SCHEMA, conform

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


@dataclass
class Selection:
    thresholds: DataFrame
    decisions: DataFrame
    kept: DataFrame


def eligible_condition() -> F.Column:
    return (
        (F.col("status") == "ok")
        & F.col("parse_status").isin("ok", "partial")
        & F.col("composite").isNotNull()
    )


def select_documents(spark: SparkSession, scored: DataFrame, rejected: DataFrame, pending: DataFrame,
                     cfg: SelectionConfig) -> Selection:
    scored = scored.withColumn("_eligible", eligible_condition())
    counts = scored.groupBy("source", "scorer").agg(
        F.count(F.lit(1)).alias("n_in"), F.sum(F.col("_eligible").cast("long")).alias("n_eligible")
    ).collect()
    plan_rows = []
    for r in counts:
        ratio = cfg.ratio_for(r["source"])
        plan_rows.append((r["source"], r["scorer"], float(ratio), int(r["n_in"]), int(r["n_eligible"] or 0),
                          keep_count(int(r["n_eligible"] or 0), ratio)))
    plan = spark.createDataFrame(
        plan_rows,
        "source string, scorer string, retain_ratio double, n_in long, n_eligible long, keep_count long",
    )

    order = Window.partitionBy("source", "scorer").orderBy(
        F.col("composite").desc(), F.xxhash64(F.col("doc_id")).asc(), F.col("doc_id").asc()
    )
    eligible = scored.filter(F.col("_eligible")).withColumn("source_rank", F.row_number().over(order).cast("long"))
    ranked = eligible.join(F.broadcast(plan.select("source", "scorer", "keep_count")), ["source", "scorer"])
    kept = ranked.filter(F.col("source_rank") <= F.col("keep_count"))

    cut = kept.groupBy("source", "scorer").agg(F.min("composite").alias("threshold"))
    thresholds = (
        plan.join(cut, ["source", "scorer"], "left")
        .withColumn("n_kept", F.col("keep_count"))
        .withColumn("kept_fraction", F.when(F.col("n_eligible") > 0, F.col("n_kept") / F.col("n_eligible")))
    )

    reason = (
        F.when(F.col("status") != "ok", F.concat(F.lit("scoring_failed:"), F.coalesce(F.split("error", ":")[0], F.lit("unknown"))))
        .when(F.col("parse_status") == "failed", F.lit("parse_failed"))
        .when(F.col("composite").isNull(), F.lit("no_unmasked_score"))
    )
    ranked_all = scored.join(
        eligible.select("doc_id", "scorer", "source_rank"), ["doc_id", "scorer"], "left"
    ).join(F.broadcast(plan.select("source", "scorer", "keep_count")), ["source", "scorer"], "left").join(
        cut, ["source", "scorer"], "left"
    )
    is_kept = F.col("source_rank").isNotNull() & (F.col("source_rank") <= F.col("keep_count"))
    scored_decisions = ranked_all.select(
        "doc_id", "source", "scorer",
        F.when(is_kept, F.lit("kept")).otherwise(F.lit("excluded")).alias("decision"),
        F.when(is_kept, F.lit("selected")).otherwise(F.coalesce(reason, F.lit("below_threshold"))).alias("reason"),
        "composite", "source_rank", "threshold",
    )
    other = rejected.select(
        "doc_id", "source", "scorer", F.lit("excluded").alias("decision"), "reason",
        F.lit(None).cast("double").alias("composite"), F.lit(None).cast("long").alias("source_rank"),
        F.lit(None).cast("double").alias("threshold"),
    )
    waiting = pending.select(
        "doc_id", "source", "scorer", F.lit("excluded").alias("decision"), F.lit("pending").alias("reason"),
        F.lit(None).cast("double").alias("composite"), F.lit(None).cast("long").alias("source_rank"),
        F.lit(None).cast("double").alias("threshold"),
    )
    decisions = conform(scored_decisions, DECISIONS_SCHEMA).unionByName(conform(other, DECISIONS_SCHEMA)).unionByName(
        conform(waiting, DECISIONS_SCHEMA)
    )
    return Selection(
        thresholds=conform(thresholds, THRESHOLDS_SCHEMA),
        decisions=decisions,
        kept=kept.drop("_eligible", "keep_count"),
    )
