"""Smoke runs of the serving benchmarks at tiny sizes: the JSON line parses, has its keys, and is sane.

No timing assertions: benchmarks are commands, their figures live in benchmarks/README.md.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from mira_spark.devtools.bench import client_overhead, table_path, throughput


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


@pytest.mark.spark
@pytest.mark.timeout(180)
def test_throughput_fixed_fifo_plain_jobs_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 7's regime: fixed service, strict FIFO, the plain client, two jobs of ours, two Spark tasks."""
    docs = 40
    rc = throughput.main(["--endpoints", "2", "--docs", str(docs), "--slots", "4", "--speeds", "1,2",
                          "--service", "fixed", "--service-s", "0.2", "--service-dist", "exponential", "--fifo",
                          "--metrics-poll-s", "0.2", "--jobs", "2", "--tasks", "2",
                          "--clients", "ours,plain,spark", "--json-only"])
    assert rc == 0
    out = last_json(capsys.readouterr().out)
    assert out["service"] == {"service": "fixed", "service_s": 0.2, "service_distribution": "exponential",
                              "fifo": True}
    assert out["jobs"] == 2 and out["metrics_poll_s"] == 0.2
    assert set(out["clients"]) == {"ours", "plain", "spark"}
    for name, row in out["clients"].items():
        assert row["capacity_rps"] == pytest.approx(4 * 3 / 0.2), name  # slots x sum(speeds) / service_s
        assert row["requests"] == docs and row["failed"] == 0 and row["overflows"] == 0, name
        assert row["max_requests_per_doc"] == 1, name
        assert 0 < row["utilization"] <= 1.05 and 0 < row["utilization_pool_window"] <= 1.0, name
        assert len(row["busy_by_endpoint"]) == 2 and all(0 <= b <= 1 for b in row["busy_by_endpoint"]), name
        assert 0 <= row["queued_while_idle_mean"] <= row["queued_mean"] + 1e-9, name
        assert row["change_log_truncated"] is False, name
    assert out["clients"]["ours"]["jobs"] == 2 and len(out["clients"]["ours"]["max_client_in_flight"]) == 2
    # plain caps its own outstanding requests at each endpoint's slots: nothing ever waits at a server
    assert out["clients"]["plain"]["queued_mean"] == 0.0
    assert out["clients"]["spark"]["concurrent_tasks"] == 2


@pytest.mark.parametrize("bad", [["--service", "fixed", "--service-s", "0"], ["--jobs", "0"],
                                 ["--metrics-poll-s", "-1"]])
def test_throughput_rejects_bad_service_flags(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert throughput.main(["--docs", "4", "--clients", "plain", *bad]) == 2


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


@pytest.mark.timeout(180)
def test_client_overhead_ours_and_openai_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openai", reason="the openai client is in the test extra")
    rc = client_overhead.main(["--requests", "100", "--in-flight", "16", "--clients", "ours,openai", "--check",
                               "--json-only"])
    assert rc == 0
    out = last_json(capsys.readouterr().out)
    assert list(out["clients"]) == ["ours", "openai"] and out["client"] == "ours"
    for name, row in out["clients"].items():
        assert row["client"] == name and row["requests"] == 100 and row["failed"] == 0, row
        assert row["requests_per_cpu_s"] > 0 and row["cpu_ms_per_request"] > 0
        assert row["prompt_kb"] == out["prompt_kb"]  # same prompts for both


def test_client_overhead_rejects_unknown_client(capsys: pytest.CaptureFixture[str]) -> None:
    assert client_overhead.main(["--clients", "ours,httpx", "--requests", "4"]) == 2
    assert "unknown client" in capsys.readouterr().err


@pytest.mark.spark
@pytest.mark.timeout(180)
def test_table_path_smoke(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    from deltalake import DeltaTable

    # rows 499 and 999 repeat the id before them; rows 199, 399, 599, 799, 1199 have an unrouted source (row
    # 999 takes the source of its original, 998); ~1% of the rest are pending
    docs = 1200
    rc = table_path.main(["--docs", str(docs), "--root", str(tmp_path), "--json-only"])
    assert rc == 0
    out = last_json(capsys.readouterr().out)
    assert out["bench"] == "table-path" and out["docs"] == docs
    assert list(out["steps"]) == [name for name, _ in table_path.STEPS]
    assert all(v > 0 for v in out["steps"].values()) and out["total_s"] > 0
    counts = out["counts"]
    assert counts["documents_in"] == docs
    assert counts["rejected"] == {"duplicate_doc_id": 2, "no_scorer": 5}
    assert counts["pending"] > 0
    assert out["written"]["scores"] == docs - 7 - counts["pending"]
    for step in out["steps"]:
        assert out["text_exchanges"][step]["plans"] >= 1, step
    # the stages really ran: every input row has one decision, the pending ones say so
    decisions = DeltaTable(str(tmp_path / "tables" / "decisions")).to_pandas()
    variants = decisions["variant"].nunique()
    assert variants == 4 and len(decisions) == docs * variants  # once per variant (default variants)
    assert (decisions["reason"] == "pending").sum() == counts["pending"] * variants
    assert sum(counts["kept"].values()) == (decisions["decision"] == "kept").sum() > 0


@pytest.mark.spark
def test_table_path_counts_exchanges_that_carry_text(spark: Any, tmp_path: Any) -> None:
    from pyspark.sql import functions as F

    spark.range(100).select(F.col("id").cast("string").alias("doc_id"),
                            F.concat(F.lit("t"), F.col("id").cast("string")).alias("text")
                            ).write.format("delta").save(str(tmp_path / "docs"))
    docs = spark.read.format("delta").load(str(tmp_path / "docs"))  # text followed from the scan
    carrying = table_path.text_exchanges(table_path.parse_plan(table_path.plan_text(docs.repartition(3, "doc_id"))))
    narrow = docs.select("doc_id").repartition(3, "doc_id")
    keys_only = table_path.text_exchanges(table_path.parse_plan(table_path.plan_text(narrow)))
    hashed = docs.select("doc_id", F.xxhash64("text").alias("h")).repartition(3, "doc_id")
    hashed_only = table_path.text_exchanges(table_path.parse_plan(table_path.plan_text(hashed)))
    assert carrying[0] >= 1 and carrying[1] >= carrying[0]
    assert keys_only[0] == 0 and keys_only[1] >= 1
    assert hashed_only[0] == 0 and hashed_only[1] >= 1


@pytest.mark.spark
@pytest.mark.timeout(300)
def test_soak_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """The soak at 10 waves of 30 documents: every document accounted for, one sample per wave.

    Growth is not asserted here (at 30 documents a wave the allocator's noise is the signal); the
    benchmark command asserts it at 200,000 documents (benchmarks/README.md).
    """
    from mira_spark.devtools.bench import soak

    rc = soak.main(["--docs", "300", "--wave-size", "30"])
    out = last_json(capsys.readouterr().out)
    assert out["bench"] == "soak" and out["waves"] == 10 and len(out["samples"]) == 10
    assert all(s["retained_mb"] > 0 and s["rss_mb"] > 0 and s["fds"] > 0 for s in out["samples"])
    # Where memory sits: the mapping kinds add up to the retained sample they were read next to.
    for s in out["samples"]:
        assert set(soak.PARTS) <= set(s["parts"]) and s["parts"]["threads"] > 1
        mapped = s["parts"]["heap"] + s["parts"]["anon"] + s["parts"]["file"]
        assert abs(mapped - s["retained_mb"]) < 0.1 * s["retained_mb"], s
    acc = out["accounting"]
    assert out["clean"] and acc["lost"] == 0 and acc["duplicated"] == 0 and acc["failed_without_reason"] == 0
    assert acc["documents_in"] == 300 and sum(acc["faults"].values()) > 0  # faults were injected
    assert acc["ok"] + sum(acc["failed"].values()) + acc["deferred"] == acc["routed"]
    assert rc == (0 if out["flat"] else 1)
