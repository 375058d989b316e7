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
