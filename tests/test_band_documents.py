"""Which documents adaptive sampling pays for (``select.band_documents``), on Sail, from crafted decisions.

The cap is filled exactly: nearest step first, and inside the step the cap splits, the order of
``xxhash64(doc_id, scorer)``, then doc_id, whatever the row order or partitioning.
"""

from __future__ import annotations

from typing import Any

import pytest

from mira_spark.selection.hashing import spark_xxhash64
from mira_spark.selection.select import band_documents

pytestmark = pytest.mark.spark

DDL = "variant string, doc_id string, scorer string, composite double, threshold double, reason string"
SCORER = "g"


def _decisions(spark: Any, rows: list[tuple], partitions: int) -> Any:
    return spark.createDataFrame(rows, DDL).repartition(partitions)


def _rows() -> list[tuple]:
    """10 documents at 0.2 points from the cut, 30 tied at 0.5, 10 at 1.0, 5 outside the band; a document
    near a cut in one variant only; rows that cannot flip (vetoed, random's null threshold)."""
    rows = []
    for i in range(10):
        rows.append(("global", f"near-{i:02d}", SCORER, 60.2, 60.0, "selected"))
    for i in range(30):
        rows.append(("global", f"tied-{i:02d}", SCORER, 59.5, 60.0, "below_threshold"))
        rows.append(("source", f"tied-{i:02d}", SCORER, 59.5, 70.0, "below_threshold"))  # 10.5 away: min wins
    for i in range(10):
        rows.append(("global", f"far-{i:02d}", SCORER, 50.0, 60.0, "below_threshold"))
        rows.append(("source", f"far-{i:02d}", SCORER, 51.0, 50.0, "selected"))  # 1.0 from this cut
    for i in range(5):
        rows.append(("global", f"out-{i:02d}", SCORER, 40.0, 60.0, "below_threshold"))
    rows.append(("global", "vetoed", SCORER, 60.0, 60.0, "recommendation_drop"))
    rows.append(("random", "near-00", SCORER, 60.2, None, "selected"))
    return rows


@pytest.mark.parametrize("partitions", [1, 7])
def test_the_cap_is_filled_exactly_and_ties_go_by_hash(spark: Any, partitions: int) -> None:
    cap = 10 + 13  # every document of the nearest step and 13 of the 30 tied at 0.5
    near, n_near = band_documents(spark, _decisions(spark, _rows(), partitions), band=1.5, max_docs=cap)
    got = {r["doc_id"] for r in near.collect()}
    assert n_near == 50  # near + tied + far; out, vetoed and random are not in the band
    assert len(got) == cap
    assert {f"near-{i:02d}" for i in range(10)} <= got
    tied = sorted((f"tied-{i:02d}" for i in range(30)), key=lambda d: (spark_xxhash64(d, SCORER), d))
    assert got - {f"near-{i:02d}" for i in range(10)} == set(tied[:13])


def test_no_cap_or_a_cap_above_the_band_takes_the_whole_band(spark: Any) -> None:
    df = _decisions(spark, _rows(), 3)
    for cap in (None, 50, 1000):
        near, n_near = band_documents(spark, df, band=1.5, max_docs=cap)
        got = {r["doc_id"] for r in near.collect()}
        assert n_near == 50 and len(got) == 50 and not any(d.startswith("out-") for d in got)


def test_a_cap_of_zero_takes_nothing(spark: Any) -> None:
    near, n_near = band_documents(spark, _decisions(spark, _rows(), 2), band=1.5, max_docs=0)
    assert n_near == 50 and near.count() == 0
