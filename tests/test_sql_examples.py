"""Every example query in sql/ runs against the demo output and returns what its header says.

The queries use the views the job registers (mira_spark/store/views.py), the canary drift guard's
``mira_canary`` included: the demo run checks both simulated endpoints before its corpus (neither drifts;
tests/test_canary.py covers a shifted one).
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
    "07_canary_drift": ["run_id", "wave", "endpoint", "scorer", "slots_checked", "mean_abs_deviation",
                        "max_abs_deviation", "mean_shift", "quarantined", "reason"],
    "08_cost_so_far": ["run_id", "requests", "retries", "repairs", "wasted_requests", "wasted_completion_tokens",
                       "rows_scored", "rows_ok", "prompt_tokens", "completion_tokens", "endpoints", "scoring_s",
                       "latency_p50_s", "latency_p99_s", "gpu_hours_est"],
    "09_training_set_of_a_variant": ["doc_id", "source", "scorer", "composite", "tokens", "also_kept_by",
                                     "text_chars"],
}


@pytest.fixture(scope="module")
def views(demo_run: Any, spark: Any) -> dict[str, Any]:
    """The demo run's views (re-registered: other tests share the session)."""
    from mira_spark.explore import open_run_views

    names = open_run_views(spark, str(demo_run.config))
    assert "mira_canary" in names, "the demo run writes the canary table"
    docs = spark.sql("SELECT doc_id, source, text FROM mira_documents").toPandas()
    decisions = spark.sql("SELECT * FROM mira_decisions").toPandas()
    return {"docs": docs, "decisions": decisions, "summary": demo_run.summary}


def test_there_are_at_least_eight_documented_queries() -> None:
    assert len(QUERIES) >= 9 and {q.stem for q in QUERIES} == set(COLUMNS)
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
    scored = {k.split(":")[1] for k, (_kept, n_in) in v["summary"]["kept"].items() if k.startswith("source:") and n_in}
    assert set(r["source"]) == scored
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
    from mira_spark.config import CanaryConfig

    assert (r["mean_abs_deviation"] <= r["max_abs_deviation"] + 1e-9).all()
    demo = r[r["run_id"] == "demo"]
    # One check before the corpus (1 wave), both endpoints, every slot of the 12 references scored.
    assert list(demo["wave"]) == [0, 0] and demo["endpoint"].nunique() == 2
    assert (demo["slots_checked"] == 12 * 15).all()
    assert (demo["mean_abs_deviation"] < CanaryConfig().max_deviation).all()
    assert not demo["quarantined"].astype(bool).any() and demo["reason"].isna().all()
    assert v["summary"]["canary"]["checks"] == 1 and v["summary"]["canary"]["quarantined"] == []


def _cost(r: pd.DataFrame, v: dict) -> None:
    demo = r[r["run_id"] == "demo"].iloc[0]
    assert demo["requests"] == v["summary"]["requests_sent"] and demo["rows_scored"] == v["summary"]["rows_scored"]
    assert demo["endpoints"] == 2 and demo["prompt_tokens"] > 0 and demo["completion_tokens"] > 0
    assert demo["rows_ok"] == v["summary"]["scored_ok"] and 0 < demo["latency_p50_s"] <= demo["latency_p99_s"]
    assert demo["gpu_hours_est"] == pytest.approx(2 * 8 * demo["scoring_s"] / 3600, abs=1e-3)


def _training_set(r: pd.DataFrame, v: dict) -> None:
    d = v["decisions"]
    kept = d[(d["variant"] == "source") & (d["decision"] == "kept")]
    assert sorted(r["doc_id"]) == sorted(kept["doc_id"]) and r["doc_id"].is_unique
    assert (r["text_chars"] > 0).all()
    others = {x for s in r["also_kept_by"] for x in s.split(",") if x}
    assert "source" not in others and others <= {"global", "group", "random"} and others  # the variants overlap
    also = r.set_index("doc_id")["also_kept_by"].to_dict()
    for doc_id in kept["doc_id"]:  # also_kept_by is exactly the other variants' decisions
        want = sorted(d[(d["doc_id"] == doc_id) & (d["decision"] == "kept") & (d["variant"] != "source")]["variant"])
        assert also[doc_id] == ",".join(want)


CHECKS = {"01_score_distribution_by_source": _distribution, "02_masked_cells": _masked,
          "03_overall_vs_composite": _overall, "04_near_threshold": _near,
          "05_retained_tokens_by_source": _tokens, "06_failures_by_reason": _failures,
          "07_canary_drift": _canary, "08_cost_so_far": _cost, "09_training_set_of_a_variant": _training_set}
