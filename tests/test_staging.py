"""A wave's scored rows are staged as files before the Delta commit: a failed or retried commit never
re-sends (re-bills) the wave, and a run killed between staging and commit is recovered without requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mira_spark.config import load_settings
from mira_spark.pipeline import run_pipeline
from mira_spark.store.tables import Tables

pytestmark = pytest.mark.spark


def _requests(sims: list[Any]) -> int:
    return sum(h.stats()["requests"] for h in sims)


def test_commit_failure_after_staging_is_recovered_without_new_requests(
    spark: Any, make_config: Any, sim_pool: list[Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = load_settings(make_config(scoring={"wave_size": 1000}))
    real_append = Tables.append
    calls = {"raw": 0}

    def failing_append(self: Tables, df: Any, table: str, schema: Any, **kwargs: Any) -> None:
        if table == "raw_outputs":
            calls["raw"] += 1
            raise RuntimeError("simulated crash during the raw_outputs commit")
        real_append(self, df, table, schema, **kwargs)

    monkeypatch.setattr(Tables, "append", failing_append)
    before = _requests(sim_pool)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(spark, settings, run_id="crashed")
    paid = _requests(sim_pool) - before
    assert calls["raw"] == 1 and paid > 0
    staged = list((tmp_path / "tables" / "_staging" / "raw_outputs").glob("run-crashed/wave-*/*.parquet"))
    assert staged, "the scored wave must be on disk before the commit"

    monkeypatch.setattr(Tables, "append", real_append)
    before = _requests(sim_pool)
    summary = run_pipeline(spark, settings, run_id="resumed")
    assert _requests(sim_pool) - before == 0  # nothing paid twice
    assert summary.pending_before == 0 and summary.recovered_raw == summary.documents_in - 3
    scores = Tables(spark, settings).read("scores")
    assert scores.count() == scores.select("doc_id").distinct().count() == summary.documents_in - 3


def test_committed_waves_leave_no_staging_files(spark: Any, make_config: Any, tmp_path: Path) -> None:
    settings = load_settings(make_config())
    run_pipeline(spark, settings, run_id="clean")
    leftovers = list((tmp_path / "tables" / "_staging").rglob("*.parquet"))
    assert leftovers == []
    # the run's work queue (pending documents with their text) is removed when the run ends
    assert Tables(spark, settings).read("work_queue").filter("run_id = 'clean'").count() == 0
