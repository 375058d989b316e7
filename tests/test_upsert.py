"""The wave commit's upsert (``Tables.upsert_new_keys``) on Sail + Delta: present keys MERGEd, new keys appended.

A wave normally brings only new keys (appended, no join of the whole table); re-scored failures bring keys the
table holds (MERGEd over the old rows). Either way the table ends with one row per key, the newest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import write_config
from pyspark.sql import types as T

from mira_spark.config import load_settings
from mira_spark.store.tables import Tables

pytestmark = pytest.mark.spark

SCHEMA = T.StructType([T.StructField("doc_id", T.StringType(), False), T.StructField("scorer", T.StringType(), False),
                       T.StructField("status", T.StringType(), True)])
KEYS = ("doc_id", "scorer")


def _tables(spark: Any, tmp_path: Path) -> Tables:
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "tables", str(tmp_path / "documents"), None, ["http://x"])
    return Tables(spark, load_settings(cfg))


def _rows(tables: Tables) -> dict[tuple[str, str], str]:
    rows = tables.read("scores").collect()
    out = {(r["doc_id"], r["scorer"]): r["status"] for r in rows}
    assert len(out) == len(rows)  # one row per key
    return out


def test_new_keys_are_appended_and_present_keys_merged(spark: Any, tmp_path: Path) -> None:
    tables = _tables(spark, tmp_path)
    first = spark.createDataFrame([("a", "g", "failed"), ("b", "g", "ok")], SCHEMA)
    assert tables.upsert_new_keys(first, "scores", SCHEMA, KEYS) == 0  # an empty table: all new, appended
    assert _rows(tables) == {("a", "g"): "failed", ("b", "g"): "ok"}
    wave = spark.createDataFrame([("a", "g", "ok"), ("c", "g", "ok"), ("a", "h", "ok")], SCHEMA)
    assert tables.upsert_new_keys(wave, "scores", SCHEMA, KEYS) == 1  # ("a", "g") was there
    assert _rows(tables) == {("a", "g"): "ok", ("b", "g"): "ok", ("c", "g"): "ok", ("a", "h"): "ok"}
    again = spark.createDataFrame([("c", "g", "ok")], SCHEMA)  # a wave committed twice changes nothing
    assert tables.upsert_new_keys(again, "scores", SCHEMA, KEYS) == 1
    assert len(_rows(tables)) == 4


def test_a_table_of_an_older_version_gets_new_nullable_columns_and_keeps_its_rows(spark: Any, tmp_path: Path) -> None:
    """Scores already paid for survive an upgrade that adds an optional column: MERGE and append both add it
    (Delta ``mergeSchema``), old rows read null there; a missing non-nullable column is still an error."""
    from mira_spark.errors import TableError

    tables = _tables(spark, tmp_path)
    tables.append(spark.createDataFrame([("a", "g", "ok")], SCHEMA), "scores", SCHEMA)
    newer = T.StructType([*SCHEMA.fields, T.StructField("expected_scores",
                                                        T.MapType(T.StringType(), T.DoubleType()), True)])
    assert "expected_scores" not in tables.read("scores").columns  # the case: a table without the column
    tables.upsert_new_keys(spark.createDataFrame([("b", "g", "ok", {"A1": 6.5})], newer), "scores", newer, KEYS)
    rows = {r["doc_id"]: r["expected_scores"] for r in tables.read("scores").collect()}
    assert rows == {"a": None, "b": {"A1": 6.5}}

    fresh = Tables(spark, tables.settings)  # a new run: append on a table that lacks a column
    raw = T.StructType([*SCHEMA.fields, T.StructField("extra", T.StringType(), True)])
    fresh.append(spark.createDataFrame([("c", "g", "ok", "x")], raw), "raw_outputs_like", SCHEMA)
    fresh.append(spark.createDataFrame([("d", "g", "ok", "y")], raw), "raw_outputs_like", raw)
    assert {r["doc_id"]: r["extra"] for r in fresh.read("raw_outputs_like").collect()} == {"c": None, "d": "y"}

    strict = T.StructType([*SCHEMA.fields, T.StructField("needed", T.StringType(), False)])
    with pytest.raises(TableError, match="lacks columns"):
        Tables(spark, tables.settings).ensure("scores", strict)
