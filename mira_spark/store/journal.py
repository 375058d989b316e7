"""Request journal: finished answers made durable inside a wave, so a fault re-sends only what was in flight.

A scoring task records each answer as it completes (:class:`JournalWriter`: rows buffered and flushed by a
background thread every ``flush_s`` seconds or ``flush_rows`` rows, one Parquet file per flush, under
``<journal root>/run-<run_id>/wave-<w>/``; a file appears only complete, see :mod:`mira_spark.store.files`
for what each filesystem guarantees). Rows are the scoring task's output rows, in
``store.schemas.RAW_OUTPUT_ARROW_SCHEMA``, keyed by :data:`KEY_COLUMNS` (doc_id, scorer, prompt_version
and the sample index when the schema has one).

Who reads it:

* a **retried or duplicate task attempt**: :func:`run_journaled` claims the partition
  (:class:`~mira_spark.store.lease.Lease`; a second live attempt waits for the first to finish), reads
  the journal for its keys and sends only the rest;
* a **restarted driver or a rerun**: the pipeline folds every journaled row whose key is not yet in
  ``scores`` into ``raw_outputs`` and ``scores`` before computing what is pending (:func:`read_journal`
  with ``origin=True``), then clears the journal of finished runs (:func:`clear_run`);
* the **wave commit** clears its wave's directory (:func:`clear_wave`) after its MERGE.

What can still be sent twice: answers in flight at a fault, and answers completed less than one flush
before it (bounded by ``flush_s`` / ``flush_rows``). Failed rows are journaled like answers (their
request was final); deferred rows (pool down) are not, so a rerun asks again.

Pure Python over pyarrow: runs in the executors and on the driver, imports no Spark.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mira_spark.store import files
from mira_spark.store.lease import Lease
from mira_spark.store.schemas import RAW_OUTPUT_ARROW_SCHEMA

log = logging.getLogger(__name__)

JOURNAL_DIR = "_journal"
CLAIMS_DIR = "_claims"
SAMPLE_COLUMN = "sample"  # the sample index, when RAW_OUTPUT has one (n > 1 samples per document)
KEY_COLUMNS: tuple[str, ...] = tuple(
    c for c in ("doc_id", "scorer", "prompt_version", SAMPLE_COLUMN) if c in RAW_OUTPUT_ARROW_SCHEMA.names
)
JOURNALED_STATUSES = ("ok", "failed")  # final outcomes; "deferred" is asked again
ORIGIN_COLUMNS = ("journal_run_id", "journal_wave")

Key = tuple


@dataclass(frozen=True)
class JournalSpec:
    """Where one wave's tasks journal, and how often (picklable: it travels in the scoring plan)."""

    root: str  # the journal directory, e.g. <tables.root>/_journal
    run_id: str
    wave: int
    flush_rows: int = 256
    flush_s: float = 2.0
    claim_stale_s: float = 30.0
    claim_heartbeat_s: float = 5.0

    @property
    def wave_dir(self) -> str:
        return f"{self.root.rstrip('/')}/run-{self.run_id}/wave-{self.wave}"


def key_of(row: dict) -> Key:
    """The journal key of an output row (sample index 0 when the row has none)."""
    return tuple(row.get(c, 0) if c == SAMPLE_COLUMN else row[c] for c in KEY_COLUMNS)


def partition_id(keys: Iterable[Key]) -> str:
    """A stable name for a task's set of keys: every attempt of one partition gets the same one."""
    digest = hashlib.sha1()
    for key in sorted(keys):
        digest.update(repr(key).encode())
    return digest.hexdigest()[:20]


class JournalWriter:
    """Buffers a task's output rows and flushes them as Parquet files from a background thread.

    ``add`` is cheap and thread-safe (the runner calls it from its event loop); ``close`` flushes what is
    left and stops the thread. ``clock`` is monotonic seconds (replaced in tests).
    """

    def __init__(self, spec: JournalSpec, attempt: str | None = None, *,
                 clock: Callable[[], float] = time.monotonic, background: bool = True) -> None:
        self.spec = spec
        self.attempt = attempt or uuid.uuid4().hex[:12]
        self.fs, self.dir = files.filesystem(spec.wave_dir)
        self.clock = clock
        self.files_written = 0
        self.rows_written = 0
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._due = threading.Event()
        self._closed = threading.Event()
        self._last_flush = clock()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._loop, name=f"journal-{self.attempt}", daemon=True)
            self._thread.start()

    def add(self, row: dict) -> None:
        """Record one finished output row (deferred rows are skipped)."""
        if row.get("status") not in JOURNALED_STATUSES:
            return
        with self._lock:
            self._rows.append(row)
            full = len(self._rows) >= self.spec.flush_rows
        if full:
            self._due.set()

    def pending(self) -> int:
        """Rows added but not yet durable."""
        with self._lock:
            return len(self._rows)

    def flush(self) -> int:
        """Write the buffered rows as one file; the number of rows written."""
        with self._write_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            self._last_flush = self.clock()
            if not rows:
                return 0
            table = pa.Table.from_pylist(rows, schema=RAW_OUTPUT_ARROW_SCHEMA)
            name = f"{self.attempt}-{self.files_written:06d}.parquet"
            try:
                files.write_complete(self.fs, f"{self.dir}/{name}",
                                     lambda fs, path: pq.write_table(table, path, filesystem=fs))
            except OSError:
                with self._lock:  # not durable: back in front of the buffer for the next flush
                    self._rows[:0] = rows
                raise
            self.files_written += 1
            self.rows_written += len(rows)
            return len(rows)

    def due(self) -> bool:
        """A flush is due: ``flush_rows`` buffered, or rows older than ``flush_s``."""
        with self._lock:
            n = len(self._rows)
        return n >= self.spec.flush_rows or (n > 0 and self.clock() - self._last_flush >= self.spec.flush_s)

    def _loop(self) -> None:
        tick = min(self.spec.flush_s, 0.5)
        while not self._closed.is_set():
            self._due.wait(tick)
            self._due.clear()
            if self.due():
                try:
                    self.flush()
                except OSError as exc:  # kept in the buffer's place: the next flush or close retries
                    log.warning("journal flush failed (%s); the rows stay buffered", exc)

    def close(self) -> None:
        """Flush the rest and stop the background thread (idempotent)."""
        self._closed.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _journal_files(fs: pafs.FileSystem, root: str) -> list[tuple[str, int, str]]:
    """``(run_id, wave, path)`` of every complete journal file under ``root``."""
    out = []
    for run_dir in files.list_dirs(fs, root):
        if not run_dir.startswith("run-"):
            continue
        for wave_dir in files.list_dirs(fs, f"{root}/{run_dir}"):
            if not (wave_dir.startswith("wave-") and wave_dir[5:].lstrip("-").isdigit()):
                continue
            for name in files.list_names(fs, f"{root}/{run_dir}/{wave_dir}"):
                if name.endswith(".parquet") and not name.startswith(files.TMP_PREFIX):
                    out.append((run_dir[4:], int(wave_dir[5:]), f"{root}/{run_dir}/{wave_dir}/{name}"))
    return out


def read_journal(root: str, keys: Iterable[Key] | None = None, *, origin: bool = False) -> pa.Table:
    """Journaled rows (one per key) for ``keys`` (all keys when None), in ``RAW_OUTPUT_ARROW_SCHEMA``.

    With ``origin``, two more columns say which run and wave journaled each row (:data:`ORIGIN_COLUMNS`).
    When a key was journaled twice (two attempts), an ``ok`` row wins over a failed one, then the first
    file in name order. A file that cannot be read (a partial object left by a store without atomic
    uploads) is skipped with a warning.
    """
    fs, base = files.filesystem(root)
    wanted = None if keys is None else set(keys)
    doc_ids = None if wanted is None else pa.array(sorted({k[0] for k in wanted}), pa.string())
    parts: list[pa.Table] = []
    for run_id, wave, path in _journal_files(fs, base.rstrip("/")):
        try:
            table = pq.read_table(path, filesystem=fs, schema=RAW_OUTPUT_ARROW_SCHEMA)
        except (OSError, pa.ArrowInvalid) as exc:
            log.warning("journal: skipping unreadable file %s (%s)", path, exc)
            continue
        if doc_ids is not None:
            table = table.filter(pc.is_in(table["doc_id"], value_set=doc_ids))
        if origin:
            table = table.append_column(ORIGIN_COLUMNS[0], pa.array([run_id] * len(table), pa.string()))
            table = table.append_column(ORIGIN_COLUMNS[1], pa.array([wave] * len(table), pa.int32()))
        parts.append(table)
    schema = RAW_OUTPUT_ARROW_SCHEMA
    if origin:
        schema = schema.append(pa.field(ORIGIN_COLUMNS[0], pa.string())).append(pa.field(ORIGIN_COLUMNS[1], pa.int32()))
    if not parts:
        return schema.empty_table()
    return _one_per_key(pa.concat_tables(parts), wanted)


def _one_per_key(table: pa.Table, wanted: set[Key] | None) -> pa.Table:
    best: dict[Key, int] = {}
    for i, row in enumerate(table.select([*KEY_COLUMNS, "status"]).to_pylist()):
        key = key_of(row)
        if wanted is not None and key not in wanted:
            continue
        if key not in best or (row["status"] == "ok" and table["status"][best[key]].as_py() != "ok"):
            best[key] = i
    return table.take(pa.array(sorted(best.values()), pa.int64()))


def clear_wave(spec: JournalSpec) -> None:
    """Remove a committed wave's journal files (its answers are in ``raw_outputs`` and ``scores``)."""
    fs, path = files.filesystem(spec.wave_dir)
    files.delete_tree(fs, path)


def clear_run(root: str, run_id: str) -> None:
    """Remove every journal file and partition claim of ``run_id``."""
    fs, base = files.filesystem(root)
    files.delete_tree(fs, f"{base.rstrip('/')}/run-{run_id}")


def journal_runs(root: str) -> list[str]:
    """Run ids with journal files or claims under ``root``."""
    fs, base = files.filesystem(root)
    return [d[4:] for d in files.list_dirs(fs, base) if d.startswith("run-")]


@dataclass
class JournaledOutcome:
    """What :func:`run_journaled` did: rows reused from the journal, rows scored now, waits."""

    reused: list[dict]
    scored: list[dict]
    waited_for_attempt: bool


ScoreFn = Callable[[Sequence[int], Callable[[dict], None]], list[dict]]


def run_journaled(spec: JournalSpec, keys: Sequence[Key], score: ScoreFn, *, wait_limit_s: float | None = None,
                  clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> JournaledOutcome:
    """Score the partition whose rows have ``keys``, paying only for keys the journal does not hold.

    ``score(positions, record)`` scores the rows at ``positions`` (indices into ``keys``), calls
    ``record(row)`` as each output row completes, and returns their output rows. The partition is claimed
    first, so a second live attempt of it (speculation, a retry racing a slow original) waits for the first
    to finish and then reuses its journal instead of sending the same requests again.
    """
    claim = Lease(f"{spec.wave_dir}/{CLAIMS_DIR}/{partition_id(keys)}", f"attempt-{uuid.uuid4().hex[:12]}",
                  what=f"scoring partition of run {spec.run_id} wave {spec.wave}",
                  stale_after_s=spec.claim_stale_s, heartbeat_s=spec.claim_heartbeat_s, clock=clock, sleep=sleep)
    first = claim.try_acquire()
    waited = first.action == "held"
    if waited:
        log.info("another attempt of this partition is running; waiting for its journal")
        claim.acquire(wait=True, wait_limit_s=wait_limit_s)
    else:
        claim.start_heartbeat()
    try:
        journaled = read_journal(spec.root, keys).to_pylist()
        done = {key_of(r): r for r in journaled}
        todo = [i for i, k in enumerate(keys) if k not in done]
        reused = [done[k] for k in keys if k in done]
        scored: list[dict] = []
        if todo:
            with JournalWriter(spec, claim.holder) as writer:
                scored = score(todo, writer.add)
        return JournaledOutcome(reused=reused, scored=scored, waited_for_attempt=waited)
    finally:
        claim.release()
