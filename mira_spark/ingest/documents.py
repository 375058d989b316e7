"""Documents in: check the input table's shape, drop nothing, route each source to its scorer group.

Takes the documents table (``doc_id``, ``source``, ``text``); gives the run's routing, every input row
exactly once and narrow (no text): rows to score have ``scorer`` set and no ``reason``; every other
row has a ``reason`` — ``no_scorer`` (source not in ``conf/scorers.yaml``), ``duplicate_doc_id``
(documented policy: the first copy by a hash of ``(source, text)`` is scored, later copies are
reported, never silently dropped), ``null_doc_id``. :func:`attach_text` joins the text back, once,
where a stage needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mira_spark.errors import InputError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

REQUIRED_COLUMNS = ("doc_id", "source", "text")


def check_documents(df: DataFrame, label: str, tokens_column: str | None = None) -> DataFrame:
    """Validate columns and types; returns ``doc_id, source, text`` with text as string.

    With ``tokens_column`` (``selection.tokens_column``) the result has ``tokens`` (long) too, from that
    integer column (null rows are estimated later, by :func:`route`).

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
    columns = [F.col("doc_id").cast("string").alias("doc_id"), F.col("source").cast("string").alias("source"),
               text.alias("text")]
    if tokens_column is not None:
        if tokens_column not in fields:
            raise InputError(
                f"documents table {label} has no column {tokens_column!r} (selection.tokens_column); it has "
                f"{sorted(fields)}. Name an integer column with each document's token count, or remove the key "
                "to use the project's estimate."
            )
        if not isinstance(fields[tokens_column], T.IntegerType | T.LongType | T.ShortType):
            raise InputError(
                f"documents table {label}: column {tokens_column} (selection.tokens_column) has type "
                f"{fields[tokens_column].simpleString()}, expected an integer token count"
            )
        columns.append(F.col(tokens_column).cast("long").alias("tokens"))
    return df.select(*columns)


def _estimate_tokens_udf():
    """A pandas UDF ``string -> long``: the project's token estimate (mira_spark/prompting/tokens.py).

    Built on call: a UDF needs a session to exist when it is defined.
    """
    import pandas as pd

    from mira_spark.prompting.tokens import estimate_tokens

    def estimate(values: pd.Series) -> pd.Series:
        return values.map(lambda t: estimate_tokens(t) if isinstance(t, str) else 0).astype("int64")

    estimate.__annotations__ = {"values": pd.Series, "return": pd.Series}
    return F.pandas_udf(estimate, T.LongType())


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


def text_hash() -> F.Column:
    """64-bit hash of ``(source, text)``: identifies which copy of a duplicated doc_id was routed."""
    return F.xxhash64(F.coalesce(F.col("source"), F.lit("")), F.coalesce(F.col("text"), F.lit("")))


def route(spark: SparkSession, docs: DataFrame, source_to_scorer: dict[str, str]) -> DataFrame:
    """Every input row once, narrow: ``doc_id, source, scorer, reason, text_hash, exact_copy, tokens,
    tokens_estimated``.

    ``tokens`` is the documents' ``tokens`` column where :func:`check_documents` kept one and it is not
    null, else the project's estimate (``tokens_estimated`` true), computed in the same scan that hashes
    the text: no second pass over the text.

    ``reason`` is null for the rows to score (one per unique ``doc_id`` whose source has a scorer) and
    says why for every other row. The text itself never leaves its scan here: duplicate detection
    shuffles only ``(doc_id, source, text_hash)``; :func:`attach_text` brings the text back where it is
    needed (the work queue, ``selected``).
    """
    routing = spark.createDataFrame(
        sorted(source_to_scorer.items()) or [("", "")], "source string, scorer string"
    ).filter(F.col("source") != "")
    given = F.col("tokens") if "tokens" in docs.columns else F.lit(None).cast("long")
    narrow = docs.select("doc_id", "source", text_hash().alias("text_hash"),
                         F.coalesce(given, _estimate_tokens_udf()(F.col("text"))).alias("tokens"),
                         given.isNull().alias("tokens_estimated"))
    tagged = narrow.join(F.broadcast(routing), on="source", how="left")
    order = Window.partitionBy("doc_id").orderBy(F.col("text_hash"), F.col("source").asc_nulls_last())
    tagged = tagged.withColumn("_copy", F.row_number().over(order)).withColumn(
        # An exact copy (same doc_id, source and text) matches the routed copy's text join too.
        "exact_copy", (F.col("_copy") > 1) & (F.col("text_hash") == F.first("text_hash").over(order))
    )
    reason = (
        F.when(F.col("doc_id").isNull(), F.lit("null_doc_id"))
        .when(F.col("_copy") > 1, F.lit("duplicate_doc_id"))
        .when(F.col("scorer").isNull(), F.lit("no_scorer"))
    )
    return tagged.select("doc_id", "source", "scorer", reason.alias("reason"), "text_hash",
                         F.coalesce(F.col("exact_copy"), F.lit(False)).alias("exact_copy"), "tokens",
                         "tokens_estimated")


def attach_text(keys: DataFrame, docs: DataFrame, broadcast_keys: bool = False) -> DataFrame:
    """``keys`` (routed rows: ``doc_id, text_hash, ...``) with the ``text`` of the copy that was routed.

    The one join that moves text; broadcast the keys when they are few, so the documents are not
    shuffled at all. Exact duplicates (same doc_id, source and text) match more than once; callers that
    need one row per key drop them where the rows are already co-located (see
    :func:`mira_spark.scoring.stage.score_partition`).
    """
    # Join on doc_id first and hash only the rows that matched (the kept or pending documents and their
    # other copies), not every document of the corpus.
    texts = docs.select("doc_id", F.col("source").alias("_doc_source"), "text")
    right = F.broadcast(keys) if broadcast_keys else keys
    joined = texts.join(right, on="doc_id", how="inner")
    copy_hash = F.xxhash64(F.coalesce(F.col("_doc_source"), F.lit("")), F.coalesce(F.col("text"), F.lit("")))
    return joined.filter(copy_hash == F.col("text_hash")).drop("_doc_source")
