"""Composite score: a weighted mean of the unmasked dimensions, on 0-100, with an exact integer key.

Takes score rows and the reliability table; adds

* ``score_key`` (long): the composite as an exact integer (:mod:`mira_spark.selection.thresholds`'
  fixed-point key: ``sum(w_i q_i) * multiplier div sum(w_i)`` over the unmasked, present slots, with
  ``q_i`` the score in tenths and a multiplier that every possible weight sum divides), optionally
  blended with ``overall``; equal composites give equal keys, so thresholds never split a tie by float
  noise;
* ``composite`` (double, 0-100): ``score_key / key_per_point``, for people; null when no unmasked
  dimension was scored;
* ``dims_used`` (int): how many slots entered the mean;
* ``weights_version`` and ``mask_version`` (strings) so every downstream row says what produced it;
* ``_veto`` (bool: ``training_recommendation = drop`` and the veto is on) and ``_downsampled_out``
  (bool: a ``downsample`` recommendation outside the kept hash sample).

The weights of each scorer group (``uniform | cluster_size | custom``), the masked slots of each
(source, scorer) and the key scale are folded on the driver into one small table of effective integer
weights per (source, scorer) — zero for a masked slot — broadcast to the rows: the composite is then a
map-only expression.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from mira_spark.config import SelectionConfig
from mira_spark.prompting.rubric import Rubric
from mira_spark.selection.thresholds import INT64_LIMIT, SCORE_MAX, score_key_scale
from mira_spark.store.schemas import TABLE_SLOTS, slot_score

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

COMPOSITE_MAX = 100
"""The composite is reported on 0..COMPOSITE_MAX (the overall score's scale)."""
DOWNSAMPLE_SALT = "mira-downsample:"
DOWNSAMPLE_BITS = 24
"""A ``downsample`` row stays when the top DOWNSAMPLE_BITS bits of its seeded hash fall below keep * 2**bits."""
SIGN_BIT = -(1 << 63)
BLEND_DENOMINATOR_MAX = 1000
"""overall_blend is taken as a fraction with at most this denominator (0.25 -> 1/4), so the blend stays exact."""


class CompositeError(ValueError):
    """The selection config cannot give a composite for a scorer group (e.g. all its weights are zero)."""


@dataclass(frozen=True)
class CompositePlan:
    """How every (scorer) group's slots become one integer key on a common scale.

    ``weights[scorer]``: integer weight per table slot (0 for slots the rubric lacks or weights exclude);
    ``multiplier``: common to all groups, a multiple of every possible weight sum, so keys of different
    groups compare (MIRA-Global mixes groups); ``blend = (p, r)``: overall share p/r. Key of a row:
    ``10 (r - p) * K + p * overall * resolution * multiplier`` where ``K = sum(w q) * multiplier div sum(w)``
    (or ``10 r K`` without an overall); ``key_per_point`` converts back to the 0-10 scale.
    """

    weights: dict[str, tuple[int, ...]]
    resolution: int
    multiplier: int
    exact: bool
    blend: tuple[int, int]
    version: str
    sample_scale: int = 1  # lcm(1..k) with scoring.samples = k: the mean of n <= k sample keys stays integer

    @property
    def key_per_point(self) -> int:
        return 10 * self.blend[1] * self.resolution * self.multiplier * self.sample_scale

    def composite(self, key: int) -> float:
        """The 0-100 composite of a key."""
        return key * float(COMPOSITE_MAX // SCORE_MAX) / self.key_per_point

    def min_key(self, min_score: float) -> int:
        """Smallest key whose composite (0-100) is >= ``min_score``."""
        return math.ceil(Fraction(repr(float(min_score))) * SCORE_MAX / COMPOSITE_MAX * self.key_per_point)


def _group_weights(rubric: Rubric, cfg: SelectionConfig) -> list[float]:
    by_slot = {d.slot: d for d in rubric.dimensions}
    out = []
    for i in TABLE_SLOTS:
        d = by_slot.get(f"A{i}")
        if d is None:
            out.append(0.0)
        elif cfg.weights == "uniform":
            out.append(1.0)
        elif cfg.weights == "cluster_size":
            out.append(float(d.cluster_size))
        else:
            out.append(float(cfg.custom_weights.get(d.slot, cfg.custom_weights.get(d.dimension, 0.0))))
    if not any(w > 0 for w in out):
        raise CompositeError(
            f"selection.weights: {cfg.weights} gives every dimension of scorer group {rubric.group!r} weight 0 "
            "(cluster sizes missing from its anchors file, or no custom_weights for its slots); use weights: "
            "uniform or list positive weights"
        )
    return out


def score_basis(selection: SelectionConfig, expected_enabled: bool) -> str:
    """``sampled`` or ``expected``: what ``selection.score_basis`` means given ``scoring.expected_scores``."""
    if selection.score_basis == "auto":
        return "expected" if expected_enabled else "sampled"
    return selection.score_basis


def with_score_basis(scores: DataFrame, basis: str, resolution: int) -> DataFrame:
    """Score rows whose ``a*_score`` read ``basis``: with ``expected``, each slot's expected score (rounded to
    ``resolution`` quanta per point, so the reliability pairs keep few distinct values) where the row has one
    and the slot was scored; every other slot keeps its sampled score. ``sampled``: the rows unchanged."""
    if basis != "expected":
        return scores
    res = float(resolution)
    out = scores
    for i in TABLE_SLOTS:
        sampled = F.col(slot_score(i))
        expected = F.when(F.map_contains_key(F.col("expected_scores"), F.lit(f"A{i}")),
                          F.col("expected_scores").getItem(f"A{i}"))
        out = out.withColumn(slot_score(i), F.when(sampled.isNotNull(),
                                                   F.coalesce(F.round(expected * F.lit(res)) / F.lit(res), sampled)))
    return out


def composite_plan(rubrics: dict[str, Rubric], cfg: SelectionConfig, samples: int = 1,
                   basis: str = "sampled") -> CompositePlan:
    """The key scale for every scorer group under ``cfg``; raises CompositeError when one has no weight.

    ``samples`` (``scoring.samples``, k): keys are scaled by ``lcm(1..k)`` so that the mean of any n <= k
    sample keys, ``sum // n``, is exact (k = 1: scale 1, the keys and version of one sample).
    """
    scales = {name: score_key_scale([str(w) for w in _group_weights(r, cfg)], cfg.score_resolution)
              for name, r in sorted(rubrics.items())}
    blend = Fraction(repr(cfg.overall_blend)).limit_denominator(BLEND_DENOMINATOR_MAX)
    p, r = blend.numerator, blend.denominator
    multiplier = math.lcm(*(s.multiplier for s in scales.values()))
    exact = all(s.exact for s in scales.values())
    max_total = max(sum(s.weights) for s in scales.values())
    sample_scale = math.lcm(*range(1, samples + 1))
    # The sum of k sample keys must fit too.
    bound = INT64_LIMIT // (max_total * SCORE_MAX * cfg.score_resolution * 10 * r * sample_scale * samples)
    if multiplier >= bound:
        multiplier, exact = 1 << max(1, bound.bit_length() - 2), False
    weights = {name: s.weights for name, s in scales.items()}
    body = {"weights": cfg.weights, "per_group": weights, "blend": [p, r], "resolution": cfg.score_resolution,
            "multiplier": multiplier}
    if sample_scale > 1:
        body["sample_scale"] = sample_scale
    if basis != "sampled":
        body["score_basis"] = basis
    version = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return CompositePlan(weights, cfg.score_resolution, multiplier, exact, (p, r), version, sample_scale)


def hash_bucket(h: Column, bits: int) -> Column:
    """Spark twin of :func:`~mira_spark.selection.thresholds.hash_bucket`: top ``bits`` bits of h, unsigned order."""
    return F.shiftrightunsigned(h.bitwiseXOR(F.lit(SIGN_BIT)), 64 - bits)


def cell_weights(spark: SparkSession, reliability: DataFrame, plan: CompositePlan) -> DataFrame:
    """``source, scorer, w1..w15, mask_version``: the plan's weights with masked slots set to 0 (small)."""
    rows: dict[tuple[str, str], list[int]] = {}
    versions: dict[tuple[str, str], str] = {}
    for r in reliability.select("source", "scorer", "slot", "masked", "mask_version").collect():
        key = (r["source"], r["scorer"])
        if r["scorer"] not in plan.weights:
            continue
        w = rows.setdefault(key, list(plan.weights[r["scorer"]]))
        versions[key] = r["mask_version"]
        if r["masked"]:
            w[int(r["slot"][1:]) - 1] = 0
    ddl = "source string, scorer string, " + ", ".join(f"w{i} long" for i in TABLE_SLOTS) + ", mask_version string"
    data = [(s, g, *w, versions[(s, g)]) for (s, g), w in sorted(rows.items())]
    return spark.createDataFrame(data, ddl)


def add_composite(scores: DataFrame, weights: DataFrame, plan: CompositePlan, cfg: SelectionConfig) -> DataFrame:
    """Score rows with ``score_key, composite, dims_used, weights_version, mask_version, _veto, _downsampled_out``."""
    joined = scores.join(F.broadcast(weights), on=["source", "scorer"], how="left")
    res = F.lit(plan.resolution).cast("long")
    q = [F.round(F.col(slot_score(i)) * F.lit(float(plan.resolution))).cast("long") for i in TABLE_SLOTS]
    present = [F.col(slot_score(i)).isNotNull() & (F.col(f"w{i}") > 0) for i in TABLE_SLOTS]
    numerator = sum((F.when(p, F.col(f"w{i}") * qi).otherwise(F.lit(0)) for i, p, qi in zip(TABLE_SLOTS, present, q,
                                                                                            strict=True)),
                    F.lit(0).cast("long"))
    wsum = sum((F.when(p, F.col(f"w{i}")).otherwise(F.lit(0)) for i, p in zip(TABLE_SLOTS, present, strict=True)),
               F.lit(0).cast("long"))
    dims = sum((p.cast("int") for p in present), F.lit(0))
    # Integer division (never a double quotient, inexact above 2**53); exact when plan.exact.
    mean_key = F.when(wsum > 0, F.expr(f"(_num * {plan.multiplier}) div _wsum"))
    p, r = plan.blend
    if p:
        overall_key = F.col("overall").cast("long") * res * F.lit(plan.multiplier)
        key = F.when(F.col("overall").isNotNull(), F.lit(10 * (r - p)) * mean_key + F.lit(p) * overall_key).otherwise(
            F.lit(10 * r) * mean_key)
    else:
        key = F.lit(10 * r) * mean_key
    if plan.sample_scale > 1:
        key = key * F.lit(plan.sample_scale)
    keep_bound = int(cfg.downsample_keep * (1 << DOWNSAMPLE_BITS))
    sample = hash_bucket(F.xxhash64(F.col("doc_id"), F.lit(f"{DOWNSAMPLE_SALT}{cfg.seed}")), DOWNSAMPLE_BITS)
    rec = F.lower(F.coalesce(F.col("training_recommendation"), F.lit("")))
    return (
        joined.withColumn("_num", numerator).withColumn("_wsum", wsum)
        .withColumn("dims_used", F.when(F.col("mask_version").isNotNull(), dims))
        .withColumn("score_key", F.when(F.col("status") == "ok", key.cast("long")))
        .withColumn("composite", F.col("score_key") * F.lit(float(COMPOSITE_MAX // SCORE_MAX))
                    / F.lit(float(plan.key_per_point)))
        .withColumn("weights_version", F.lit(plan.version))
        .withColumn("_veto", F.lit(cfg.veto_drop) & (rec == "drop"))
        .withColumn("_downsampled_out", (rec == "downsample") & (sample >= F.lit(keep_bound)))
        .drop("_num", "_wsum", *[f"w{i}" for i in TABLE_SLOTS])
    )
