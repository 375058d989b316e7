"""``mira-spark bench select``: wall time of reliability + composite + thresholds + decisions at scale.

Takes ``--rows N`` (score rows; repeatable, e.g. ``--rows 1000000 --rows 10000000``), ``--engine sail|classic``
(Sail on Delta, or classic ``local[*]`` Spark on parquet), ``--sources``, ``--validated`` (teacher-scored
documents); gives a table (rows, engine, seconds per phase, rows/s) and a final JSON line
``{"bench": "select", ...}``.

The score table is synthetic and generated *in Spark* from ``spark.range`` with hash expressions (no driver
rows): a latent quality q per document, 15 dimension scores ``8 q + noise`` in tenths (so scores take ~100
distinct values and composites tie heavily), token counts 100-3,099, 1% failed rows, ``--sources`` sources
over 3 scorer groups. Generation and the table writes are timed apart from the selection. The selection
runs the job's own functions with the default variants (Global / Group / Source / Random at 50% of the
tokens): ``reliability`` (pair counts + the confidence maths, written), then the composite, the pass-1 /
pass-2 cuts of every variant and the ``decisions`` and ``thresholds`` writes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mira_spark.config import ReliabilityConfig, SelectionConfig
from mira_spark.devtools.bench.common import print_table
from mira_spark.prompting.rubric import rubric_from_names
from mira_spark.store.schemas import TABLE_SLOTS, slot_score

GROUPS = ("text", "code", "zh")
DEFAULT_ROWS = 1_000_000
DEFAULT_SOURCES = 6
DEFAULT_VALIDATED = 6_000


def _synthetic_scores(spark: Any, rows: int, sources: int) -> Any:
    from pyspark.sql import functions as F

    def unit(salt: str, modulus: int) -> Any:
        return F.pmod(F.xxhash64(F.col("id"), F.lit(salt)), F.lit(modulus))

    q = unit("q", 1000) / F.lit(1000.0)
    src = unit("source", sources).cast("int")
    failed = unit("fail", 100) == 0
    cols = [
        F.concat(F.lit("d"), F.col("id").cast("string")).alias("doc_id"),
        F.concat(F.lit("src"), src.cast("string")).alias("source"),
        F.element_at(F.array(*[F.lit(g) for g in GROUPS]), F.pmod(src, F.lit(len(GROUPS))) + 1).alias("scorer"),
        F.when(failed, F.lit("failed")).otherwise(F.lit("ok")).alias("status"),
        F.when(failed, F.lit("http_503: busy")).alias("error"),
        F.when(~failed, F.lit("ok")).alias("parse_status"),
        *[F.when(~failed, F.least(F.lit(10.0), F.greatest(F.lit(0.0), F.round(
            F.lit(8.0) * q + (unit(f"n{i}", 41) - F.lit(20)) / F.lit(10.0), 1)))).alias(slot_score(i))
          for i in TABLE_SLOTS],
        F.lit(None).cast("int").alias("overall"),
        F.lit("keep").alias("training_recommendation"),
        (F.lit(100) + unit("tokens", 3000)).alias("tokens"),
        F.lit(True).alias("tokens_estimated"),
    ]
    return spark.range(rows).select(*cols)


def _synthetic_validation(spark: Any, validated: int) -> Any:
    from pyspark.sql import functions as F

    q = F.pmod(F.xxhash64(F.col("id"), F.lit("q")), F.lit(1000)) / F.lit(1000.0)
    cells = F.explode(F.array(*[F.struct(F.lit(f"A{i}").alias("slot"), F.least(F.lit(10.0), F.greatest(
        F.lit(0.0), F.round(F.lit(8.0) * q + (F.pmod(F.xxhash64(F.col("id"), F.lit(f"t{i}")), F.lit(11))
                                              - F.lit(5)) / F.lit(10.0), 1))).alias("teacher_score"))
        for i in TABLE_SLOTS]))
    return spark.range(validated).select(F.concat(F.lit("d"), F.col("id").cast("string")).alias("doc_id"),
                                         cells.alias("c")).select("doc_id", "c.slot", "c.teacher_score")


@contextlib.contextmanager
def _session(engine: str) -> Iterator[Any]:
    from mira_spark.store.engines import local_session, sail_session

    cm = sail_session("mira-bench-select") if engine == "sail" else local_session("mira-bench-select")
    with cm as spark:
        yield spark


def run_once(spark: Any, engine: str, rows: int, sources: int, validated: int, work: Path) -> dict[str, Any]:
    from mira_spark.selection.aggregation import add_composite, cell_weights, composite_plan
    from mira_spark.selection.reliability import compute_reliability
    from mira_spark.selection.select import select_documents
    from mira_spark.store.schemas import DECISIONS_SCHEMA, RELIABILITY_SCHEMA, conform

    fmt = "delta" if engine == "sail" else "parquet"

    def write(df: Any, name: str) -> Any:
        path = str(work / f"{name}-{rows}")
        df.write.format(fmt).mode("overwrite").save(path)
        return spark.read.format(fmt).load(path)

    t0 = time.perf_counter()
    scores = write(_synthetic_scores(spark, rows, sources), "scores")
    validation = write(_synthetic_validation(spark, validated), "validation")
    generate_s = time.perf_counter() - t0

    rubrics = {g: rubric_from_names(g, [f"dimension {i}" for i in TABLE_SLOTS]) for g in GROUPS}
    cfg = SelectionConfig()
    t1 = time.perf_counter()
    reliability = write(conform(compute_reliability(spark, scores, validation, rubrics, ReliabilityConfig()),
                                RELIABILITY_SCHEMA), "reliability")
    masked = reliability.filter("masked").count()
    t2 = time.perf_counter()
    plan = composite_plan(rubrics, cfg)
    scored = add_composite(scores, cell_weights(spark, reliability, plan), plan, cfg)
    empty = spark.createDataFrame([], "doc_id string, source string, scorer string, reason string")
    version = reliability.select("mask_version").first()["mask_version"]
    selection = select_documents(spark, scored, empty, empty, cfg, plan, version)
    t3 = time.perf_counter()
    decisions = write(conform(selection.decisions, DECISIONS_SCHEMA), "decisions")
    write(selection.thresholds, "thresholds")
    t4 = time.perf_counter()
    n_decisions = decisions.count()
    kept = {v: sum(k for k, _n in units.values()) for v, units in selection.counts.items()}
    return {
        "engine": f"{engine} ({fmt})", "rows": rows, "generate_s": generate_s, "reliability_s": t2 - t1,
        "cuts_s": t3 - t2, "decisions_s": t4 - t3, "total_s": t4 - t1, "rows_per_s": rows / (t4 - t1),
        "decisions": n_decisions, "masked_cells": masked, "kept": kept,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mira-spark bench select", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help=f"score rows (repeatable; default {DEFAULT_ROWS})")
    parser.add_argument("--engine", choices=("sail", "classic"), action="append",
                        help="sail (Delta) and/or classic (local[*], parquet); default sail")
    parser.add_argument("--sources", type=int, default=DEFAULT_SOURCES)
    parser.add_argument("--validated", type=int, default=DEFAULT_VALIDATED, help="teacher-scored documents")
    parser.add_argument("--work", type=Path, default=None, help="directory for the tables (default: a temp dir)")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="mira-bench-select-") as tmp:
        work = args.work or Path(tmp)
        for engine in args.engine or ["sail"]:
            with _session(engine) as spark:
                for rows in args.rows or [DEFAULT_ROWS]:
                    results.append(run_once(spark, engine, rows, args.sources, args.validated, work))
                    print(f"done {engine} {rows} rows: {results[-1]['total_s']:.1f} s", file=sys.stderr)
    print_table(results, [("engine", "engine", ""), ("rows", "score rows", ",d"), ("generate_s", "generate s", ".1f"),
                          ("reliability_s", "reliability s", ".1f"), ("cuts_s", "composite+cuts s", ".1f"),
                          ("decisions_s", "decisions write s", ".1f"), ("total_s", "total s", ".1f"),
                          ("rows_per_s", "rows/s", ",.0f"), ("decisions", "decision rows", ",d")])
    print(json.dumps({"bench": "select", "variants": [v.name for v in SelectionConfig().variants],
                      "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
