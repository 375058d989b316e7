"""Config and rubric loaders (good files load; bad ones give file, key/line and the fix), ``deep_merge``,
relative paths, and the pure prompt/token rules the loaders feed. No Spark.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from mira_spark.config import ConfigError, deep_merge, load_settings
from mira_spark.prompting.prompts import PromptBuilder, prompt_version, template_lines, truncate_head_tail
from mira_spark.prompting.rubric import (
    RubricError,
    load_calibration,
    load_dimensions,
    load_rubric,
    rubric_from_names,
)
from mira_spark.prompting.tokens import estimate_tokens

REPO = Path(__file__).resolve().parents[1]
ANCHORS = REPO / "anchors" / "text" / "group_B_dim_anchors.jsonl"
CALIBRATION = REPO / "anchors" / "text" / "group_B_calibration.jsonl"


def _conf_dir(tmp_path: Path) -> Path:
    """A copy of conf/ and anchors/ so relative paths resolve as in the repository."""
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copytree(REPO / "anchors", tmp_path / "anchors")
    return tmp_path / "conf"


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _run_config(conf: Path, **extra: Any) -> dict[str, Any]:
    base = yaml.safe_load((conf / "local.yaml").read_text(encoding="utf-8"))
    return deep_merge(base, extra)


# -- config ----------------------------------------------------------------------------------------


def test_repository_config_loads_and_resolves_relative_paths(tmp_path: Path) -> None:
    conf = _conf_dir(tmp_path)
    settings = load_settings(conf / "local.yaml")
    assert settings.tables.root == str((tmp_path / "data" / "run").resolve())
    assert settings.tables.documents == str((tmp_path / "data" / "sample" / "documents").resolve())
    group = settings.scorers.groups["text_group_b"]
    assert group.anchors == (tmp_path / "anchors" / "text" / "group_B_dim_anchors.jsonl").resolve()
    assert settings.scorers.pools[group.pool].verify_tls is True
    assert settings.scorers.group_for_source() == {"html_cpt": "text_group_b", "html_cpt_web": "text_group_b",
                                                   "py_snippets": "code_demo"}
    code = settings.scorers.groups["code_demo"]  # set inline in local.yaml: paths relative to local.yaml
    assert code.anchors == (tmp_path / "anchors" / "code" / "demo_python_dim_anchors.jsonl").resolve()


def test_overrides_are_deep_merged(tmp_path: Path) -> None:
    settings = load_settings(_conf_dir(tmp_path) / "local.yaml", {"scoring": {"wave_size": 7}})
    assert settings.scoring.wave_size == 7 and settings.scoring.max_output_repairs == 2


def test_deep_merge_recurses_and_copies() -> None:
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    merged = deep_merge(base, {"a": {"b": 2}, "e": {"f": 3}})
    assert merged == {"a": {"b": 2, "c": [1]}, "d": 1, "e": {"f": 3}}
    merged["a"]["c"].append(2)
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1}
    assert deep_merge({"a": {"b": 1}}, {"a": 5}) == {"a": 5}


@pytest.mark.parametrize(
    ("extra", "wants"),
    [
        ({"engine": "spark"}, ["engine", "'sail', 'local', 'connect' or 'active'", "'spark'"]),
        ({"selection": {"variants": [{"name": "g", "mode": "fraction", "unit_fractions": {"html_cpt": 1.5}}]}},
         ["selection.variants.0", "variant 'g': unit_fractions[html_cpt] = 1.5 must be between 0 and 1"]),
        ({"selection": {"variants": [{"name": "t", "mode": "tokens"}]}},
         ["selection.variants.0", "mode tokens needs exactly one of token_fraction, token_budget, unit_token_budgets"]),
        ({"selection": {"variants": [{"name": "r", "mode": "min_score", "min_score": 50, "method": "random"}]}},
         ["selection.variants.0", "method random has no score"]),
        ({"reliability": {"mask_on": "ci"}}, ["reliability.mask_on", "'point', 'ci_strict' or 'ci_lenient'"]),
        ({"scoring": {"wave_size": 0}}, ["scoring.wave_size", "greater than or equal to 1", "(got 0)"]),
        ({"scoring": {"wave_sise": 10}}, ["scoring.wave_sise", "Extra inputs are not permitted"]),
        ({"colour": "blue"}, ["colour", "Extra inputs are not permitted"]),
    ],
    ids=["engine", "unit_fraction", "tokens_budget_missing", "random_min_score", "mask_on", "wave_size",
         "nested_unknown_key", "unknown_key"],
)
def test_invalid_run_config_names_file_key_and_allowed_values(tmp_path: Path, extra: dict, wants: list[str]) -> None:
    conf = _conf_dir(tmp_path)
    path = _write(conf / "bad.yaml", _run_config(conf, **extra))
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    assert message.startswith(f"{path}: invalid configuration")
    for want in wants:
        assert want in message, message


@pytest.mark.parametrize(
    ("edit", "wants"),
    [
        (lambda s: s["groups"]["text_group_b"].update(pool="nope"),
         ["uses pool 'nope', which is not defined", "defined pools: ['text_group_b_pool']"]),
        (lambda s: s["groups"].update(second={**s["groups"]["text_group_b"], "sources": ["html_cpt"]}),
         ["source 'html_cpt' is routed to both 'text_group_b' and 'second'"]),
        (lambda s: s["pools"]["text_group_b_pool"]["endpoints"].append({"url": "127.0.0.1:8000/v1"}),
         ["pools.text_group_b_pool.endpoints.2.url", "must start with http:// or https://"]),
    ],
    ids=["pool_not_defined", "source_routed_twice", "url_without_scheme"],
)
def test_invalid_scorers_file_names_the_scorers_file(tmp_path: Path, edit: Any, wants: list[str]) -> None:
    conf = _conf_dir(tmp_path)
    scorers = yaml.safe_load((conf / "scorers.yaml").read_text(encoding="utf-8"))
    edit(scorers)
    _write(conf / "scorers.yaml", scorers)
    with pytest.raises(ConfigError) as err:
        load_settings(conf / "local.yaml")
    message = str(err.value)
    assert message.startswith(f"{conf / 'scorers.yaml'}: invalid configuration")
    for want in wants:
        assert want in message, message


def test_missing_and_unparsable_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("engine: [sail\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML"):
        load_settings(tmp_path / "broken.yaml")


# -- rubric ----------------------------------------------------------------------------------------


def _anchor_rows() -> list[dict]:
    return [json.loads(line) for line in ANCHORS.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                    encoding="utf-8")
    return path


def test_repository_rubric_loads() -> None:
    rubric = load_rubric("text_group_b", ANCHORS, CALIBRATION)
    assert rubric.slots == tuple(f"A{i}" for i in range(1, 16))
    assert rubric.calibration and all(set(r.scores) == set(rubric.slots) for r in rubric.calibration)


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    rows: list[Any] = _anchor_rows()
    rows[4] = '{"slot": "A5", "dimension": "x", cluster_size: 3}'
    path = _write_jsonl(tmp_path / "a.jsonl", rows)
    with pytest.raises(RubricError, match=rf"^{path}:5: not valid JSON"):
        load_dimensions(path)


def test_missing_slot_is_named(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "a.jsonl", [r for r in _anchor_rows() if r["slot"] != "A7"])
    with pytest.raises(RubricError) as err:
        load_dimensions(path)
    assert str(err.value) == (f"{path}: expected exactly 15 slots A1..A15; missing ['A7'], unexpected none")


def _sixteen_slots(tmp_path: Path) -> Path:
    return _write_jsonl(tmp_path / "a16.jsonl",
                        [*_anchor_rows(), {"slot": "A16", "dimension": "extra dimension", "cluster_size": 1}])


def test_rubric_with_more_slots_than_the_tables_is_rejected(tmp_path: Path) -> None:
    path = _sixteen_slots(tmp_path)
    with pytest.raises(RubricError) as err:
        load_dimensions(path, expected_size=16)
    assert str(err.value) == (
        f"{path}: slots ['A16'] exceed the 15 slots the score table holds (a1_score .. a15_score); "
        "a rubric may use at most A1..A15"
    )
    with pytest.raises(RubricError) as err:
        load_rubric("text_group_b", path, expected_size=16)
    assert str(err.value).startswith(f"group 'text_group_b' ({path}): 16 slots do not fit the score table, "
                                     "which holds 15")
    with pytest.raises(RubricError, match=r"^rubric of group 'g': slots \['A16'\] exceed the 15 slots"):
        rubric_from_names("g", [f"dim {i}" for i in range(1, 17)])


def test_config_with_more_dimensions_than_the_tables_names_group_and_limit(tmp_path: Path) -> None:
    conf = _conf_dir(tmp_path)
    scorers = yaml.safe_load((conf / "scorers.yaml").read_text(encoding="utf-8"))
    scorers["groups"]["text_group_b"]["dimensions"] = 16
    _write(conf / "scorers.yaml", scorers)
    with pytest.raises(ConfigError) as err:
        load_settings(conf / "local.yaml")
    message = str(err.value)
    assert message.startswith(f"{conf / 'scorers.yaml'}: invalid configuration"), message
    assert "groups.text_group_b.dimensions" in message, message
    assert "16 slots do not fit the score table, which holds 15" in message, message


def test_duplicate_slot_names_both_lines(tmp_path: Path) -> None:
    rows = _anchor_rows()
    rows.insert(9, {**rows[2], "dimension": "Another Name"})
    path = _write_jsonl(tmp_path / "a.jsonl", rows)
    with pytest.raises(RubricError, match=rf"^{path}:10: slot A3 already defined on line 3$"):
        load_dimensions(path)


def test_calibration_score_out_of_range(tmp_path: Path) -> None:
    dims = load_dimensions(ANCHORS)
    rows = [json.loads(line) for line in CALIBRATION.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows[1]["scores"]["A3"] = 11
    path = _write_jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(RubricError) as err:
        load_calibration(path, dims)
    assert str(err.value).startswith(f"{path}:2: field 'scores'")
    assert "score for A3 is 11.0, outside 0-10" in str(err.value)


def test_missing_rubric_file_points_at_the_config(tmp_path: Path) -> None:
    with pytest.raises(RubricError, match=r"file not found; check the anchors paths in conf/scorers\.yaml"):
        load_dimensions(tmp_path / "none.jsonl")


# -- prompts and tokens ----------------------------------------------------------------------------


def test_template_lines_match_the_model_card_format() -> None:
    rubric = rubric_from_names("g", ["Chinese Description Quality", "Feature Completeness"])
    assert template_lines(rubric) == [
        "[A1] Chinese Description Quality: <score>/10 — <justification>",
        "[A2] Feature Completeness: <score>/10 — <justification>",
        "overall: <0-100>",
        "training_recommendation: <keep | downsample | drop>",
        "domain_tag: <short tag>",
        "brief: <one-sentence summary>",
    ]


def test_static_part_comes_before_the_document() -> None:
    builder = PromptBuilder(load_rubric("g", ANCHORS, CALIBRATION), "m", 65536, 2048)
    a = builder.build("html_cpt", "<p>第一篇</p>").messages
    b = builder.build("html_cpt_web", "完全不同的第二篇文档 " * 50).messages
    assert a[0] == b[0] and a[0]["role"] == "system"
    assert a[1]["content"].startswith(builder.head + "\n") and b[1]["content"].startswith(builder.head + "\n")
    assert "第一篇" not in builder.head and "第一篇" not in a[0]["content"]


@pytest.mark.parametrize("budget", [50, 300, 2000])
def test_head_tail_truncation_keeps_the_budget(budget: int) -> None:
    text = "".join(f"段落{i}：这是一些内容 with English words {i}.\n" for i in range(3000))
    kept, truncated = truncate_head_tail(text, budget)
    assert truncated and estimate_tokens(kept) <= budget
    assert kept.startswith(text[:10]) and kept.endswith(text[-5:])
    assert truncate_head_tail("short", budget) == ("short", False)


def test_prompt_version_changes_with_an_anchor_name() -> None:
    names = ["Chinese Description Quality", "Feature Completeness"]
    v1 = prompt_version(rubric_from_names("g", names), "m")
    assert v1 == prompt_version(rubric_from_names("g", names), "m")
    assert v1 != prompt_version(rubric_from_names("g", [names[0], "Feature Coverage"]), "m")
    assert v1 != prompt_version(rubric_from_names("g", names), "other-model")


def test_duplicate_calibration_ref_id_names_both_lines(tmp_path: Path) -> None:
    dims = load_dimensions(ANCHORS)
    rows = [json.loads(line) for line in CALIBRATION.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows.append(dict(rows[0]))
    path = _write_jsonl(tmp_path / "c.jsonl", rows)
    ref = rows[0]["ref_id"]
    with pytest.raises(RubricError, match=rf"^{path}:{len(rows)}: ref_id {ref} already defined on line 1$"):
        load_calibration(path, dims)
