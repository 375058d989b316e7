"""The persistent (catalog) form of the views, on Sail: ``tables.schema`` instead of ``tables.root``.

A run that writes named tables (Databricks: Unity Catalog; here Sail's session catalog) gets
``<schema>.mira_<table>`` views and ``<schema>.mira_selected_by_variant``, which must hold one row per
(variant, kept document), read through the catalog view of ``selected``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import write_config
from pyspark.sql import types as T

from mira_spark.config import load_settings
from mira_spark.store.schemas import SELECTED_SCHEMA
from mira_spark.store.tables import Tables
from mira_spark.store.views import register_views

pytestmark = pytest.mark.spark

SCHEMA = "spark_catalog.mira_views_catalog_test"
KEPT = {"doc-a": ["global", "source"], "doc-b": ["random"], "doc-c": ["global", "group", "random", "source"]}


def _selected_rows() -> list[tuple]:
    rows = []
    for doc, variants in KEPT.items():
        row: dict[str, Any] = {f.name: None for f in SELECTED_SCHEMA.fields}
        row.update(doc_id=doc, source="html_cpt", scorer="text_group_b", variants=variants, text=f"text of {doc}")
        rows.append(tuple(row[f.name] for f in SELECTED_SCHEMA.fields))
    return rows


def test_catalog_views_explode_selected_per_variant(spark: Any, sample_dir: Path, tmp_path: Path) -> None:
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {SCHEMA}")
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "unused", str(sample_dir / "documents"), None,
                       ["http://127.0.0.1:9"], tables={"root": None, "schema": SCHEMA})
    settings = load_settings(cfg)
    tables = Tables(spark, settings)
    assert tables.ref("selected").name == f"{SCHEMA}.selected"  # the case: named tables, not paths
    loose = T.StructType([T.StructField(f.name, f.dataType, True) for f in SELECTED_SCHEMA.fields])
    rows = spark.createDataFrame(_selected_rows(), loose)
    tables.overwrite(rows, "selected", SELECTED_SCHEMA)

    created = register_views(spark, tables, {})

    assert f"{SCHEMA}.mira_selected" in created and f"{SCHEMA}.mira_selected_by_variant" in created
    rows = spark.sql(f"SELECT variant, doc_id, text FROM {SCHEMA}.mira_selected_by_variant").collect()
    got = sorted((r["variant"], r["doc_id"]) for r in rows)
    assert got == sorted((v, d) for d, vs in KEPT.items() for v in vs)
    assert all(r["text"] == f"text of {r['doc_id']}" for r in rows)
    # One variant's training set through the catalog view of selected (sql/09's query).
    source = spark.sql(f"SELECT doc_id FROM {SCHEMA}.mira_selected WHERE array_contains(variants, 'source')")
    assert sorted(r["doc_id"] for r in source.collect()) == ["doc-a", "doc-c"]
