"""One schema definition: the Arrow batch schemas equal the Spark table schemas converted, the parser's
columns are the score table's, and nothing reaches for pyspark when only Arrow is needed. No SparkSession.
"""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pytest
from pyspark.sql.pandas.types import to_arrow_schema

from mira_spark.parsing.parse import parse_batch, score_schema
from mira_spark.prompting.rubric import rubric_from_names
from mira_spark.scoring import stage as scoring_stage
from mira_spark.store import schemas

SPARK_TABLES = sorted(schemas._SPARK_SCHEMAS)
FULL_RUBRIC = rubric_from_names("g", [f"dimension {i}" for i in range(1, schemas.MAX_SLOTS + 1)])


def _fields(schema: pa.Schema) -> list[tuple[str, pa.DataType, bool]]:
    return [(f.name, f.type, f.nullable) for f in schema]


def test_scoring_stage_batches_are_the_raw_output_stream_schema_converted() -> None:
    spark_side = to_arrow_schema(schemas.RAW_OUTPUT_STREAM_SCHEMA, timezone=schemas.ARROW_TIMEZONE)
    arrow_side = scoring_stage.RAW_OUTPUT_ARROW_SCHEMA  # what score_partition yields
    assert len(arrow_side) == len(spark_side) == len(schemas.RAW_OUTPUT)
    for ours, converted in zip(_fields(arrow_side), _fields(spark_side), strict=True):
        assert ours == converted


@pytest.mark.parametrize("name", SPARK_TABLES)
def test_every_table_has_one_definition_for_spark_and_arrow(name: str) -> None:
    columns = schemas._SPARK_SCHEMAS[name]
    spark_side = to_arrow_schema(getattr(schemas, name), timezone=schemas.ARROW_TIMEZONE)
    assert _fields(schemas.arrow_schema(columns)) == _fields(spark_side)


def test_parse_output_columns_are_the_score_tables_score_columns() -> None:
    table = to_arrow_schema(schemas.SCORES_SCHEMA, timezone=schemas.ARROW_TIMEZONE)
    parsed_names = [n for n in table.names if n not in schemas.SCORE_PASSTHROUGH]
    assert _fields(score_schema(FULL_RUBRIC)) == _fields(pa.schema([table.field(n) for n in parsed_names]))
    assert parsed_names[: 2 * schemas.MAX_SLOTS] == (
        [f"a{i}_score" for i in range(1, 16)] + [f"a{i}_rationale" for i in range(1, 16)]
    )
    batch = parse_batch(["[A1] dimension 1: 7/10 — fine"], FULL_RUBRIC)
    assert _fields(batch.schema) == _fields(score_schema(FULL_RUBRIC))


def test_a_smaller_rubric_parses_into_a_subset_of_the_score_columns() -> None:
    rubric = rubric_from_names("g", {"A2": "x", "A10": "y"})
    table = {f.name: f for f in schemas.SCORES_ARROW_SCHEMA}
    for field in score_schema(rubric):
        assert table[field.name] == field


def test_the_scores_table_passes_through_raw_output_columns_unchanged() -> None:
    raw = {f.name: f for f in schemas.RAW_OUTPUTS_SCHEMA.fields}
    scores = {f.name: f for f in schemas.SCORES_SCHEMA.fields}
    assert schemas.SCORE_PASSTHROUGH
    for name in schemas.SCORE_PASSTHROUGH:
        assert scores[name] == raw[name]
    assert set(schemas.SCORE_KEYS) <= set(schemas.SCORE_PASSTHROUGH)


def test_pure_modules_import_the_schemas_without_pyspark() -> None:
    code = ("import sys, mira_spark.store.schemas, mira_spark.parsing.parse, mira_spark.config; "
            "print('pyspark' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
