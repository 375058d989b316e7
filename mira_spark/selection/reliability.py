"""Reliability mask per (source, dimension) with confidence: Spark counts, the driver decides.

Takes the score table and a validation table of teacher scores (``doc_id, slot, teacher_score``);
gives ``schemas.RELIABILITY_SCHEMA`` rows. Spark aggregates one number per (scorer, source, slot,
student value, teacher value): the pair count. Scores take few distinct values, so these rows are few
(at most 101 x 101 per cell at tenths) and nothing sorts a cell: mid-ranks come from the per-value counts
in :func:`mira_spark.selection.confidence.agreement`. The driver then runs the pure maths
(:func:`~mira_spark.selection.confidence.reliability_cells`): Fisher z / Bonett-Wright or bootstrap CIs
for rho, a CI for MAE, DerSimonian-Laird shrinkage toward the scorer group, the basis (source -> group
-> global -> none), the configured mask rule, then an optional published mask on top and the mask
version (a hash stored with every downstream row).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from mira_spark.config import ReliabilityConfig
from mira_spark.prompting.rubric import Rubric
from mira_spark.selection.confidence import (
    CellReliability,
    MaskRule,
    mask_version,
    merge_masks,
    read_published_mask,
    reliability_cells,
)
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


def pair_counts(scores: DataFrame, validation: DataFrame) -> DataFrame:
    """``scorer, source, slot, score, teacher_score, count``: one row per distinct (student, teacher) pair.

    ``+ 0.0`` folds ``-0.0`` into ``0.0`` before the grouping (shared/notes/engines.md item 10).
    """
    teacher = validation.select(
        F.col("doc_id").cast("string"), F.col("slot").cast("string"),
        (F.col("teacher_score").cast("double") + F.lit(0.0)).alias("teacher_score"),
    ).filter(F.col("teacher_score").isNotNull())
    pairs = scores_long(scores).withColumn("score", F.col("score") + F.lit(0.0)).join(
        teacher, on=["doc_id", "slot"], how="inner"
    )
    return pairs.groupBy("scorer", "source", "slot", "score", "teacher_score").agg(F.count(F.lit(1)).alias("count"))


def mask_rule(cfg: ReliabilityConfig) -> MaskRule:
    return MaskRule(max_mae=cfg.max_mae, min_spearman=cfg.min_spearman, n_min=cfg.min_n, on=cfg.mask_on)


def _lo(ci: tuple[float, float] | None) -> float | None:
    return ci[0] if ci else None


def _hi(ci: tuple[float, float] | None) -> float | None:
    return ci[1] if ci else None


def reliability_rows(count_rows: list[tuple], cells: list[tuple[str, str, str]], names: dict[tuple[str, str], str],
                     cfg: ReliabilityConfig, published: dict[tuple[str, str], bool] | None = None) -> list[tuple]:
    """Rows of the reliability table (RELIABILITY column order) from pair counts; pure (no Spark).

    ``count_rows``: ``(scorer, source, slot, student, teacher, count)``; ``cells``: every (scorer, source,
    slot) to report; ``names``: (scorer, slot) -> dimension name. ``published``: (source, dimension name
    or slot) -> masked, merged with ``cfg.published_mask_mode``.
    """
    rule = mask_rule(cfg)
    computed: list[CellReliability] = reliability_cells(
        count_rows, rule, cells=cells, kappa=cfg.kappa, level=cfg.level, seed=cfg.seed,
        replicates=cfg.bootstrap_replicates,
    )
    merged = {}
    if published is not None:
        def published_key(c: CellReliability) -> tuple[str, str]:
            name = names[(c.group, c.dimension)]
            return (c.source, name) if (c.source, name) in published else (c.source, c.dimension)

        keys = {(c.group, c.source, c.dimension): published_key(c) for c in computed}
        by_key = merge_masks({keys[(c.group, c.source, c.dimension)]: c.masked for c in computed}, published,
                             cfg.published_mask_mode)
        merged = {cell: by_key[k] for cell, k in keys.items()}
    final = []
    for c in computed:
        m = merged.get((c.group, c.source, c.dimension))
        masked, origin, reason = c.masked, "computed", c.reason
        if m is not None:
            masked, origin = m.masked, m.origin
            if origin != "computed" and masked != c.masked:
                reason = f"{'masked' if masked else 'kept'} by the published mask ({cfg.published_mask_mode}); " \
                         f"computed: {c.reason}"
        final.append((c, masked, origin, reason))
    rule_dict = {**rule.as_dict(), "kappa": cfg.kappa, "level": cfg.level,
                 "published_mode": cfg.published_mask_mode if published is not None else None}
    version = mask_version([(c.source, f"{c.group}/{c.dimension}", masked) for c, masked, _o, _r in final], rule_dict)
    rows = []
    for c, masked, origin, reason in final:
        u = c.used
        rows.append((
            c.source, c.group, c.dimension, names[(c.group, c.dimension)], c.n, c.mae, _lo(c.mae_ci), _hi(c.mae_ci),
            c.spearman, _lo(c.spearman_ci), _hi(c.spearman_ci), c.ci_method, c.mae_shrunk, c.spearman_shrunk,
            c.shrink_weight, u.mae, _lo(u.mae_ci), _hi(u.mae_ci), u.spearman, _lo(u.spearman_ci), _hi(u.spearman_ci),
            c.masked, masked, origin, reason, c.basis, version,
        ))
    return rows


def compute_reliability(spark: SparkSession, scores: DataFrame, validation: DataFrame | None,
                        rubrics: dict[str, Rubric], cfg: ReliabilityConfig) -> DataFrame:
    """The reliability table for every (source, scorer) in ``scores`` x every slot of its rubric."""
    sources = [(r["source"], r["scorer"]) for r in scores.select("source", "scorer").distinct().collect()]
    cells = [(scorer, source, d.slot) for source, scorer in sources if source is not None and scorer in rubrics
             for d in rubrics[scorer].dimensions]
    names = {(scorer, d.slot): d.dimension for scorer, rubric in rubrics.items() for d in rubric.dimensions}
    count_rows: list[tuple] = []
    if validation is not None:
        wanted = {(g, s) for g, s, _d in cells}
        count_rows = [tuple(r) for r in pair_counts(scores, validation).collect()
                      if (r["scorer"], r["source"]) in wanted and (r["scorer"], r["slot"]) in names]
    published = read_published_mask(cfg.published_mask) if cfg.published_mask is not None else None
    rows = reliability_rows(count_rows, cells, names, cfg, published)
    return spark.createDataFrame(rows, RELIABILITY_SCHEMA)
