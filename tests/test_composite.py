"""The composite's Spark expression against an exact Fraction reference: weights, mask, blend, veto, downsample."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from typing import Any

import pytest

from mira_spark.config import SelectionConfig
from mira_spark.prompting.rubric import Dimension, Rubric
from mira_spark.selection.aggregation import (
    DOWNSAMPLE_BITS,
    DOWNSAMPLE_SALT,
    add_composite,
    cell_weights,
    composite_plan,
)
from mira_spark.selection.thresholds import hash_bucket, seeded_hash

pytestmark = pytest.mark.spark

N_DIMS = 5
CLUSTERS = (3, 1, 0, 2, 5)  # A3 has cluster size 0: weight 0 under cluster_size
SCORES_DDL = ("doc_id string, source string, scorer string, status string, "
              + ", ".join(f"a{i}_score double" for i in range(1, 16)) + ", overall int, training_recommendation string")
MASKED = {("web", "A4")}


def _rubric() -> Rubric:
    dims = tuple(Dimension(slot=f"A{i}", dimension=f"dim {i}", cluster_size=c) for i, c in enumerate(CLUSTERS, 1))
    return Rubric(group="g", dimensions=dims)


def _reference(scores: list[float | None], weights: list[Fraction], masked: list[bool], overall: int | None,
               blend: Fraction) -> Fraction | None:
    """(1 - blend) * 10 * weighted mean of tenths-rounded unmasked scores + blend * overall (0-100).

    Tenths: half-up on the double product ``score * 10`` (7.35 * 10 is 73.5 in a double: 74), as Spark's round.
    """
    used = [(w, Fraction(math.floor(Fraction(s * 10) + Fraction(1, 2)), 10)) for s, w, m in
            zip(scores, weights, masked, strict=True) if s is not None and w > 0 and not m]
    if not used:
        return None
    mean = sum(w * q for w, q in used) / sum(w for w, _ in used) * 10
    return mean if overall is None or blend == 0 else (1 - blend) * mean + blend * overall


@pytest.mark.parametrize(
    ("cfg", "weights"),
    [
        (SelectionConfig(), [Fraction(1)] * N_DIMS),
        (SelectionConfig(weights="cluster_size", overall_blend=0.25), [Fraction(c) for c in CLUSTERS]),
        (SelectionConfig(weights="custom", custom_weights={"A1": 0.5, "dim 2": 2.0, "A5": 1.25}, veto_drop=True,
                         downsample_keep=0.3, seed=5),
         [Fraction(1, 2), Fraction(2), Fraction(0), Fraction(0), Fraction(5, 4)]),
    ],
    ids=["uniform", "cluster_size_blend", "custom_veto_downsample"],
)
def test_composite_equals_the_exact_reference(spark: Any, cfg: SelectionConfig, weights: list[Fraction]) -> None:
    rng = random.Random(11)
    rows = []
    for k in range(400):
        source = rng.choice(["web", "news"])
        scores = [None if rng.random() < 0.15 else rng.choice([0.0, 2.5, 5.0, 7.35, 8.0, 10.0]) for _ in range(N_DIMS)]
        rows.append((f"d{k}", source, "g", "ok", *scores, *([None] * (15 - N_DIMS)),
                     rng.choice([None, 40, 85]), rng.choice(["keep", "drop", "downsample", None])))
    scores_df = spark.createDataFrame(rows, SCORES_DDL)
    rel = spark.createDataFrame(
        [(s, "g", f"A{i}", (s, f"A{i}") in MASKED, "v1") for s in ("web", "news") for i in range(1, N_DIMS + 1)],
        "source string, scorer string, slot string, masked boolean, mask_version string")
    plan = composite_plan({"g": _rubric()}, cfg)
    assert plan.exact
    got = {r["doc_id"]: r for r in add_composite(scores_df, cell_weights(spark, rel, plan), plan, cfg).collect()}
    blend = Fraction(repr(cfg.overall_blend))
    checked = vetoed = sampled_out = downsampled = 0
    for doc, source, _g, _st, *rest in rows:
        scores, overall, rec = list(rest[:N_DIMS]), rest[15], rest[16]
        masked = [(source, f"A{i}") in MASKED for i in range(1, N_DIMS + 1)]
        want = _reference(scores, weights, masked, overall, blend)
        r = got[doc]
        assert r["mask_version"] == "v1" and r["weights_version"] == plan.version
        if want is None:
            assert r["composite"] is None and r["score_key"] is None
            continue
        assert r["score_key"] == want / 10 * plan.key_per_point  # an exact integer, equal to the reference
        assert r["composite"] == pytest.approx(float(want), abs=1e-9)
        assert r["dims_used"] == sum(1 for s, w, m in zip(scores, weights, masked, strict=True)
                                     if s is not None and w > 0 and not m)
        checked += 1
        assert r["_veto"] == (cfg.veto_drop and rec == "drop")
        vetoed += r["_veto"]
        keep = hash_bucket(seeded_hash(doc, cfg.seed, DOWNSAMPLE_SALT), DOWNSAMPLE_BITS) < int(
            cfg.downsample_keep * (1 << DOWNSAMPLE_BITS))
        assert r["_downsampled_out"] == (rec == "downsample" and not keep)
        downsampled += rec == "downsample"
        sampled_out += r["_downsampled_out"]
    assert checked > 300
    if cfg.veto_drop:
        assert vetoed > 50
    if cfg.downsample_keep < 1:
        assert 0.5 * downsampled < sampled_out < 0.9 * downsampled  # ~70% of 'downsample' rows sampled out
    else:
        assert sampled_out == 0


def test_score_basis_reads_expected_scores_where_the_row_has_them(spark: Any) -> None:
    """``with_score_basis``: expected scores (rounded to the resolution) replace sampled ones slot by slot; a
    slot without an expectation, a row without the map and an unscored slot keep what they had."""
    from mira_spark.selection.aggregation import score_basis, with_score_basis

    ddl = "doc_id string, " + ", ".join(f"a{i}_score double" for i in range(1, 16)) + \
        ", expected_scores map<string, double>"
    pad = [None] * 12
    rows = [("d1", 7.0, 4.0, None, *pad, {"A1": 6.64, "A3": 9.0}),  # A2 has none; A3 unscored stays null
            ("d2", 5.0, 5.0, 5.0, *pad, None)]
    df = spark.createDataFrame(rows, ddl)
    got = {r["doc_id"]: (r["a1_score"], r["a2_score"], r["a3_score"])
           for r in with_score_basis(df, "expected", 10).collect()}
    assert got == {"d1": (6.6, 4.0, None), "d2": (5.0, 5.0, 5.0)}
    assert with_score_basis(df, "sampled", 10) is df
    assert score_basis(SelectionConfig(), expected_enabled=True) == "expected"
    assert score_basis(SelectionConfig(), expected_enabled=False) == "sampled"
    assert score_basis(SelectionConfig(score_basis="sampled"), expected_enabled=True) == "sampled"
    rubrics = {"g": _rubric()}
    assert composite_plan(rubrics, SelectionConfig()).version != composite_plan(
        rubrics, SelectionConfig(), basis="expected").version
