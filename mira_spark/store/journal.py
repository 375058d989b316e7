"""Request journal: finished answers made durable inside a wave, so a fault re-sends only what was in flight.

A scoring task records each answer as it completes (:class:`JournalWriter`: rows buffered and flushed by a
background thread every ``flush_s`` seconds or ``flush_rows`` rows, one Parquet file per flush, under
``<journal root>/run-<run_id>/wave-<w>/``, or ``.../samples-wave-<w>/`` for the extra-sample waves of
``scoring.samples``; a file appears only complete, see :mod:`mira_spark.store.files` for what each
filesystem guarantees). Rows are the scoring task's output rows, in ``store.schemas.RAW_OUTPUT_ARROW_SCHEMA``
(``SAMPLE_OUTPUT_ARROW_SCHEMA`` for sample waves), keyed by :data:`KEY_COLUMNS` (doc_id, scorer,
prompt_version, sample index; 0 for sample 0, whose rows carry no index).

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
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mira_spark.store import files
from mira_spark.store.lease import Lease
from mira_spark.store.schemas import RAW_OUTPUT_ARROW_SCHEMA, SAMPLE_OUTPUT_ARROW_SCHEMA

if TYPE_CHECKING:
    from mira_spark.config import Settings

log = logging.getLogger(__name__)

JOURNAL_DIR = "_journal"
CLAIMS_DIR = "_claims"
SAMPLE_COLUMN = "sample"  # the sample index of the extra-sample waves (sample 0's rows have no column)
KEY_COLUMNS: tuple[str, ...] = ("doc_id", "scorer", "prompt_version", SAMPLE_COLUMN)
WAVE_PREFIX = {False: "wave-", True: "samples-wave-"}  # sample 0's waves, the extra-sample waves
JOURNALED_STATUSES = ("ok", "failed")  # final outcomes; "deferred" is asked again
ORIGIN_COLUMNS = ("journal_run_id", "journal_wave")
IN_FLIGHT_SUFFIX = ".inflight.json"  # an attempt's requests sent and not yet answered, rewritten every flush
WASTE_SUFFIX = ".waste.json"  # an attempt's re-sent requests and their completion tokens
INHERITED = "inherited"  # in-flight keys of dead runs, kept for the run that folded them

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
    samples: bool = False  # an extra-sample wave (rows in SAMPLE_OUTPUT_ARROW_SCHEMA, their own directory)

    @property
    def wave_dir(self) -> str:
        return f"{self.root.rstrip('/')}/run-{self.run_id}/{WAVE_PREFIX[self.samples]}{self.wave}"

    @property
    def schema(self) -> pa.Schema:
        return journal_schema(self.samples)


def journal_schema(samples: bool) -> pa.Schema:
    """The row schema of sample 0's journal, or of the extra-sample waves' journal."""
    return SAMPLE_OUTPUT_ARROW_SCHEMA if samples else RAW_OUTPUT_ARROW_SCHEMA


def key_of(row: dict) -> Key:
    """The journal key of an output row (sample index 0 when the row has none)."""
    return (row["doc_id"], row["scorer"], row["prompt_version"], int(row.get(SAMPLE_COLUMN) or 0))


def request_id(key: Key) -> str:
    """The id a request for ``key`` is sent with (``X-Request-Id``): ``doc|scorer|prompt_version[|sample]``.

    >>> request_id(("d1", "g1", "v1", 0)), request_id(("d1", "g1", "v1", 2))
    ('d1|g1|v1', 'd1|g1|v1|2')
    """
    doc_id, scorer, prompt_version, sample = key
    return f"{doc_id}|{scorer}|{prompt_version}" + (f"|{sample}" if sample else "")


def partition_id(keys: Iterable[Key]) -> str:
    """A stable name for a task's set of keys: every attempt of one partition gets the same one."""
    digest = hashlib.sha1()
    for key in sorted(keys):
        digest.update(repr(key).encode())
    return digest.hexdigest()[:20]


Encode = Callable[[list[dict], list[Any]], pa.Table]


class JournalWriter:
    """Buffers a task's finished rows and flushes them as Parquet files from a background thread.

    ``add(row, answer)`` is cheap and thread-safe (the runner calls it from its event loop); ``encode``
    turns buffered rows (and whatever ``answer`` objects came with them, e.g. parsed answers) into a table
    in ``spec.schema`` in the flush thread (default: the rows as they are). ``sent(key)`` marks a request in flight until its row is
    durable (flushed); every flush rewrites this attempt's list of those, so the next attempt knows what it
    re-sends. Rows whose key
    is in ``resending`` (in flight in a dead attempt) are counted as re-sent, with their completion tokens.
    ``close`` flushes what is left, stops the thread and leaves the waste counts. ``clock``: monotonic s.
    """

    def __init__(self, spec: JournalSpec, attempt: str | None = None, *, encode: Encode | None = None,
                 resending: set[Key] | frozenset[Key] = frozenset(), clock: Callable[[], float] = time.monotonic,
                 background: bool = True) -> None:
        self.spec = spec
        self.attempt = attempt or uuid.uuid4().hex[:12]
        self.fs, self.dir = files.filesystem(spec.wave_dir)
        self.encode = encode or (lambda rows, _answers: pa.Table.from_pylist(rows, schema=spec.schema))
        self.resending, self.clock = resending, clock
        self.files_written = 0
        self.rows_written = 0
        self.resent_requests = 0
        self.resent_completion_tokens = 0
        self._rows: list[tuple[dict, Any]] = []
        self._in_flight: set[Key] = set()
        self._in_flight_dirty = False
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._due = threading.Event()
        self._closed = threading.Event()
        self._last_flush = clock()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._loop, name=f"journal-{self.attempt}", daemon=True)
            self._thread.start()

    def sent(self, key: Key) -> None:
        """A request for ``key`` is about to be sent."""
        with self._lock:
            self._in_flight.add(key)
            self._in_flight_dirty = True

    def add(self, row: dict, answer: Any = None) -> None:
        """Record one finished output row (deferred rows are not journaled: they are asked again)."""
        key = key_of(row)
        with self._lock:
            if key in self.resending:
                self.resent_requests += 1
                self.resent_completion_tokens += int(row.get("completion_tokens") or 0)
            if row.get("status") not in JOURNALED_STATUSES:
                self._in_flight.discard(key)  # not journaled: nothing to wait for
                self._in_flight_dirty = True
                return
            self._rows.append((row, answer))
            full = len(self._rows) >= self.spec.flush_rows
        if full:
            self._due.set()

    def pending(self) -> int:
        """Rows added but not yet durable."""
        with self._lock:
            return len(self._rows)

    def flush(self) -> int:
        """Write the buffered rows as one file (and the in-flight list); the number of rows written."""
        with self._write_lock:
            with self._lock:
                items, self._rows = self._rows, []
                in_flight = sorted(self._in_flight) if self._in_flight_dirty else None
                self._in_flight_dirty = False
            self._last_flush = self.clock()
            if items:
                table = self.encode([r for r, _ in items], [a for _, a in items])
                name = f"{self.attempt}-{self.files_written:06d}.parquet"
                try:
                    files.write_complete(self.fs, f"{self.dir}/{name}",
                                         lambda fs, path: pq.write_table(table, path, filesystem=fs))
                except OSError:
                    with self._lock:  # not durable: back in front of the buffer for the next flush
                        self._rows[:0] = items
                    raise
                self.files_written += 1
                self.rows_written += len(items)
                with self._lock:  # durable now: no longer "sent and not durable"
                    self._in_flight.difference_update(key_of(r) for r, _ in items)
                    in_flight = sorted(self._in_flight)
            if in_flight is not None:
                files.write_bytes(self.fs, f"{self.dir}/{self.attempt}{IN_FLIGHT_SUFFIX}",
                                  json.dumps([list(k) for k in in_flight]).encode())
            return len(items)

    def due(self) -> bool:
        """A flush is due: ``flush_rows`` buffered, or rows (or in-flight changes) older than ``flush_s``."""
        with self._lock:
            n, dirty = len(self._rows), self._in_flight_dirty
        return n >= self.spec.flush_rows or ((n > 0 or dirty) and self.clock() - self._last_flush >= self.spec.flush_s)

    def _loop(self) -> None:
        tick = min(self.spec.flush_s, 0.5)
        while not self._closed.is_set():
            self._due.wait(tick)
            self._due.clear()
            if self.due():
                try:
                    self.flush()
                except OSError as exc:
                    log.warning("journal flush failed (%s); the rows stay buffered", exc)

    def close(self, completed: bool = True) -> None:
        """Flush the rest, stop the background thread, leave the waste counts (idempotent).

        ``completed=False`` (the task failed): the in-flight list stays, so the retry counts what it re-sends.
        """
        self._closed.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()
        if completed:
            files.delete(self.fs, f"{self.dir}/{self.attempt}{IN_FLIGHT_SUFFIX}")
        if self.resent_requests:
            files.write_bytes(self.fs, f"{self.dir}/{self.attempt}{WASTE_SUFFIX}", json.dumps(
                {"resent_requests": self.resent_requests,
                 "resent_completion_tokens": self.resent_completion_tokens}).encode())

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(completed=exc_type is None)


def _journal_files(fs: pafs.FileSystem, root: str, samples: bool = False) -> list[tuple[str, int, str]]:
    """``(run_id, wave, path)`` of every complete journal file under ``root`` (of sample waves or not)."""
    prefix = WAVE_PREFIX[samples]
    out = []
    for run_dir in files.list_dirs(fs, root):
        if not run_dir.startswith("run-"):
            continue
        for wave_dir in files.list_dirs(fs, f"{root}/{run_dir}"):
            number = wave_dir[len(prefix):]
            if not (wave_dir.startswith(prefix) and number.lstrip("-").isdigit()):
                continue
            for name in files.list_names(fs, f"{root}/{run_dir}/{wave_dir}"):
                if name.endswith(".parquet") and not name.startswith(files.TMP_PREFIX):
                    out.append((run_dir[4:], int(number), f"{root}/{run_dir}/{wave_dir}/{name}"))
    return out


def read_journal(root: str, keys: Iterable[Key] | None = None, *, origin: bool = False,
                 samples: bool = False) -> pa.Table:
    """Journaled rows (one per key) for ``keys`` (all keys when None), in ``RAW_OUTPUT_ARROW_SCHEMA``
    (``samples``: the extra-sample waves' rows, in ``SAMPLE_OUTPUT_ARROW_SCHEMA``).

    With ``origin``, two more columns say which run and wave journaled each row (:data:`ORIGIN_COLUMNS`).
    When a key was journaled twice (two attempts), an ``ok`` row wins over a failed one, then the first
    file in name order. A file that cannot be read (a partial object left by a store without atomic
    uploads) is skipped with a warning.
    """
    fs, base = files.filesystem(root)
    wanted = None if keys is None else set(keys)
    doc_ids = None if wanted is None else pa.array(sorted({k[0] for k in wanted}), pa.string())
    parts: list[pa.Table] = []
    schema = journal_schema(samples)
    for run_id, wave, path in _journal_files(fs, base.rstrip("/"), samples):
        try:
            table = pq.read_table(path, filesystem=fs, schema=schema)
        except (OSError, pa.ArrowInvalid) as exc:
            log.warning("journal: skipping unreadable file %s (%s)", path, exc)
            continue
        if doc_ids is not None:
            table = table.filter(pc.is_in(table["doc_id"], value_set=doc_ids))
        if origin:
            table = table.append_column(ORIGIN_COLUMNS[0], pa.array([run_id] * len(table), pa.string()))
            table = table.append_column(ORIGIN_COLUMNS[1], pa.array([wave] * len(table), pa.int32()))
        parts.append(table)
    if origin:
        schema = schema.append(pa.field(ORIGIN_COLUMNS[0], pa.string())).append(pa.field(ORIGIN_COLUMNS[1], pa.int32()))
    if not parts:
        return schema.empty_table()
    return _one_per_key(pa.concat_tables(parts), wanted)


def _one_per_key(table: pa.Table, wanted: set[Key] | None) -> pa.Table:
    best: dict[Key, int] = {}
    for i, row in enumerate(table.select([*key_columns(table.schema), "status"]).to_pylist()):
        key = key_of(row)
        if wanted is not None and key not in wanted:
            continue
        if key not in best or (row["status"] == "ok" and table["status"][best[key]].as_py() != "ok"):
            best[key] = i
    return table.take(pa.array(sorted(best.values()), pa.int64()))


def key_columns(schema: pa.Schema) -> list[str]:
    """The key columns a table of journal rows has (sample 0's rows have no sample index)."""
    return [c for c in KEY_COLUMNS if c in schema.names]


def _side_files(fs: pafs.FileSystem, root: str, suffix: str) -> list[str]:
    """Paths of the small per-attempt files ending in ``suffix`` under ``root`` (run and wave levels)."""
    out = []
    for run_dir in files.list_dirs(fs, root):
        if not run_dir.startswith("run-"):
            continue
        base = f"{root}/{run_dir}"
        out += [f"{base}/{n}" for n in files.list_names(fs, base) if n.endswith(suffix)]
        for wave_dir in files.list_dirs(fs, base):
            out += [f"{base}/{wave_dir}/{n}" for n in files.list_names(fs, f"{base}/{wave_dir}") if n.endswith(suffix)]
    return out


def in_flight_keys(root: str) -> set[Key]:
    """Keys that some attempt had sent and not seen answered at its last flush (dead attempts: their last
    word; live attempts of other partitions hold other keys)."""
    fs, base = files.filesystem(root)
    keys: set[Key] = set()
    for path in _side_files(fs, base.rstrip("/"), IN_FLIGHT_SUFFIX):
        raw = files.read_bytes(fs, path)
        if raw:
            keys.update(tuple(k) for k in json.loads(raw))
    return keys


@dataclass(frozen=True)
class Waste:
    """Requests sent again after a fault (in flight when an attempt or a driver died) and their tokens."""

    resent_requests: int = 0
    resent_completion_tokens: int = 0


def wave_waste(spec: JournalSpec) -> Waste:
    """What the attempts of one wave re-sent (sum of their waste files); read before :func:`clear_wave`."""
    fs, base = files.filesystem(spec.wave_dir)
    requests = tokens = 0
    for name in files.list_names(fs, base):
        if name.endswith(WASTE_SUFFIX):
            raw = files.read_bytes(fs, f"{base}/{name}") or b"{}"
            counts = json.loads(raw)
            requests += int(counts.get("resent_requests", 0))
            tokens += int(counts.get("resent_completion_tokens", 0))
    return Waste(requests, tokens)


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


def retire_runs(root: str, run_id: str, runs: Sequence[str]) -> int:
    """After folding ``runs`` (dead runs) into the tables: keep their in-flight keys for ``run_id`` (so its
    tasks count what they send again) and remove the rest of their files. Returns the keys kept."""
    fs, base = files.filesystem(root)
    base = base.rstrip("/")
    keys: set[Key] = set()
    for run in runs:
        keys |= in_flight_keys_of_run(fs, base, run)
    if keys:
        files.write_bytes(fs, f"{base}/run-{run_id}/{INHERITED}{IN_FLIGHT_SUFFIX}",
                          json.dumps(sorted(list(k) for k in keys)).encode())
    for run in runs:
        files.delete_tree(fs, f"{base}/run-{run}")
    return len(keys)


def in_flight_keys_of_run(fs: pafs.FileSystem, base: str, run: str) -> set[Key]:
    keys: set[Key] = set()
    for path in _side_files(fs, base, IN_FLIGHT_SUFFIX):
        if path.startswith(f"{base}/run-{run}/"):
            keys.update(tuple(k) for k in json.loads(files.read_bytes(fs, path) or b"[]"))
    return keys


def journal_root(settings: Settings) -> str | None:
    """``<tables.root>/_journal`` (or ``<tables.staging>/_journal`` with catalog tables); None when disabled
    or when no directory is configured."""
    if not settings.journal.enabled:
        return None
    base = settings.tables.root or settings.tables.staging
    return f"{base.rstrip('/')}/{JOURNAL_DIR}" if base else None


# Settings that make Spark run a second attempt of a task while the first may still be sending.
DUPLICATE_ATTEMPT_SETTINGS = {"spark.speculation": "true"}


def duplicate_attempt_settings(get: Callable[[str], str | None]) -> list[str]:
    """``key=value`` of each setting (read with ``get``, e.g. ``spark.conf.get``) that launches duplicate
    concurrent task attempts.

    >>> duplicate_attempt_settings({"spark.speculation": "True"}.get)
    ['spark.speculation=True']
    """
    found = []
    for key, bad in DUPLICATE_ATTEMPT_SETTINGS.items():
        value = get(key)
        if value is not None and str(value).strip().lower() == bad:
            found.append(f"{key}={value}")
    return found


@dataclass
class JournaledOutcome:
    """What :func:`run_journaled` did: rows reused from the journal, rows scored now, and whether it waited."""

    reused: pa.Table
    scored: Any
    waited_for_attempt: bool
    resent: Waste


ScoreFn = Callable[[Sequence[int], JournalWriter], Any]


def run_journaled(spec: JournalSpec, keys: Sequence[Key], score: ScoreFn, *, encode: Encode | None = None,
                  wait_limit_s: float | None = None, clock: Callable[[], float] = time.time,
                  sleep: Callable[[float], None] = time.sleep) -> JournaledOutcome:
    """Score the partition whose rows have ``keys``, paying only for keys the journal does not hold.

    ``score(positions, writer)`` scores the rows at ``positions`` (indices into ``keys``), calls
    ``writer.sent(key)`` before each request and ``writer.add(row, answer)`` as each output row completes,
    and returns its output. The partition is claimed first, so a second live attempt (speculation, a retry
    racing a slow original) waits for the first to finish and then reuses its journal instead of sending
    the same requests again; an attempt whose claim heartbeat is ``spec.claim_stale_s`` old is taken over.
    """
    claim = Lease(f"{spec.wave_dir}/{CLAIMS_DIR}/{partition_id(keys)}", f"attempt-{uuid.uuid4().hex[:12]}",
                  what=f"scoring partition of run {spec.run_id} wave {spec.wave}",
                  stale_after_s=spec.claim_stale_s, heartbeat_s=spec.claim_heartbeat_s, clock=clock, sleep=sleep)
    waited = claim.try_acquire().action == "held"
    if waited:
        log.info("another attempt of this partition is running; waiting for its journal")
        claim.acquire(wait=True, wait_limit_s=wait_limit_s)
    else:
        claim.start_heartbeat()
    try:
        reused = read_journal(spec.root, keys, samples=spec.samples)
        done = {key_of(r) for r in reused.select(key_columns(reused.schema)).to_pylist()}
        todo = [i for i, k in enumerate(keys) if k not in done]
        scored: Any = None
        resent = Waste()
        if todo:
            resending = in_flight_keys(spec.root) & {keys[i] for i in todo}
            with JournalWriter(spec, claim.holder, encode=encode, resending=resending) as writer:
                scored = score(todo, writer)
            resent = Waste(writer.resent_requests, writer.resent_completion_tokens)
        return JournaledOutcome(reused=reused, scored=scored, waited_for_attempt=waited, resent=resent)
    finally:
        claim.release()
