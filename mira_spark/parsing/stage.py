"""Raw outputs -> the columnar score table.

Takes ``raw_outputs`` rows (possibly several per key after a crash or a Spark task retry: the table is
an append-only log); gives one row per ``(doc_id, scorer, prompt_version)`` in ``store.schemas.SCORES``
with ``a1_score .. a15_score``, rationales, summary fields, ``parse_status`` and ``parse_errors``.
``deferred`` rows (pool unavailable) are not terminal and produce no score row: the next run sends them.

The scoring task already parsed every answer (its raw output rows carry the score columns), so
:func:`score_rows` only picks one row per key and selects columns. :func:`reparse_raw_outputs` parses
``raw_text`` again with the current parser (``mira-spark parse --all``, after a parser change).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa
from pyspark.sql import Window
from pyspark.sql import functions as F

from mira_spark.prompting.rubric import Rubric
from mira_spark.store.schemas import SCORE_KEYS, SCORE_PASSTHROUGH, SCORES_ARROW_SCHEMA, SCORES_SCHEMA

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

def latest_terminal(raw: DataFrame, keys: Sequence[str] = SCORE_KEYS) -> DataFrame:
    """One raw row per key: an ok row over a failed one, then the latest; deferred rows excluded."""
    order = Window.partitionBy(*keys).orderBy(
        F.when(F.col("status") == "ok", 0).otherwise(1), F.col("scored_at").desc(), F.col("run_id").desc()
    )
    return (
        raw.filter(F.col("status").isin("ok", "failed"))
        .withColumn("_pick", F.row_number().over(order))
        .filter(F.col("_pick") == 1)
        .drop("_pick")
    )


def _parse_partition(batches: Iterator[pa.RecordBatch], rubrics: dict[str, Rubric]) -> Iterator[pa.RecordBatch]:
    from mira_spark.parsing.parse import parse_batch, table_columns

    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        scorers = table.column("scorer").to_pylist()
        for scorer in sorted(set(scorers)):
            mask = pa.array([s == scorer for s in scorers])
            part = table.filter(mask)
            rubric = rubrics[scorer]
            status = part.column("status").to_pylist()
            texts = [t if s == "ok" else None for t, s in zip(part.column("raw_text").to_pylist(), status, strict=True)]
            parsed = parse_batch(pa.array(texts, pa.string()), rubric)
            columns = {name: part.column(name) for name in SCORE_PASSTHROUGH}
            columns.update(table_columns(parsed, SCORES_ARROW_SCHEMA))  # nulls for slots the rubric lacks
            ordered = [columns[f.name] for f in SCORES_ARROW_SCHEMA]
            out = pa.Table.from_arrays(ordered, names=SCORES_ARROW_SCHEMA.names)
            yield from out.to_batches()


def score_rows(raw: DataFrame, schema: StructType | None = None, keys: Sequence[str] = SCORE_KEYS) -> DataFrame:
    """Raw outputs -> score rows (``SCORES_SCHEMA``, or ``schema``: the samples table), one per key, from the
    columns the task parsed."""
    return latest_terminal(raw, keys).select(*(schema or SCORES_SCHEMA).names)


def reparse_raw_outputs(raw: DataFrame, rubrics: dict[str, Rubric]) -> DataFrame:
    """Raw outputs -> score rows (``SCORES_SCHEMA``), one per key, parsing ``raw_text`` again."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return _parse_partition(batches, rubrics)

    picked = latest_terminal(raw).select(*SCORE_PASSTHROUGH, "raw_text")
    return picked.mapInArrow(fn, SCORES_SCHEMA)
