"""Two runs writing the same tables at once (two CLI processes, each with its own Sail server), with the
table root's lease and the request journal turned off (``lease.enabled: false``, ``journal.enabled:
false``; with the lease on, the second run refuses or waits: tests/test_lease_runs.py).

Promise: the ``scores`` table is not corrupted — afterwards it reads fine and holds every key once —
and a Delta commit conflict is either retried (``Tables._retry_conflicts``) or reported as a one-line
message. Not promised: that no document is paid for twice; both runs start from the same pending list,
so documents neither had committed yet are scored by both.

The overlap is made certain, not left to timing: each run waits at a barrier (a hook around
``pipeline.score_waves``, installed by a wrapper script) until both have planned their pending documents,
so both start scoring the whole corpus and their MERGEs into ``scores`` race wave after wave.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import score_keys, write_config

from mira_spark.config import load_settings
from mira_spark.store.schemas import SCORE_KEYS
from mira_spark.store.tables import Tables

pytestmark = pytest.mark.spark

RUN_TIMEOUT_S = 300
BARRIER_TIMEOUT_S = 150
WRITERS = 2
# Runs the CLI with pipeline.score_waves wrapped: record the planned pending count, then wait until every
# writer has planned before scoring, so the runs overlap for certain.
WAIT_FOR_EACH_OTHER = """
import json, sys, time
from pathlib import Path
from mira_spark import cli, pipeline

barrier, me, writers, timeout_s = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
real = pipeline.score_waves

def score_waves(*args):
    summary = args[6]  # score_waves(tables, settings, groups, pending, docs, run_id, summary, progress)
    (barrier / me).write_text(json.dumps({"pending_before": summary.pending_before}))
    deadline = time.monotonic() + timeout_s
    while len(list(barrier.iterdir())) < writers:
        if time.monotonic() > deadline:
            raise SystemExit(f"{me}: the other writer never reached the barrier")
        time.sleep(0.05)
    return real(*args)

pipeline.score_waves = score_waves
sys.exit(cli.main(sys.argv[5:]))
"""


def test_two_runs_on_one_table_root_do_not_corrupt_scores(spark: Any, sample_dir: Path, sim_pool: list[Any],
                                                          tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "tables", str(sample_dir / "documents"),
                       str(sample_dir / "validation"), [h.url for h in sim_pool], scoring={"wave_size": 40},
                       lease={"enabled": False},  # the table root's lease would let only one of them run
                       journal={"enabled": False})  # with it, each run would reuse the other's journaled answers
    for h in sim_pool:
        h.reset()
    env = {**os.environ, "RUST_LOG": "error", "PYTHONUNBUFFERED": "1"}
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen([sys.executable, "-c", WAIT_FOR_EACH_OTHER, str(barrier), f"writer{i}", str(WRITERS),
                          str(BARRIER_TIMEOUT_S), "--log-level", "INFO", "run", "--config", str(cfg),
                          "--run-id", f"writer{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=tmp_path)
        for i in range(WRITERS)
    ]
    results = [p.communicate(timeout=RUN_TIMEOUT_S) for p in procs]
    codes = [p.returncode for p in procs]

    for code, (_out, err) in zip(codes, results, strict=True):
        if code != 0:  # a lost commit race must be reported as our one-line message, not a trace
            assert code == 2, err[-3000:]
            assert "lost" in err and "concurrent writer" in err and "Traceback" not in err, err[-3000:]
    assert 0 in codes, [r[1][-2000:] for r in results]

    tables = Tables(spark, load_settings(cfg))
    scores = tables.read("scores")
    n_rows = scores.count()
    n_keys = scores.select(*SCORE_KEYS).distinct().count()
    assert n_rows == n_keys, f"{n_rows - n_keys} duplicate score rows"
    routed = [r for r in tables.read("decisions").filter("variant = 'global'").collect() if r["reason"] not in ("no_scorer",
                                                                                  "duplicate_doc_id",
                                                                                  "null_doc_id")]
    assert n_keys == len(routed), "every routed document has exactly one score row"
    assert {r["doc_id"] for r in scores.select("doc_id").collect()} == {r["doc_id"] for r in routed}
    assert tables.read("decisions").filter("reason = 'pending'").count() == 0

    # the case the test is about happened: both runs planned the whole routed corpus before either scored
    planned = {p.name: json.loads(p.read_text())["pending_before"] for p in barrier.iterdir()}
    assert planned == {f"writer{i}": len(routed) for i in range(WRITERS)}

    # every request either run paid for is recorded in raw_outputs (none lost, none invented) ...
    requests = sum(sum(h.stats()["requests_by_id"].values()) for h in sim_pool)
    raw = tables.read("raw_outputs").filter("attempts > 0")
    recorded = raw.agg({"attempts": "sum"}).collect()[0][0]
    sent_by = {f"writer{i}": score_keys(raw.filter(f"run_id = 'writer{i}'").collect()) for i in range(WRITERS)}
    if codes == [0] * WRITERS:
        assert recorded == requests
        # ... and, as documented, both runs paid for every document (both planned the same pending list)
        assert sent_by["writer0"] == sent_by["writer1"] and sent_by["writer0"]
    else:  # a run that lost its commit races stopped early; what it sent is still recorded
        assert 0 < recorded <= requests
        assert set().union(*sent_by.values()) <= score_keys(scores.collect())
