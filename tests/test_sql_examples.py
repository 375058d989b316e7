"""Every example query in sql/ runs against the demo output and returns what its header says.

The queries use the views the job registers (mira_spark/store/views.py). The canary table is being built by
another change (contract: canary(run_id, endpoint, scorer, slot, reference_score, score, deviation,
quarantined)); while the demo run does not produce it, this test writes a small fixture table with that
contract (one endpoint shifted and quarantined) and registers it as the view mira_canary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytest_plugins = ["mira_demo"]
pytestmark = [pytest.mark.spark]

REPO = Path(__file__).resolve().parents[1]
QUERIES = sorted((REPO / "sql").glob("*.sql"))

COLUMNS = {
    "01_score_distribution_by_source": ["source", "slot", "dimension", "n", "mean_score", "sd_score", "p25",
                                        "median", "p75", "min_score", "max_score"],
    "02_masked_cells": ["source", "scorer", "slot", "dimension", "n", "mae", "mae_lo", "mae_hi", "spearman",
                        "spearman_lo", "spearman_hi", "used_mae", "used_spearman", "mask_origin", "reason", "basis"],
    "03_overall_vs_composite": ["source", "doc_id", "overall", "composite", "gap", "decision", "reason"],
    "04_near_threshold": ["variant", "unit", "doc_id", "decision", "composite", "threshold", "margin"],
    "05_retained_tokens_by_source": ["variant", "source", "kept_docs", "input_docs", "kept_tokens", "input_tokens",
                                     "kept_token_share", "input_token_share", "estimated"],
    "06_failures_by_reason": ["variant", "source", "reason_kind", "reason", "docs", "share_of_source"],
    "07_canary_drift": ["run_id", "endpoint", "scorer", "slots_checked", "mean_abs_deviation",
                        "max_abs_deviation", "mean_shift", "quarantined"],
    "08_cost_so_far": ["run_id", "requests", "retries", "repairs", "wasted_requests", "wasted_completion_tokens",
                       "rows_scored", "rows_ok", "prompt_tokens", "completion_tokens", "endpoints", "scoring_s",
                       "latency_p50_s", "latency_p99_s", "gpu_hours_est"],
}


@pytest.fixture(scope="module")
def views(demo_run: Any, spark: Any) -> dict[str, Any]:
    """The demo run's views (re-registered: other tests share the session), plus the canary fixture."""
    from mira_spark.explore import open_run_views

    names = open_run_views(spark, str(demo_run.config))
    fixture = "mira_canary" not in names
    if fixture:
        rows = [("demo", url, "text_group_b", f"A{slot}", 6.0, 6.0 + shift, shift, shift > 1.0)
                for url, shift in (("http://10.0.0.1:8000/v1", 0.0), ("http://10.0.0.2:8000/v1", 0.25),
                                   ("http://10.0.0.9:8000/v1", 3.0)) for slot in range(1, 16)]
        schema = ("run_id string, endpoint string, scorer string, slot string, reference_score double, "
                  "score double, deviation double, quarantined boolean")
        path = str(demo_run.root / "canary")
        spark.createDataFrame(rows, schema).write.format("delta").mode("overwrite").save(path)
        spark.read.format("delta").load(path).createOrReplaceTempView("mira_canary")
    docs = spark.sql("SELECT doc_id, source, text FROM mira_documents").toPandas()
    decisions = spark.sql("SELECT * FROM mira_decisions").toPandas()
    return {"fixture_canary": fixture, "docs": docs, "decisions": decisions, "summary": demo_run.summary}


def test_there_are_at_least_eight_documented_queries() -> None:
    assert len(QUERIES) >= 8 and {q.stem for q in QUERIES} == set(COLUMNS)
    for query in QUERIES:
        header = query.read_text(encoding="utf-8").splitlines()[0]
        assert header.startswith("-- What it answers:"), query.name


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.stem)
def test_query_runs_on_the_demo_output(query: Path, views: dict[str, Any], spark: Any) -> None:
    result = spark.sql(query.read_text(encoding="utf-8")).toPandas()
    assert list(result.columns) == COLUMNS[query.stem]
    assert len(result) > 0, f"{query.name} returned no rows on the demo output"
    CHECKS[query.stem](result, views)


def _distribution(r: pd.DataFrame, v: dict) -> None:
    assert set(r["source"]) == {k.split(":")[1] for k in v["summary"]["kept"] if k.startswith("source:")}
    assert ((r["min_score"] <= r["p25"]) & (r["p25"] <= r["median"]) & (r["median"] <= r["p75"])
            & (r["p75"] <= r["max_score"])).all()
    assert r["mean_score"].between(0, 10).all() and (r["n"] > 0).all()


def _masked(r: pd.DataFrame, v: dict) -> None:
    assert r["reason"].str.len().gt(0).all()
    assert ((r["used_mae"] > 2.0) | (r["used_spearman"] < 0.3) | (r["mask_origin"] != "computed")).all()
    assert ((r["mae_lo"] <= r["mae"]) & (r["mae"] <= r["mae_hi"])).all()


def _overall(r: pd.DataFrame, v: dict) -> None:
    assert ((r["gap"] - (r["overall"] - r["composite"])).abs() < 1e-3).all()
    assert r["composite"].between(0, 100).all() and r["doc_id"].is_unique  # one variant
    assert r["gap"].abs().is_monotonic_decreasing


def _near(r: pd.DataFrame, v: dict) -> None:
    assert (r["margin"].abs() <= 2.5 + 1e-9).all()
    above, below = r[r["margin"] > 1e-9], r[r["margin"] < -1e-9]
    assert (above["decision"] == "kept").all(), "a composite above its threshold is kept"
    assert (below["decision"] == "excluded").all() and len(below) > 0
    assert set(r["variant"]) == {"global", "group", "source"}  # random has no composite threshold


def _tokens(r: pd.DataFrame, v: dict) -> None:
    d = v["decisions"]
    kept = d[d["decision"] == "kept"]
    want = d.assign(k=d["decision"] == "kept").groupby(["variant", "source"])["k"].sum().astype(int).to_dict()
    assert {(a, b): int(n) for a, b, n in r[["variant", "source", "kept_docs"]].itertuples(index=False)} == want
    tokens = kept.groupby(["variant", "source"])["tokens"].sum()
    for (variant, source), t in tokens.items():
        assert int(r[(r["variant"] == variant) & (r["source"] == source)]["kept_tokens"].iloc[0]) == int(t)
    assert r.groupby("variant")["input_docs"].sum().eq(len(v["docs"])).all()  # every input row once per variant
    for variant, part in r.groupby("variant"):
        assert part["kept_token_share"].sum() == pytest.approx(1, abs=1e-3)
        if variant == "source":  # MIRA-Source keeps the raw source mix (of the eligible tokens)
            assert (part["kept_token_share"] - part["input_token_share"]).abs().max() < 0.1
    counted = r[r["input_tokens"] > 0]  # sources with routed rows (no_scorer rows have no token count)
    assert len(counted) and counted["estimated"].all()  # the sample has no tokens column


def _failures(r: pd.DataFrame, v: dict) -> None:
    excluded = v["decisions"][v["decisions"]["decision"] == "excluded"]
    assert r["docs"].sum() == len(excluded)
    assert "below_threshold" in set(r["reason_kind"])
    assert (r.groupby(["variant", "source"])["share_of_source"].sum() <= 1 + 1e-3).all()  # rounded to 4 places


def _canary(r: pd.DataFrame, v: dict) -> None:
    assert (r["mean_abs_deviation"] <= r["max_abs_deviation"] + 1e-9).all()
    if v["fixture_canary"]:
        worst = r.iloc[0]
        assert worst["endpoint"] == "http://10.0.0.9:8000/v1" and bool(worst["quarantined"])
        assert worst["mean_shift"] == pytest.approx(3.0) and worst["slots_checked"] == 15
        assert r["quarantined"].astype(bool).sum() == 1


def _cost(r: pd.DataFrame, v: dict) -> None:
    demo = r[r["run_id"] == "demo"].iloc[0]
    assert demo["requests"] == v["summary"]["requests_sent"] and demo["rows_scored"] == v["summary"]["rows_scored"]
    assert demo["endpoints"] == 2 and demo["prompt_tokens"] > 0 and demo["completion_tokens"] > 0
    assert demo["rows_ok"] == v["summary"]["scored_ok"] and 0 < demo["latency_p50_s"] <= demo["latency_p99_s"]
    assert demo["gpu_hours_est"] == pytest.approx(2 * 8 * demo["scoring_s"] / 3600, abs=1e-3)


CHECKS = {"01_score_distribution_by_source": _distribution, "02_masked_cells": _masked,
          "03_overall_vs_composite": _overall, "04_near_threshold": _near,
          "05_retained_tokens_by_source": _tokens, "06_failures_by_reason": _failures,
          "07_canary_drift": _canary, "08_cost_so_far": _cost}
