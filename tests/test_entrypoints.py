"""Shipped configs, the spark-submit entry and the notebook stay loadable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mira_spark.config import load_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["local.yaml", "databricks.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    settings = load_settings(REPO / "conf" / name)
    assert settings.scorers.group_for_source()["html_cpt"] == "text_group_b"
    assert settings.sampling.temperature == 0.7 and settings.sampling.top_p == 0.95
    assert settings.sampling.max_tokens == 2048 and settings.serving.max_model_len == 65536


def test_databricks_config_reads_key_from_secret_scope() -> None:
    pool = load_settings(REPO / "conf" / "databricks.yaml").scorers.pools["text_group_b_pool"]
    assert pool.api_key_env is None and pool.api_key_secret is not None and pool.verify_tls


def test_notebook_is_valid_python_that_calls_the_library() -> None:
    source = (REPO / "notebooks" / "mira_pipeline.py").read_text(encoding="utf-8")
    assert source.startswith("# Databricks notebook source")
    tree = ast.parse(source)
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "mira_spark.explore" in imported  # run_from_widgets: config + pipeline (tests/test_notebooks.py runs it)


def test_job_entry_parses_arguments() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "mira_job.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--config" in proc.stdout
