"""Selection: the one place rows are split into kept and excluded; excluded rows keep a reason.

Takes score rows with ``score_key`` / ``composite`` (see :mod:`~mira_spark.selection.aggregation`) and
``tokens``, the rows routing rejected and the routed documents still pending; gives, for every variant of
``selection.variants`` (e.g. MIRA-Global / -Group / -Source and Random at one token budget), side by side:

* ``thresholds``: one row per (variant, unit) with its accounting (budget, ``cut_on`` and threshold, n_docs,
  n_in, n_kept, tokens_in, tokens_kept, kept_fraction, budget_met, tokens_estimated, note); every unit that
  has input rows gets one, also when none of them is eligible (``n_in = 0``, ``note`` says why);
* ``decisions``: every input row exactly once per variant, ``kept`` or ``excluded`` with a reason
  (``selected``, ``below_threshold``, ``recommendation_drop``, ``downsampled_out``, ``all_dims_masked``,
  ``scoring_failed:<code>``, ``parse_failed``, routing's reasons, ``pending``);
* the kept score rows, once per (doc_id, scorer) kept by any variant, with ``variants`` (the sorted names of
  the variants that kept it): the caller joins the text for ``selected``, so it is written once per document.

Exact without sorting a unit in one task (:mod:`mira_spark.selection.thresholds` has the maths):

1. pass 1 — ``groupBy(unit, order_key)`` counts and tokens; the driver takes cumulative sums and finds
   each unit's boundary key (:func:`~mira_spark.selection.thresholds.find_boundaries`);
2. pass 2a — only when a boundary key holds many rows: ``groupBy(unit, key, hash bucket)`` over the
   boundary keys' rows, narrowing each boundary to one bucket;
3. pass 2b — the boundary key's (or bucket's) rows are listed and ordered exactly on the driver
   (tie hash, then doc_id);
4. the cuts are broadcast and a map-only predicate decides every row.

No ``Window`` over a unit, no ``percentile_approx``, no ``rand()``: the order inside a unit is
``(order_key desc, tie_hash asc, doc_id asc)`` with the tie hash ``xxhash64(doc_id)`` (or the seeded hash of
the random baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from mira_spark.config import SelectionConfig, VariantConfig
from mira_spark.selection.aggregation import CompositePlan, hash_bucket
from mira_spark.selection.samples import FLIPPABLE_REASONS, combine_samples
from mira_spark.selection.thresholds import (
    CUT_ON_COMPOSITE,
    GLOBAL_UNIT,
    GUMBEL_KEY_SCALE,
    GUMBEL_SALT,
    RANDOM_KEY_BITS,
    RANDOM_SALT,
    Cuts,
    ThresholdSpec,
    choose_bucket_bits,
    cut_on,
    find_boundaries,
    no_eligible_note,
    refine_boundaries,
    resolve_cuts,
    threshold_value,
    unit_inputs,
    with_empty_units,
)
from mira_spark.store.schemas import DECISIONS_SCHEMA, THRESHOLDS_SCHEMA, conform

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

BAND_STEP = 0.01  # composite points (0-100) per distance step of adaptive sampling's band
CUTS_DDL = "_unit string, _cut_key long, _last_hash long, _last_doc_id string, _threshold double, _has_cut boolean"


@dataclass
class Selection:
    thresholds: DataFrame
    decisions: DataFrame
    kept: DataFrame  # one row per kept (doc_id, scorer) with ``variants``
    counts: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # variant -> unit -> (kept, n_in)


def unit_column(kind: str) -> Column:
    """The unit of a row under ``kind`` (as :func:`~mira_spark.selection.thresholds.unit_name`)."""
    if kind == "global":
        return F.lit(GLOBAL_UNIT)
    return F.col("scorer") if kind == "group" else F.col("source")


def order_columns(df: DataFrame, v: VariantConfig, plan: CompositePlan) -> DataFrame:
    """Adds ``_unit``, ``_k`` (order key, long) and ``_h`` (tie hash, long) for variant ``v``."""
    df = df.withColumn("_unit", unit_column(v.unit))
    if v.method == "random":
        h = F.xxhash64(F.col("doc_id"), F.lit(f"{RANDOM_SALT}{v.seed}"))
        return df.withColumn("_h", h).withColumn(
            "_k", (F.lit((1 << RANDOM_KEY_BITS) - 1) - hash_bucket(F.col("_h"), RANDOM_KEY_BITS)).cast("long"))
    df = df.withColumn("_h", F.xxhash64(F.col("doc_id")))
    if v.tau is None:
        return df.withColumn("_k", F.col("score_key"))
    g = F.xxhash64(F.col("doc_id"), F.lit(f"{GUMBEL_SALT}{v.seed}"))
    u = (F.shiftrightunsigned(g, 12).cast("double") + F.lit(0.5)) / F.lit(float(1 << 52))
    noise = -F.log(-F.log(u))
    composite10 = F.col("score_key").cast("double") / F.lit(float(plan.key_per_point))
    return df.withColumn("_k", F.floor((composite10 / F.lit(float(v.tau)) + noise) * F.lit(float(GUMBEL_KEY_SCALE))))


def threshold_spec(v: VariantConfig, plan: CompositePlan, base_tokens: int) -> ThresholdSpec:
    """The pure spec of a variant; ``token_fraction`` is taken of ``base_tokens`` (every scored document)."""
    common = {"mode": v.mode, "unit": v.unit, "semantics": v.semantics}
    if v.mode == "fraction":
        if v.unit_fractions:
            return ThresholdSpec(**common, fraction={u: repr(f) for u, f in v.unit_fractions.items()},
                                 default_fraction=None if v.fraction is None else repr(v.fraction))
        return ThresholdSpec(**common, fraction=repr(v.fraction))
    if v.mode == "tokens":
        if v.unit_token_budgets:
            return ThresholdSpec(**common, unit_token_budgets=dict(v.unit_token_budgets))
        budget = v.token_budget
        if budget is None:
            assert v.token_fraction is not None
            budget = int(Fraction(repr(v.token_fraction)) * base_tokens)
        return ThresholdSpec(**common, token_budget=budget)
    assert v.min_score is not None
    return ThresholdSpec(**common, min_key=plan.min_key(v.min_score))


def exact_cuts_spark(spark: SparkSession, eligible: DataFrame, spec: ThresholdSpec, floor_bits: int = 0
                     ) -> tuple[Cuts, dict[str, bool]]:
    """Passes 1, 2a and 2b over ``eligible`` (``_unit, _k, _h, doc_id, tokens, tokens_estimated``).

    Returns the cuts and, per unit, whether any of its token counts is an estimate.
    """
    agg = eligible.groupBy("_unit", "_k").agg(
        F.count(F.lit(1)).alias("n"), F.sum("tokens").alias("t"),
        F.max(F.col("tokens_estimated").cast("int")).alias("est"),
    ).collect()
    estimated: dict[str, bool] = {}
    for r in agg:
        estimated[r["_unit"]] = estimated.get(r["_unit"], False) or bool(r["est"])
    boundaries = find_boundaries([(r["_unit"], r["_k"], r["n"], r["t"] or 0) for r in agg], spec)
    open_keys = [(u, b.key) for u, b in boundaries.items() if not b.resolved and b.key is not None]
    if not open_keys:
        return resolve_cuts(boundaries, []), estimated
    keys_df = F.broadcast(spark.createDataFrame(open_keys, "_unit string, _k long"))
    at_boundary = eligible.join(keys_df, on=["_unit", "_k"], how="inner")
    bits = choose_bucket_bits(boundaries, floor_bits=floor_bits)
    if bits > 0:
        buckets = at_boundary.groupBy("_unit", "_k", hash_bucket(F.col("_h"), bits).alias("_b")).agg(
            F.count(F.lit(1)).alias("n"), F.sum("tokens").alias("t")).collect()
        boundaries = refine_boundaries(boundaries, [(r["_unit"], r["_k"], r["_b"], r["n"], r["t"] or 0)
                                                    for r in buckets], bits)
        chosen = [(u, b.key, b.bucket) for u, b in boundaries.items() if not b.resolved and b.key is not None]
        if not chosen:
            return resolve_cuts(boundaries, []), estimated
        bucket_df = F.broadcast(spark.createDataFrame(chosen, "_unit string, _k long, _b long"))
        at_boundary = at_boundary.withColumn("_b", hash_bucket(F.col("_h"), bits)).join(
            bucket_df, on=["_unit", "_k", "_b"], how="inner")
    rows = at_boundary.select("_unit", "_k", "_h", "doc_id", "tokens").collect()
    return resolve_cuts(boundaries, [tuple(r) for r in rows]), estimated


def kept_predicate() -> Column:
    """The SQL twin of :meth:`~mira_spark.selection.thresholds.Cut.keeps` over the broadcast cut columns."""
    return F.col("_has_cut").isNotNull() & (
        F.col("_cut_key").isNull() | (F.col("_k") > F.col("_cut_key")) | (
            (F.col("_k") == F.col("_cut_key")) & F.col("_last_hash").isNotNull() & (
                (F.col("_h") < F.col("_last_hash")) | ((F.col("_h") == F.col("_last_hash")) & (
                    F.col("_last_doc_id").isNull() | (F.col("doc_id") <= F.col("_last_doc_id"))))
            )
        )
    )


def failure_reason() -> Column:
    """Why a score row cannot be selected by any method (null when it was scored and parsed)."""
    code = F.coalesce(F.split(F.col("error"), ":")[0], F.lit("unknown"))
    return (F.when(F.col("status") != "ok", F.concat(F.lit("scoring_failed:"), code))
            .when(F.col("parse_status") == "failed", F.lit("parse_failed")))


def score_reason() -> Column:
    """Why a scored row is not eligible for a score-ordered variant (null when it is)."""
    return (F.when(F.col("mask_version").isNull(), F.lit("no_reliability_row"))
            .when(F.col("composite").isNull(), F.lit("all_dims_masked"))
            .when(F.col("_veto"), F.lit("recommendation_drop"))
            .when(F.col("_downsampled_out"), F.lit("downsampled_out")))


def _composite_threshold(v: VariantConfig, key: int | None, plan: CompositePlan) -> float | None:
    """What ``decisions.threshold`` holds: the lowest kept composite, only where the cut is on the composite."""
    return threshold_value(CUT_ON_COMPOSITE, key, plan.composite) if cut_on(v.method, v.tau) == CUT_ON_COMPOSITE \
        else None


def _threshold_rows(v: VariantConfig, cuts: Cuts, estimated: dict[str, bool], plan: CompositePlan,
                    mask_version: str | None, inputs: dict[str, dict[str, int]]) -> list[tuple]:
    rows = []
    on = cut_on(v.method, v.tau)
    for unit in sorted(cuts):
        c = cuts[unit]
        key = c.lowest_kept_key
        reasons = inputs.get(unit, {"": c.n_in})
        rows.append((
            v.name, v.unit, unit, v.mode, v.method, v.semantics, v.tau, c.measure, c.budget, on,
            threshold_value(on, key, plan.composite), key, sum(reasons.values()), c.n_in, c.n_kept, c.tokens_in,
            c.tokens_kept, c.n_kept / c.n_in if c.n_in else None, c.tokens_kept / c.tokens_in if c.tokens_in else None,
            c.budget_met, estimated.get(unit, False), no_eligible_note(reasons), mask_version, plan.version,
        ))
    return rows


def _cuts_frame(spark: SparkSession, v: VariantConfig, cuts: Cuts, plan: CompositePlan) -> DataFrame:
    data = [(u, cuts[u].key, cuts[u].last_hash, cuts[u].last_doc_id,
             _composite_threshold(v, cuts[u].lowest_kept_key, plan), True) for u in sorted(cuts) if cuts[u].n_in]
    return F.broadcast(spark.createDataFrame(data, CUTS_DDL))


def _input_rows(scored: DataFrame, rejected: DataFrame, pending: DataFrame) -> tuple[list[tuple], int]:
    """``(source, scorer, failure, not_score, count)`` over every input row (small), and the scored tokens.

    ``failure`` / ``not_score``: the reasons of :func:`failure_reason` / :func:`score_reason` (rejected
    rows: their reason as a failure; pending rows: ``pending``). The scored rows' tokens that did not fail
    are the base of ``token_fraction``; one aggregation gives both.
    """
    agg = scored.groupBy("source", "scorer", "_fail", "_not_score").agg(
        F.count(F.lit(1)).alias("n"), F.sum(F.when(F.col("_fail").isNull(), F.col("tokens"))).alias("t")).collect()
    rows = [(r["source"], r["scorer"], r["_fail"], r["_not_score"], r["n"]) for r in agg]
    rows += [(r["source"], r["scorer"], r["reason"], None, r["n"]) for r in rejected.groupBy(
        "source", "scorer", "reason").agg(F.count(F.lit(1)).alias("n")).collect()]
    rows += [(r["source"], r["scorer"], "pending", None, r["n"]) for r in pending.groupBy(
        "source", "scorer").agg(F.count(F.lit(1)).alias("n")).collect()]
    return rows, sum(int(r["t"] or 0) for r in agg)


def _other_rows(df: DataFrame, variant: str, kind: str, reason: Column, mask_version: str | None,
                weights_version: str) -> DataFrame:
    return df.select(
        F.lit(variant).alias("variant"), "doc_id", "source", "scorer", unit_column(kind).alias("unit"),
        F.lit("excluded").alias("decision"), reason.alias("reason"), F.lit(None).cast("double").alias("composite"),
        F.lit(None).cast("int").alias("dims_used"), F.lit(None).cast("long").alias("tokens"),
        F.lit(None).cast("boolean").alias("tokens_estimated"), F.lit(None).cast("double").alias("threshold"),
        F.lit(mask_version).cast("string").alias("mask_version"), F.lit(weights_version).alias("weights_version"),
        F.lit(None).cast("int").alias("n_samples"), F.lit(None).cast("double").alias("composite_sd"),
    )


def _ordered(scored: DataFrame, v: VariantConfig, plan: CompositePlan) -> DataFrame:
    """``scored`` with ``v``'s order columns and ``_reason`` (null: the row competes for the cut)."""
    reason = F.col("_fail") if v.method == "random" else F.coalesce(F.col("_fail"), F.col("_not_score"))
    return order_columns(scored, v, plan).withColumn("_reason", reason)


def _decide(spark: SparkSession, scored: DataFrame, v: VariantConfig, cuts: Cuts, plan: CompositePlan
            ) -> DataFrame:
    """``scored`` with variant ``v``'s order columns, its broadcast cut columns and ``_kept``."""
    joined = _ordered(scored, v, plan).join(_cuts_frame(spark, v, cuts, plan), on="_unit", how="left")
    return joined.withColumn("_kept", F.col("_reason").isNull() & kept_predicate())


_DECIDE_COLUMNS = ("_k", "_h", "_reason", *(c.split()[0] for c in CUTS_DDL.split(", ")), "_kept")


def kept_once(spark: SparkSession, scored: DataFrame, variants: list[tuple[VariantConfig, Cuts]],
              plan: CompositePlan) -> DataFrame:
    """The score rows kept by any variant, once each, with ``variants`` (sorted names of those that kept it).

    One pass over ``scored``: each variant adds its order columns, joins its (broadcast) cuts on its unit
    and leaves one flag; no shuffle of the score rows and no copy per variant.
    """
    flags = []
    for i, (v, cuts) in enumerate(sorted(variants, key=lambda p: p[0].name)):
        scored = _decide(spark, scored, v, cuts, plan).withColumn(f"_in{i}", F.col("_kept")).drop(*_DECIDE_COLUMNS)
        flags.append((f"_in{i}", v.name))
    names = F.concat(*[F.when(F.col(flag), F.array(F.lit(name))).otherwise(F.array().cast("array<string>"))
                       for flag, name in flags])
    kept = scored.withColumn("variants", names).filter(F.size("variants") > 0)
    return kept.drop(*[flag for flag, _ in flags], "_fail", "_not_score", "_veto", "_downsampled_out")


def select_documents(spark: SparkSession, scored: DataFrame, rejected: DataFrame, pending: DataFrame,
                     cfg: SelectionConfig, plan: CompositePlan, mask_version: str | None) -> Selection:
    """Every variant's thresholds, decisions and kept rows (see the module docstring).

    ``scored`` may carry ``n_samples, composite_sd`` (:func:`~mira_spark.selection.samples.combine_samples`);
    without them every row is one sample.
    """
    if "n_samples" not in scored.columns:
        scored = combine_samples(scored, None, plan)
    scored = scored.withColumn("_fail", failure_reason()).withColumn("_not_score", score_reason())
    inputs, base = _input_rows(scored, rejected, pending)
    threshold_rows: list[tuple] = []
    decisions: list[DataFrame] = []
    decided_cuts: list[tuple[VariantConfig, Cuts]] = []
    counts: dict[str, dict[str, tuple[int, int]]] = {}
    for v in cfg.variants:
        spec = threshold_spec(v, plan, base)
        eligible = _ordered(scored, v, plan).filter(F.col("_reason").isNull())
        cuts, estimated = exact_cuts_spark(spark, eligible.select("_unit", "_k", "_h", "doc_id", "tokens",
                                                                  "tokens_estimated"),
                                           spec, RANDOM_KEY_BITS if v.method == "random" else 0)
        per_unit = unit_inputs(v.unit, [(s, g, f if v.method == "random" else (f or n), c)
                                        for s, g, f, n, c in inputs])
        cuts = with_empty_units(cuts, per_unit, spec)
        threshold_rows += _threshold_rows(v, cuts, estimated, plan, mask_version, per_unit)
        counts[v.name] = {u: (cuts[u].n_kept, cuts[u].n_in) for u in cuts}
        decided_cuts.append((v, cuts))
        decided = _decide(spark, scored, v, cuts, plan)
        decisions.append(decided.select(
            F.lit(v.name).alias("variant"), "doc_id", "source", "scorer", F.col("_unit").alias("unit"),
            F.when(F.col("_kept"), F.lit("kept")).otherwise(F.lit("excluded")).alias("decision"),
            F.when(F.col("_kept"), F.lit("selected")).otherwise(F.coalesce(F.col("_reason"), F.lit("below_threshold")))
            .alias("reason"),
            "composite", "dims_used", "tokens", "tokens_estimated", F.col("_threshold").alias("threshold"),
            "mask_version", "weights_version", "n_samples", "composite_sd",
        ))
        decisions.append(_other_rows(rejected, v.name, v.unit, F.col("reason"), mask_version, plan.version))
        decisions.append(_other_rows(pending, v.name, v.unit, F.lit("pending"), mask_version, plan.version))
    all_decisions = conform(decisions[0], DECISIONS_SCHEMA)
    for part in decisions[1:]:
        all_decisions = all_decisions.unionByName(conform(part, DECISIONS_SCHEMA))
    thresholds = spark.createDataFrame(threshold_rows, THRESHOLDS_SCHEMA)
    return Selection(thresholds=thresholds, decisions=all_decisions, kept=kept_once(spark, scored, decided_cuts, plan),
                     counts=counts)


BAND_UNIT = "band"


def band_documents(spark: SparkSession, decisions: DataFrame, band: float, max_docs: int | None = None
                   ) -> tuple[DataFrame, int]:
    """``doc_id, scorer`` (distinct) of documents whose composite lies within ``band`` points of their unit's
    cut in any variant that has a composite threshold (score-ordered, no tau; random has none), and how
    many there are before the cap.

    With ``max_docs``, exactly ``min(max_docs, in band)``: the nearest to a cut, the distance counted in
    steps of :data:`BAND_STEP` points, and within the farthest step taken the order of
    ``xxhash64(doc_id, scorer)``, then doc_id. That is a ``fraction`` cut of one unit with the exact
    machinery of the thresholds (:func:`exact_cuts_spark`: one aggregation by step, the boundary step's
    rows resolved by hash buckets), so it never depends on row order or partitioning, and fills the cap
    however many documents share a distance.
    """
    near = decisions.filter(
        F.col("threshold").isNotNull() & F.col("composite").isNotNull() & F.col("reason").isin(*FLIPPABLE_REASONS)
        & (F.abs(F.col("composite") - F.col("threshold")) <= F.lit(float(band))))
    per_doc = near.groupBy("doc_id", "scorer").agg(
        F.floor(F.min(F.abs(F.col("composite") - F.col("threshold"))) / F.lit(BAND_STEP)).cast("long").alias("_step"))
    n_near = int(per_doc.count())
    if max_docs is None or n_near <= max_docs:
        return per_doc.select("doc_id", "scorer"), n_near
    ordered = per_doc.select(
        "doc_id", "scorer", F.lit(BAND_UNIT).alias("_unit"), (-F.col("_step")).alias("_k"),  # nearer: higher key
        F.xxhash64(F.col("doc_id"), F.col("scorer")).alias("_h"), F.lit(1).cast("long").alias("tokens"),
        F.lit(False).alias("tokens_estimated"))
    spec = ThresholdSpec(mode="fraction", fraction=Fraction(max_docs, n_near))  # keeps exactly max_docs
    cuts, _ = exact_cuts_spark(spark, ordered, spec)
    cut = cuts[BAND_UNIT]
    frame = F.broadcast(spark.createDataFrame([(BAND_UNIT, cut.key, cut.last_hash, cut.last_doc_id, None, True)],
                                              CUTS_DDL))
    kept = ordered.join(frame, on="_unit", how="inner").filter(kept_predicate())
    return kept.select("doc_id", "scorer"), n_near
