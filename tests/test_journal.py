"""The request journal without Spark: flushing, reading back, partial files, and duplicate attempts.

``run_journaled`` is driven by a fake scorer that counts what it is asked to score, so "no document
billed twice" is a count, and the concurrent case is forced (the second attempt is seen waiting on the
first one's claim before the first one finishes).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mira_spark.store import journal
from mira_spark.store.journal import JournalSpec, JournalWriter, key_of, read_journal, run_journaled
from mira_spark.store.lease import Lease
from mira_spark.store.schemas import RAW_OUTPUT_ARROW_SCHEMA, SAMPLE_OUTPUT_ARROW_SCHEMA


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def row(doc_id: str, status: str = "ok", text: str | None = None) -> dict:
    """A complete scoring output row in RAW_OUTPUT_ARROW_SCHEMA."""
    out: dict = dict.fromkeys(RAW_OUTPUT_ARROW_SCHEMA.names)
    out.update(doc_id=doc_id, source="web", scorer="g1", model="m", prompt_version="v1", status=status,
               attempts=1, repairs=0, wasted_requests=0, truncated=False, shrunk=False,
               raw_text=text if text is not None else f"answer {doc_id}", completion_tokens=100)
    return out


def spec(tmp_path: Path, wave: int = 0, **kw: float) -> JournalSpec:
    return JournalSpec(root=str(tmp_path / "_journal"), run_id="r1", wave=wave, **kw)


def test_rows_flush_at_the_row_limit_or_after_flush_s(tmp_path: Path) -> None:
    clock = FakeClock()
    writer = JournalWriter(spec(tmp_path, flush_rows=3, flush_s=2.0), "a1", clock=clock, background=False)
    writer.add(row("d1"))
    writer.add(row("d2"))
    assert not writer.due()
    writer.add(row("d3"))
    assert writer.due() and writer.flush() == 3
    writer.add(row("d4"))
    clock.now += 1.9
    assert not writer.due()
    clock.now += 0.2
    assert writer.due() and writer.flush() == 1
    got = read_journal(str(tmp_path / "_journal"))
    assert sorted(got["doc_id"].to_pylist()) == ["d1", "d2", "d3", "d4"]
    assert got.schema == RAW_OUTPUT_ARROW_SCHEMA and writer.files_written == 2


def test_background_writer_flushes_on_close_and_skips_deferred(tmp_path: Path) -> None:
    with JournalWriter(spec(tmp_path, flush_rows=1000, flush_s=60.0), "a1") as writer:
        writer.add(row("d1"))
        writer.add(row("d2", status="failed"))
        writer.add(row("d3", status="deferred"))  # pool down: asked again, never journaled
    got = read_journal(str(tmp_path / "_journal"))
    assert sorted(zip(got["doc_id"].to_pylist(), got["status"].to_pylist(), strict=True)) == [
        ("d1", "ok"), ("d2", "failed")]


def test_reader_filters_by_key_prefers_ok_and_names_the_origin(tmp_path: Path) -> None:
    for wave, rows in ((0, [row("d1", "failed"), row("d2")]), (1, [row("d1", text="second"), row("d3")])):
        w = JournalWriter(spec(tmp_path, wave=wave), f"a{wave}", background=False)
        for r in rows:
            w.add(r)
        w.close()
    keys = [key_of(row("d1")), key_of(row("d3"))]
    got = read_journal(str(tmp_path / "_journal"), keys, origin=True).to_pylist()
    assert {(r["doc_id"], r["status"], r["raw_text"], r["journal_wave"]) for r in got} == {
        ("d1", "ok", "second", 1), ("d3", "ok", "answer d3", 1)}
    assert all(r["journal_run_id"] == "r1" for r in got)
    other_prompt = (*key_of(row("d2"))[:2], "v0", *key_of(row("d2"))[3:])
    assert read_journal(str(tmp_path / "_journal"), [other_prompt]).num_rows == 0


def test_partial_and_unfinished_files_are_never_read(tmp_path: Path) -> None:
    s = spec(tmp_path)
    w = JournalWriter(s, "a1", background=False)
    w.add(row("d1"))
    w.close()
    wave_dir = Path(s.wave_dir)
    good = next(wave_dir.glob("*.parquet"))
    (wave_dir / ".a2-000000.parquet.tmp").write_bytes(good.read_bytes())  # an unfinished local write
    (wave_dir / "a3-000000.parquet").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # torn
    got = read_journal(str(tmp_path / "_journal"))
    assert got["doc_id"].to_pylist() == ["d1"]
    assert len(list(wave_dir.iterdir())) == 3  # the case meant: three files present, one readable


def test_clear_wave_and_run(tmp_path: Path) -> None:
    root = str(tmp_path / "_journal")
    for wave in (0, 1):
        w = JournalWriter(spec(tmp_path, wave=wave), "a", background=False)
        w.add(row(f"d{wave}"))
        w.close()
    journal.clear_wave(spec(tmp_path, wave=0))
    assert read_journal(root)["doc_id"].to_pylist() == ["d1"]
    assert journal.journal_runs(root) == ["r1"]
    journal.clear_run(root, "r1")
    assert read_journal(root).num_rows == 0 and journal.journal_runs(root) == []


def test_key_columns_come_from_the_schemas() -> None:
    assert journal.KEY_COLUMNS == ("doc_id", "scorer", "prompt_version", "sample")
    assert set(journal.KEY_COLUMNS) <= set(SAMPLE_OUTPUT_ARROW_SCHEMA.names)
    assert set(journal.KEY_COLUMNS) - set(RAW_OUTPUT_ARROW_SCHEMA.names) == {"sample"}  # sample 0 has no index
    assert key_of(row("d1")) == ("d1", "g1", "v1", 0)


def sample_row(doc_id: str, sample: int, status: str = "ok") -> dict:
    """An extra-sample output row (SAMPLE_OUTPUT_ARROW_SCHEMA)."""
    out: dict = dict.fromkeys(SAMPLE_OUTPUT_ARROW_SCHEMA.names)
    out.update({k: v for k, v in row(doc_id, status).items() if k in out}, sample=sample)
    return out


def test_extra_samples_journal_apart_keyed_by_sample(tmp_path: Path) -> None:
    """Sample 0's answer and samples 1 and 2 of one document: three keys, two journals that never mix."""
    root = str(tmp_path / "_journal")
    with JournalWriter(spec(tmp_path), "a0", background=False) as writer:
        writer.add(row("d1"))
    sample_spec = JournalSpec(root=root, run_id="r1", wave=0, samples=True)
    assert sample_spec.wave_dir != spec(tmp_path).wave_dir
    with JournalWriter(sample_spec, "a1", background=False) as writer:
        writer.sent(("d1", "g1", "v1", 1))
        writer.sent(("d1", "g1", "v1", 2))
        writer.add(sample_row("d1", 1))
        writer.add(sample_row("d1", 2, status="failed"))
    first = read_journal(root)
    assert first.schema == RAW_OUTPUT_ARROW_SCHEMA and first["doc_id"].to_pylist() == ["d1"]
    extra = read_journal(root, samples=True)
    assert extra.schema == SAMPLE_OUTPUT_ARROW_SCHEMA
    assert sorted(zip(extra["sample"].to_pylist(), extra["status"].to_pylist(), strict=True)) == [
        (1, "ok"), (2, "failed")]
    assert read_journal(root, [("d1", "g1", "v1", 2)], samples=True)["sample"].to_pylist() == [2]
    assert journal.in_flight_keys(root) == set()  # both samples durable: nothing left in flight


def test_a_retried_sample_task_sends_only_unjournaled_samples(tmp_path: Path) -> None:
    root = str(tmp_path / "_journal")
    sample_spec = JournalSpec(root=root, run_id="r1", wave=3, samples=True)
    keys = [("d1", "g1", "v1", s) for s in (1, 2, 3)]
    with JournalWriter(sample_spec, "dead", background=False) as writer:
        writer.add(sample_row("d1", 2))
    asked: list[list[int]] = []

    def score(positions: Sequence[int], writer: JournalWriter) -> list[int]:
        asked.append(list(positions))
        return list(positions)

    outcome = run_journaled(sample_spec, keys, score)
    assert asked == [[0, 2]]  # samples 1 and 3; sample 2 came from the journal
    assert outcome.reused["sample"].to_pylist() == [2]


class FakeScorer:
    """Scores rows by position, counting every document it is asked for (a request each)."""

    def __init__(self, docs: Sequence[str], fail_after: int | None = None,
                 gate: threading.Event | None = None) -> None:
        self.docs, self.fail_after, self.gate = docs, fail_after, gate
        self.sent: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, positions: Sequence[int], writer: JournalWriter) -> list[dict]:
        out = []
        for n, i in enumerate(positions):
            if self.fail_after is not None and n == self.fail_after:
                for j in positions[n:n + IN_FLIGHT_AT_FAILURE]:  # sent, never answered: lost with the task
                    writer.sent(key_of(row(self.docs[j])))
                raise RuntimeError("task killed")
            if self.gate is not None and n == len(positions) // 2:
                assert self.gate.wait(30), "the duplicate attempt never waited"
            with self.lock:
                self.sent[self.docs[i]] += 1
            writer.sent(key_of(row(self.docs[i])))
            result = row(self.docs[i])
            writer.add(result)
            out.append(result)
        return out


DOCS = [f"d{i:03d}" for i in range(40)]
IN_FLIGHT_AT_FAILURE = 3
KEYS = [key_of(row(d)) for d in DOCS]


def test_retried_attempt_sends_only_what_the_failed_one_did_not_journal(tmp_path: Path) -> None:
    s = spec(tmp_path, flush_rows=5)
    failing = FakeScorer(DOCS, fail_after=23)
    with pytest.raises(RuntimeError, match="task killed"):
        run_journaled(s, KEYS, failing)
    retry = FakeScorer(DOCS)
    outcome = run_journaled(s, KEYS, retry)
    assert sum(failing.sent.values()) == 23
    assert set(retry.sent) == set(DOCS[23:])  # nothing journaled is requested again
    # waste: the retry re-sent exactly the requests in flight at the failure, 100 completion tokens each
    assert outcome.resent == journal.Waste(IN_FLIGHT_AT_FAILURE, 100 * IN_FLIGHT_AT_FAILURE)
    assert journal.wave_waste(s) == outcome.resent
    assert sorted(outcome.reused["doc_id"].to_pylist() + [r["doc_id"] for r in outcome.scored]) == DOCS  # each once
    third = FakeScorer(DOCS)
    assert run_journaled(s, KEYS, third).reused.num_rows == len(DOCS) and not third.sent  # a rerun: free


def test_concurrent_duplicate_attempt_waits_and_bills_nothing(tmp_path: Path) -> None:
    s = spec(tmp_path, flush_rows=4)
    waiting = threading.Event()
    first = FakeScorer(DOCS, gate=waiting)
    second = FakeScorer(DOCS)
    results: dict[str, journal.JournaledOutcome] = {}

    def sleep(_: float) -> None:  # the duplicate polls the claim: let the first attempt finish now
        waiting.set()
        threading.Event().wait(0.01)

    t1 = threading.Thread(target=lambda: results.__setitem__("first", run_journaled(s, KEYS, first)))
    t1.start()
    claim_dir = Path(s.wave_dir) / journal.CLAIMS_DIR / journal.partition_id(KEYS)
    assert _eventually(lambda: (claim_dir / "g1.json").exists())  # the first attempt holds the claim
    results["second"] = run_journaled(s, KEYS, second, sleep=sleep)
    t1.join(30)
    assert waiting.is_set() and results["second"].waited_for_attempt
    assert not second.sent and sum(first.sent.values()) == len(DOCS)  # no document billed twice
    assert sorted(results["second"].reused["doc_id"].to_pylist()) == DOCS


def test_dead_attempts_claim_is_taken_over_when_stale(tmp_path: Path) -> None:
    s = spec(tmp_path, claim_stale_s=30.0)
    clock = FakeClock()
    dead = Lease(f"{s.wave_dir}/{journal.CLAIMS_DIR}/{journal.partition_id(KEYS)}", "attempt-dead",
                 what="partition", stale_after_s=30.0, heartbeat_s=5.0, clock=clock)
    assert dead.try_acquire().action == "acquire"  # never heartbeats again: the executor died

    def sleep(seconds: float) -> None:
        clock.now += seconds

    retry = FakeScorer(DOCS)
    outcome = run_journaled(s, KEYS, retry, clock=clock, sleep=sleep)
    assert outcome.waited_for_attempt and clock.now - 1000.0 > 30.0
    assert sum(retry.sent.values()) == len(DOCS)


def _eventually(check: Callable[[], bool], tries: int = 3000) -> bool:
    for _ in range(tries):
        if check():
            return True
        threading.Event().wait(0.01)
    return False


def test_written_files_are_plain_parquet_in_the_raw_output_schema(tmp_path: Path) -> None:
    s = spec(tmp_path)
    w = JournalWriter(s, "a1", background=False)
    w.add(row("d1"))
    w.close()
    table = pq.read_table(next(Path(s.wave_dir).glob("*.parquet")))
    assert table.schema.equals(RAW_OUTPUT_ARROW_SCHEMA) and table.num_rows == 1
    assert pa.Table.from_pylist([row("d1")], schema=RAW_OUTPUT_ARROW_SCHEMA).equals(table)
