"""The 12 MIRA scorer groups, enabling a subset, and a run that scores two groups on two pools.

Config and judge tests need no Spark; the 2-group run (``two_group_demo``) checks that each group's
documents go to its own pool with its own rubric (6 slots for the code group), that the unknown source
is reported with a count and a reason, and that every input row has one decision.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO

from mira_spark.config import ConfigError, load_scorers, load_settings
from mira_spark.devtools.samples import (
    CODE_DOCS,
    CODE_EXCELLENT,
    CODE_NOISE_SLOTS,
    CODE_SOURCE,
    CODE_TERRIBLE,
    CODE_TOPICS,
    UNSCORED_DOCS,
    UNSCORED_SOURCE,
    code_dimensions,
    render_python,
)
from mira_spark.devtools.simulator.judge import facet_for, judge_document
from mira_spark.errors import RubricError
from mira_spark.prompting.rubric import load_dimensions, load_rubric

pytest_plugins = ["two_group_demo"]

# Facts from ../shared/data/mira-scorers.md (the public model cards): group -> (model, family, anchors file).
CARDS = {
    "text_group_b": ("whw06/MIRA-Text-Group1", "text", "text/group_B_dim_anchors.jsonl"),
    "text_group_2": ("whw06/MIRA-Text-Group2", "text", None),
    "text_group_3": ("whw06/MIRA-Text-Group3", "text", "text/group_D_dim_anchors.jsonl"),
    "qa_group_1": ("whw06/MIRA-QA-Group1", "qa", "qa/group_1a_dim_anchors.jsonl"),
    "qa_group_2": ("whw06/MIRA-QA-Group2", "qa", "qa/group_1b_dim_anchors.jsonl"),
    "qa_group_3": ("whw06/MIRA-QA-Group3", "qa", "qa/group_2_dim_anchors.jsonl"),
    "qa_group_4": ("whw06/MIRA-QA-Group4", "qa", None),
    "qa_group_5": ("whw06/MIRA-QA-Group5", "qa", None),
    "agent_group_1": ("whw06/MIRA-Agent-Group1", "agent", "agent/group_A_dim_anchors.jsonl"),
    "agent_group_2": ("whw06/MIRA-Agent-Group2", "agent", "agent/group_B_dim_anchors.jsonl"),
    "agent_group_3": ("whw06/MIRA-Agent-Group3", "agent", "agent/group_C_dim_anchors.jsonl"),
    "agent_group_4": ("whw06/MIRA-Agent-Group4", "agent", "agent/group_D_dim_anchors.jsonl"),
}
# Source ids the cards list (the "?" ids named only in a domain sentence are comments, not config).
CARD_SOURCES = {
    "text_group_b": {"html_cpt"}, "text_group_3": {"pr_issue"},
    "qa_group_1": {"haochuan_general", "haochuan_instruction", "haochuan_safety"},
    "qa_group_2": {"DLR_Book", "DLR_Web", "codesimpleqa_thinking"}, "qa_group_3": {"ace_reason", "lean_qa"},
    "agent_group_1": {"agent_codex", "claude_cli"}, "agent_group_2": {"agent_nemotron", "taubench"},
    "agent_group_3": {"ot_agent", "terminal_bench"}, "agent_group_4": {"agent_openhands", "davinc_dev", "swe_qa"},
}


def _conf_copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copytree(REPO / "anchors", tmp_path / "anchors")
    return tmp_path / "conf"


# -- the shipped scorers file -------------------------------------------------------------------------


def test_scorers_file_lists_the_twelve_cards_and_enables_only_the_one_with_anchors() -> None:
    scorers = load_scorers(REPO / "conf" / "scorers.yaml")
    listed = {**scorers.groups, **scorers.disabled}
    assert set(listed) == set(CARDS)
    for name, (model, family, anchors) in CARDS.items():
        group = listed[name]
        assert (group.model, group.family) == (model, family), name
        if anchors is None:
            assert group.anchors is None and group.sources == (), name  # unknown: nothing invented
        else:
            assert group.anchors == (REPO / "anchors" / anchors).resolve(), name
        assert CARD_SOURCES.get(name, set()) <= set(group.sources), name
    assert set(scorers.groups) == {"text_group_b"}  # the only group whose anchors ship here
    assert all(group.anchors is None or not group.anchors.exists() for group in scorers.disabled.values())
    assert set(scorers.pools) == {"text_group_b_pool"}  # disabled groups need no pool


def test_demo_config_runs_two_groups_each_on_its_own_pool() -> None:
    settings = load_settings(REPO / "conf" / "local.yaml")
    assert set(settings.scorers.groups) == {"text_group_b", "code_demo"}
    pools = {settings.scorers.groups[g].pool for g in settings.scorers.groups}
    assert len(pools) == 2
    code = settings.scorers.groups["code_demo"]
    rubric = load_rubric("code_demo", code.anchors, code.calibration, expected_size=code.dimensions)
    assert rubric.size == 6 and len(rubric.calibration) == 4
    assert settings.scorers.group_for_source()[CODE_SOURCE] == "code_demo"


# -- enabling a subset -------------------------------------------------------------------------------


def _enable(conf: Path, group: str, **extra: Any) -> dict[str, Any]:
    return {"scorers": {"groups": {group: {"enabled": True, **extra}},
                        "pools": {f"{group}_pool": {"endpoints": [{"url": "http://127.0.0.1:9/v1"}]}}}}


def test_enabling_a_group_whose_anchors_are_missing_names_group_file_and_fix(tmp_path: Path) -> None:
    conf = _conf_copy(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_settings(conf / "local.yaml", _enable(conf, "qa_group_1"))
    message = str(err.value)
    assert "\n" not in message
    missing = (tmp_path / "anchors" / "qa" / "group_1a_dim_anchors.jsonl").resolve()
    for want in ("group 'qa_group_1' is enabled", f"anchors file {missing} does not exist",
                 "groups.qa_group_1.anchors", "groups.qa_group_1.enabled: false"):
        assert want in message, message


def test_enabling_a_group_whose_card_names_no_anchors_file_says_so(tmp_path: Path) -> None:
    conf = _conf_copy(tmp_path)
    with pytest.raises(ConfigError, match=r"group 'qa_group_4' is enabled but has no anchors file"):
        load_settings(conf / "local.yaml", _enable(conf, "qa_group_4", sources=["my_source"]))


def test_enabling_a_group_without_its_pool_says_which_pool_to_add(tmp_path: Path) -> None:
    conf = _conf_copy(tmp_path)
    with pytest.raises(ConfigError, match=r"uses pool 'agent_group_3_pool', which is not defined.*add "
                                          r"pools.agent_group_3_pool"):
        load_settings(conf / "local.yaml", {"scorers": {"groups": {"agent_group_3": {"enabled": True}}}})


def test_a_supplied_anchors_file_enables_a_sibling_and_routes_its_sources(tmp_path: Path) -> None:
    conf = _conf_copy(tmp_path)
    target = tmp_path / "anchors" / "agent" / "group_C_dim_anchors.jsonl"
    target.parent.mkdir(parents=True)
    shutil.copy(REPO / "anchors" / "text" / "group_B_dim_anchors.jsonl", target)  # a user's file
    settings = load_settings(conf / "local.yaml", _enable(conf, "agent_group_3"))
    assert "agent_group_3" in settings.scorers.groups and "agent_group_3" not in settings.scorers.disabled
    assert settings.scorers.group_for_source()["terminal_bench"] == "agent_group_3"
    assert settings.scorers.groups["agent_group_3"].anchors == target.resolve()


def test_disabled_groups_are_not_checked_and_not_routed(tmp_path: Path) -> None:
    conf = _conf_copy(tmp_path)
    settings = load_settings(conf / "local.yaml", {"scorers": {"groups": {"code_demo": {"enabled": False}}}})
    assert set(settings.scorers.groups) == {"text_group_b"}
    assert "code_demo" in settings.scorers.disabled
    assert CODE_SOURCE not in settings.scorers.group_for_source()  # its documents become no_scorer


def test_disabling_every_group_is_an_error(tmp_path: Path) -> None:
    conf = _conf_copy(tmp_path)
    scorers = yaml.safe_load((conf / "scorers.yaml").read_text(encoding="utf-8"))
    scorers["groups"]["text_group_b"]["enabled"] = False
    (conf / "scorers.yaml").write_text(yaml.safe_dump(scorers), encoding="utf-8")
    with pytest.raises(ConfigError, match="enable at least one group"):
        load_scorers(conf / "scorers.yaml")


def test_rubric_loader_names_the_group_and_the_fix_for_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RubricError) as err:
        load_rubric("agent_group_2", tmp_path / "agent" / "group_B_dim_anchors.jsonl")
    message = str(err.value)
    assert "group 'agent_group_2': anchors file" in message and "groups.agent_group_2.enabled: false" in message


# -- the second rubric in the simulator's judge --------------------------------------------------------


def test_code_rubric_dimensions_map_to_code_facets_and_web_ones_are_unchanged() -> None:
    assert [facet_for(name) for _, name in code_dimensions()] == [
        "py_docs", "py_tests", "py_types", "py_errors", "py_naming", "py_unsafe"]
    web = [d.dimension for d in load_dimensions(REPO / "anchors" / "text" / "group_B_dim_anchors.jsonl")]
    assert [facet_for(n) for n in web] == [
        "prose", "completeness", "appropriateness", "script", "semantic", "code_org", "a11y", "visual", "utility",
        "performance", "correctness", "security", "responsive", "responsive", "a11y"]


@pytest.mark.parametrize("topic", range(len(CODE_TOPICS)))
def test_judge_scores_good_code_above_bad_code_on_every_code_dimension(topic: int) -> None:
    import random

    dims = code_dimensions()
    good = judge_document(render_python(CODE_EXCELLENT, CODE_TOPICS[topic], random.Random(topic)), CODE_SOURCE, dims)
    bad = judge_document(render_python(CODE_TERRIBLE, CODE_TOPICS[topic], random.Random(topic)), CODE_SOURCE, dims)
    for slot, _ in dims:
        assert good.scores[slot] >= bad.scores[slot] + 4, (slot, good.scores[slot], bad.scores[slot])
    assert good.training_recommendation == "keep" and bad.training_recommendation == "drop"


def test_code_calibration_references_match_the_simulated_scorer() -> None:
    """The shipped references are what a healthy scorer answers (a canary on the simulator passes)."""
    dims = code_dimensions()
    rubric = load_rubric("code_demo", REPO / "anchors" / "code" / "demo_python_dim_anchors.jsonl",
                         REPO / "anchors" / "code" / "demo_python_calibration.jsonl", expected_size=6)
    assert {r.training_recommendation for r in rubric.calibration} == {"keep", "downsample", "drop"}
    for ref in rubric.calibration:
        judged = judge_document(ref.excerpt, CODE_SOURCE, dims)
        assert judged.scores == ref.scores, ref.ref_id


# -- one run, two groups, two pools ---------------------------------------------------------------------


@pytest.mark.spark
def test_two_groups_each_scored_on_its_own_pool_with_its_own_rubric(spark: Any, two_group_run: Any) -> None:
    from pyspark.sql import functions as F

    run = two_group_run
    scores = spark.read.format("delta").load(str(run.root / "scores"))
    code = scores.filter(F.col("scorer") == "code_demo")
    assert code.count() == CODE_DOCS
    assert code.filter(F.col("source") != CODE_SOURCE).count() == 0
    assert code.filter(F.col("parse_status") != "ok").count() == 0
    assert code.filter(F.col("a6_score").isNull()).count() == 0  # slots 1..6 filled
    assert code.filter(F.coalesce(*[F.col(f"a{i}_score") for i in range(7, 16)]).isNotNull()).count() == 0
    text = scores.filter(F.col("scorer") == "text_group_b")
    assert text.filter(F.col("a15_score").isNotNull()).count() > 200  # the 15-slot group next to it
    assert run.code_requests == CODE_DOCS and run.code_model_seen == "mira-demo/Python-Code-Sim"
    assert run.text_requests == text.filter(F.col("status") == "ok").count()  # no code document went there


@pytest.mark.spark
def test_two_group_reliability_masks_the_code_groups_noise_slot(spark: Any, two_group_run: Any) -> None:
    rel = spark.read.format("delta").load(str(two_group_run.root / "reliability"))
    rows = {r["slot"]: r for r in rel.filter(f"source = '{CODE_SOURCE}'").collect()}
    assert sorted(rows, key=lambda s: int(s[1:])) == [slot for slot, _ in code_dimensions()]
    assert {r["dimension"] for r in rows.values()} == {name for _, name in code_dimensions()}
    assert all(r["basis"] == "source" for r in rows.values()), {s: r["basis"] for s, r in rows.items()}
    assert {s for s, r in rows.items() if r["masked"]} == set(CODE_NOISE_SLOTS)


@pytest.mark.spark
def test_unknown_source_is_reported_with_count_and_reason_never_dropped(spark: Any, two_group_run: Any) -> None:
    run = two_group_run
    docs = spark.read.format("delta").load(str(run.sample / "documents"))
    decisions = spark.read.format("delta").load(str(run.root / "decisions")).filter("variant = 'source'")
    assert decisions.count() == docs.count() == run.summary.documents_in
    assert decisions.select("doc_id").distinct().count() == docs.select("doc_id").distinct().count()
    assert run.summary.rejected == {"no_scorer": UNSCORED_DOCS}
    unknown = decisions.filter("reason = 'no_scorer'").collect()
    assert {r["source"] for r in unknown} == {UNSCORED_SOURCE} and len(unknown) == UNSCORED_DOCS
    assert all(r["decision"] == "excluded" for r in unknown)
    kept = dict(run.summary.kept)  # "variant:unit" -> (kept, n_in)
    assert set(kept) >= {"source:html_cpt", "source:html_cpt_web", f"source:{CODE_SOURCE}", "group:code_demo"}
    n_kept, n_in = kept[f"source:{CODE_SOURCE}"]
    assert n_in == CODE_DOCS and 0 < n_kept < CODE_DOCS  # half of the code source's tokens, never exceeded
    assert kept["group:code_demo"][1] == CODE_DOCS
