"""SQL views over every table of a run, so analysts can query results with plain SQL.

Takes the run's :class:`~mira_spark.store.tables.Tables` and the rubrics; gives views ``mira_documents``,
``mira_raw_outputs``, ``mira_scores``, ``mira_reliability``, ``mira_thresholds``, ``mira_decisions``,
``mira_selected``, ``mira_run_stats``, ``mira_canary`` (the drift guard's checks, when a run made one),
``mira_selected_by_variant`` (``selected`` exploded: one row per variant and kept document, with a
``variant`` column; ``selected`` itself holds each kept document once with its ``variants`` array) and
``scores_long(doc_id, source, scorer, slot, dimension, score, expected_score, masked, mask_version)``
(``score``: the sampled score the answer says; ``expected_score``: from logprobs, null without): ``masked`` is the
reliability table's final mask (computed, with a published mask applied on top when configured). Path-based
runs get session temp views; runs on a catalog schema get persistent views there
(``<schema>.scores_long``), which SQL warehouses and dashboards can use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from mira_spark.prompting.rubric import Rubric
from mira_spark.store.schemas import TABLE_SLOTS, slot_score
from mira_spark.store.tables import TABLES, Tables

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def scores_long_sql(scores: str, reliability: str, rubrics: dict[str, Rubric]) -> str:
    """SQL of the long view: one row per (document, slot), with the dimension name and its mask."""
    names = ", ".join(
        f"('{scorer}', '{d.slot}', '{d.dimension.replace(chr(39), chr(39) * 2)}')"
        for scorer, rubric in sorted(rubrics.items()) for d in rubric.dimensions
    )
    cells = ", ".join(
        f"named_struct('slot', 'A{i}', 'score', s.{slot_score(i)}, 'expected', CASE WHEN "
        f"map_contains_key(s.expected_scores, 'A{i}') THEN s.expected_scores['A{i}'] END)" for i in TABLE_SLOTS)
    return f"""
        SELECT c.doc_id, c.source, c.scorer, c.slot, d.dimension, c.score, c.expected_score,
               COALESCE(r.masked, false) AS masked, r.mask_version
        FROM (
            SELECT s.doc_id, s.source, s.scorer, cell.slot AS slot, cell.score AS score,
                   cell.expected AS expected_score
            FROM {scores} s LATERAL VIEW explode(array({cells})) t AS cell
            WHERE s.status = 'ok'
        ) c
        JOIN (SELECT * FROM VALUES {names} AS v(scorer, slot, dimension)) d
          ON c.scorer = d.scorer AND c.slot = d.slot
        LEFT JOIN {reliability} r
          ON r.source = c.source AND r.scorer = c.scorer AND r.slot = c.slot
    """


def selected_by_variant_sql(selected: str) -> str:
    """SQL of the per-variant view of ``selected``: each row once per variant in its ``variants`` array."""
    return f"SELECT t.variant, s.* FROM {selected} s LATERAL VIEW explode(s.variants) t AS variant"


def register_views(spark: SparkSession, tables: Tables, rubrics: dict[str, Rubric]) -> list[str]:
    """Create (or replace) every view; returns their names."""
    persistent = tables.settings.tables.schema_name
    created = []
    for table in TABLES:
        if not tables.exists(table):
            continue
        if persistent:
            name = f"{persistent}.mira_{table}"
            spark.sql(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {tables.ref(table).sql}")
        else:
            name = f"mira_{table}"
            tables.read(table).createOrReplaceTempView(name)
        created.append(name)
    if persistent:
        spark.sql(f"CREATE OR REPLACE VIEW {persistent}.mira_documents AS SELECT * FROM {tables.documents.sql}")
    else:
        tables.read(tables.documents).select(F.col("doc_id"), F.col("source"), F.col("text")).createOrReplaceTempView(
            "mira_documents"
        )
    created.append("mira_documents")
    prefix = f"{persistent}." if persistent else ""
    if tables.exists("selected"):
        sql = selected_by_variant_sql(f"{prefix}mira_selected")
        if persistent:
            spark.sql(f"CREATE OR REPLACE VIEW {persistent}.mira_selected_by_variant AS {sql}")
        else:
            spark.sql(sql).createOrReplaceTempView("mira_selected_by_variant")
        created.append(f"{prefix}mira_selected_by_variant")
    if tables.exists("scores") and tables.exists("reliability"):
        sql = scores_long_sql(f"{prefix}mira_scores", f"{prefix}mira_reliability", rubrics)
        if persistent:
            spark.sql(f"CREATE OR REPLACE VIEW {persistent}.scores_long AS {sql}")
        else:
            spark.sql(sql).createOrReplaceTempView("scores_long")
        created.append(f"{prefix}scores_long")
    return created
