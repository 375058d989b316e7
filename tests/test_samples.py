"""Sample corpus: determinism, counts, guard cases, quality spread, teacher labels, calibration file, writing."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

import pytest

from mira_spark.devtools.samples import (
    MAX_CHARS,
    MIN_CHARS,
    NOISE_SLOTS,
    SCORED_SOURCES,
    UNSCORED_SOURCE,
    document_kind,
    generate_documents,
    generate_validation,
    make_sample_main,
    write_sample,
)
from mira_spark.prompting.prompts import PromptBuilder, text_problem
from mira_spark.prompting.rubric import load_rubric
from mira_spark.prompting.tokens import estimate_tokens

ROOT = Path(__file__).resolve().parent.parent
DIMS = ROOT / "anchors" / "text" / "group_B_dim_anchors.jsonl"
CALIBRATION = ROOT / "anchors" / "text" / "group_B_calibration.jsonl"
SLOTS = [f"A{i}" for i in range(1, 16)]


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return generate_documents(7)


@pytest.fixture(scope="module")
def rubric():
    return load_rubric("text_group_b", DIMS, CALIBRATION)


@pytest.fixture(scope="module")
def budget(rubric) -> int:
    return PromptBuilder(rubric, "whw06/MIRA-Text-Group1", max_model_len=65536, max_tokens=2048).budget


def _valid(doc: dict) -> bool:
    return text_problem(doc["text"]) is None


def test_same_seed_is_identical_and_other_seed_differs(docs):
    assert generate_documents(7) == docs
    other = generate_documents(8)
    assert [d["text"] for d in other] != [d["text"] for d in docs]


def test_counts_per_source(docs):
    per_source = Counter(d["source"] for d in docs)
    assert len(docs) >= 260
    assert per_source[UNSCORED_SOURCE] == 3
    scored = [d for d in docs if d["source"] in SCORED_SOURCES and _valid(d)]
    assert len(scored) >= 200
    assert all(per_source[s] >= 90 for s in SCORED_SOURCES)


def test_doc_ids_unique_and_shaped(docs):
    ids = [d["doc_id"] for d in docs]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith(d["source"] + "-") and i[-6:].isdigit() for i, d in zip(ids, docs, strict=True))


def test_guard_cases(docs, budget):
    empty = [d for d in docs if text_problem(d["text"]) == "empty_text"]
    garbled = [d for d in docs if text_problem(d["text"]) == "invalid_text"]
    over = [d for d in docs if _valid(d) and estimate_tokens(d["text"]) > budget]
    assert len(empty) == 5
    assert {type(d["text"]) for d in empty} == {type(None), str}
    assert len(garbled) == 3
    assert len(over) >= 5
    assert all(estimate_tokens(d["text"]) > 64_000 for d in over)
    assert {d["source"] for d in over} == set(SCORED_SOURCES)


def test_lengths(docs):
    normal = [len(d["text"]) for d in docs if document_kind(d["text"]) == "ok" and d["source"] in SCORED_SOURCES]
    assert min(normal) >= MIN_CHARS
    assert max(normal) <= MAX_CHARS
    assert 2_000 < statistics.median(normal) < 15_000
    assert sum(n < 2_000 for n in normal) >= 10 and sum(n > 15_000 for n in normal) >= 10


@pytest.mark.parametrize(
    "marker", ["<main", "aria-", "@media", "addEventListener", "eval(", "onclick=", "<table width", "网站建设"]
)
def test_quality_varies_per_feature(docs, marker):
    texts = [d["text"] for d in docs if document_kind(d["text"]) == "ok"]
    share = sum(marker in t for t in texts) / len(texts)
    assert 0.05 < share < 0.95, f"{marker!r} in {share:.0%} of documents"


def test_features_vary_independently(docs):
    texts = [d["text"] for d in docs if document_kind(d["text"]) == "ok"]
    combos = Counter(("<main" in t, "aria-" in t, "@media" in t, "addEventListener" in t) for t in texts)
    assert len(combos) >= 8


def test_chinese_prose_present(docs):
    texts = [d["text"] for d in docs if document_kind(d["text"]) == "ok"]
    assert sum("## 设计思路" in t for t in texts) > 30
    assert sum("这个是代码的为了" in t or "请享受它的制作" in t or "的将会" in t for t in texts) > 5


def test_calibration_file_loads(rubric):
    assert len(rubric.calibration) == 12
    assert [r.ref_id for r in rubric.calibration] == [f"gB-cal-{i:02d}" for i in range(1, 13)]
    for ref in rubric.calibration:
        assert 300 <= len(ref.excerpt) <= 900
        assert set(ref.rationales) == set(SLOTS)
    overall = [r.overall for r in rubric.calibration]
    assert min(overall) <= 15 and max(overall) >= 85
    assert {r.training_recommendation for r in rubric.calibration} == {"keep", "downsample", "drop"}


@pytest.fixture(scope="module")
def validation(docs, rubric) -> list[dict]:
    return generate_validation(docs, SLOTS, dimensions=[(d.slot, d.dimension) for d in rubric.dimensions])


def test_validation_shape(docs, validation):
    by_id = {d["doc_id"]: d for d in docs}
    per = Counter((r["source"], r["doc_id"]) for r in validation)
    for source in SCORED_SOURCES:
        docs_of_source = [k for k in per if k[0] == source]
        assert len(docs_of_source) >= 20
        assert all(per[k] == len(SLOTS) for k in docs_of_source)
    for r in validation:
        assert _valid(by_id[r["doc_id"]])
        assert 0.0 <= r["teacher_score"] <= 10.0 and (r["teacher_score"] * 2).is_integer()
    assert validation == generate_validation(docs, SLOTS)


def _pearson(x: list[float], y: list[float]) -> float:
    return statistics.correlation(x, y)


def test_noise_slots_are_independent(docs, validation, rubric):
    from mira_spark.devtools.simulator.judge import judge_document

    dims = [(d.slot, d.dimension) for d in rubric.dimensions]
    by_id = {d["doc_id"]: d for d in docs}
    student = {i: judge_document(by_id[i]["text"], by_id[i]["source"], dims).scores
               for i in {r["doc_id"] for r in validation}}
    corr = {}
    for slot in SLOTS:
        rows = [r for r in validation if r["slot"] == slot]
        corr[slot] = _pearson([r["teacher_score"] for r in rows], [student[r["doc_id"]][slot] for r in rows])
        mae = statistics.mean(abs(r["teacher_score"] - student[r["doc_id"]][slot]) for r in rows)
        if slot in NOISE_SLOTS:  # what the reliability stage tests: no positive agreement, large error
            assert corr[slot] < 0.3 and mae > 2.0, (slot, corr[slot], mae)
        else:
            assert mae < 1.0, (slot, mae)
    assert statistics.mean(corr[s] for s in SLOTS if s not in NOISE_SLOTS) > 0.7, corr
    assert statistics.mean(abs(corr[s]) for s in NOISE_SLOTS) < 0.4, corr


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_write_sample(tmp_path, fmt):
    if fmt == "delta":  # a parquet layout left by an earlier run is replaced, and overwrite is idempotent
        write_sample(tmp_path / "sample", fmt="parquet")
    counts = write_sample(tmp_path / "sample", fmt=fmt)
    assert counts["empty"] == 5 and counts["garbled"] == 3 and counts["over_budget"] >= 5
    if fmt == "parquet":
        import pyarrow.parquet as pq

        docs_n = pq.read_table(tmp_path / "sample" / "documents" / "part-0.parquet").num_rows
        val = pq.read_table(tmp_path / "sample" / "validation" / "part-0.parquet")
        assert val.schema.field("teacher_score").type == "double"
        val_n = val.num_rows
    else:
        from deltalake import DeltaTable

        docs_df = DeltaTable(str(tmp_path / "sample" / "documents")).to_pandas()
        # Row count from the log's add actions, not a scan: each delta-rs scan in a process adds a small
        # chance of the abort-at-exit described in notes/engines.md (seen once in ~10 runs with to_pandas too).
        val_adds = DeltaTable(str(tmp_path / "sample" / "validation")).get_add_actions(flatten=True)
        assert list(docs_df.columns) == ["doc_id", "source", "text"]
        assert docs_df["text"].isna().sum() == 1
        docs_n, val_n = len(docs_df), sum(val_adds.column("num_records").to_pylist())
    assert docs_n == counts["documents"] == sum(counts["per_source"].values())
    assert val_n == counts["validation_rows"] == 2 * 40 * len(SLOTS)


def test_cli_prints_counts(tmp_path, capsys):
    assert make_sample_main(["--out", str(tmp_path / "s"), "--format", "parquet", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert '"garbled": 3' in out and '"validation_rows": 1200' in out
