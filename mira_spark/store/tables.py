"""The table layer: locations, reads, appends, MERGE upserts, staging files.

Only this module reads or writes tables; their schemas are in :mod:`mira_spark.store.schemas`. Takes
``Settings.tables`` (a path root or a catalog.schema), DataFrames and those schemas; gives Delta tables
addressed by path locally and by name on Databricks. Every write selects columns by name against an
explicit schema (:func:`~mira_spark.store.schemas.conform`), because Sail silently drops unknown columns
on append and moves partition columns to the end (shared/notes/engines.md).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mira_spark.errors import CommitConflictError, TableError
from mira_spark.store.schemas import conform

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql import types as T

    from mira_spark.config import Settings

log = logging.getLogger(__name__)

MERGE_CONFLICT_ATTEMPTS = 6
UPSERT_KEYS_COLLECT_MAX = 100_000  # existing keys upsert_new_keys collects before it falls back to one MERGE
MERGE_CONFLICT_BACKOFF_S = 0.5
# Messages Delta engines use for a lost optimistic-concurrency race (delta-spark and Sail/delta-rs).
_CONFLICT_MARKERS = (
    "ConcurrentAppend",
    "ConcurrentModification",
    "ConcurrentTransaction",
    "ConcurrentDeleteRead",
    "ConcurrentDeleteDelete",
    "MetadataChanged",
    "ProtocolChanged",
    "Failed to commit transaction",
    "Transaction conflict",
    "version already exists",
    "VersionAlreadyExists",
    # Sail/delta-rs, when another writer checkpoints (every 10 commits) while this commit re-reads the log.
    "Missing commit file",
)

TABLES = ("routing", "raw_outputs", "scores", "reliability", "thresholds", "decisions", "selected", "run_stats",
          "work_queue", "canary", "sample_outputs", "samples", "sample_queue")

@dataclass(frozen=True)
class TableRef:
    """A table by path (``path``) or by catalog name (``name``)."""

    path: str | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.path or "?"

    @property
    def sql(self) -> str:
        """How SQL addresses it: ``delta.`/path``` or the name."""
        if self.name:
            return self.name
        return f"delta.`{self.path}`"


def ref_from_string(value: str) -> TableRef:
    """A configured table: a path when it contains '/' or a scheme, else a catalog name."""
    return TableRef(path=value) if ("/" in value or "://" in value) else TableRef(name=value)


class Tables:
    """Locations and I/O of every table of a run."""

    def __init__(self, spark: SparkSession, settings: Settings) -> None:
        self.spark = spark
        self.settings = settings
        self.fmt = settings.table_format
        self._checked: set[str] = set()  # tables whose schema was checked (and evolved) by this instance

    def ref(self, table: str) -> TableRef:
        cfg = self.settings.tables
        if cfg.schema_name:
            return TableRef(name=f"{cfg.schema_name}.{table}")
        return TableRef(path=f"{cfg.root.rstrip('/')}/{table}")  # type: ignore[union-attr]

    @property
    def staging_root(self) -> str | None:
        cfg = self.settings.tables
        if cfg.staging:
            return cfg.staging.rstrip("/")
        return f"{cfg.root.rstrip('/')}/_staging" if cfg.root else None

    def staging_path(self, run_id: str, wave: int) -> str | None:
        root = self.staging_root
        # No "key=value" directory names: partition discovery would fight the columns in the files.
        return f"{root}/raw_outputs/run-{run_id}/wave-{wave}" if root else None

    def write_staging(self, df: DataFrame, path: str, schema: T.StructType) -> DataFrame:
        """Write ``df`` once as plain parquet files at ``path`` and return a DataFrame over those files.

        A plain file write has no transaction to conflict with; the Delta commit that follows reads the
        files, so retrying that commit never re-runs the (billed) computation that produced them.
        """
        conform(df, schema).write.format("parquet").mode("overwrite").save(path)
        return self.spark.read.schema(schema).format("parquet").load(path)

    def read_staged(self, schema: T.StructType) -> DataFrame | None:
        """Every staged row still on disk (None when nothing is staged)."""
        root = self.staging_root
        if not root:
            return None
        try:
            df = (
                self.spark.read.schema(schema).format("parquet")
                .option("recursiveFileLookup", "true").load(f"{root}/raw_outputs")
            )
            df.limit(1).collect()
            return df
        except Exception:  # no staging directory yet
            return None

    def drop_staging(self, path: str) -> None:
        """Remove a committed wave's staging files (local paths; elsewhere they are left for cleanup)."""
        import shutil

        if "://" not in path or path.startswith("file://"):
            shutil.rmtree(path.removeprefix("file://"), ignore_errors=True)

    @property
    def documents(self) -> TableRef:
        return ref_from_string(self.settings.tables.documents)

    @property
    def validation(self) -> TableRef | None:
        value = self.settings.tables.validation
        return ref_from_string(value) if value else None

    # -- reads -----------------------------------------------------------------------------------
    def read(self, ref: TableRef | str) -> DataFrame:
        ref = self.ref(ref) if isinstance(ref, str) else ref
        try:
            if ref.name:
                return self.spark.read.table(ref.name)
            return self.spark.read.format(self.fmt).load(ref.path)
        except Exception as exc:
            raise TableError(f"cannot read table {ref.label} ({self.fmt}): {_first_line(exc)}") from None

    def exists(self, ref: TableRef | str) -> bool:
        ref = self.ref(ref) if isinstance(ref, str) else ref
        try:
            df = self.spark.read.table(ref.name) if ref.name else self.spark.read.format(self.fmt).load(ref.path)
            df.schema  # noqa: B018 - forces analysis, which fails for a missing table
            return True
        except Exception:
            return False

    # -- writes ----------------------------------------------------------------------------------
    def _writer(self, df: DataFrame, mode: str):
        return df.write.format(self.fmt).mode(mode)

    def _save(self, writer, ref: TableRef) -> None:
        if ref.name:
            writer.saveAsTable(ref.name)
        else:
            writer.save(ref.path)

    def overwrite(self, df: DataFrame, table: str, schema: T.StructType) -> None:
        """Replace a derived table (reliability, thresholds, decisions, selected) with ``df``."""
        ref = self.ref(table)
        out = conform(df, schema)
        writer = self._writer(out, "overwrite").option("overwriteSchema", "true")
        self._retry_conflicts(lambda: self._save(writer, ref), f"overwrite {ref.label}")

    def append(self, df: DataFrame, table: str, schema: T.StructType,
               partition_by: Sequence[str] = ()) -> None:
        ref = self.ref(table)
        out = conform(df, schema)
        if table not in self._checked and self.exists(table):
            self._check_schema(table, schema)  # Sail would drop a column the table lacks, silently

        def save() -> None:
            writer = self._writer(out, "append")
            if partition_by:
                writer = writer.partitionBy(*partition_by)
            self._save(writer, ref)

        self._retry_conflicts(save, f"append {ref.label}")

    def delete_run(self, table: str, run_id: str) -> None:
        """Remove one run's rows from a table partitioned by ``run_id`` (the work queue)."""
        ref = self.ref(table)
        if not self.exists(table):
            return
        if self.fmt == "delta":
            literal = run_id.replace("'", "''")
            self._retry_conflicts(
                lambda: self.spark.sql(f"DELETE FROM {ref.sql} WHERE run_id = '{literal}'").collect(),
                f"delete run {run_id} from {ref.label}",
            )
        elif ref.path:  # parquet (local parity suite): the run is one partition directory
            import shutil

            shutil.rmtree(f"{ref.path}/run_id={run_id}", ignore_errors=True)

    def ensure(self, table: str, schema: T.StructType) -> None:
        """Create ``table`` empty with ``schema`` if it does not exist, so MERGE always has a target.

        Creating empty then MERGE-ing (rather than "append if missing") keeps two writers that start
        at once from both appending the same rows.
        """
        if self.exists(table):
            self._check_schema(table, schema)
            return
        empty = self.spark.createDataFrame([], schema)
        try:
            self._save(self._writer(empty, "append"), self.ref(table))
        except Exception as exc:  # a concurrent creator won: fine if the table now exists
            if not self.exists(table):
                raise TableError(f"cannot create {self.ref(table).label}: {_first_line(exc)}") from None

    def _check_schema(self, table: str, schema: T.StructType) -> None:
        """Fail on a table that lacks columns of ``schema``, except nullable ones on Delta: those are added
        (an empty append with ``mergeSchema``), so a table written by an older version keeps its rows —
        scores already paid for are never thrown away for a new optional column."""
        if table in self._checked:
            return
        have = {f.name: f.dataType for f in self.read(table).schema.fields}
        missing = [f.name for f in schema.fields if f.name not in have]
        addable = self.fmt == "delta" and all(schema[name].nullable for name in missing)
        if missing and addable:
            ref = self.ref(table)
            empty = self.spark.createDataFrame([], schema)
            writer = self._writer(empty, "append").option("mergeSchema", "true")
            self._retry_conflicts(lambda: self._save(writer, ref), f"add columns {missing} to {ref.label}")
            have = {f.name: f.dataType for f in self.read(table).schema.fields}
            if any(name not in have for name in missing) and ref.path:
                # Sail ignores mergeSchema on a table with a non-nullable column: add them with delta-rs.
                _add_columns_delta_rs(ref.path, [schema[name] for name in missing if name not in have])
                have = {f.name: f.dataType for f in self.read(table).schema.fields}
            added = [name for name in missing if name in have]
            if added:
                log.info("table %s: added nullable columns %s (written by an older version)", ref.label, added)
            missing = [f.name for f in schema.fields if f.name not in have]
        if missing:
            raise TableError(
                f"table {self.ref(table).label} lacks columns {missing}; it was written by another version. "
                "Point tables.root at a new location or add them (ALTER TABLE ... ADD COLUMNS) and run again."
            )
        self._checked.add(table)

    def merge(self, df: DataFrame, table: str, schema: T.StructType, keys: Sequence[str]) -> None:
        """Upsert ``df`` (already one row per key) into ``table`` on ``keys`` with SQL MERGE INTO."""
        self.ensure(table, schema)
        out = conform(df, schema)
        if self.fmt != "delta":
            self._merge_by_rewrite(out, table, keys)
            return
        view = f"mira_merge_src_{table}_{int(time.time() * 1e6)}_{random.randrange(1 << 30)}"
        out.createOrReplaceTempView(view)
        cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        sql = (
            f"MERGE INTO {self.ref(table).sql} t USING {view} s ON {cond} "
            "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
        )
        try:
            self._retry_conflicts(lambda: self.spark.sql(sql).collect(), f"merge into {self.ref(table).label}")
        finally:
            self.spark.catalog.dropTempView(view)

    def upsert_new_keys(self, df: DataFrame, table: str, schema: T.StructType, keys: Sequence[str]) -> int:
        """Upsert ``df`` (one row per key, a wave's rows): MERGE the rows whose key ``table`` already holds,
        append the others. Returns how many keys were already there (-1: not counted, one MERGE).

        A wave's keys are pending, i.e. absent from the table, except re-scored failures
        (``--retry-failed``) and recovered rows; a MERGE of new keys still joins the whole target, whose
        cost (and, on Sail, the memory it leaves resident: benchmarks/README.md "Soak") grows with every
        wave. Finding the keys already present reads only the key columns of the target, against the
        wave's keys broadcast. Two commits when some keys exist, merge first: a kill between them leaves
        the rest in ``raw_outputs`` (the log ``recover_unmerged`` replays), so nothing is lost or doubled.
        More than :data:`UPSERT_KEYS_COLLECT_MAX` existing keys: one MERGE of everything, as before.
        Only for a writer that holds the table root's lease: another writer could commit a key between
        the check and the append (two rows for it); concurrent writers use :meth:`merge`.
        """
        from pyspark.sql import functions as F

        self.ensure(table, schema)
        if self.fmt != "delta":
            self.merge(df, table, schema, keys)
            return -1
        keys = list(keys)
        present = (self.read(table).select(*keys).join(F.broadcast(df.select(*keys)), on=keys, how="inner")
                   .limit(UPSERT_KEYS_COLLECT_MAX + 1).collect())
        if len(present) > UPSERT_KEYS_COLLECT_MAX:
            self.merge(df, table, schema, keys)
            return -1
        if not present:
            self.append(df, table, schema)
            return 0
        # The present keys, as data: re-reading the table after the MERGE would not change them, but a
        # literal list cannot change at all.
        existing = self.spark.createDataFrame([tuple(r) for r in present], schema.__class__([schema[k] for k in keys]))
        self.merge(df.join(F.broadcast(existing), on=keys, how="left_semi"), table, schema, keys)
        self.append(df.join(F.broadcast(existing), on=keys, how="left_anti"), table, schema)
        return len(present)

    def _merge_by_rewrite(self, df: DataFrame, table: str, keys: Sequence[str]) -> None:
        """Parquet stand-in for MERGE (classic local parity suite only): rewrite the table."""
        import shutil
        import uuid

        ref = self.ref(table)
        current = self.read(table)
        kept = current.join(df.select(*keys), on=list(keys), how="left_anti")
        merged = kept.unionByName(df)
        staging = f"{ref.path}.staging-{uuid.uuid4().hex}"
        merged.write.format("parquet").mode("overwrite").save(staging)
        shutil.rmtree(ref.path)  # local paths only: parquet is never used beyond the parity suite
        shutil.move(staging, ref.path)

    def _retry_conflicts(self, action, what: str) -> None:
        for attempt in range(1, MERGE_CONFLICT_ATTEMPTS + 1):
            try:
                action()
                return
            except Exception as exc:
                text = str(exc)
                if not any(m in text for m in _CONFLICT_MARKERS) or attempt == MERGE_CONFLICT_ATTEMPTS:
                    if any(m in text for m in _CONFLICT_MARKERS):
                        raise CommitConflictError(
                            f"{what}: lost {attempt} commit races to a concurrent writer; rerun this job "
                            "(committed work is kept and is not scored again)"
                        ) from None
                    raise
                delay = MERGE_CONFLICT_BACKOFF_S * (2 ** (attempt - 1)) * (0.5 + random.random())
                log.warning("%s: concurrent commit, retrying in %.2fs (attempt %d)", what, delay, attempt)
                time.sleep(delay)


def _add_columns_delta_rs(path: str, fields: list) -> None:
    """Add nullable ``fields`` (Spark StructFields) to the Delta table at ``path`` with delta-rs, if it is
    installed and can open the path (local paths; an object store needs its credentials); else nothing."""
    try:
        import pyarrow as pa
        from deltalake import DeltaTable
        from deltalake import schema as delta_schema
        from pyspark.sql.pandas.types import to_arrow_type

        arrow = [pa.field(f.name, to_arrow_type(f.dataType), nullable=True) for f in fields]
        DeltaTable(path.removeprefix("file://")).alter.add_columns(
            [delta_schema.Field.from_arrow(a) for a in arrow])
    except Exception as exc:  # the caller reports the columns still missing
        log.warning("cannot add columns to %s with delta-rs: %s", path, _first_line(exc))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
