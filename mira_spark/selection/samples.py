"""k samples per document: the composite as the exact mean of the samples' keys, their spread, the band.

Takes the sample-0 score rows and the extra-sample rows (``samples`` table), both already through
:func:`~mira_spark.selection.aggregation.add_composite` with a plan built for ``scoring.samples = k``
(keys scaled by ``L = lcm(1..k)``); gives the sample-0 rows with

* ``score_key`` = ``sum of the n sample keys div n`` — exact, since every key is a multiple of L and n
  divides L; a document with one sample keeps its own key, so k = 1 changes nothing;
* ``composite`` (0-100) from that key, ``n_samples`` (the samples whose composite exists: sample 0 and
  the ok extra samples) and ``composite_sd`` (sample standard deviation of the per-sample composites,
  0-100; null for one sample): the uncertainty reported in ``decisions`` and ``selected``.

Everything else about a document (status, recommendation veto, downsampling, tokens) stays sample 0's:
an extra sample only moves the composite. A failed extra sample is a row of ``samples`` with its status
and error, and is left out of the mean. :func:`~mira_spark.selection.select.band_documents` picks the
documents adaptive sampling spends its requests on (at most ``max_share`` of the scored documents, the
nearest to a cut).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from mira_spark.selection.aggregation import COMPOSITE_MAX, CompositePlan
from mira_spark.selection.thresholds import SCORE_MAX
from mira_spark.store.schemas import SCORE_KEYS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

# Decisions that can flip with more samples: the score-ordered ones (a veto, downsampling or a masked
# document is decided by sample 0's recommendation or the mask, not by the composite).
FLIPPABLE_REASONS = ("selected", "below_threshold")


def _composite(key: str) -> F.Column:
    return F.col(key).cast("double") * F.lit(float(COMPOSITE_MAX // SCORE_MAX))


def combine_samples(first: DataFrame, extra: DataFrame | None, plan: CompositePlan) -> DataFrame:
    """Sample-0 rows with the mean key over their samples, ``n_samples`` and ``composite_sd`` (see module)."""
    per_point = float(plan.key_per_point)
    if extra is None:
        return (first.withColumn("n_samples", F.when(F.col("score_key").isNotNull(), F.lit(1)))
                .withColumn("composite_sd", F.lit(None).cast("double")))
    keyed = [*SCORE_KEYS, "score_key"]
    per_sample = first.filter(F.col("score_key").isNotNull()).select(*keyed).unionByName(
        extra.filter((F.col("status") == "ok") & F.col("score_key").isNotNull()).select(*keyed))
    stats = per_sample.groupBy(*SCORE_KEYS).agg(
        F.sum("score_key").alias("_sum"), F.count(F.lit(1)).alias("_n"),
        F.stddev_samp(_composite("score_key") / F.lit(per_point)).alias("_sd"))
    joined = first.join(stats, on=list(SCORE_KEYS), how="left")
    has_key = F.col("score_key").isNotNull()
    return (
        joined.withColumn("score_key", F.when(has_key, F.expr("_sum div _n")))
        .withColumn("composite", _composite("score_key") / F.lit(per_point))
        .withColumn("n_samples", F.when(has_key, F.col("_n").cast("int")))
        .withColumn("composite_sd", F.when(has_key & (F.col("_n") > 1), F.col("_sd")))
        .drop("_sum", "_n", "_sd")
    )
