"""Crash and resume: SIGKILL a real driver mid-run, rerun, and count requests at the simulator.

The kill lands deterministically between a wave's raw_outputs append and its MERGE into scores: the driver
runs with a hook (installed by a small wrapper script) that, on the second wave's MERGE, writes a marker and
SIGKILLs its own process, so the window the test is about is always the one hit.

Also the pool dying mid-run: the run stops cleanly with committed waves kept and the rest deferred, and
a rerun after the endpoints come back scores only what was not committed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, requests_by_key, score_keys, write_config

from mira_spark.config import load_settings
from mira_spark.devtools.bench.faults import write_documents
from mira_spark.devtools.simulator.launcher import SimHandle, start_in_thread, start_processes
from mira_spark.devtools.simulator.server import SimConfig
from mira_spark.store.tables import Tables

pytestmark = pytest.mark.spark

CRASH_WAVE = 40  # 7 waves over the sample corpus
CRASH_AT_WAVE = 2  # killed after this wave's raw append, before its MERGE (wave 1 is merged)
CRASH_TIME_SCALE = 30.0  # ~0.3 s per answer with 4 slots per endpoint
CRASH_SLOTS = 4
POLL_S = 0.005
KILL_DEADLINE_S = 120.0
RUN_TIMEOUT_S = 180.0
# Runs the CLI with the wave's scores commit (Tables.upsert_new_keys) wrapped: when the commit of wave
# CRASH_AT_WAVE is about to start (its raw outputs already appended), record it and SIGKILL this process.
KILL_BETWEEN_APPEND_AND_MERGE = """
import json, os, signal, sys
from mira_spark import cli
from mira_spark.store.tables import Tables

marker, at_wave = sys.argv[1], int(sys.argv[2])
real_append, real_upsert = Tables.append, Tables.upsert_new_keys
seen = {"raw_appends": 0, "score_merges": 0}

def append(self, df, table, schema, **kwargs):
    real_append(self, df, table, schema, **kwargs)
    if table == "raw_outputs":
        seen["raw_appends"] += 1

def upsert(self, df, table, schema, keys):
    if table == "scores" and seen["raw_appends"] == at_wave and seen["score_merges"] == at_wave - 1:
        with open(marker, "w") as fh:
            json.dump(seen, fh)
        os.kill(os.getpid(), signal.SIGKILL)
    real_upsert(self, df, table, schema, keys)
    if table == "scores":
        seen["score_merges"] += 1

Tables.append, Tables.upsert_new_keys = append, upsert
sys.exit(cli.main(sys.argv[3:]))
"""


def _version(table: Path) -> int:
    """Latest committed Delta version of ``table`` (-1 before it exists), from its log directory."""
    log = table / "_delta_log"
    if not log.is_dir():
        return -1
    versions = [int(p.name.split(".")[0]) for p in log.glob("*.json") if p.name.split(".")[0].isdigit()]
    return max(versions, default=-1)


def _driver(config: Path, out: Path, run_id: str, kill_marker: Path | None = None) -> subprocess.Popen[bytes]:
    """The CLI in a child process; with ``kill_marker``, it SIGKILLs itself between append and MERGE."""
    env = {**os.environ, "RUST_LOG": "error", "PYTHONUNBUFFERED": "1"}
    prefix = [sys.executable, "-m", "mira_spark.cli"]
    if kill_marker is not None:
        prefix = [sys.executable, "-c", KILL_BETWEEN_APPEND_AND_MERGE, str(kill_marker), str(CRASH_AT_WAVE)]
    return subprocess.Popen(
        [*prefix, "run", "--config", str(config), "--run-id", run_id],
        cwd=str(REPO), env=env, stdout=out.open("wb"), stderr=subprocess.STDOUT,
    )


def _summary(out: Path) -> dict[str, Any]:
    for line in reversed(out.read_text(encoding="utf-8", errors="replace").splitlines()):
        if line.startswith('{"summary"'):
            return json.loads(line)["summary"]
    raise AssertionError(f"no summary line in {out}:\n{out.read_text()[-3000:]}")


def test_sigkill_mid_run_then_resume(spark: Any, sample_dir: Path, tmp_path: Path) -> None:
    configs = [SimConfig(name=f"crash{i}", slots=CRASH_SLOTS, time_scale=CRASH_TIME_SCALE, seed=i)
               for i in range(2)]
    sims = start_processes(configs)
    try:
        cfg = write_config(tmp_path / "run.yaml", tmp_path / "tables", str(sample_dir / "documents"),
                           str(sample_dir / "validation"), [h.url for h in sims],
                           scoring={"wave_size": CRASH_WAVE},
                           scorers={"pools": {"text_group_b_pool": {"slots_per_endpoint": CRASH_SLOTS}}})
        marker = tmp_path / "killed-between-append-and-merge.json"
        first = _driver(cfg, tmp_path / "first.log", "killed", kill_marker=marker)
        try:
            first.wait(KILL_DEADLINE_S)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(30)
        assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
        # the kill landed where it was meant to: wave CRASH_AT_WAVE appended, only the waves before it merged
        assert json.loads(marker.read_text()) == {"raw_appends": CRASH_AT_WAVE, "score_merges": CRASH_AT_WAVE - 1}
        at_kill = requests_by_key(sims)

        tables = Tables(spark, load_settings(cfg))
        committed = score_keys(tables.read("scores").collect())
        raw_rows = tables.read("raw_outputs").filter("status IN ('ok', 'failed')").collect()
        orphans = score_keys(raw_rows) - committed  # appended by the killed run, never merged
        wave_rows = Counter(r["wave"] for r in raw_rows)
        assert sorted(wave_rows) == list(range(CRASH_AT_WAVE))  # raw outputs of the merged wave and the killed one
        assert len(committed) == wave_rows[0] > 0  # scores hold exactly the first wave
        assert len(orphans) == wave_rows[CRASH_AT_WAVE - 1] > 0  # the killed wave: paid, appended, not merged
        assert _version(tmp_path / "tables" / "scores") == CRASH_AT_WAVE - 1  # v0 empty + one MERGE

        second = _driver(cfg, tmp_path / "second.log", "resumed")
        assert second.wait(RUN_TIMEOUT_S) == 0, (tmp_path / "second.log").read_text()[-3000:]
        summary = _summary(tmp_path / "second.log")
        after = requests_by_key(sims)
    finally:
        for h in sims:
            h.stop()

    # Committed before the kill (merged, or appended and recovered): never requested again.
    for key in committed | orphans:
        assert after[key] == at_kill[key], key
    assert summary["recovered_raw"] == len(orphans)
    routed = summary["documents_in"] - sum(summary["rejected"].values())
    assert summary["pending_before"] == routed - len(committed) - len(orphans)

    # Every document exactly once.
    scores = tables.read("scores")
    assert scores.count() == scores.select("doc_id").distinct().count() == routed
    decisions = tables.read("decisions").filter("variant = 'global'")  # every input row once per variant
    assert decisions.count() == decisions.select("doc_id").distinct().count() == summary["documents_in"]
    assert decisions.filter("reason = 'pending'").count() == 0
    # What the rerun sent is exactly what was not committed (in flight at the kill, or not reached).
    resent = {k for k in after if after[k] > at_kill[k]}
    assert not resent & (committed | orphans)
    # the kill fell between waves, so nothing was in flight: the rerun sent exactly what it recorded sending
    sent_by_rerun = tables.read("raw_outputs").filter("run_id = 'resumed' AND attempts > 0").collect()
    assert resent == score_keys(sent_by_rerun) and resent


# ---- the pool dies mid-run ------------------------------------------------------------------------


def _stop_after_first_wave(sims: list[SimHandle], scores: Path, done: threading.Event) -> threading.Thread:
    def run() -> None:
        deadline = time.monotonic() + KILL_DEADLINE_S
        while time.monotonic() < deadline and not done.is_set():
            if _version(scores) >= 1:
                for h in sims:
                    h.stop()
                return
            time.sleep(POLL_S)

    thread = threading.Thread(target=run, name="kill-pool", daemon=True)
    thread.start()
    return thread


def test_pool_dies_mid_run_stops_cleanly_and_resumes(spark: Any, sample_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mira_spark.pipeline import run_pipeline
    from mira_spark.serving import runner

    # Defer after ~1.5 s of a dead pool instead of 30 s (Sail runs tasks as threads of this process).
    monkeypatch.setattr(runner, "POOL_DOWN_GRACE_MIN_S", 1.0)
    docs = tmp_path / "documents"
    write_documents(docs, 80)
    configs = [SimConfig(name=f"dying{i}", slots=8, time_scale=CRASH_TIME_SCALE) for i in range(2)]
    sims = [start_in_thread(c) for c in configs]  # port 0: each binds a free port itself, so they differ
    ports = [h.port for h in sims]
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "tables", str(docs), str(sample_dir / "validation"),
                       [h.url for h in sims], scoring={"wave_size": 20},
                       scorers={"pools": {"text_group_b_pool": {
                           "slots_per_endpoint": 8, "connect_timeout_s": 1.0, "backoff_max_s": 0.2}}})
    settings = load_settings(cfg)
    done = threading.Event()
    killer = _stop_after_first_wave(sims, tmp_path / "tables" / "scores", done)
    try:
        first = run_pipeline(spark, settings, run_id="dying")
    finally:
        done.set()
        killer.join(10)
        for h in sims:
            h.stop()

    assert first.stopped and "rerun" in first.stopped
    tables = Tables(spark, settings)
    committed = score_keys(tables.read("scores").collect())
    assert committed, "the wave committed before the pool died was lost"
    deferred = score_keys(tables.read("raw_outputs").filter("status = 'deferred'").collect())
    assert not deferred & committed
    decisions = tables.read("decisions").filter("variant = 'global'")  # every input row once per variant
    assert decisions.count() == decisions.select("doc_id").distinct().count() == first.documents_in
    pending = {r["doc_id"] for r in decisions.filter("reason = 'pending'").collect()}
    routed = first.documents_in - sum(first.rejected.values())
    assert len(pending) == routed - len(committed) > 0

    # Endpoints back on the same ports with fresh counters: the rerun sends only what was not committed.
    sims = [start_in_thread(c, port=p) for c, p in zip(configs, ports, strict=True)]
    try:
        second = run_pipeline(spark, settings, run_id="after-restart")
        sent = requests_by_key(sims)
    finally:
        for h in sims:
            h.stop()
    assert second.stopped is None
    assert not set(sent) & committed
    scores = tables.read("scores")
    assert scores.count() == scores.select("doc_id").distinct().count() == routed
    assert tables.read("decisions").filter("reason = 'pending'").count() == 0
