"""Smoke runs of the serving benchmarks at tiny sizes: the JSON line parses, has its keys, and is sane.

No timing assertions: benchmarks are commands, their figures live in benchmarks/README.md.
"""

from __future__ import annotations

import json

import pytest

from mira_spark.bench import client_overhead, throughput


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.spark
@pytest.mark.timeout(180)
def test_throughput_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    clients = ["ours", "static", "spark", "naive"]
    if throughput.datatrove_available():
        clients.append("datatrove")
    rc = throughput.main(["--endpoints", "2", "--docs", "32", "--slots", "8", "--speeds", "1,2", "--tasks", "2",
                          "--naive-docs", "4", "--clients", ",".join(clients), "--json-only"])
    assert rc == 0
    out = last_json(capsys.readouterr().out)
    assert out["bench"] == "throughput" and out["endpoints"] == 2
    assert set(out["clients"]) == set(clients)
    for name, row in out["clients"].items():
        missing = [k for k in throughput.JSON_KEYS if k not in row]
        assert not missing, (name, missing)
        assert 0 < row["utilization"] <= 1.05, (name, row["utilization"])
        assert row["overflows"] == 0, name
        assert row["failed"] == 0, name
        assert row["max_requests_per_doc"] <= 1 or name == "datatrove", name  # ids are ours, datatrove sends none
    assert out["clients"]["naive"]["requests"] == 4


def test_throughput_rejects_unknown_client(capsys: pytest.CaptureFixture[str]) -> None:
    assert throughput.main(["--clients", "ours,ray", "--docs", "4"]) == 2


@pytest.mark.timeout(120)
def test_client_overhead_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    rc = client_overhead.main(["--requests", "200", "--in-flight", "16", "--check", "--json-only"])
    assert rc == 0
    out = last_json(capsys.readouterr().out)
    assert out["bench"] == "client-overhead"
    for key in ("requests", "prompt_kb", "requests_per_cpu_s", "requests_per_s", "cpu_ms_per_request", "failed"):
        assert key in out
    assert out["requests"] == 200 and out["failed"] == 0
    assert 28 <= out["prompt_kb"] <= 32
    assert out["requests_per_cpu_s"] > 0
