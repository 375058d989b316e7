"""The reliability stage Spark runs, against the pure reference (``stats``) and scipy, and its fallbacks.

Teacher scores here are written by hand or drawn from a seeded RNG, never derived from the simulator's
judge, so agreement is not built in.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest
import scipy.stats

from mira_spark.config import ReliabilityConfig
from mira_spark.prompting.rubric import Rubric, rubric_from_names
from mira_spark.selection import stats
from mira_spark.selection.reliability import compute_reliability

pytestmark = pytest.mark.spark

N_SLOTS = 15
SCORES_DDL = "doc_id string, source string, scorer string, status string, " + ", ".join(
    f"a{i}_score double" for i in range(1, N_SLOTS + 1)
)
VALIDATION_DDL = "doc_id string, source string, slot string, teacher_score double"


def _rubric(name: str) -> Rubric:
    return rubric_from_names(name, [f"Dimension {i}" for i in range(1, N_SLOTS + 1)])


def _frames(spark: Any, students: dict[tuple[str, str, str], dict[str, float | None]],
            teachers: dict[tuple[str, str], float]) -> tuple[Any, Any]:
    """``students[(doc_id, source, scorer)][slot]`` and ``teachers[(doc_id, slot)]`` as score/validation frames."""
    score_rows = [
        (doc, source, scorer, "ok", *[slots.get(f"A{i}") for i in range(1, N_SLOTS + 1)])
        for (doc, source, scorer), slots in students.items()
    ]
    source_of = {doc: source for doc, source, _ in students}
    val_rows = [(doc, source_of.get(doc, "?"), slot, t) for (doc, slot), t in teachers.items()]
    return spark.createDataFrame(score_rows, SCORES_DDL), spark.createDataFrame(val_rows, VALIDATION_DDL)


def _rows(reliability: Any) -> dict[tuple[str, str], Any]:
    return {(r["source"], r["slot"]): r for r in reliability.collect()}


def _tied_scores(rng: random.Random) -> float:
    """0..10 in whole and half points (many ties), zero sometimes as -0.0 (a parser or a teacher pipeline can
    produce it; Sail ranks -0.0 and 0.0 apart, shared/notes/engines.md item 10)."""
    value = rng.choice([0.0, 0.0, 0.5, 1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 5.0, 7.5, 8.0, 10.0])
    return -0.0 if value == 0.0 and rng.random() < 0.5 else value


def test_spark_spearman_and_mae_match_the_reference_and_scipy_on_tied_data(spark: Any) -> None:
    rng = random.Random(20261201)
    sources = {"web_a": 70, "web_b": 45, "web_c": 25}
    students: dict[tuple[str, str, str], dict[str, float | None]] = {}
    teachers: dict[tuple[str, str], float] = {}
    for source, n in sources.items():
        for k in range(n):
            doc = f"{source}-{k}"
            slots: dict[str, float | None] = {}
            for i in range(1, N_SLOTS + 1):
                slot = f"A{i}"
                s = _tied_scores(rng)
                slots[slot] = None if rng.random() < 0.05 else s  # a missing score is no pair
                # teachers agree loosely on low slots, not at all on high ones
                t = s + rng.choice([-1.0, 0.0, 0.0, 1.0]) if i <= 10 else _tied_scores(rng)
                t = min(10.0, max(0.0, t))
                teachers[(doc, slot)] = -0.0 if t == 0.0 and rng.random() < 0.5 else t
            students[(doc, source, "g")] = slots
    scores, validation = _frames(spark, students, teachers)
    cfg = ReliabilityConfig(max_mae=2.0, min_spearman=0.3, min_n=20)
    got = _rows(compute_reliability(spark, scores, validation, {"g": _rubric("g")}, cfg))

    negative_zeros = 0
    for source in sources:
        for i in range(1, N_SLOTS + 1):
            slot = f"A{i}"
            pairs = [(teachers[(doc, slot)], sl[slot]) for (doc, src, _), sl in students.items()
                     if src == source and sl[slot] is not None]
            ts, ss = [p[0] for p in pairs], [float(p[1]) for p in pairs]
            negative_zeros += sum(1 for x in ts + ss if x == 0.0 and math.copysign(1.0, x) < 0)
            assert len(set(ss)) < 0.6 * len(ss) and len(set(ts)) < 0.6 * len(ts)  # heavily tied, as meant
            row = got[(source, slot)]
            assert row["n"] == len(pairs)
            assert row["mae"] == pytest.approx(stats.mae(ts, ss), abs=1e-12)
            ref = stats.spearman(ts, ss)
            assert ref is not None
            assert row["spearman"] == pytest.approx(ref, abs=1e-9), (source, slot)
            assert row["spearman"] == pytest.approx(scipy.stats.spearmanr(ts, ss).statistic, abs=1e-9)
            _check_intervals(row, ts, ss)
            assert row["basis"] == "source"
            # point rule on the shrunk estimates the rule saw
            assert row["masked"] == (row["used_mae"] > cfg.max_mae or row["used_spearman"] < cfg.min_spearman)
    assert _check_shrinkage(got, students, teachers, cfg.kappa) >= 10
    assert negative_zeros > 50  # the -0.0 case really is in the data
    # the data really exercises both outcomes
    assert any(r["masked"] for r in got.values()) and not all(r["masked"] for r in got.values())


Z95 = scipy.stats.norm.ppf(0.975)


def _check_intervals(row: Any, ts: list[float], ss: list[float]) -> None:
    """Fisher z with the Bonett-Wright SE (>= 5 distinct teacher values) and the normal MAE interval."""
    n, rho = len(ts), row["spearman"]
    if len(set(ts)) >= 5:
        assert row["ci_method"] == "fisher"
        half = Z95 * math.sqrt((1 + rho * rho / 2) / (n - 3))
        assert (row["spearman_lo"], row["spearman_hi"]) == pytest.approx(
            (math.tanh(math.atanh(rho) - half), math.tanh(math.atanh(rho) + half)), abs=1e-9)
    else:
        assert row["ci_method"] == "bootstrap"
        assert row["spearman_lo"] <= rho <= row["spearman_hi"]
    err = np.abs(np.array(ts) - np.array(ss))
    half = Z95 * err.std(ddof=1) / math.sqrt(n)
    assert (row["mae_lo"], row["mae_hi"]) == pytest.approx((max(0.0, err.mean() - half), err.mean() + half), abs=1e-9)


def _check_shrinkage(got: dict[tuple[str, str], Any], students: dict, teachers: dict, kappa: float) -> int:
    """DerSimonian-Laird on Fisher z per slot over the sources (textbook formulas in numpy), and MAE with kappa.

    Returns the slots checked (those where every cell has a Fisher interval)."""
    checked = 0
    for i in range(1, N_SLOTS + 1):
        slot = f"A{i}"
        cells = sorted(src for src, sl in got if sl == slot)
        y = np.array([math.atanh(got[(c, slot)]["spearman"]) for c in cells])
        v = np.array([(1 + got[(c, slot)]["spearman"] ** 2 / 2) / (got[(c, slot)]["n"] - 3) for c in cells])
        if any(got[(c, slot)]["ci_method"] != "fisher" for c in cells):
            continue
        w = 1 / v
        q = float((w * (y - (w * y).sum() / w.sum()) ** 2).sum())
        tau2 = max(0.0, (q - (len(y) - 1)) / (w.sum() - (w * w).sum() / w.sum()))
        mu = float(((1 / (v + tau2)) * y).sum() / (1 / (v + tau2)).sum())
        b = v / (v + tau2)
        shrunk = np.tanh((1 - b) * y + b * mu)
        for c, want in zip(cells, shrunk, strict=True):
            assert got[(c, slot)]["spearman_shrunk"] == pytest.approx(float(want), abs=1e-9)
        pooled = [abs(teachers[(doc, slot)] - sl[slot]) for (doc, _s, _g), sl in students.items()
                  if sl[slot] is not None]
        mae_g = sum(pooled) / len(pooled)
        for c in cells:
            r = got[(c, slot)]
            assert r["mae_shrunk"] == pytest.approx((r["n"] * r["mae"] + kappa * mae_g) / (r["n"] + kappa), abs=1e-9)
        checked += 1
    return checked


def test_few_pairs_take_the_group_decision_and_no_pairs_keep_the_dimension(spark: Any) -> None:
    """``basis = group`` when a source has < min_n pairs but its group has enough; ``none`` when neither."""
    cfg = ReliabilityConfig(max_mae=2.0, min_spearman=0.3, min_n=20)
    students: dict[tuple[str, str, str], dict[str, float | None]] = {}
    teachers: dict[tuple[str, str], float] = {}

    def add(doc: str, source: str, scorer: str, student: float, teacher_a1: float, teacher_a2: float) -> None:
        students[(doc, source, scorer)] = {f"A{i}": student for i in range(1, N_SLOTS + 1)}
        teachers[(doc, "A1")] = teacher_a1
        teachers[(doc, "A2")] = teacher_a2

    # scorer g1: "big" has 30 teacher pairs on A1 and A2: A1 agrees, A2 is reversed (masked)
    for k in range(30):
        s = float(k % 11)
        add(f"big-{k}", "big", "g1", s, s, 10.0 - s)
    # "small" (same group) has 5 pairs that agree perfectly on both slots: too few to decide alone
    for k in range(5):
        s = float(2 * k)
        add(f"small-{k}", "small", "g1", s, s, s)
    # "unlabelled" (same group) has scores but no teacher rows at all
    for k in range(4):
        students[(f"unl-{k}", "unlabelled", "g1")] = {f"A{i}": 5.0 for i in range(1, N_SLOTS + 1)}
    # scorer g2: "lonely" has 3 pairs, and its whole group has only those 3
    for k in range(3):
        add(f"lonely-{k}", "lonely", "g2", float(k), 9.0 - k, 9.0 - k)
    scores, validation = _frames(spark, students, teachers)
    got = _rows(compute_reliability(spark, scores, validation, {"g1": _rubric("g1"), "g2": _rubric("g2")}, cfg))

    assert len(got) == 4 * N_SLOTS  # every source x every slot of its rubric
    big_a1, big_a2 = got[("big", "A1")], got[("big", "A2")]
    assert (big_a1["basis"], big_a1["masked"], big_a1["n"]) == ("source", False, 30)
    assert (big_a2["basis"], big_a2["masked"]) == ("source", True)
    assert big_a2["spearman"] == pytest.approx(-1.0)

    # small: its own pairs agree, but n < min_n: the group (35 pooled pairs) decides, so A2 is masked
    group_a2 = [(10.0 - float(k % 11), float(k % 11)) for k in range(30)] + [(float(2 * k), float(2 * k))
                                                                          for k in range(5)]
    ts, ss = zip(*group_a2, strict=True)
    small_a2 = got[("small", "A2")]
    assert small_a2["n"] == 5 and small_a2["basis"] == "group"
    assert small_a2["spearman"] == pytest.approx(1.0)  # the cell keeps its own statistics...
    assert small_a2["used_mae"] == pytest.approx(stats.mae(ts, ss))  # ...and the group's pooled MAE decides
    assert small_a2["used_mae"] > cfg.max_mae and small_a2["masked"]
    small_a1 = got[("small", "A1")]
    assert (small_a1["basis"], small_a1["masked"]) == ("group", False)
    # no teacher rows at all, but the group has enough: the group decides too
    unl_a2 = got[("unlabelled", "A2")]
    assert (unl_a2["n"], unl_a2["basis"], unl_a2["masked"]) == (0, "group", True)
    assert unl_a2["mae"] is None and unl_a2["spearman"] is None
    # slots without any teacher rows anywhere: no evidence, kept
    unl_a3 = got[("unlabelled", "A3")]
    assert (unl_a3["basis"], unl_a3["masked"]) == ("none", False)
    assert unl_a3["reason"].startswith("no validation pairs")

    # lonely: 3 reversed pairs would be masked on their own, and its group has only those 3 (< min_n): the
    # global pool of A1 (38 pairs, mostly agreeing) decides, so A1 is kept
    lonely = got[("lonely", "A1")]
    assert (lonely["n"], lonely["basis"], lonely["masked"]) == (3, "global", False)
    assert lonely["spearman"] == pytest.approx(-1.0)
    assert lonely["used_spearman"] > cfg.min_spearman
    assert len({r["mask_version"] for r in got.values()}) == 1


def test_published_mask_applies_on_top_and_changes_the_version(spark: Any, tmp_path: Any) -> None:
    rng = random.Random(7)
    students: dict[tuple[str, str, str], dict[str, float | None]] = {}
    teachers: dict[tuple[str, str], float] = {}
    for k in range(40):
        s = float(rng.randint(0, 10))
        students[(f"d{k}", "web", "g")] = {f"A{i}": s for i in range(1, N_SLOTS + 1)}
        teachers[(f"d{k}", "A1")] = s
        teachers[(f"d{k}", "A2")] = float(rng.randint(0, 10))  # unrelated: A2 masked by the rule
    scores, validation = _frames(spark, students, teachers)
    base = ReliabilityConfig(min_n=20)
    computed = _rows(compute_reliability(spark, scores, validation, {"g": _rubric("g")}, base))
    assert not computed[("web", "A1")]["masked"] and computed[("web", "A2")]["masked"]
    mask = tmp_path / "mask.csv"
    mask.write_text("source,dimension,masked\nweb,Dimension 1,true\nweb,A2,false\n", encoding="utf-8")
    for mode, a1, a2 in (("union", True, True), ("override", True, False), ("replace", True, False)):
        cfg = base.model_copy(update={"published_mask": mask, "published_mask_mode": mode})
        got = _rows(compute_reliability(spark, scores, validation, {"g": _rubric("g")}, cfg))
        assert (got[("web", "A1")]["masked"], got[("web", "A2")]["masked"]) == (a1, a2), mode
        assert got[("web", "A1")]["computed_masked"] is False and got[("web", "A1")]["mask_origin"] != "computed"
        assert got[("web", "A3")]["masked"] is (mode != "replace" and computed[("web", "A3")]["masked"])
        assert got[("web", "A1")]["mask_version"] != computed[("web", "A1")]["mask_version"]
