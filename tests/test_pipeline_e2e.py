"""End to end on Sail + Delta: sample corpus -> simulated endpoints -> every table and view.

One pipeline run (and an idempotent rerun) per module; each test checks one promise of the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from conftest import write_config

from mira_spark.config import load_settings
from mira_spark.parsing import parse as parse_module
from mira_spark.parsing.parse import parse_output
from mira_spark.pipeline import load_groups, run_pipeline
from mira_spark.prompting.tokens import estimate_tokens
from mira_spark.selection.aggregation import composite_plan
from mira_spark.selection.thresholds import ScoreKeyScale, score_key, split_largest_remainder, tie_hash
from mira_spark.store.schemas import SCORES_SCHEMA
from mira_spark.store.tables import Tables

pytestmark = pytest.mark.spark


@dataclass
class Runs:
    settings: Any
    first: Any
    second: Any
    requests_first: int
    requests_second: int
    overflows: int
    scores_after_first: int
    scores_after_second: int
    progress: list[Any]  # the first run's progress lines, one per committed wave
    tags: list[str]  # Spark job tags the first run set (stage and wave names)
    answers_parsed: int  # texts parsed during the first run (by the scoring task's output check)
    batch_parses: int  # parse_batch calls during the first run: re-parsing after read-back


def _total_requests(sims: list[Any]) -> int:
    return sum(h.stats()["requests"] for h in sims)


@pytest.fixture(scope="module")
def runs(spark: Any, sample_dir: Path, sim_pool: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Runs:
    work = tmp_path_factory.mktemp("e2e")
    cfg = write_config(work / "run.yaml", work / "tables", str(sample_dir / "documents"),
                       str(sample_dir / "validation"), [h.url for h in sim_pool])
    settings = load_settings(cfg)
    for h in sim_pool:
        h.reset()
    texts: list[str] = []
    batch_calls: list[int] = []
    real_parse, real_batch = parse_module._parse, parse_module.parse_batch

    def counting_parse(text: Any, layout: Any) -> Any:
        if text is not None:
            texts.append(text)
        return real_parse(text, layout)

    def counting_batch(*args: Any, **kwargs: Any) -> Any:
        batch_calls.append(1)
        return real_batch(*args, **kwargs)

    # Sail runs mapInArrow functions in this process, so the patch sees the scoring tasks' parses.
    progress: list[Any] = []
    tags: list[str] = []
    real_add_tag = type(spark).addTag

    def recording_add_tag(self: Any, tag: str) -> None:
        tags.append(tag)
        real_add_tag(self, tag)

    with patch.object(parse_module, "_parse", counting_parse), patch.object(parse_module, "parse_batch", counting_batch), \
            patch.object(type(spark), "addTag", recording_add_tag):
        first = run_pipeline(spark, settings, run_id="first", progress=progress.append)
    requests_first = _total_requests(sim_pool)
    overflows = sum(h.stats()["overflows"] for h in sim_pool)
    tables = Tables(spark, settings)
    n1 = tables.read("scores").count()
    second = run_pipeline(spark, settings, run_id="second")
    n2 = tables.read("scores").count()
    return Runs(settings, first, second, requests_first, _total_requests(sim_pool) - requests_first, overflows, n1, n2,
                progress, tags, len(texts), len(batch_calls))


def test_progress_line_per_wave_and_job_tags(runs: Runs) -> None:
    assert runs.first.waves >= 2  # the case: several waves
    assert [p.wave for p in runs.progress] == list(range(1, runs.first.waves + 1))
    assert [p.done for p in runs.progress] == sorted(p.done for p in runs.progress)
    last = runs.progress[-1]
    assert last.done == last.total == runs.first.rows_scored and last.eta_s == 0
    assert last.gpu_hours > 0 and last.requests_per_s > 0
    waves = runs.first.waves
    assert [t for t in runs.tags if "wave" in t] == [f"mira-score-wave-{i}-of-{waves}" for i in range(1, waves + 1)]
    assert {"mira-route", "mira-score", "mira-select"} <= set(runs.tags)


def test_progress_compares_gpu_hours_with_the_estimate(spark: Any, runs: Runs) -> None:
    """Each line carries ``mira-spark estimate``'s GPU-hours for the documents pending at the start (issue 10
    item 9): the figure its TP=8 layout gives for the routed documents' token histogram."""
    from mira_spark.estimate import TokenHistogram, estimate_layout, static_prompt_tokens
    from mira_spark.prompting.tokens import estimate_tokens

    tables = Tables(spark, runs.settings)
    scored = {r["doc_id"] for r in tables.read("scores").select("doc_id").collect()}
    docs = spark.read.format("delta").load(runs.settings.tables.documents)
    assert "tokens" not in docs.columns  # the case: routing estimates every document's tokens
    tokens = [estimate_tokens(r["text"]) for r in docs.select("doc_id", "text").collect() if r["doc_id"] in scored]
    assert len(tokens) == runs.progress[-1].total  # every routed document was pending in the first run
    static, _ = static_prompt_tokens(runs.settings)
    expected = estimate_layout(TokenHistogram.from_tokens(tokens), static, tp=8).gpu_hours
    estimates = {p.gpu_hours_estimate for p in runs.progress}
    assert len(estimates) == 1  # one figure for the whole pass
    got = estimates.pop()
    assert got is not None and abs(got - expected) <= 0.02 * expected, (got, expected)
    assert f"estimate {got:.2f}, projected/estimate " in runs.progress[-1].text()


def test_every_answer_is_parsed_once(runs: Runs) -> None:
    """The task's output check parses each answer; the score columns travel with the row (issue 8 item 5)."""
    assert runs.first.scored_ok > 0
    assert runs.answers_parsed == runs.requests_first == runs.first.scored_ok  # one parse per answer received
    assert runs.batch_parses == 0  # nothing parses again after read-back


VARIANTS = ("global", "group", "source", "random")  # the default selection.variants


def test_every_input_row_has_exactly_one_decision_per_variant(spark: Any, runs: Runs) -> None:
    tables = Tables(spark, runs.settings)
    docs = tables.read(tables.documents)
    decisions = tables.read("decisions")
    assert decisions.count() == docs.count() * len(VARIANTS) == runs.first.documents_in * len(VARIANTS)
    dup = decisions.groupBy("variant", "doc_id").count().filter("count > 1").count()
    assert dup == 0  # the sample's duplicate doc_ids are distinct rows only through their source
    doc_ids = {r["doc_id"] for r in docs.select("doc_id").collect()}
    for variant in VARIANTS:
        got = {r["doc_id"] for r in decisions.filter(f"variant = '{variant}'").select("doc_id").collect()}
        assert got == doc_ids
    reasons = {r["reason"] for r in decisions.select("reason").distinct().collect()}
    assert {"selected", "below_threshold", "scoring_failed:empty_text", "no_scorer"} <= reasons


def test_row_accounting_in_equals_ok_plus_failed(runs: Runs) -> None:
    s = runs.first
    rejected = sum(s.rejected.values())
    assert s.rows_scored == s.documents_in - rejected
    assert s.scored_ok + sum(s.failed.values()) + s.deferred == s.rows_scored
    assert s.failed == {"empty_text": 5, "invalid_text": 3}
    assert s.rejected == {"no_scorer": 3}
    # unscorable rows were never sent
    assert runs.requests_first == s.requests_sent == s.scored_ok


def test_score_table_schema(spark: Any, runs: Runs) -> None:
    schema = Tables(spark, runs.settings).read("scores").schema
    got = {f.name: f.dataType.simpleString() for f in schema.fields}
    want = {f.name: f.dataType.simpleString() for f in SCORES_SCHEMA.fields}
    assert got == want


def test_long_documents_truncated_and_nothing_overflows(spark: Any, runs: Runs, sample_dir: Path) -> None:
    raw = Tables(spark, runs.settings).read("raw_outputs").filter("run_id = 'first'")
    truncated = raw.filter("truncated").collect()
    assert len(truncated) >= 5
    assert all(r["kept_chars"] < r["original_chars"] for r in truncated)
    assert all(r["est_prompt_tokens"] <= 65536 - 2048 for r in raw.filter("status = 'ok'").collect())
    assert runs.overflows == 0


def test_scores_match_the_parser(spark: Any, runs: Runs) -> None:
    tables = Tables(spark, runs.settings)
    rubric = load_groups(runs.settings).rubrics["text_group_b"]
    raw = {r["doc_id"]: r["raw_text"] for r in tables.read("raw_outputs").filter("status = 'ok'").collect()}
    rows = tables.read("scores").filter("status = 'ok'").limit(40).collect()
    for row in rows:
        card = parse_output(raw[row["doc_id"]], rubric)
        assert [row[f"a{i}_score"] for i in range(1, 16)] == [card.scores[f"A{i}"] for i in range(1, 16)]
        assert row["parse_status"] == card.parse_status == "ok"


def test_unreliable_dimensions_are_masked(spark: Any, runs: Runs) -> None:
    rel = Tables(spark, runs.settings).read("reliability").collect()
    masked = {(r["source"], r["slot"]) for r in rel if r["masked"]}
    for source in ("html_cpt", "html_cpt_web"):
        assert (source, "A14") in masked and (source, "A15") in masked
        assert not any((source, f"A{i}") in masked for i in range(1, 14))
    assert all(r["n"] >= 20 for r in rel)
    assert len({r["mask_version"] for r in rel}) == 1
    ci = [r for r in rel if r["spearman_lo"] is not None]
    assert ci and all(r["spearman_lo"] <= r["spearman"] <= r["spearman_hi"] for r in ci)
    assert all(r["mae_lo"] <= r["mae"] <= r["mae_hi"] for r in rel if r["mae_lo"] is not None)


def _brute_force_kept(items: list[tuple[int, int, str, int]], budget: int) -> set[str]:
    """Sort a unit's (key, tie_hash, doc_id, tokens) rows and keep the prefix within ``budget`` tokens."""
    kept, cum = set(), 0
    for _k, _h, doc_id, tokens in sorted(items, key=lambda x: (-x[0], x[1], x[2])):
        if cum + tokens > budget:
            break
        cum += tokens
        kept.add(doc_id)
    return kept


def test_thresholds_are_exact_and_reproducible(spark: Any, runs: Runs) -> None:
    """Recompute keys, budgets and the kept sets of the score variants with a plain sort + cumulative sum."""
    tables = Tables(spark, runs.settings)
    rubrics = load_groups(runs.settings).rubrics
    plan = composite_plan(rubrics, runs.settings.selection)
    masks = {(r["source"], r["slot"]) for r in tables.read("reliability").collect() if r["masked"]}
    scores = {(r["doc_id"], r["scorer"]): r for r in tables.read("scores").collect()}
    decisions = tables.read("decisions").collect()
    thresholds = {(r["variant"], r["unit"]): r for r in tables.read("thresholds").collect()}
    assert {v for v, _ in thresholds} == set(VARIANTS)
    scored_tokens = sum(d["tokens"] for d in decisions if d["variant"] == "global" and d["tokens"] is not None
                        and not d["reason"].startswith(("scoring_failed", "parse_failed")))
    budget = scored_tokens // 2
    checked = 0
    for variant in ("global", "group", "source"):
        rows = [d for d in decisions if d["variant"] == variant and d["composite"] is not None]
        units: dict[str, list[tuple[int, int, str, int]]] = {}
        for d in rows:
            s = scores[(d["doc_id"], d["scorer"])]
            scale = ScoreKeyScale(plan.weights[d["scorer"]], plan.resolution, plan.multiplier, plan.exact)
            key = 10 * plan.blend[1] * score_key([s[f"a{i}_score"] for i in range(1, 16)], scale,
                                                 [(d["source"], f"A{i}") in masks for i in range(1, 16)])
            assert d["composite"] == pytest.approx(plan.composite(key))
            units.setdefault(d["unit"], []).append((key, tie_hash(d["doc_id"]), d["doc_id"], d["tokens"]))
        unit_tokens = {u: sum(t for *_x, t in items) for u, items in units.items()}
        budgets = split_largest_remainder(budget, unit_tokens)
        for unit, items in units.items():
            want = _brute_force_kept(items, budgets[unit])
            got = {d["doc_id"] for d in rows if d["unit"] == unit and d["decision"] == "kept"}
            assert got == want and want
            t = thresholds[(variant, unit)]
            assert (t["budget"], t["n_kept"], t["tokens_kept"]) == (
                budgets[unit], len(want), sum(x[3] for x in items if x[2] in want))
            assert t["tokens_kept"] <= t["budget"] and t["tokens_estimated"]
            assert t["threshold"] == pytest.approx(min(d["composite"] for d in rows
                                                       if d["unit"] == unit and d["doc_id"] in want))
            checked += 1
    assert checked >= 1 + 1 + 2  # one global unit, >= 1 group, >= 2 sources


def test_selected_table_holds_kept_documents_with_text(spark: Any, runs: Runs) -> None:
    tables = Tables(spark, runs.settings)
    selected = tables.read("selected")
    kept = tables.read("decisions").filter("decision = 'kept'")
    assert kept.count() == sum(k for k, _ in runs.first.kept.values())
    # each kept document once, its text written once, with the sorted variants that kept it
    rows = selected.select("doc_id", "scorer", "variants").collect()
    assert len(rows) == kept.select("doc_id", "scorer").distinct().count() < kept.count()
    assert len({(r["doc_id"], r["scorer"]) for r in rows}) == len(rows)
    by_doc = {(r["doc_id"], r["scorer"]): list(r["variants"]) for r in rows}
    want: dict[tuple[str, str], list[str]] = {}
    for r in kept.select("variant", "doc_id", "scorer").orderBy("variant").collect():
        want.setdefault((r["doc_id"], r["scorer"]), []).append(r["variant"])
    assert by_doc == want
    assert {"variants", "doc_id", "text", "composite", "a1_score", "mask_version", "weights_version"} <= set(
        selected.columns) and "variant" not in selected.columns
    assert selected.filter("text is null").count() == 0
    assert {v for vs in by_doc.values() for v in vs} == set(VARIANTS)
    source = {(r["doc_id"], r["scorer"]) for r in selected.filter("array_contains(variants, 'source')").collect()}
    assert source == {k for k, vs in want.items() if "source" in vs} and source


def test_views_answer_sql(spark: Any, runs: Runs) -> None:
    long_rows = spark.sql("SELECT count(*) AS n FROM scores_long").collect()[0]["n"]
    assert long_rows == runs.first.scored_ok * 15
    masked = spark.sql(
        "SELECT DISTINCT slot FROM scores_long WHERE masked ORDER BY slot"
    ).collect()
    assert [r["slot"] for r in masked] == ["A14", "A15"]
    top = spark.sql("SELECT variant, count(*) AS n FROM mira_selected_by_variant GROUP BY variant").collect()
    per_variant: dict[str, int] = {}
    for key, (k, _n) in runs.first.kept.items():
        per_variant[key.split(":")[0]] = per_variant.get(key.split(":")[0], 0) + k
    assert {r["variant"]: r["n"] for r in top} == per_variant


def test_rerun_sends_nothing_and_adds_nothing(runs: Runs) -> None:
    assert runs.second.pending_before == 0
    assert runs.requests_second == 0
    assert runs.second.requests_sent == 0
    assert runs.scores_after_second == runs.scores_after_first
    assert runs.second.kept == runs.first.kept


def test_sample_has_documents_over_the_budget(spark: Any, runs: Runs) -> None:
    tables = Tables(spark, runs.settings)
    texts = [r["text"] for r in tables.read(tables.documents).select("text").collect() if r["text"]]
    assert sum(estimate_tokens(t) > 63_000 for t in texts) >= 5


def test_parse_all_reparses_raw_text_after_a_parser_change(spark: Any, runs: Runs) -> None:
    """``mira-spark parse --all`` is the one path that parses stored answers again (e.g. after a parser fix)."""
    tables = Tables(spark, runs.settings)

    def ok_counts() -> int:
        return tables.read("scores").filter("parse_status = 'ok'").count()

    before = ok_counts()
    assert before > 0
    real_parse = parse_module._parse

    def stricter(text: Any, layout: Any) -> Any:
        row = real_parse(text, layout)
        return (*row[:6], "failed" if text else row[6], row[7])

    with patch.object(parse_module, "_parse", stricter):
        run_pipeline(spark, runs.settings, run_id="reparse-strict", stages=["parse"], reparse_all=True)
    assert ok_counts() == 0
    run_pipeline(spark, runs.settings, run_id="reparse", stages=["parse"], reparse_all=True)
    assert ok_counts() == before


def test_run_stats_select_row_holds_each_variants_tokens(spark: Any, runs: Runs) -> None:
    from mira_spark.pipeline import read_run_stats

    tables = Tables(spark, runs.settings)
    select = read_run_stats(tables, "first")["select"]
    thresholds = tables.read("thresholds").toPandas()
    by_variant = thresholds.groupby("variant")[["tokens_kept", "tokens_in"]].sum()
    assert len(by_variant) >= 4  # global, group, source, random
    assert select.by_prefix("tokens_kept") == {v: int(t) for v, t in by_variant["tokens_kept"].items()}
    assert select.by_prefix("tokens_in") == {v: int(t) for v, t in by_variant["tokens_in"].items()}
    assert select.rows_in == runs.first.documents_in and select.rows_out == int(thresholds["n_kept"].sum())
