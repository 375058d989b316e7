"""The Spark histogram method (pass 1 / pass 2 / broadcast filter) against a brute-force pandas sort + cumsum.

100k tie-heavy rows (a dozen distinct composites, so the global unit's boundary key holds ~8k rows and
pass 2a's hash sub-buckets run), every mode x unit, both budget semantics, the random baseline and
tau-sampling, in one ``select_documents`` call (one session, one set of Spark jobs per variant).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mira_spark.config import SelectionConfig, VariantConfig
from mira_spark.prompting.rubric import rubric_from_names
from mira_spark.selection.aggregation import composite_plan
from mira_spark.selection.select import select_documents
from mira_spark.selection.thresholds import (
    DEFAULT_ROWS_PER_BUCKET,
    GUMBEL_KEY_SCALE,
    GUMBEL_SALT,
    ScoreKeyScale,
    gumbel_order_key,
    random_order_key,
    random_score,
    round_half_up_fraction,
    seeded_hash,
    split_largest_remainder,
    tie_hash,
)

pytestmark = pytest.mark.spark

N_ROWS = 100_000
GROUP_OF = {"web": "text", "news": "text", "books": "text", "py": "code", "js": "code", "zh": "zh"}
LEVELS = [31.0, 40.0, 47.5, 52.0, 55.0, 60.0, 61.5, 66.0, 70.0, 72.5, 80.0, 90.0]  # composites, 0-100
SCORED_DDL = ("doc_id string, source string, scorer string, status string, error string, parse_status string, "
              "score_key long, composite double, dims_used int, mask_version string, weights_version string, "
              "_veto boolean, _downsampled_out boolean, tokens long, tokens_estimated boolean")


def _variants(total_tokens: int) -> list[VariantConfig]:
    out = []
    for unit in ("global", "group", "source"):
        out += [
            VariantConfig(name=f"frac_{unit}", unit=unit, mode="fraction", fraction=0.37),
            VariantConfig(name=f"tok_{unit}", unit=unit, mode="tokens", token_budget=int(total_tokens * 0.41)),
            VariantConfig(name=f"tokreach_{unit}", unit=unit, mode="tokens", token_fraction=0.23, semantics="reach"),
            VariantConfig(name=f"min_{unit}", unit=unit, mode="min_score", min_score=60.5),
        ]
    out += [
        VariantConfig(name="random", unit="source", mode="tokens", token_fraction=0.5, method="random", seed=3),
        VariantConfig(name="tau", unit="group", mode="fraction", fraction=0.3, tau=0.5, seed=4),
    ]
    return out


@pytest.fixture(scope="module")
def case(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rng = random.Random(909)
    plan = composite_plan({g: rubric_from_names(g, ["a", "b", "c"]) for g in set(GROUP_OF.values())},
                          SelectionConfig())
    rows = []
    for i in range(N_ROWS):
        source = rng.choice(list(GROUP_OF))
        failed = rng.random() < 0.01
        level = rng.choice(LEVELS)
        key = None if failed else round(level / 10 * plan.key_per_point)
        rows.append((f"d{i:06d}", source, GROUP_OF[source], "failed" if failed else "ok",
                     "http_503: busy" if failed else None, None if failed else "ok", key,
                     None if key is None else plan.composite(key), 3, "m1", plan.version, False, False,
                     rng.choice([1, 5, 50, 200, 900, 3000]), True))
    pdf = pd.DataFrame(rows, columns=[c.split()[0] for c in SCORED_DDL.split(", ")])
    ok = pdf[pdf["status"] == "ok"]
    variants = _variants(int(ok["tokens"].sum()))
    cfg = SelectionConfig(variants=tuple(variants))
    path = str(tmp_path_factory.mktemp("exact") / "scored")  # a table, as in a run (not a plan-embedded relation)
    spark.createDataFrame(rows, SCORED_DDL).write.format("delta").save(path)
    scored = spark.read.format("delta").load(path)
    empty = spark.createDataFrame([], "doc_id string, source string, scorer string, reason string")
    sel = select_documents(spark, scored, empty, empty, cfg, plan, "m1")
    kept = sel.decisions.filter("decision = 'kept'").select("variant", "doc_id").toPandas()
    thresholds = sel.thresholds.toPandas()
    kept_once = sel.kept.select("doc_id", "scorer", "variants").toPandas()
    return {"pdf": pdf, "ok": ok, "variants": variants, "plan": plan, "kept": kept, "thresholds": thresholds,
            "decisions_n": sel.decisions.count(), "kept_once": kept_once}


def _brute_force(df: pd.DataFrame, v: VariantConfig, budget_total: int | None) -> tuple[set[str], dict[str, int]]:
    """Sort each unit by (key desc, tie hash asc, doc_id asc), cumulative sum, keep the prefix."""
    budgets: dict[str, int] = {}
    if v.mode == "tokens":
        budgets = split_largest_remainder(budget_total or 0, df.groupby("unit")["tokens"].sum().astype(int).to_dict())
    kept: set[str] = set()
    for u, g in df.groupby("unit"):
        g = g.sort_values(["k", "h", "doc_id"], ascending=[False, True, True])
        if v.mode == "min_score":
            kept |= set(g.loc[g["composite"] >= v.min_score - 1e-9, "doc_id"])
            continue
        measure = np.ones(len(g), dtype=np.int64) if v.mode == "fraction" else g["tokens"].to_numpy()
        budget = round_half_up_fraction(len(g), repr(v.fraction)) if v.mode == "fraction" else budgets[u]
        budgets[u] = budget
        cum = np.cumsum(measure)
        keep = cum <= budget if v.semantics == "never_exceed" else (cum - measure) < budget
        kept |= set(g["doc_id"].to_numpy()[keep])
    return kept, budgets


def test_histogram_cuts_equal_a_full_sort_for_every_mode_and_unit(case: dict[str, Any]) -> None:
    ok, plan = case["ok"].copy(), case["plan"]
    total = int(ok["tokens"].sum())
    assert case["decisions_n"] == N_ROWS * len(case["variants"])
    ok["tie"] = [tie_hash(d) for d in ok["doc_id"]]
    per_key = ok.groupby("score_key").size()
    assert per_key.max() > DEFAULT_ROWS_PER_BUCKET  # the global boundary key needs pass 2a's sub-buckets
    scale = ScoreKeyScale((1,), 1, plan.key_per_point, True)  # gumbel_order_key reads key_per_point only
    for v in case["variants"]:
        df = ok.copy()
        if v.method == "random":
            df["h"] = [seeded_hash(d, v.seed) for d in df["doc_id"]]
            df["k"] = [random_order_key(h) for h in df["h"]]
        elif v.tau is not None:
            df["h"] = df["tie"]
            df["k"] = [gumbel_order_key(int(k), scale, v.tau, seeded_hash(d, v.seed, GUMBEL_SALT))
                       for k, d in zip(df["score_key"], df["doc_id"], strict=True)]
        else:
            df["h"], df["k"] = df["tie"], df["score_key"]
        df["unit"] = {"global": "global", "group": df["scorer"], "source": df["source"]}[v.unit]
        budget_total = v.token_budget if v.token_budget is not None else (
            int(total * v.token_fraction) if v.token_fraction is not None else None)
        want, budgets = _brute_force(df, v, budget_total)
        got = set(case["kept"].loc[case["kept"]["variant"] == v.name, "doc_id"])
        assert want and len(want) < len(df)
        assert got == want, (v.name, len(got), len(want), len(got ^ want))
        t = case["thresholds"][case["thresholds"]["variant"] == v.name].set_index("unit")
        assert int(t["n_kept"].sum()) == len(want)
        if v.mode != "min_score":
            assert t["budget"].astype(int).to_dict() == budgets
        tokens_kept = df.loc[df["doc_id"].isin(want)].groupby("unit")["tokens"].sum().astype(int).to_dict()
        assert t["tokens_kept"].astype(int).to_dict() == tokens_kept
        if v.mode == "tokens" and v.semantics == "never_exceed":
            assert (t["tokens_kept"] <= t["budget"]).all() and t["budget_met"].all()
        if v.semantics == "reach":
            assert (t["tokens_kept"] >= t["budget"]).all()
        _check_threshold_unit(v, df, want, t)


def _check_threshold_unit(v: VariantConfig, df: pd.DataFrame, want: set[str], t: pd.DataFrame) -> None:
    """``threshold`` is the lowest kept value of the quantity ``cut_on`` names: above it kept, below excluded."""
    if v.method == "random":
        on, value = "random_score", [random_score(h) for h in df["h"]]
    elif v.tau is not None:
        on, value = "gumbel_key", list(df["k"] / GUMBEL_KEY_SCALE)
    else:
        on, value = "composite", list(df["composite"])
    df = df.assign(value=value, kept=df["doc_id"].isin(want))
    assert set(t["cut_on"]) == {on}
    for unit, g in df.groupby("unit"):
        threshold = t.loc[unit, "threshold"]
        assert threshold == pytest.approx(g.loc[g["kept"], "value"].min(), abs=1e-12)
        assert g.loc[g["value"] > threshold + 1e-9, "kept"].all()
        assert not g.loc[g["value"] < threshold - 1e-9, "kept"].any()
        assert (g["value"] < threshold - 1e-9).any()  # the cut excluded rows below it: the check had a case


def test_kept_rows_are_each_document_once_with_the_variants_that_kept_it(case: dict[str, Any]) -> None:
    once = case["kept_once"]
    assert not once.duplicated(["doc_id", "scorer"]).any()
    got = {d: list(v) for d, v in zip(once["doc_id"], once["variants"], strict=True)}
    want: dict[str, list[str]] = {}
    for variant, doc_id in sorted(zip(case["kept"]["variant"], case["kept"]["doc_id"], strict=True)):
        want.setdefault(doc_id, []).append(variant)
    assert got == want
    assert max(len(v) for v in got.values()) > 1 and min(len(v) for v in got.values()) == 1
