"""Composite score: mean of the unmasked dimension scores of each document.

Takes score rows and the reliability table; adds ``composite`` (double, null when no unmasked
dimension was scored) and ``dims_used`` (how many slots entered the mean). Same rule as
``stats.composite``, written as a Spark expression so it runs where the rows are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from mira_spark.store.schemas import TABLE_SLOTS, slot_score

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def masked_slots(reliability: DataFrame) -> DataFrame:
    """``source, scorer, masked_slots array<string>`` (empty array when nothing is masked)."""
    return reliability.groupBy("source", "scorer").agg(
        F.array_sort(F.collect_list(F.when(F.col("masked"), F.col("slot")))).alias("masked_slots")
    )


def add_composite(scores: DataFrame, reliability: DataFrame) -> DataFrame:
    masks = masked_slots(reliability)
    joined = scores.join(masks, on=["source", "scorer"], how="left").withColumn(
        "masked_slots", F.coalesce(F.col("masked_slots"), F.array().cast("array<string>"))
    )
    used = [
        F.when(~F.array_contains(F.col("masked_slots"), F.lit(f"A{i}")), F.col(slot_score(i)))
        for i in TABLE_SLOTS
    ]
    total = sum((F.coalesce(u, F.lit(0.0)) for u in used), F.lit(0.0))
    count = sum((u.isNotNull().cast("int") for u in used), F.lit(0))
    return (
        joined.withColumn("dims_used", count)
        .withColumn("composite", F.when(F.col("dims_used") > 0, total / F.col("dims_used")))
    )
