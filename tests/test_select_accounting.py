"""Thresholds accounting of units without an eligible row: a source whose every document failed scoring, a
scorer group whose every document has all dimensions masked, a source only pending, a source only rejected.

Every unit that has input rows gets one thresholds row per variant (``n_docs`` > 0, ``n_in = 0``, nothing
kept, threshold null, a ``note`` naming why), with the budget and ``budget_met`` the spec gives it; the random
baseline, which does not need a composite, still competes on the all-masked group's documents.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from mira_spark.config import SelectionConfig, VariantConfig
from mira_spark.prompting.rubric import rubric_from_names
from mira_spark.selection.aggregation import composite_plan
from mira_spark.selection.select import select_documents

pytestmark = pytest.mark.spark

SCORED_DDL = ("doc_id string, source string, scorer string, status string, error string, parse_status string, "
              "score_key long, composite double, dims_used int, mask_version string, weights_version string, "
              "_veto boolean, _downsampled_out boolean, tokens long, tokens_estimated boolean")
OTHER_DDL = "doc_id string, source string, scorer string, reason string"
SOURCES = {"good", "failing", "masked", "waiting", "orphan"}  # every source with an input row
VARIANTS = (
    VariantConfig(name="global", unit="global", mode="tokens", token_fraction=0.5),
    VariantConfig(name="group", unit="group", mode="fraction", fraction=0.5),
    VariantConfig(name="source", unit="source", mode="tokens", token_fraction=0.5),
    VariantConfig(name="asked", unit="source", mode="tokens", unit_token_budgets={"good": 300, "failing": 200}),
    VariantConfig(name="floor", unit="source", mode="min_score", min_score=50),
    VariantConfig(name="random", unit="group", mode="tokens", token_fraction=0.5, method="random", seed=1),
)


@pytest.fixture(scope="module")
def case(spark: Any) -> dict[str, Any]:
    plan = composite_plan({g: rubric_from_names(g, ["a", "b"]) for g in ("text", "code")}, SelectionConfig())
    rows = []
    for i in range(12):  # scored and eligible
        key = (i % 6 + 3) * plan.key_per_point
        rows.append((f"g{i}", "good", "text", "ok", None, "ok", key, plan.composite(key), 2, "m", plan.version,
                     False, False, 100, False))
    for i in range(5):  # every document failed scoring
        rows.append((f"f{i}", "failing", "text", "failed", "http_503: busy", None, None, None, None, "m",
                     plan.version, False, False, 80, False))
    for i in range(4):  # scored, but every dimension of the group is masked: no composite
        rows.append((f"m{i}", "masked", "code", "ok", None, "ok", None, None, 0, "m", plan.version, False, False,
                     60, False))
    cfg = SelectionConfig(variants=VARIANTS)
    scored = spark.createDataFrame(rows, SCORED_DDL)
    rejected = spark.createDataFrame([("o1", "orphan", None, "no_scorer")], OTHER_DDL)
    pending = spark.createDataFrame([("w1", "waiting", "text", None), ("w2", "waiting", "text", None)], OTHER_DDL)
    sel = select_documents(spark, scored, rejected, pending, cfg, plan, "m")
    return {"thresholds": sel.thresholds.toPandas().set_index(["variant", "unit"]),
            "decisions": sel.decisions.toPandas(), "counts": sel.counts}


def test_every_unit_with_input_rows_has_a_thresholds_row_per_variant(case: dict[str, Any]) -> None:
    t, decisions = case["thresholds"], case["decisions"]
    for v in VARIANTS:
        units = {"global": {"global"}, "group": {"text", "code"}, "source": SOURCES}[v.unit]
        assert set(t.loc[v.name].index) == units, v.name
        assert set(case["counts"][v.name]) == units
        # n_docs counts every decisions row of the unit: eligible, failed, masked, pending, rejected
        mine = decisions[(decisions["variant"] == v.name) & decisions["unit"].notna()]
        assert t.loc[v.name, "n_docs"].astype(int).to_dict() == mine.groupby("unit").size().to_dict()


@pytest.mark.parametrize(("variant", "unit", "note"), [
    ("source", "failing", "no_eligible_rows: scoring_failed:http_503 5"),
    ("source", "masked", "no_eligible_rows: all_dims_masked 4"),
    ("source", "waiting", "no_eligible_rows: pending 2"),
    ("source", "orphan", "no_eligible_rows: no_scorer 1"),
    ("floor", "failing", "no_eligible_rows: scoring_failed:http_503 5"),
    ("group", "code", "no_eligible_rows: all_dims_masked 4"),
])
def test_a_unit_without_eligible_rows_keeps_nothing_and_says_why(case: dict[str, Any], variant: str, unit: str,
                                                                 note: str) -> None:
    row = case["thresholds"].loc[(variant, unit)]
    assert (row["n_docs"], row["n_in"], row["n_kept"], row["tokens_in"], row["tokens_kept"]) == (
        int(note.rsplit(" ", 1)[1]), 0, 0, 0, 0)
    assert pd.isna(row["threshold"]) and pd.isna(row["threshold_key"]) and pd.isna(row["kept_fraction"])
    assert row["note"] == note
    assert case["counts"][variant][unit] == (0, 0)
    if variant == "floor":  # min_score has no budget
        assert row["budget_measure"] == "none" and pd.isna(row["budget_met"])
    else:  # a share of a split total (or a fraction of no documents) is 0: met, nothing was asked of it
        assert row["budget"] == 0 and row["budget_met"]


def test_a_budget_asked_of_a_unit_without_eligible_rows_is_not_met(case: dict[str, Any]) -> None:
    t = case["thresholds"]
    failing, good = t.loc[("asked", "failing")], t.loc[("asked", "good")]
    assert (failing["budget"], failing["n_kept"], failing["budget_met"]) == (200, 0, False)
    assert (good["budget"], good["tokens_kept"], good["budget_met"]) == (300, 300, True)
    assert t.loc[("asked", "masked"), "budget"] == 0  # no entry in unit_token_budgets


def test_units_with_eligible_rows_have_no_note_and_random_competes_on_masked_rows(case: dict[str, Any]) -> None:
    t = case["thresholds"]
    assert t.loc[("source", "good"), "n_in"] == 12 and pd.isna(t.loc[("source", "good"), "note"])
    code = t.loc[("random", "code")]  # random needs no composite: the all-masked group's rows compete
    assert (code["n_docs"], code["n_in"]) == (4, 4) and 0 < code["n_kept"] < 4 and pd.isna(code["note"])
    assert code["cut_on"] == "random_score" and 0 <= code["threshold"] < 1
    assert t.loc[("source", "good"), "cut_on"] == "composite"
