"""Bad input on Sail + Delta: every case ends as a clear message or a flagged row, never a bare trace.

One pipeline run over a documents table full of bad rows (null/empty/whitespace text, a 5 MB document,
duplicate doc_ids, a null doc_id, sources without a scorer), one over a binary ``text`` column with
invalid UTF-8, and the errors that must stop a run early (wrong column types, missing columns,
unreachable endpoints) or cleanly (every endpoint dying mid-run), checked through ``cli.main``.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import write_config
from deltalake import write_deltalake

from mira_spark import cli
from mira_spark.config import load_settings
from mira_spark.devtools.samples import generate_documents
from mira_spark.devtools.simulator.launcher import free_ports, start_in_thread
from mira_spark.devtools.simulator.server import SimConfig
from mira_spark.errors import user_message
from mira_spark.ingest.documents import InputError, check_documents
from mira_spark.pipeline import run_pipeline
from mira_spark.prompting.prompts import text_problem
from mira_spark.serving.runner import PoolUnavailableError
from mira_spark.store.tables import Tables

pytestmark = pytest.mark.spark

BIG_CHARS = 5 * 1024 * 1024
JAVA_TRACE_MARKERS = ("JVM stacktrace", "at org.apache", "Traceback (most recent call last)", "py4j")


def _good_docs(n: int) -> list[dict]:
    """Ordinary scorable sample documents of moderate length."""
    docs = [d for d in generate_documents() if d["source"] == "html_cpt" and text_problem(d["text"]) is None]
    return [d for d in docs if len(d["text"]) < 8000][:n]


def _write_docs(path: Path, rows: list[dict], text_type: pa.DataType | None = None) -> str:
    schema = pa.schema([pa.field("doc_id", pa.string()), pa.field("source", pa.string()),
                        pa.field("text", text_type or pa.string())])
    write_deltalake(str(path), pa.Table.from_pylist(rows, schema=schema), mode="overwrite")
    return str(path)


def _no_java_trace(message: str) -> None:
    for marker in JAVA_TRACE_MARKERS:
        assert marker not in message, f"message carries a stack trace ({marker!r}): {message[:300]}"


def _requested_doc_ids(sim: Any) -> list[str]:
    """doc_ids the simulator was asked about (request keys are ``doc_id|scorer|version``)."""
    out = []
    for key, n in sim.stats()["requests_by_id"].items():
        out += [key.split("|", 1)[0]] * n
    return out


@pytest.fixture(scope="module")
def sim() -> Iterator[Any]:
    handle = start_in_thread(SimConfig(name="bad-input", time_scale=400.0))
    yield handle
    handle.stop()


@dataclass
class BadRun:
    inputs: list[dict]
    summary: Any
    decisions: list[Any]
    raw: dict[str, Any]
    requested: list[str]
    overflows: int
    rss_growth_mb: float
    settings: Any
    selected_ids: list[str]


@pytest.fixture(scope="module")
def bad_run(spark: Any, sim: Any, tmp_path_factory: pytest.TempPathFactory) -> BadRun:
    work = tmp_path_factory.mktemp("bad_input")
    good = _good_docs(6)
    big = ("<p>长文档的一段内容，包含中文说明与 HTML 结构。</p>\n" * (BIG_CHARS // 30))[:BIG_CHARS]
    rows = [
        *good,
        {"doc_id": "null-text", "source": "html_cpt", "text": None},
        {"doc_id": "empty-text", "source": "html_cpt", "text": ""},
        {"doc_id": "blank-text", "source": "html_cpt_web", "text": "  \n\t \u3000 "},
        {"doc_id": "big-5mb", "source": "html_cpt", "text": big},
        {"doc_id": "dup", "source": "html_cpt", "text": good[0]["text"]},
        {"doc_id": "dup", "source": "html_cpt", "text": good[1]["text"] + "\n<!-- copy 2 -->"},
        {"doc_id": "dup", "source": "html_cpt_web", "text": good[2]["text"] + "\n<!-- copy 3 -->"},
        {"doc_id": "twin", "source": "html_cpt", "text": good[4]["text"] + "\n<!-- twin -->"},
        {"doc_id": "twin", "source": "html_cpt", "text": good[4]["text"] + "\n<!-- twin -->"},  # exact copy
        {"doc_id": None, "source": "html_cpt", "text": good[3]["text"]},
        {"doc_id": "unrouted", "source": "forum_dump", "text": good[4]["text"]},
        {"doc_id": "null-source", "source": None, "text": good[5]["text"]},
    ]
    docs_path = _write_docs(work / "documents", rows)
    cfg = write_config(work / "run.yaml", work / "tables", docs_path, None, [sim.url])
    settings = load_settings(cfg)
    sim.reset()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = run_pipeline(spark, settings, run_id="bad")
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tables = Tables(spark, settings)
    raw = {r["doc_id"]: r for r in tables.read("raw_outputs").collect()}
    stats = sim.stats()
    selected_ids = [r["doc_id"] for r in tables.read("selected").filter("array_contains(variants, 'global')").select("doc_id").collect()]
    return BadRun(rows, summary, tables.read("decisions").filter("variant = 'global'").collect(), raw, _requested_doc_ids(sim),
                  stats["overflows"], rss_after - rss_before, settings, selected_ids)


def test_every_input_row_appears_exactly_once_in_decisions(bad_run: BadRun) -> None:
    assert len(bad_run.decisions) == len(bad_run.inputs) == bad_run.summary.documents_in
    got = sorted((d["doc_id"] or "<null>", d["source"] or "<null>") for d in bad_run.decisions)
    want = sorted((r["doc_id"] or "<null>", r["source"] or "<null>") for r in bad_run.inputs)
    assert got == want


def test_empty_texts_are_flagged_and_never_sent(bad_run: BadRun) -> None:
    for doc_id in ("null-text", "empty-text", "blank-text"):
        row = bad_run.raw[doc_id]
        assert (row["status"], row["error"], row["attempts"]) == ("failed", "empty_text", 0)
        assert doc_id not in bad_run.requested
    reasons = {d["doc_id"]: d["reason"] for d in bad_run.decisions}
    assert reasons["null-text"] == reasons["empty-text"] == reasons["blank-text"] == "scoring_failed:empty_text"


def test_five_megabyte_document_is_scored_truncated(bad_run: BadRun) -> None:
    row = bad_run.raw["big-5mb"]
    assert row["status"] == "ok" and row["truncated"] is True
    assert row["original_chars"] == BIG_CHARS
    assert row["kept_chars"] < 200_000
    assert row["est_prompt_tokens"] <= 65536 - 2048
    assert bad_run.requested.count("big-5mb") == 1
    assert bad_run.overflows == 0
    # Peak RSS of the whole test process (driver + Sail + tasks) grows by well under 1 GB for a 5 MB text.
    assert bad_run.rss_growth_mb < 1024, f"peak RSS grew by {bad_run.rss_growth_mb:.0f} MB"


def test_duplicate_doc_ids_first_copy_scored_others_reported(spark: Any, bad_run: BadRun) -> None:
    dup_decisions = [d for d in bad_run.decisions if d["doc_id"] == "dup"]
    assert len(dup_decisions) == 3
    assert sorted(d["reason"] for d in dup_decisions).count("duplicate_doc_id") == 2
    scored = [d for d in dup_decisions if d["reason"] != "duplicate_doc_id"]
    assert len(scored) == 1 and scored[0]["reason"] in ("selected", "below_threshold")
    assert bad_run.requested.count("dup") == 1
    # The documented policy: the copy with the smallest xxhash64(source, text) is the one scored.
    from pyspark.sql import functions as F

    docs = Tables(spark, bad_run.settings).read(Tables(spark, bad_run.settings).documents)
    first = (docs.filter(F.col("doc_id") == "dup")
             .orderBy(F.xxhash64(F.col("source"), F.col("text")), F.col("source")).first())
    assert scored[0]["source"] == first["source"]
    assert bad_run.raw["dup"]["original_chars"] == len(first["text"])


def test_null_doc_id_and_unrouted_sources_are_reported(bad_run: BadRun) -> None:
    reasons = {(d["doc_id"], d["source"]): d["reason"] for d in bad_run.decisions}
    assert reasons[(None, "html_cpt")] == "null_doc_id"
    assert reasons[("unrouted", "forum_dump")] == "no_scorer"
    assert reasons[("null-source", None)] == "no_scorer"
    assert bad_run.summary.rejected == {"null_doc_id": 1, "no_scorer": 2, "duplicate_doc_id": 3}
    for doc_id in ("unrouted", "null-source"):
        assert doc_id not in bad_run.requested
    # only routed, non-empty, first copies were sent, each once
    assert sorted(bad_run.requested) == sorted(
        [d["doc_id"] for d in _good_docs(6)] + ["big-5mb", "dup", "twin"]
    )


def test_exact_copies_are_scored_once_and_selected_once(bad_run: BadRun) -> None:
    twins = sorted(d["reason"] for d in bad_run.decisions if d["doc_id"] == "twin")
    assert len(twins) == 2 and twins[0] in ("below_threshold", "selected") and twins[1] == "duplicate_doc_id"
    assert bad_run.requested.count("twin") == 1  # the text join matched both copies; one request
    assert bad_run.selected_ids.count("twin") == (1 if twins[0] == "selected" else 0)
    assert len(bad_run.selected_ids) == len(set(bad_run.selected_ids))


def test_binary_text_with_invalid_utf8_is_decoded_and_flagged(spark: Any, sim: Any,
                                                             tmp_path: Path) -> None:
    good = _good_docs(2)
    rows = [
        {"doc_id": "utf8-ok", "source": "html_cpt", "text": good[0]["text"].encode("utf-8")},
        {"doc_id": "one-bad-byte", "source": "html_cpt", "text": good[1]["text"].encode("utf-8") + b"\xff"},
        {"doc_id": "garbage", "source": "html_cpt", "text": b"\xff\xfe\xc3\x28\xa0\xa1" * 50},
        {"doc_id": "null-bytes", "source": "html_cpt", "text": None},
    ]
    docs_path = _write_docs(tmp_path / "documents", rows, pa.binary())
    settings = load_settings(write_config(tmp_path / "run.yaml", tmp_path / "tables", docs_path, None,
                                          [sim.url]))
    sim.reset()
    summary = run_pipeline(spark, settings, run_id="binary")
    raw = {r["doc_id"]: r for r in Tables(spark, settings).read("raw_outputs").collect()}
    assert summary.documents_in == 4
    assert (raw["utf8-ok"]["status"], raw["one-bad-byte"]["status"]) == ("ok", "ok")
    assert (raw["garbage"]["status"], raw["garbage"]["error"]) == ("failed", "invalid_text")
    assert (raw["null-bytes"]["status"], raw["null-bytes"]["error"]) == ("failed", "empty_text")
    assert sorted(_requested_doc_ids(sim)) == ["one-bad-byte", "utf8-ok"]
    decisions = Tables(spark, settings).read("decisions").collect()
    assert len(decisions) == 4 * len(settings.selection.variants)  # once per variant


@pytest.mark.parametrize(
    ("text_type", "values"),
    [
        (pa.int64(), [1, 2]),
        (pa.struct([("title", pa.string()), ("body", pa.string())]),
         [{"title": "t", "body": "b"}, {"title": "u", "body": "c"}]),
    ],
    ids=["int", "struct"],
)
def test_non_string_text_column_is_an_input_error(spark: Any, tmp_path: Path, text_type: pa.DataType,
                                                  values: list[Any]) -> None:
    rows = [{"doc_id": f"d{i}", "source": "html_cpt", "text": v} for i, v in enumerate(values)]
    path = _write_docs(tmp_path / "documents", rows, text_type)
    with pytest.raises(InputError) as err:
        check_documents(spark.read.format("delta").load(path), path)
    message = str(err.value)
    assert "column text has type" in message and "expected string" in message
    assert "Cast or serialise it to text" in message and path in message
    _no_java_trace(message)


def test_missing_columns_lists_missing_and_existing(spark: Any, tmp_path: Path) -> None:
    table = pa.table({"id": ["a"], "source": ["html_cpt"], "content": ["x"]})
    write_deltalake(str(tmp_path / "documents"), table, mode="overwrite")
    with pytest.raises(InputError) as err:
        check_documents(spark.read.format("delta").load(str(tmp_path / "documents")), "docs")
    message = str(err.value)
    assert "lacks required columns ['doc_id', 'text']" in message
    assert "it has ['content', 'id', 'source']" in message
    assert "Rename your columns" in message


def test_non_string_doc_id_is_an_input_error(spark: Any, tmp_path: Path) -> None:
    table = pa.table({"doc_id": [1.5], "source": ["html_cpt"], "text": ["x"]})
    write_deltalake(str(tmp_path / "documents"), table, mode="overwrite")
    with pytest.raises(InputError, match=r"column doc_id has type double, expected string"):
        check_documents(spark.read.format("delta").load(str(tmp_path / "documents")), "docs")


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str, float]:
    started = time.perf_counter()
    code = cli.main(argv)
    elapsed = time.perf_counter() - started
    out, err = capsys.readouterr()
    return code, out, err, elapsed


def test_cli_reports_a_bad_text_column_in_one_line(spark: Any, sim: Any, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_docs(tmp_path / "documents", [{"doc_id": "a", "source": "html_cpt", "text": 7}], pa.int64())
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "tables", path, None, [sim.url])
    code, _out, err, _ = _cli(["run", "--config", str(cfg), "--engine", "active"], capsys)
    assert code == cli.EXIT_USER_ERROR
    assert err.startswith("mira-spark: documents table ") and "column text has type bigint" in err
    _no_java_trace(err)


def test_cli_reports_missing_documents_table(spark: Any, sim: Any, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "tables", str(tmp_path / "nowhere"), None, [sim.url])
    code, _out, err, _ = _cli(["run", "--config", str(cfg), "--engine", "active"], capsys)
    assert code == cli.EXIT_USER_ERROR
    assert err.startswith("mira-spark: cannot read documents table ") and str(tmp_path / "nowhere") in err
    assert "Check tables.documents" in err
    _no_java_trace(err)


def test_unreachable_endpoints_fail_fast_before_sending(spark: Any, sample_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    dead = [f"http://127.0.0.1:{p}/v1" for p in free_ports(2)]
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "tables", str(sample_dir / "documents"), None, dead)
    code, _out, err, elapsed = _cli(["run", "--config", str(cfg), "--engine", "active"], capsys)
    assert code == cli.EXIT_USER_ERROR
    assert err.startswith("mira-spark: no endpoint answered GET /health: ")
    assert all(url in err for url in dead) and "Nothing was sent" in err
    assert elapsed < 30, f"fail-fast took {elapsed:.1f}s"
    _no_java_trace(err)
    tables = Tables(spark, load_settings(cfg))
    assert tables.read("raw_outputs").count() == 0
    assert not tables.exists("work_queue")
    # the library raises the typed error for callers that do not go through the CLI
    with pytest.raises(PoolUnavailableError, match=dead[0]):
        run_pipeline(spark, load_settings(cfg))


def test_cli_stops_cleanly_when_every_endpoint_dies(spark: Any, sample_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill both endpoints during the second wave: exit 3, a message on stderr, wave 1 kept."""
    import mira_spark.serving.runner as runner

    monkeypatch.setattr(runner, "POOL_DOWN_GRACE_MIN_S", 1.0)
    sims = [start_in_thread(SimConfig(name=f"dying{i}", time_scale=40.0)) for i in range(2)]
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "tables", str(sample_dir / "documents"), None,
                       [s.url for s in sims], scoring={"wave_size": 60},
                       scorers={"pools": {"text_group_b_pool": {"breaker_failures": 2, "breaker_probe_s": 0.2,
                                                                "max_attempts": 3}}})
    stop_after = 80  # requests: wave 1 (~60) is through, wave 2 is under way

    def killer() -> None:
        while sum(s.stats()["requests"] for s in sims) < stop_after:
            time.sleep(0.02)
        for s in sims:
            s.stop()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        code, out, err, _ = _cli(["run", "--config", str(cfg), "--engine", "active", "--run-id", "dying"], capsys)
    finally:
        for s in sims:
            s.stop()
    assert code == cli.EXIT_STOPPED, err
    assert "mira-spark: stopped: every endpoint stopped answering " in err
    assert "Committed waves are kept; restart the endpoints and rerun" in err
    assert "STOPPED:" in out and '"stopped": "every endpoint' in out
    _no_java_trace(err)
    tables = Tables(spark, load_settings(cfg))
    scores = tables.read("scores")
    assert scores.filter("status = 'ok'").count() >= 40  # the first wave's work is committed
    assert scores.groupBy("doc_id").count().filter("count > 1").count() == 0


def test_errors_inside_spark_surface_as_our_messages(spark: Any) -> None:
    """A user error raised in a task, and a Spark analysis error, become one actionable line."""
    from collections.abc import Iterator as It

    def fail(batches: It[pa.RecordBatch]) -> It[pa.RecordBatch]:
        for _ in batches:
            raise InputError("documents table t: row 3 has a text the scorer cannot take; fix it upstream")
        yield from ()

    with pytest.raises(Exception) as task_err:
        spark.range(3).mapInArrow(fail, "id long").collect()
    assert user_message(task_err.value) == (
        "documents table t: row 3 has a text the scorer cannot take; fix it upstream"
    )

    with pytest.raises(Exception) as analysis_err:
        spark.range(1).select("no_such_column").collect()
    message = user_message(analysis_err.value)
    assert message is not None and message.startswith("Spark could not run the job (")
    assert "no_such_column" in message and len(message) < 800
    _no_java_trace(message)
    assert user_message(ValueError("a bug of ours")) is None


def test_selected_holds_each_kept_document_once_with_the_scored_copys_text(spark: Any, bad_run: BadRun) -> None:
    selected = Tables(spark, bad_run.settings).read("selected").filter("array_contains(variants, 'global')").collect()
    ids = [r["doc_id"] for r in selected]
    assert len(ids) == len(set(ids))  # once (selected holds each kept document once, whatever keeps it)
    kept = {d["doc_id"] for d in bad_run.decisions if d["decision"] == "kept"}
    assert set(ids) == kept
    for row in selected:  # the text is the copy that was scored, not another copy with the same id
        assert len(row["text"]) == bad_run.raw[row["doc_id"]]["original_chars"]
