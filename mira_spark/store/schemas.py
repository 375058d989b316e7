"""Every table's columns and every Arrow batch schema, defined once and sized by the slot count.

Each table is a tuple of :class:`Column` ``(name, kind, nullable)``; :func:`arrow_schema` and
:func:`spark_schema` turn the same tuple into a ``pyarrow.Schema`` (what ``mapInArrow`` tasks yield and the
pure parser builds) and a Spark ``StructType`` (what the table layer writes and MERGEs), so the two cannot
drift. The score table holds :data:`MAX_SLOTS` rubric slots (``a1_score .. a15_score`` and rationales);
the config and the rubric loader reject a rubric with more slots than that, so no slot is silently dropped.

This module imports no Spark at load time (the pure parser uses it): the Spark schemas below
(``SCORES_SCHEMA``, ``RAW_OUTPUTS_SCHEMA``, ...) are built on first access.

>>> arrow_schema(RUN_STATS).names[:3]
['run_id', 'stage', 'started_at']
>>> [c.name for c in score_columns((2, 10))][:2]
['a2_score', 'a10_score']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mira_spark.errors import TableError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql import types as T

MAX_SLOTS = 15  # rubric slots the score table holds: a1_score .. a15_score, a1_rationale .. a15_rationale
ARROW_TIMEZONE = "UTC"  # Spark sends timestamps to Arrow as microseconds in the session time zone

# kind -> Arrow type; the Spark type of each kind is in _spark_type (pyspark is imported only there).
_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int32(),
    "long": pa.int64(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz=ARROW_TIMEZONE),
    "strings": pa.list_(pa.string()),
    "counts": pa.map_(pa.string(), pa.int64()),
    "slot_values": pa.map_(pa.string(), pa.float64()),
}


@dataclass(frozen=True)
class Column:
    """One column: its name, its kind (a key of the type mapping) and whether it may be null."""

    name: str
    kind: str
    nullable: bool = True

    def __post_init__(self) -> None:
        if self.kind not in _ARROW_TYPES:
            raise ValueError(f"column {self.name!r}: unknown kind {self.kind!r}; known: {sorted(_ARROW_TYPES)}")


def _spark_type(kind: str) -> T.DataType:
    from pyspark.sql import types as T

    return {
        "string": T.StringType(),
        "int": T.IntegerType(),
        "long": T.LongType(),
        "double": T.DoubleType(),
        "bool": T.BooleanType(),
        "timestamp": T.TimestampType(),
        "strings": T.ArrayType(T.StringType(), True),
        "counts": T.MapType(T.StringType(), T.LongType(), True),
        "slot_values": T.MapType(T.StringType(), T.DoubleType(), True),
    }[kind]


def arrow_schema(columns: Iterable[Column]) -> pa.Schema:
    """The Arrow schema of ``columns``, in order."""
    return pa.schema([pa.field(c.name, _ARROW_TYPES[c.kind], nullable=c.nullable) for c in columns])


def spark_schema(columns: Iterable[Column]) -> T.StructType:
    """The Spark schema of ``columns``, in order."""
    from pyspark.sql import types as T

    return T.StructType([T.StructField(c.name, _spark_type(c.kind), c.nullable) for c in columns])


def slot_score(index: int) -> str:
    """Score column of slot ``A<index>``."""
    return f"a{index}_score"


def slot_rationale(index: int) -> str:
    """Rationale column of slot ``A<index>``."""
    return f"a{index}_rationale"


TABLE_SLOTS = tuple(range(1, MAX_SLOTS + 1))


def score_columns(slots: Sequence[int] = TABLE_SLOTS) -> tuple[Column, ...]:
    """Columns the parser adds for rubric slots ``slots`` (all :data:`MAX_SLOTS` in the score table)."""
    return (
        *(Column(slot_score(i), "double") for i in slots),
        *(Column(slot_rationale(i), "string") for i in slots),
        Column("overall", "int"),
        Column("training_recommendation", "string"),
        Column("domain_tag", "string"),
        Column("brief", "string"),
        Column("parse_status", "string"),
        Column("parse_errors", "strings"),
    )


DOCUMENTS = (
    Column("doc_id", "string", False),
    Column("source", "string"),
    Column("text", "string"),
)

# What the scoring stage learns per document (one row per input row of a wave): the request's outcome ...
ANSWER = (
    Column("doc_id", "string", False),
    Column("source", "string"),
    Column("scorer", "string", False),
    Column("model", "string", False),
    Column("prompt_version", "string", False),
    Column("status", "string", False),
    Column("error", "string"),
    Column("attempts", "int", False),
    Column("repairs", "int", False),
    Column("wasted_requests", "int", False),
    Column("wasted_completion_tokens", "long"),
    Column("retry_causes", "strings"),  # error code of each retried send (http_429, timeout, connection_error, ...)
    Column("endpoint", "string"),
    Column("latency_s", "double"),
    Column("prompt_tokens", "long"),
    Column("completion_tokens", "long"),
    Column("finish_reason", "string"),
    Column("raw_text", "string"),
    Column("truncated", "bool", False),
    Column("shrunk", "bool", False),
    Column("original_chars", "long"),
    Column("kept_chars", "long"),
    Column("est_prompt_tokens", "long"),
    # slot -> expected score from the score tokens' logprobs (scoring.expected_scores; parsing/expected.py);
    # null without logprobs. The a*_score columns stay the sampled scores the text says.
    Column("expected_scores", "slot_values"),
)
# ... and the answer parsed once, in the task (the check that decides on repairs parses it anyway): the
# mapInArrow batches carry both, so nothing downstream parses an answer again (except `parse --all`
# after a parser change).
RAW_OUTPUT = (*ANSWER, *score_columns())
_RUN_COLUMNS = (Column("run_id", "string", False), Column("wave", "int", False), Column("scored_at", "timestamp", False))
RAW_OUTPUTS = (*RAW_OUTPUT, *_RUN_COLUMNS)

SCORE_KEYS = ("doc_id", "scorer", "prompt_version")
_RAW = {c.name: c for c in RAW_OUTPUTS}


def _raw(*names: str) -> tuple[Column, ...]:
    return tuple(_RAW[n] for n in names)


# A score row: its raw output row's keys and bookkeeping around the parsed columns of every table slot.
SCORES = (
    *_raw("doc_id", "source", "scorer", "prompt_version", "status", "error"),
    *score_columns(),
    *_raw("truncated", "original_chars", "prompt_tokens", "completion_tokens", "attempts", "run_id", "scored_at"),
    *_raw("expected_scores"),
)
# Extra samples of a document (``scoring.samples: k`` > 1): sample 1..k-1 of the same key. Sample 0 stays
# the ``scores`` row (pending, recovery and MERGE keyed as without samples); every extra sample is its
# own request (another seed) with its own status, parsed once in the task like sample 0.
SAMPLE = Column("sample", "int", False)
SAMPLE_KEYS = (*SCORE_KEYS, "sample")
SAMPLE_OUTPUT = (*RAW_OUTPUT, SAMPLE)  # the sample waves' mapInArrow batches
SAMPLE_OUTPUTS = (*SAMPLE_OUTPUT, *_RUN_COLUMNS)  # raw table of extra samples (appended per wave)
SAMPLES = (*SCORES, SAMPLE)  # parsed extra samples, MERGEd on SAMPLE_KEYS
_PARSED = {c.name for c in score_columns()}
SCORE_PASSTHROUGH = tuple(c.name for c in SCORES if c.name not in _PARSED)  # copied from the raw row unchanged

RELIABILITY = (
    Column("source", "string", False),
    Column("scorer", "string", False),
    Column("slot", "string", False),
    Column("dimension", "string", False),
    Column("n", "long", False),  # validation pairs of the cell
    Column("mae", "double"),  # the cell's own (raw) estimates and 95% intervals
    Column("mae_lo", "double"),
    Column("mae_hi", "double"),
    Column("spearman", "double"),
    Column("spearman_lo", "double"),
    Column("spearman_hi", "double"),
    Column("ci_method", "string"),  # fisher (Bonett-Wright) or bootstrap (few distinct teacher values)
    Column("mae_shrunk", "double"),  # toward the scorer group: (n MAE_s + kappa MAE_g) / (n + kappa)
    Column("spearman_shrunk", "double"),  # DerSimonian-Laird BLUP on Fisher z within the group
    Column("shrink_weight", "double"),
    Column("used_mae", "double"),  # what the mask rule saw (from the basis), and its intervals
    Column("used_mae_lo", "double"),
    Column("used_mae_hi", "double"),
    Column("used_spearman", "double"),
    Column("used_spearman_lo", "double"),
    Column("used_spearman_hi", "double"),
    Column("computed_masked", "bool", False),  # the rule's decision before a published mask
    Column("masked", "bool", False),
    Column("mask_origin", "string", False),  # computed | published | both | published:unlisted
    Column("reason", "string", False),
    Column("basis", "string", False),  # source | group | global | none
    Column("mask_version", "string", False),
)

THRESHOLDS = (
    Column("variant", "string", False),
    Column("unit_kind", "string", False),  # global | group | source
    Column("unit", "string", False),
    Column("mode", "string", False),  # fraction | tokens | min_score
    Column("method", "string", False),  # score | random
    Column("semantics", "string", False),  # never_exceed | reach
    Column("tau", "double"),
    Column("budget_measure", "string", False),  # documents | tokens | none
    Column("budget", "long", False),
    Column("cut_on", "string", False),  # composite | random_score | gumbel_key: what `threshold` is a value of
    # The lowest kept value of `cut_on`: composite 0-100; random_score in [0, 1) (the seeded hash's top 16 bits
    # / 2**16, highest kept first); gumbel_key = composite (0-10) / tau + Gumbel noise. Rows above it are kept,
    # below it excluded, at it split by the tie hash then doc_id. Null when nothing is kept.
    Column("threshold", "double"),
    Column("threshold_key", "long"),  # the same cut as the integer order key
    Column("n_docs", "long", False),  # every input row of the unit (eligible or not: failed, masked, pending ...)
    Column("n_in", "long", False),  # eligible rows of the unit (competing for the cut); 0: see `note`
    Column("n_kept", "long", False),
    Column("tokens_in", "long", False),
    Column("tokens_kept", "long", False),
    Column("kept_fraction", "double"),  # n_kept / n_in
    Column("tokens_kept_fraction", "double"),
    Column("budget_met", "bool"),  # null for min_score
    Column("tokens_estimated", "bool", False),  # some of the unit's token counts are estimates
    Column("note", "string"),  # no_eligible_rows: <reason> <count>, ... when no row of the unit could compete
    Column("mask_version", "string"),
    Column("weights_version", "string"),
)

DECISIONS = (
    Column("variant", "string", False),
    Column("doc_id", "string"),
    Column("source", "string"),
    Column("scorer", "string"),
    Column("unit", "string"),
    Column("decision", "string", False),  # kept | excluded
    Column("reason", "string", False),
    Column("composite", "double"),  # 0-100
    Column("dims_used", "int"),
    Column("tokens", "long"),
    Column("tokens_estimated", "bool"),
    Column("threshold", "double"),  # the unit's composite threshold; null where the cut is not on the composite
    Column("mask_version", "string"),
    Column("weights_version", "string"),
    Column("n_samples", "int"),  # samples the composite is the mean of (1 without scoring.samples)
    Column("composite_sd", "double"),  # spread (sd, 0-100) of the per-sample composites; null for one sample
)

# The training data: one row per (doc_id, scorer) kept by at least one variant, its text written once.
# ``variants``: the variants that kept it, sorted (one variant's set: ``WHERE array_contains(variants, 'x')``;
# the view ``mira_selected_by_variant`` has one row per variant and document). Everything else is the same
# in every variant; per-variant unit and threshold are in ``decisions``.
SELECTED = (
    Column("variants", "strings", False),
    *SCORES,
    *(Column(n, k) for n, k in (
        ("tokens", "long"), ("tokens_estimated", "bool"), ("score_key", "long"), ("composite", "double"),
        ("dims_used", "int"), ("n_samples", "int"), ("composite_sd", "double"), ("mask_version", "string"),
        ("weights_version", "string"), ("text", "string"))),
)

# Every input row once, narrow (no text): routed rows have a scorer and no reason (appended once per run,
# partitioned by run_id, deleted when the run ends). ``tokens``: the documents table's tokens column
# (selection.tokens_column) or, where it has none, the project's estimate (prompting/tokens.py),
# computed in the same scan that hashes the text.
ROUTING = (
    Column("run_id", "string", False),
    Column("doc_id", "string"),
    Column("source", "string"),
    Column("scorer", "string"),
    Column("reason", "string"),
    Column("text_hash", "long", False),
    Column("exact_copy", "bool", False),  # a duplicate whose source and text equal the routed copy's
    Column("tokens", "long", False),
    Column("tokens_estimated", "bool", False),
)

# Documents a run will score and the wave each belongs to (appended once at the start of a run).
WORK_QUEUE = (
    Column("run_id", "string", False),
    Column("doc_id", "string", False),
    Column("source", "string"),
    Column("scorer", "string", False),
    Column("prompt_version", "string", False),
    Column("text", "string"),
    Column("wave", "int", False),
)
SAMPLE_QUEUE = (*WORK_QUEUE, SAMPLE)  # extra samples a run will request (doc, sample index, wave)

# One row per (run, stage): what the stage did (mira_spark.runstats.StageStats). Sums over the stage's rows;
# `counts` holds the breakdowns (status:<s>, failed:<code>, retry:<cause>, rejected:<reason>, kept:<unit>, ...).
RUN_STATS = (
    Column("run_id", "string", False),
    Column("stage", "string", False),
    Column("started_at", "timestamp"),
    Column("seconds", "double", False),
    Column("rows_in", "long", False),
    Column("rows_out", "long", False),
    Column("requests", "long", False),
    Column("retries", "long", False),
    Column("repairs", "long", False),
    Column("wasted_requests", "long", False),
    Column("wasted_completion_tokens", "long", False),
    Column("resent_requests", "long", False),
    Column("resent_completion_tokens", "long", False),
    Column("prompt_tokens", "long", False),
    Column("completion_tokens", "long", False),
    Column("failed", "long", False),
    Column("latency_p50_s", "double"),
    Column("latency_p99_s", "double"),
    Column("counts", "counts"),
    Column("recorded_at", "timestamp", False),
)

# Canary drift guard (serving/canary.py): one row per (check, endpoint, reference, slot). ``wave`` is the
# wave the check ran before (0 = before the corpus); ``score`` and ``deviation`` (score - reference_score)
# are null when the endpoint gave no parseable score for the slot; ``quarantined`` and ``reason`` are the
# endpoint's verdict for that check, repeated on each of its rows.
CANARY = (
    Column("run_id", "string", False),
    Column("wave", "int", False),
    Column("endpoint", "string", False),
    Column("scorer", "string", False),
    Column("ref_id", "string", False),
    Column("slot", "string", False),
    Column("reference_score", "double", False),
    Column("score", "double"),
    Column("deviation", "double"),
    Column("quarantined", "bool", False),
    Column("reason", "string"),
    Column("checked_at", "timestamp", False),
)

ANSWER_ARROW_SCHEMA = arrow_schema(ANSWER)  # the request side of the scoring stage's batches
RAW_OUTPUT_ARROW_SCHEMA = arrow_schema(RAW_OUTPUT)  # the scoring stage's mapInArrow batches
SCORES_ARROW_SCHEMA = arrow_schema(SCORES)  # the parse stage's mapInArrow batches
SAMPLE_OUTPUT_ARROW_SCHEMA = arrow_schema(SAMPLE_OUTPUT)  # the sample waves' mapInArrow batches

# Spark schemas, built on first access so that importing this module needs no pyspark.
_SPARK_SCHEMAS = {
    "DOCUMENTS_SCHEMA": DOCUMENTS,
    "RAW_OUTPUT_STREAM_SCHEMA": RAW_OUTPUT,
    "RAW_OUTPUTS_SCHEMA": RAW_OUTPUTS,
    "SCORES_SCHEMA": SCORES,
    "RELIABILITY_SCHEMA": RELIABILITY,
    "THRESHOLDS_SCHEMA": THRESHOLDS,
    "DECISIONS_SCHEMA": DECISIONS,
    "SELECTED_SCHEMA": SELECTED,
    "ROUTING_SCHEMA": ROUTING,
    "WORK_QUEUE_SCHEMA": WORK_QUEUE,
    "RUN_STATS_SCHEMA": RUN_STATS,
    "CANARY_SCHEMA": CANARY,
    "SAMPLE_OUTPUT_STREAM_SCHEMA": SAMPLE_OUTPUT,
    "SAMPLE_OUTPUTS_SCHEMA": SAMPLE_OUTPUTS,
    "SAMPLES_SCHEMA": SAMPLES,
    "SAMPLE_QUEUE_SCHEMA": SAMPLE_QUEUE,
}
_built: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name in _SPARK_SCHEMAS:
        if name not in _built:
            _built[name] = spark_schema(_SPARK_SCHEMAS[name])
        return _built[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    DOCUMENTS_SCHEMA: T.StructType
    RAW_OUTPUT_STREAM_SCHEMA: T.StructType
    RAW_OUTPUTS_SCHEMA: T.StructType
    SCORES_SCHEMA: T.StructType
    RELIABILITY_SCHEMA: T.StructType
    THRESHOLDS_SCHEMA: T.StructType
    DECISIONS_SCHEMA: T.StructType
    SELECTED_SCHEMA: T.StructType
    ROUTING_SCHEMA: T.StructType
    WORK_QUEUE_SCHEMA: T.StructType
    RUN_STATS_SCHEMA: T.StructType
    CANARY_SCHEMA: T.StructType
    SAMPLE_OUTPUT_STREAM_SCHEMA: T.StructType
    SAMPLE_OUTPUTS_SCHEMA: T.StructType
    SAMPLES_SCHEMA: T.StructType
    SAMPLE_QUEUE_SCHEMA: T.StructType


def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """Select ``schema``'s columns by name and cast them to its types; fail on a missing column."""
    from pyspark.sql import functions as F

    have = set(df.columns)
    missing = [f.name for f in schema.fields if f.name not in have]
    if missing:
        raise TableError(f"internal: DataFrame lacks columns {missing} of the target schema")
    return df.select(*[F.col(f"`{f.name}`").cast(f.dataType).alias(f.name) for f in schema.fields])
