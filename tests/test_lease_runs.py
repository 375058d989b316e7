"""Two CLI runs started together on one table root: one scores, the other refuses (or waits), and no
document is requested twice.

The overlap is made certain: each run waits at a barrier (a wrapper script around ``pipeline.open_run``)
until both are about to take the lease, so both ask for it within milliseconds while neither holds it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config

from mira_spark.config import load_settings
from mira_spark.store.tables import Tables

pytestmark = pytest.mark.spark

RUN_TIMEOUT_S = 300
BARRIER_TIMEOUT_S = 150
# Runs the CLI with pipeline.open_run wrapped: wait until both runs are about to take the lease.
MEET_AT_OPEN_RUN = """
import sys, time
from pathlib import Path
from mira_spark import cli, pipeline

barrier, me, timeout_s = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
real = pipeline.open_run

def open_run(*args, **kwargs):
    (barrier / me).write_text("here")
    deadline = time.monotonic() + timeout_s
    while len(list(barrier.iterdir())) < 2:
        if time.monotonic() > deadline:
            raise SystemExit(f"{me}: the other run never reached the barrier")
        time.sleep(0.01)
    return real(*args, **kwargs)

pipeline.open_run = open_run
sys.exit(cli.main(sys.argv[4:]))
"""


def _two_runs(cfg: Path, tmp_path: Path, extra: list[str]) -> list[tuple[int, str, str]]:
    env = {**os.environ, "RUST_LOG": "error", "PYTHONUNBUFFERED": "1"}
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", MEET_AT_OPEN_RUN, str(barrier), f"run{i}", str(BARRIER_TIMEOUT_S),
                               "--log-level", "INFO", "run", "--config", str(cfg), "--run-id", f"run{i}", *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for i in range(2)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=RUN_TIMEOUT_S)
        out.append((p.returncode, stdout, stderr))
    return out


def _requests(sims: list[Any]) -> tuple[Counter[str], Counter[str]]:
    sent: Counter[str] = Counter()
    repairs: Counter[str] = Counter()
    for h in sims:
        stats = h.stats()
        sent.update(stats["requests_by_id"])
        repairs.update(stats["repairs_by_id"])
    return sent, repairs


def _config(tmp_path: Path, sample_dir: Path, sim_pool: list[Any]) -> Path:
    for h in sim_pool:
        h.reset()
    return write_config(tmp_path / "run.yaml", tmp_path / "tables", str(sample_dir / "documents"),
                        str(sample_dir / "validation"), [h.url for h in sim_pool], scoring={"wave_size": 100},
                        lease={"heartbeat_s": 0.5, "stale_after_s": 60})


def _check_once(tables: Tables, sim_pool: list[Any]) -> int:
    """No document was requested twice (repairs are follow-ups of one request, counted apart)."""
    sent, repairs = _requests(sim_pool)
    assert sent and all(n - repairs[k] == 1 for k, n in sent.items()), \
        [(k, n, repairs[k]) for k, n in sent.items() if n - repairs[k] != 1][:5]
    scores = tables.read("scores")
    assert scores.count() == scores.select("doc_id").distinct().count()
    assert scores.filter("attempts > 0").count() == len(sent)  # every request made became one score row
    return scores.count()


def test_second_run_on_one_root_refuses_naming_the_holder(spark: Any, sample_dir: Path, sim_pool: list[Any],
                                                          tmp_path: Path) -> None:
    cfg = _config(tmp_path, sample_dir, sim_pool)
    results = _two_runs(cfg, tmp_path, [])
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [r[2][-2000:] for r in results]
    winner = next(i for i, (code, _, _) in enumerate(results) if code == 0)
    _, _, refused_err = results[1 - winner]
    lines = [ln for ln in refused_err.splitlines() if ln.startswith("mira-spark:")]
    assert len(lines) == 1 and "table root in use" in lines[0] and f"in use by run{winner} on host" in lines[0], \
        refused_err[-2000:]
    assert "--wait-for-lease" in lines[0] and "Traceback" not in refused_err
    _check_once(Tables(spark, load_settings(cfg)), sim_pool)


def test_second_run_waits_for_the_lease_then_sends_nothing(spark: Any, sample_dir: Path, sim_pool: list[Any],
                                                            tmp_path: Path) -> None:
    cfg = _config(tmp_path, sample_dir, sim_pool)
    results = _two_runs(cfg, tmp_path, ["--wait-for-lease"])
    assert [code for code, _, _ in results] == [0, 0], [r[2][-2000:] for r in results]
    summaries = [_summary(stdout) for _, stdout, _ in results]
    waited = [i for i, (_, _, err) in enumerate(results) if "waiting" in err and "is in use by" in err]
    assert len(waited) == 1, [r[2][-1500:] for r in results]  # the case meant: one of them really waited
    first, second = summaries[1 - waited[0]], summaries[waited[0]]
    n = _check_once(Tables(spark, load_settings(cfg)), sim_pool)
    assert first["pending_before"] == n and first["requests_sent"] > 0
    assert second["pending_before"] == 0 and second["requests_sent"] == 0


def _summary(stdout: str) -> dict[str, Any]:
    import json

    for line in reversed(stdout.splitlines()):
        if line.startswith('{"summary"'):
            return json.loads(line)["summary"]
    raise AssertionError(stdout[-2000:])
