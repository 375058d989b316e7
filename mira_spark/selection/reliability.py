"""Reliability mask per (source, dimension) from teacher-student agreement.

Takes the score table and a validation table of teacher scores (``doc_id, source, slot,
teacher_score``); gives ``schemas.RELIABILITY_SCHEMA`` rows: n, MAE, Spearman's rho (average ranks for
ties), ``masked`` and the reason. A (source, dimension) cell with fewer than ``min_n`` validation pairs
takes the decision of its scorer group pooled over sources (``basis = group``); with no pairs at all
the dimension is kept (``basis = none``) and the reason says so. Spark computes the aggregates; the
decision is ``stats.mask_decision``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import Window
from pyspark.sql import functions as F

from mira_spark.config import ReliabilityConfig
from mira_spark.prompting.rubric import Rubric
from mira_spark.selection.stats import mask_decision
from mira_spark.store.schemas import RELIABILITY_SCHEMA, TABLE_SLOTS, slot_score

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def scores_long(scores: DataFrame) -> DataFrame:
    """``doc_id, source, scorer, slot, score`` for every scored slot (of the table's slots) of every ok row."""
    cells = F.array(*[F.struct(F.lit(f"A{i}").alias("slot"), F.col(slot_score(i)).alias("score"))
                      for i in TABLE_SLOTS])
    return (
        scores.filter(F.col("status") == "ok")
        .select("doc_id", "source", "scorer", F.explode(cells).alias("cell"))
        .select("doc_id", "source", "scorer", F.col("cell.slot").alias("slot"), F.col("cell.score").alias("score"))
        .filter(F.col("score").isNotNull())
    )


def _agreement(pairs: DataFrame, keys: list[str]) -> DataFrame:
    """n, MAE and Spearman (Pearson of average ranks) per ``keys``."""
    def avg_rank(col: str) -> F.Column:
        by_value = Window.partitionBy(*keys, col)
        ordered = Window.partitionBy(*keys).orderBy(col)
        return F.rank().over(ordered) + (F.count(F.lit(1)).over(by_value) - 1) / 2.0

    # + 0.0 turns -0.0 into 0.0: Sail's Window.partitionBy/orderBy keep them apart, which would split a
    # tie of zeros into two rank groups (shared/notes/engines.md item 10; tests/test_reliability.py).
    pairs = pairs.withColumn("teacher_score", F.col("teacher_score") + F.lit(0.0)).withColumn(
        "score", F.col("score") + F.lit(0.0)
    )
    ranked = pairs.withColumn("rank_t", avg_rank("teacher_score")).withColumn("rank_s", avg_rank("score"))
    return ranked.groupBy(*keys).agg(
        F.count(F.lit(1)).alias("n"),
        F.avg(F.abs(F.col("teacher_score") - F.col("score"))).alias("mae"),
        F.corr("rank_t", "rank_s").alias("spearman"),
    )


def compute_reliability(spark: SparkSession, scores: DataFrame, validation: DataFrame | None,
                        rubrics: dict[str, Rubric], cfg: ReliabilityConfig) -> DataFrame:
    """The reliability table for every (source, scorer) in ``scores`` x every slot of its rubric."""
    sources = [(r["source"], r["scorer"]) for r in scores.select("source", "scorer").distinct().collect()]
    cell_stats: dict[tuple[str, str, str], tuple[int, float | None, float | None]] = {}
    group_stats: dict[tuple[str, str], tuple[int, float | None, float | None]] = {}
    if validation is not None:
        teacher = validation.select(
            F.col("doc_id").cast("string"), F.col("slot").cast("string"),
            F.col("teacher_score").cast("double"),
        ).filter(F.col("teacher_score").isNotNull())
        pairs = scores_long(scores).join(teacher, on=["doc_id", "slot"], how="inner")
        for r in _agreement(pairs, ["source", "scorer", "slot"]).collect():
            cell_stats[(r["source"], r["scorer"], r["slot"])] = (r["n"], r["mae"], r["spearman"])
        for r in _agreement(pairs, ["scorer", "slot"]).collect():
            group_stats[(r["scorer"], r["slot"])] = (r["n"], r["mae"], r["spearman"])

    rows = []
    for source, scorer in sorted(sources, key=lambda t: (t[1] or "", t[0] or "")):
        rubric = rubrics.get(scorer)
        if rubric is None:
            continue
        for dim in rubric.dimensions:
            n, mae_v, rho = cell_stats.get((source, scorer, dim.slot), (0, None, None))
            decision = mask_decision(n, mae_v, rho, cfg.max_mae, cfg.min_spearman, cfg.min_n)
            basis = "source"
            if n < cfg.min_n:
                gn, gmae, grho = group_stats.get((scorer, dim.slot), (0, None, None))
                if gn >= cfg.min_n:
                    decision = mask_decision(gn, gmae, grho, cfg.max_mae, cfg.min_spearman, cfg.min_n)
                    basis = "group"
                else:
                    basis = "none"
                    decision = type(decision)(False, f"no evidence: {n} source pairs, {gn} group pairs; kept")
            rows.append((source, scorer, dim.slot, dim.dimension, n, mae_v, rho, decision.masked,
                         decision.reason, basis))
    return spark.createDataFrame(rows, RELIABILITY_SCHEMA)
