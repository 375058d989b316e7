"""Parity: the same score -> parse -> select logic on classic Spark local[2] (parquet) and on Sail (Delta).

Classic Spark runs through the CLI in a subprocess (its JVM session and Sail's Connect session do not
share a Python process well); both runs score against the same simulated endpoints, whose answers are
deterministic, so every decision and threshold must agree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import write_config

from mira_spark.config import load_settings
from mira_spark.pipeline import run_pipeline
from mira_spark.store.tables import Tables

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_classic_local_parquet_matches_sail_delta(spark: Any, sim_pool: list[Any], sample_dir: Path,
                                                  tmp_path: Path) -> None:
    from mira_spark.devtools.samples import write_sample

    parquet_sample = tmp_path / "sample_parquet"
    write_sample(parquet_sample, fmt="parquet")
    urls = [h.url for h in sim_pool]
    classic_cfg = write_config(tmp_path / "classic.yaml", tmp_path / "classic", str(parquet_sample / "documents"),
                               str(parquet_sample / "validation"), urls, engine="local", table_format="parquet")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    proc = subprocess.run([sys.executable, "-m", "mira_spark.cli", "run", "--config", str(classic_cfg)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    sail_cfg = write_config(tmp_path / "sail.yaml", tmp_path / "sail", str(sample_dir / "documents"),
                            str(sample_dir / "validation"), urls)
    settings = load_settings(sail_cfg)
    run_pipeline(spark, settings, run_id="parity")
    tables = Tables(spark, settings)
    sail_decisions = tables.read("decisions").toPandas()
    sail_thresholds = tables.read("thresholds").toPandas()

    classic_decisions = pd.read_parquet(tmp_path / "classic" / "decisions")
    classic_thresholds = pd.read_parquet(tmp_path / "classic" / "thresholds")

    cols = ["variant", "doc_id", "source", "unit", "decision", "reason", "tokens", "mask_version"]
    keys = ["variant", "doc_id", "source"]
    left = classic_decisions[cols].sort_values(keys).reset_index(drop=True)
    right = sail_decisions[cols].sort_values(keys).reset_index(drop=True)
    assert len(left) > 0 and left["variant"].nunique() == 4
    pd.testing.assert_frame_equal(left, right, check_dtype=False)
    merged = classic_decisions.merge(sail_decisions, on=keys, suffixes=("_c", "_s"))
    assert ((merged["composite_c"] - merged["composite_s"]).abs().fillna(0) < 1e-9).all()

    tcols = ["variant", "unit", "budget", "n_in", "n_kept", "tokens_in", "tokens_kept", "threshold_key", "budget_met"]
    pd.testing.assert_frame_equal(
        classic_thresholds[tcols].sort_values(["variant", "unit"]).reset_index(drop=True),
        sail_thresholds[tcols].sort_values(["variant", "unit"]).reset_index(drop=True),
        check_dtype=False,
    )
    assert (classic_thresholds.sort_values(["variant", "unit"])["threshold"].to_numpy(na_value=-1.0)
            == pytest.approx(sail_thresholds.sort_values(["variant", "unit"])["threshold"].to_numpy(na_value=-1.0)))
