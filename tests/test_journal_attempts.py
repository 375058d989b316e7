"""Two attempts of one scoring partition at once (what speculation or a retry racing a slow original
does), run through the real task function against a simulated scorer: no document is billed twice.

Sail runs no speculative attempts and cannot be made to, so the duplicate is produced directly: the same
``score_partition`` over the same rows in two threads, the second started once the first holds the
partition's claim. No Spark session is needed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import write_config

from mira_spark.config import load_settings
from mira_spark.devtools.samples import generate_documents
from mira_spark.devtools.simulator.launcher import start_in_thread
from mira_spark.devtools.simulator.server import SimConfig
from mira_spark.errors import DuplicateAttemptsError
from mira_spark.pipeline import check_duplicate_attempts, load_groups, make_plan
from mira_spark.scoring.stage import score_partition
from mira_spark.store import journal

N_DOCS = 40
SLOTS = 4
TIME_SCALE = 40.0  # ~0.25 s per answer: the first attempt is still sending when the second starts


@pytest.fixture
def slow_sims() -> Any:
    handles = [start_in_thread(SimConfig(name=f"att{i}", slots=SLOTS, time_scale=TIME_SCALE, seed=i))
               for i in range(2)]
    yield handles
    for h in handles:
        h.stop()


def _rows(settings: Any) -> list[dict]:
    group = next(iter(settings.scorers.groups))
    docs = [d for d in generate_documents(7) if d["source"].startswith("html_cpt")][:N_DOCS]
    return [{**d, "scorer": group} for d in docs]


def test_two_concurrent_attempts_of_a_partition_bill_each_document_once(
        tmp_path: Path, slow_sims: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "tables", str(tmp_path / "docs"), None,
                       [h.url for h in slow_sims],
                       scorers={"pools": {"text_group_b_pool": {"slots_per_endpoint": SLOTS, "startup_check": False}}})
    settings = load_settings(cfg)
    root = journal.journal_root(settings)
    assert root is not None
    spec = journal.JournalSpec(root=root, run_id="r1", wave=0, flush_s=0.1, flush_rows=2,
                               claim_stale_s=10.0, claim_heartbeat_s=0.1)
    plan = replace(make_plan(settings, load_groups(settings), 2), journal=spec)
    rows = _rows(settings)
    batch = pa.RecordBatch.from_pylist(rows)
    outputs: dict[str, pa.Table] = {}

    def attempt(name: str) -> None:
        outputs[name] = pa.Table.from_batches(list(score_partition(iter([batch]), plan)))

    first = threading.Thread(target=attempt, args=("first",))
    with caplog.at_level(logging.INFO, logger="mira_spark.store.journal"):
        first.start()
        claims = Path(spec.wave_dir) / journal.CLAIMS_DIR
        for _ in range(3000):  # the first attempt holds the claim and is sending
            if any(claims.glob("*/g1.json")) and sum(h.stats()["requests"] for h in slow_sims) > 0:
                break
            threading.Event().wait(0.01)
        attempt("second")
        first.join(120)
    assert any("another attempt of this partition is running" in r.message for r in caplog.records)

    sent: dict[str, int] = {}
    for h in slow_sims:
        stats = h.stats()
        for key, n in stats["requests_by_id"].items():
            sent[key] = sent.get(key, 0) + n - stats["repairs_by_id"].get(key, 0)
    by_doc = {name: {r["doc_id"]: r for r in t.to_pylist()} for name, t in outputs.items()}
    requested = {r["doc_id"] for r in by_doc["first"].values() if r["attempts"] > 0}
    assert len(requested) > N_DOCS // 2 and set(sent.values()) == {1}  # no document billed twice
    assert {k.split("|")[0] for k in sent} == requested
    assert set(by_doc["first"]) == set(by_doc["second"]) == {r["doc_id"] for r in rows}
    for doc_id, row in by_doc["first"].items():  # the duplicate returns the first attempt's answers
        assert by_doc["second"][doc_id]["raw_text"] == row["raw_text"]
        assert by_doc["second"][doc_id]["a1_score"] == row["a1_score"]


class _Conf:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)


class _Session:
    def __init__(self, values: dict[str, str]) -> None:
        self.conf = _Conf(values)


def test_speculation_without_a_journal_is_refused_with_the_fix() -> None:
    check_duplicate_attempts(_Session({}), journaled=False)  # type: ignore[arg-type]
    check_duplicate_attempts(_Session({"spark.speculation": "true"}), journaled=True)  # type: ignore[arg-type]
    with pytest.raises(DuplicateAttemptsError, match=r"set spark\.speculation=false") as err:
        check_duplicate_attempts(_Session({"spark.speculation": "true"}), journaled=False)  # type: ignore[arg-type]
    assert "journal.enabled" in str(err.value)
