"""Documents in: check the input table's shape, drop nothing, route each source to its scorer group.

Takes the documents table (``doc_id``, ``source``, ``text``); gives

* ``routed``: one row per unique ``doc_id`` whose source has a scorer, with column ``scorer`` added;
* ``rejected``: every other input row with a ``reason`` — ``no_scorer`` (source not in
  ``conf/scorers.yaml``), ``duplicate_doc_id`` (documented policy: the first copy by a hash of
  ``(source, text)`` is scored, later copies are reported, never silently dropped), ``null_doc_id``.

Together they hold every input row exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mira_spark.errors import InputError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

REQUIRED_COLUMNS = ("doc_id", "source", "text")


@dataclass
class RoutedDocuments:
    routed: DataFrame
    rejected: DataFrame


def check_documents(df: DataFrame, label: str) -> DataFrame:
    """Validate columns and types; returns ``doc_id, source, text`` with text as string.

    A binary ``text`` column is decoded as UTF-8 in Python (invalid bytes become U+FFFD and the row
    is then flagged ``invalid_text`` by the scoring stage, or scored when only a few bytes were bad);
    Spark's own ``decode`` cannot be used, because on Sail (and Spark 4) it fails the whole job on the
    first invalid byte. Any other type is an error, because casting e.g. a struct to string would
    score its debug representation.
    """
    try:
        schema = df.schema  # Spark Connect reads lazily: this is where a missing table fails
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise InputError(
            f"cannot read documents table {label}: {first}. Check tables.documents in the run config "
            "(a Delta table path, or a catalog name) and that the table exists."
        ) from None
    fields = {f.name: f.dataType for f in schema.fields}
    missing = [c for c in REQUIRED_COLUMNS if c not in fields]
    if missing:
        raise InputError(
            f"documents table {label} lacks required columns {missing}; it has {sorted(fields)}. "
            "Rename your columns to doc_id, source, text (e.g. with a view) or point tables.documents elsewhere."
        )
    text_type = fields["text"]
    if isinstance(text_type, T.BinaryType):
        text = _decode_utf8_lenient()(F.col("text"))
    elif isinstance(text_type, T.StringType):
        text = F.col("text")
    else:
        raise InputError(
            f"documents table {label}: column text has type {text_type.simpleString()}, expected string "
            "(or binary UTF-8). Cast or serialise it to text before scoring (e.g. a view with "
            "CAST(text AS STRING) or to_json(text))."
        )
    for col in ("doc_id", "source"):
        if not isinstance(fields[col], T.StringType | T.IntegerType | T.LongType):
            raise InputError(
                f"documents table {label}: column {col} has type {fields[col].simpleString()}, expected "
                "string (integers are accepted and cast); cast it to string in a view over the table"
            )
    return df.select(
        F.col("doc_id").cast("string").alias("doc_id"),
        F.col("source").cast("string").alias("source"),
        text.alias("text"),
    )


def _decode_utf8_lenient():
    """A pandas UDF ``binary -> string`` that replaces invalid UTF-8 bytes with U+FFFD.

    Built on call: a UDF needs a session to exist when it is defined.
    """
    import pandas as pd

    def decode(values: pd.Series) -> pd.Series:
        return values.map(lambda b: None if b is None else bytes(b).decode("utf-8", errors="replace"))

    # Real classes, not the strings ``from __future__ import annotations`` leaves: Spark reads them.
    decode.__annotations__ = {"values": pd.Series, "return": pd.Series}
    return F.pandas_udf(decode, T.StringType())


def route(spark: SparkSession, docs: DataFrame, source_to_scorer: dict[str, str]) -> RoutedDocuments:
    """Attach each document's scorer group and split off the rows that cannot be scored."""
    routing = spark.createDataFrame(
        sorted(source_to_scorer.items()) or [("", "")], "source string, scorer string"
    ).filter(F.col("source") != "")
    tagged = docs.join(F.broadcast(routing), on="source", how="left")
    order = Window.partitionBy("doc_id").orderBy(
        F.xxhash64(F.coalesce(F.col("source"), F.lit("")), F.coalesce(F.col("text"), F.lit(""))),
        F.col("source").asc_nulls_last(),
    )
    tagged = tagged.withColumn("_copy", F.row_number().over(order))
    reason = (
        F.when(F.col("doc_id").isNull(), F.lit("null_doc_id"))
        .when(F.col("_copy") > 1, F.lit("duplicate_doc_id"))
        .when(F.col("scorer").isNull(), F.lit("no_scorer"))
    )
    tagged = tagged.withColumn("reason", reason)
    routed = tagged.filter(F.col("reason").isNull()).select("doc_id", "source", "scorer", "text")
    rejected = tagged.filter(F.col("reason").isNotNull()).select("doc_id", "source", "scorer", "reason")
    return RoutedDocuments(routed=routed, rejected=rejected)
