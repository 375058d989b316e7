"""A Spark task retry adds no duplicate rows.

A retried scoring task appends its rows to ``raw_outputs`` a second time (the table is an append-only
log), and a re-run wave action scores its documents again. Both are simulated on a finished run: the
wave's raw outputs are appended twice (identical, or with a different outcome of the retried attempt),
or the wave's scoring action is run again; then the wave is merged again. ``scores`` must keep one row
per key with the same content, and the decisions must not change.

Not covered: a real task failure retried by Spark's scheduler (``spark.task.maxFailures``). Sail runs
tasks as threads and classic Spark cannot write Delta on this machine (no Maven), so the retry is
reproduced at the table level, which is where a duplicate would land.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import write_config
from pyspark.sql import functions as F

from mira_spark.config import load_settings
from mira_spark.devtools.bench.faults import write_documents
from mira_spark.ingest.documents import attach_text
from mira_spark.parsing.stage import score_rows
from mira_spark.pipeline import (
    make_plan,
    open_run,
    recover_unmerged,
    route_stage,
    run_pipeline,
    run_stages,
)
from mira_spark.scoring.stage import score_documents
from mira_spark.store.schemas import RAW_OUTPUTS_SCHEMA, SCORE_KEYS, SCORES_SCHEMA
from mira_spark.store.tables import Tables

pytestmark = pytest.mark.spark

RUN = "r1"
COMPARED = ("doc_id", "status", "error", "a1_score", "a7_score", "a15_score", "overall", "parse_status", "run_id")


@pytest.fixture
def finished(spark: Any, sample_dir: Path, sim_pool: list[Any], tmp_path: Path) -> Tables:
    """A finished run over 40 documents in three waves."""
    write_documents(tmp_path / "documents", 40)
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "tables", str(tmp_path / "documents"),
                       str(sample_dir / "validation"), [h.url for h in sim_pool], scoring={"wave_size": 15})
    settings = load_settings(cfg)
    summary = run_pipeline(spark, settings, run_id=RUN)
    assert summary.waves >= 2 and summary.stopped is None
    return Tables(spark, settings)


def _scores(tables: Tables) -> dict[str, tuple]:
    rows = tables.read("scores").select(*COMPARED).collect()
    out = {r["doc_id"]: tuple(r) for r in rows}
    assert len(out) == len(rows), "more than one scores row for a document"
    return out


def _decisions(tables: Tables) -> set[tuple]:
    return {tuple(r) for r in tables.read("decisions").collect()}


def _wave(tables: Tables, wave: int = 0) -> Any:
    return tables.read("raw_outputs").filter((F.col("run_id") == RUN) & (F.col("wave") == wave))


def _remerge_and_select(tables: Tables) -> None:
    """The wave's MERGE again (as after the duplicate append), then a restart's recovery and selection."""
    spark, settings = tables.spark, tables.settings
    ctx = open_run(spark, settings, "after-retry")
    tables.merge(score_rows(_wave(tables)), "scores", SCORES_SCHEMA, SCORE_KEYS)
    assert recover_unmerged(tables, ctx.groups) == 0
    run_stages(ctx, ["reliability", "select"])


def _append_rows(tables: Tables, rows: list[Any]) -> None:
    df = tables.spark.createDataFrame([r.asDict() for r in rows], RAW_OUTPUTS_SCHEMA)
    tables.append(df, "raw_outputs", RAW_OUTPUTS_SCHEMA)


def test_wave_appended_twice_adds_no_rows(finished: Tables) -> None:
    scores, decisions = _scores(finished), _decisions(finished)
    raw_before = finished.read("raw_outputs").count()
    wave = _wave(finished).collect()
    _append_rows(finished, wave)  # what a retried task writes: the same rows again
    assert finished.read("raw_outputs").count() == raw_before + len(wave)
    _remerge_and_select(finished)
    assert _scores(finished) == scores
    assert _decisions(finished) == decisions


def test_retried_attempt_with_another_outcome_keeps_one_row(finished: Tables) -> None:
    """A retry that failed does not replace an ok answer; either way one row per key."""
    scores, decisions = _scores(finished), _decisions(finished)
    wave = [r for r in _wave(finished).collect() if r["status"] == "ok"]
    assert wave
    later = [
        {**r.asDict(), "status": "failed", "error": "timeout: retried attempt", "raw_text": None,
         "scored_at": r["scored_at"].replace(year=r["scored_at"].year + 1)}
        for r in wave
    ]
    finished.append(finished.spark.createDataFrame(later, RAW_OUTPUTS_SCHEMA), "raw_outputs", RAW_OUTPUTS_SCHEMA)
    _remerge_and_select(finished)
    assert _scores(finished) == scores
    assert _decisions(finished) == decisions


def test_wave_action_run_twice_adds_no_rows(finished: Tables, sim_pool: list[Any]) -> None:
    """The wave's scoring action again (a whole stage retried): requests are re-sent, rows are not doubled."""
    spark, settings = finished.spark, finished.settings
    scores, decisions = _scores(finished), _decisions(finished)
    ids = [r["doc_id"] for r in _wave(finished).select("doc_id").collect()]
    ctx = open_run(spark, settings, "again")
    plan = make_plan(settings, ctx.groups, 2)
    route_stage(ctx)
    docs = attach_text(ctx.routed.filter(F.col("doc_id").isin(ids)), ctx.docs)
    before = sum(h.stats()["requests"] for h in sim_pool)
    raw = score_documents(docs, plan, 2).select(
        "*", F.lit(RUN).alias("run_id"), F.lit(0).alias("wave"), F.current_timestamp().alias("scored_at")
    )
    finished.append(raw, "raw_outputs", RAW_OUTPUTS_SCHEMA)
    resent = sum(h.stats()["requests"] for h in sim_pool) - before
    assert resent > 0  # a retried action pays again; the tables must not show it twice
    _remerge_and_select(finished)
    assert _scores(finished).keys() == scores.keys()
    # The simulator answers a document deterministically, so the re-scored rows are identical.
    strip = {d: row[:-1] for d, row in _scores(finished).items()}
    assert strip == {d: row[:-1] for d, row in scores.items()}
    assert _decisions(finished) == decisions
