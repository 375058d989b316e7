"""Planted quality: documents with a known latent quality q, scored by a synthetic scorer, selected by the job.

Dimension scores are ``8 q + per-source offset + noise`` (tenths, 0-10), except one source whose third
dimension is pure noise; the teacher is ``8 q`` plus small noise. The score and validation tables are built
directly (no scoring requests) and run through the job's own reliability, composite and selection code.
It must show: the noisy cell is masked and no other; the selection's mean q beats Random at the same token
budget by a clear margin; masking the noisy dimension raises it further; with per-source offsets,
MIRA-Source keeps the raw source mix while MIRA-Global shifts it toward the source scored high.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from mira_spark.config import ReliabilityConfig, SelectionConfig, VariantConfig
from mira_spark.prompting.rubric import rubric_from_names
from mira_spark.selection.aggregation import add_composite, cell_weights, composite_plan
from mira_spark.selection.reliability import compute_reliability
from mira_spark.selection.select import select_documents

pytestmark = pytest.mark.spark

OFFSETS = {"high": 1.5, "mid": 0.0, "low": -1.5}  # how the scorer mis-calibrates each source
NOISY = ("mid", "A3")  # this source's third dimension is pure noise
DOCS_PER_SOURCE = 4000
VALIDATED_PER_SOURCE = 300
N_DIMS = 4
BUDGET = 0.3  # of the tokens of every scored document
SCORE_COLS = ", ".join(f"a{i}_score double" for i in range(1, 16))
SCORES_DDL = (f"doc_id string, source string, scorer string, status string, error string, parse_status string, "
              f"{SCORE_COLS}, overall int, training_recommendation string, tokens long, tokens_estimated boolean")


def _tenths(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x, 1), 0.0, 10.0)


@pytest.fixture(scope="module")
def planted(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rng = np.random.default_rng(42)
    rows, val_rows, quality = [], [], {}
    for source, offset in OFFSETS.items():
        q = rng.uniform(0, 1, DOCS_PER_SOURCE)
        tokens = rng.integers(100, 3000, DOCS_PER_SOURCE)
        dims = [_tenths(8 * q + offset + rng.normal(0, 1.0, DOCS_PER_SOURCE)) for _ in range(N_DIMS)]
        if source == NOISY[0]:
            dims[int(NOISY[1][1:]) - 1] = _tenths(rng.uniform(0, 10, DOCS_PER_SOURCE))
        for k in range(DOCS_PER_SOURCE):
            doc = f"{source}-{k}"
            quality[doc] = float(q[k])
            slots = [float(d[k]) for d in dims] + [None] * (15 - N_DIMS)
            rows.append((doc, source, "g", "ok", None, "ok", *slots, None, "keep", int(tokens[k]), False))
            if k < VALIDATED_PER_SOURCE:
                for i in range(N_DIMS):
                    teacher = float(_tenths(np.array(8 * q[k] + rng.normal(0, 0.4)))[()])
                    val_rows.append((doc, f"A{i + 1}", teacher))
    root = tmp_path_factory.mktemp("planted")
    spark.createDataFrame(rows, SCORES_DDL).write.format("delta").save(str(root / "scores"))
    spark.createDataFrame(val_rows, "doc_id string, slot string, teacher_score double").write.format(
        "delta").save(str(root / "validation"))
    scores = spark.read.format("delta").load(str(root / "scores"))
    validation = spark.read.format("delta").load(str(root / "validation"))
    rubrics = {"g": rubric_from_names("g", [f"dim {i}" for i in range(1, N_DIMS + 1)])}
    reliability = compute_reliability(spark, scores, validation, rubrics, ReliabilityConfig(min_n=50))
    rel_path = str(root / "reliability")
    reliability.write.format("delta").save(rel_path)
    reliability = spark.read.format("delta").load(rel_path)
    variants = tuple(VariantConfig(name=n, unit=u, mode="tokens", token_fraction=BUDGET, method=m)
                     for n, u, m in (("global", "global", "score"), ("source", "source", "score"),
                                     ("random", "global", "random")))
    cfg = SelectionConfig(variants=variants)
    plan = composite_plan(rubrics, cfg)
    empty = spark.createDataFrame([], "doc_id string, source string, scorer string, reason string")

    def select(rel: Any) -> pd.DataFrame:
        scored = add_composite(scores, cell_weights(spark, rel, plan), plan, cfg)
        sel = select_documents(spark, scored, empty, empty, cfg, plan, "v")
        return sel.decisions.filter("decision = 'kept'").select("variant", "doc_id", "source", "tokens").toPandas()

    unmasked = reliability.withColumn("masked", F.lit(False))
    raw = pd.DataFrame(rows, columns=[c.split()[0] for c in SCORES_DDL.split(", ")])
    return {"reliability": reliability.collect(), "kept": select(reliability), "kept_unmasked": select(unmasked),
            "quality": quality, "raw": raw}


def _mean_q(kept: pd.DataFrame, variant: str, quality: dict[str, float]) -> float:
    docs = kept.loc[kept["variant"] == variant, "doc_id"]
    return float(np.mean([quality[d] for d in docs]))


def _token_mix(df: pd.DataFrame) -> dict[str, float]:
    t = df.groupby("source")["tokens"].sum()
    return (t / t.sum()).to_dict()


def test_the_noisy_cell_is_masked_and_no_other(planted: dict[str, Any]) -> None:
    masked = {(r["source"], r["slot"]) for r in planted["reliability"] if r["masked"]}
    assert masked == {NOISY}
    noisy = next(r for r in planted["reliability"] if (r["source"], r["slot"]) == NOISY)
    assert noisy["basis"] == "source" and noisy["spearman_hi"] < 0.3  # the interval excludes the threshold


def test_selection_beats_random_and_masking_raises_it_further(planted: dict[str, Any]) -> None:
    kept, unmasked, quality = planted["kept"], planted["kept_unmasked"], planted["quality"]
    for frame in (kept, unmasked):  # the same token budget for every variant
        spent = frame.groupby("variant")["tokens"].sum()
        budget = BUDGET * planted["raw"]["tokens"].sum()
        assert ((spent <= budget) & (spent > 0.99 * budget)).all()
    q_global, q_random = _mean_q(kept, "global", quality), _mean_q(kept, "random", quality)
    q_source = _mean_q(kept, "source", quality)
    # Random's mean q is the corpus's (0.5); a token-budgeted top 30% by the planted scores is far above it.
    assert q_random == pytest.approx(0.5, abs=0.03)
    assert q_global - q_random > 0.25 and q_source - q_random > 0.25
    # Masking the noisy dimension: better ranking inside the noisy source, so a higher mean q there and overall.
    in_mid = kept[kept["source"] == "mid"]
    in_mid_unmasked = unmasked[unmasked["source"] == "mid"]
    gain_mid = _mean_q(in_mid, "source", quality) - _mean_q(in_mid_unmasked, "source", quality)
    assert gain_mid > 0.02
    assert q_source > _mean_q(unmasked, "source", quality)


def test_source_keeps_the_raw_mix_and_global_shifts_it(planted: dict[str, Any]) -> None:
    raw_mix = _token_mix(planted["raw"])
    kept = planted["kept"]
    source_mix = _token_mix(kept[kept["variant"] == "source"])
    global_mix = _token_mix(kept[kept["variant"] == "global"])
    assert all(abs(source_mix[s] - raw_mix[s]) < 0.005 for s in OFFSETS)
    # the scorer rates "high" 3 points above "low" for the same quality: Global takes far more of it
    assert global_mix["high"] > raw_mix["high"] + 0.15 and global_mix["low"] < raw_mix["low"] - 0.15
