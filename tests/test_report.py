"""``mira-spark report``: one static HTML page whose every image is a valid PNG next to it.

Two inputs: a synthetic fixture in the layout selection is moving to (four variants at one budget,
CI columns, a canary table with a quarantined endpoint; no Spark), and the tables of the 2-group demo run
(today's layout: no variant, no tokens column), read by the thin Spark reader and by the CLI.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mira_spark.selection.report import (
    PNG_SIGNATURE,
    SECTIONS,
    ReportData,
    jaccard_matrix,
    render_report,
    retention_curve,
    source_mix,
)

pytest_plugins = ["two_group_demo"]

IMG = re.compile(r'<img src="([^"]+)"')


def _check_page(page: Path) -> tuple[str, list[str]]:
    """The page links only PNGs that exist and are valid, and links every PNG in its directory."""
    from matplotlib.image import imread

    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    linked = IMG.findall(text)
    assert linked, "no images"
    assert sorted(linked) == sorted(p.name for p in page.parent.glob("*.png"))
    for name in linked:
        assert "/" not in name  # relative, next to the page: opens from disk wherever it is copied
        raw = (page.parent / name).read_bytes()
        assert raw.startswith(PNG_SIGNATURE), name
        pixels = imread(page.parent / name)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100, (name, pixels.shape)
    for section in SECTIONS:
        assert f'<section id="{section}">' in text, section
    return text, linked


# -- pure maths ---------------------------------------------------------------------------------------


def test_retention_curve_sums_tokens_at_or_above_each_threshold() -> None:
    points = pd.DataFrame({"composite": [2.0, 9.0, 5.0, 9.0, 5.0], "n": [1, 2, 1, 1, 3],
                           "tokens": [100, 40, 7, 10, 3]})
    curve = retention_curve(points)
    assert curve["composite"].tolist() == [9.0, 5.0, 2.0]
    assert curve["tokens_kept"].tolist() == [50.0, 60.0, 160.0]
    assert curve["n_kept"].tolist() == [3.0, 7.0, 8.0]


def test_jaccard_of_known_sets() -> None:
    kept = {"a": {1, 2, 3, 4}, "b": {3, 4, 5}, "c": {9}}
    pairs = [(x, y, len(kept[x] & kept[y])) for x in kept for y in kept if x <= y]
    overlap = pd.DataFrame(pairs, columns=["variant_a", "variant_b", "n_both"])
    j = jaccard_matrix(overlap, {k: len(v) for k, v in kept.items()})
    assert j.loc["a", "b"] == pytest.approx(2 / 5) and j.loc["b", "a"] == pytest.approx(2 / 5)
    assert j.loc["a", "c"] == 0.0 and j.loc["c", "c"] == 1.0


def test_source_mix_rows_are_shares_of_tokens() -> None:
    tokens = pd.DataFrame({"variant": ["g", "g", "g", "s", "s", "s"], "source": ["x", "y", "y", "x", "y", "y"],
                           "decision": ["kept", "kept", "excluded", "kept", "excluded", "kept"],
                           "n": [1] * 6, "tokens": [30, 10, 60, 20, 60, 20]})
    mix = source_mix(tokens)
    assert mix.loc["raw mixture"].tolist() == pytest.approx([0.3, 0.7])
    assert mix.loc["g"].tolist() == pytest.approx([0.75, 0.25]) and mix.loc["s"].tolist() == pytest.approx([0.5, 0.5])


# -- synthetic fixture in the new layout --------------------------------------------------------------


def _synthetic() -> ReportData:
    sources = {"web": "text_g", "blog": "text_g", "code": "code_g"}
    slots = {"text_g": ["A1", "A2", "A3"], "code_g": ["A1", "A2"]}
    hist, rel = [], []
    for source, scorer in sources.items():
        for slot in slots[scorer]:
            hist += [(source, scorer, slot, f"dim {slot}", s / 2, 1 + (s % 5)) for s in range(21)]
            masked = (source, slot) == ("blog", "A3")
            rel.append((source, scorer, slot, f"dim {slot}", 30, 2.6 if masked else 0.7, 0.5, 0.9,
                        0.1 if masked else 0.8, -0.2, 0.9, masked, "mae" if masked else "ok", "source", "m1"))
    reliability = pd.DataFrame(rel, columns=["source", "scorer", "slot", "dimension", "n", "mae", "mae_lo", "mae_hi",
                                             "spearman", "spearman_lo", "spearman_hi", "masked", "reason", "basis",
                                             "mask_version"])
    thresholds = pd.DataFrame([
        ("global", "global", "global", "tokens", "score", 500, 6.0, 30, 14, 1000, 500, 0.5, True, False),
        *[("group", "group", g, "tokens", "score", 250, 5.5, 15, 7, 500, 250, 0.5, True, False)
          for g in ("text_g", "code_g")],
        *[("source", "source", s, "tokens", "score", 160, 6.5, 10, 5, 330, 160, 0.5, True, False) for s in sources],
        *[("random", "source", s, "tokens", "random", 160, 0.48, 10, 5, 330, 160, 0.5, True, False) for s in sources],
    ], columns=["variant", "unit_kind", "unit", "mode", "method", "budget", "threshold", "n_in", "n_kept",
                "tokens_in", "tokens_kept", "kept_fraction", "budget_met", "tokens_estimated"])
    thresholds["cut_on"] = ["random_score" if m == "random" else "composite" for m in thresholds["method"]]
    curves = pd.DataFrame([(v, s, g, c / 2, 1, 33) for v in ("global", "group", "source") for s, g in sources.items()
                           for c in range(21)], columns=["variant", "source", "scorer", "composite", "n", "tokens"])
    tokens = pd.DataFrame([(v, s, d, 5, 165) for v in ("global", "group", "source", "random") for s in sources
                           for d in ("kept", "excluded")], columns=["variant", "source", "decision", "n", "tokens"])
    variants = ["global", "group", "random", "source"]
    overlap = pd.DataFrame([(a, b, 15 if a == b else 6) for a in variants for b in variants if a <= b],
                           columns=["variant_a", "variant_b", "n_both"])
    canary = pd.DataFrame([(run, ep, "text_g", f"A{i}", 7.0, 7.0 + (3.0 if ep.endswith(":2") else 0.2), 0.0, ep.endswith(":2"))
                           for run in ("r1",) for ep in ("http://h:1", "http://h:2") for i in (1, 2, 3)],
                          columns=["run_id", "endpoint", "scorer", "slot", "reference_score", "score", "deviation",
                                   "quarantined"])
    canary["deviation"] = canary["score"] - canary["reference_score"]
    return ReportData(histograms=pd.DataFrame(hist, columns=["source", "scorer", "slot", "dimension", "score", "n"]),
                      reliability=reliability, thresholds=thresholds, curves=curves, tokens=tokens, overlap=overlap,
                      canary=canary, title="synthetic")


def test_report_from_the_new_layout_with_variants_and_canary(tmp_path: Path) -> None:
    (tmp_path / "stale.png").write_bytes(PNG_SIGNATURE)  # an earlier report's plot: removed
    text, linked = _check_page(render_report(_synthetic(), tmp_path))
    assert set(linked) >= {"hist_web.png", "hist_blog.png", "hist_code.png", "reliability_text_g.png",
                           "reliability_code_g.png", "retention_global.png", "retention_group.png",
                           "retention_source.png", "tokens_per_source.png", "variants_jaccard.png",
                           "variants_source_mix.png", "canary.png"}
    assert "retention_random.png" not in linked and "random baseline, no score threshold" in text
    assert "<td>random_score</td>" in text and "<td>0.480</td>" in text  # its cut, on the hash score
    assert "95% confidence interval" in text
    assert "Masked cells (1)" in text
    # Jaccard of two 15-document sets sharing 6: 6 / 24
    assert "<td>0.250</td>" in text
    canary = text[text.index('<section id="canary">'):]
    assert "http://h:2" in canary and "<td>True</td>" in canary and "<td>3.000</td>" in canary


def test_report_from_the_old_layout_without_canary(tmp_path: Path) -> None:
    data = _synthetic()
    old = ReportData(histograms=data.histograms,
                     reliability=data.reliability.drop(columns=["mae_lo", "mae_hi", "spearman_lo", "spearman_hi"]),
                     thresholds=data.thresholds[data.thresholds["variant"] == "source"]
                     .drop(columns=["variant", "unit_kind", "method", "tokens_kept"]).assign(source=lambda d: d["unit"]),
                     curves=data.curves[data.curves["variant"] == "source"].assign(variant="default"),
                     tokens=data.tokens[data.tokens["variant"] == "source"].assign(variant="default"),
                     overlap=pd.DataFrame(columns=["variant_a", "variant_b", "n_both"]), canary=None)
    text, linked = _check_page(render_report(old, tmp_path))
    assert "retention_default.png" in linked and "variants_jaccard.png" not in linked
    assert "No canary table in this run." in text and "One variant in this run" in text


# -- a real run's tables ------------------------------------------------------------------------------


@pytest.mark.spark
def test_reader_collects_the_two_group_demo_runs_aggregates(spark: Any, two_group_run: Any) -> None:
    from mira_spark.config import load_settings
    from mira_spark.selection.report import read_report_data

    settings = load_settings(two_group_run.config)
    data = read_report_data(spark, settings)
    assert set(data.histograms["source"]) == {"html_cpt", "html_cpt_web", "py_snippets"}
    code_dims = set(data.histograms.loc[data.histograms["source"] == "py_snippets", "dimension"])
    assert "Docstring Quality" in code_dims and len(code_dims) == 6
    variants = {"global", "group", "source", "random"}
    assert set(data.tokens["variant"]) == variants and not any("tokens column" in n for n in data.notes)
    n_docs = spark.read.format("delta").load(str(two_group_run.sample / "documents")).count()
    assert int(data.tokens["n"].sum()) == n_docs * len(variants)  # every decision row, once per variant
    assert (data.tokens.loc[data.tokens["decision"] == "kept", "tokens"] > 0).all()
    assert set(data.reliability["scorer"]) == {"text_group_b", "code_demo"}


def _with_canary(spark: Any, run: Any, root: Path) -> None:
    """The demo run's tables (variants, tokens, CIs) copied to ``root``, plus a canary table with a drifting node."""
    for name in ("scores", "reliability", "decisions", "thresholds"):
        spark.read.format("delta").load(str(run.root / name)).write.format("delta").mode("overwrite").save(
            str(root / name))
    canary = spark.createDataFrame(
        [("r", ep, "text_group_b", f"A{i}", 6.0, 6.0 + dev, dev, dev > 1) for ep, dev in
         (("http://127.0.0.1:1/v1", 0.2), ("http://127.0.0.1:2/v1", 2.5)) for i in (1, 2, 3)],
        "run_id string, endpoint string, scorer string, slot string, reference_score double, score double, "
        "deviation double, quarantined boolean")
    canary.write.format("delta").mode("overwrite").save(str(root / "canary"))


@pytest.mark.spark
def test_spark_reader_on_the_new_layout_with_variants_and_canary(spark: Any, two_group_run: Any,
                                                                tmp_path: Path) -> None:
    from mira_spark.config import load_settings
    from mira_spark.selection.report import read_report_data

    _with_canary(spark, two_group_run, tmp_path / "tables")
    settings = load_settings(two_group_run.config, {"tables": {"root": str(tmp_path / "tables")}})
    data = read_report_data(spark, settings)
    assert data.notes == ()  # tokens, variants and the canary columns all present: no fallback taken
    per_variant = data.tokens.groupby("variant")[["n", "tokens"]].sum()
    assert set(per_variant.index) == {"global", "group", "random", "source"}
    assert per_variant["n"].nunique() == 1 and per_variant["tokens"].nunique() == 1  # every row once per variant
    assert set(zip(data.overlap["variant_a"], data.overlap["variant_b"], strict=True)) >= {
        ("global", "random"), ("global", "source"), ("random", "source"), ("source", "source")}
    assert data.canary is not None and int(data.canary["quarantined"].sum()) == 3
    text, linked = _check_page(render_report(data, tmp_path / "report"))
    assert {"retention_global.png", "retention_source.png", "variants_jaccard.png", "canary.png"} <= set(linked)
    assert "retention_random.png" not in linked and "95% confidence interval" in text  # CI columns read
    assert "http://127.0.0.1:2/v1" in text[text.index('<section id="canary">'):]


@pytest.mark.spark
def test_cli_report_writes_the_page_and_prints_its_path(two_group_run: Any, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from mira_spark.cli import main

    assert main(["report", "--config", str(two_group_run.config), "--out", str(tmp_path / "r")]) == 0
    page = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert page == tmp_path / "r" / "index.html"
    text, linked = _check_page(page)
    assert {"reliability_text_group_b.png", "reliability_code_demo.png", "retention_global.png", "retention_source.png",
            "hist_py_snippets.png"} <= set(linked)
    reasons = text[text.index("Decisions by reason"):text.index('<section id="histograms">')]
    assert "<td>no_scorer</td><td>legacy_forum</td><td>3</td>" in reasons  # the unknown source: count + reason


def test_cli_report_without_tables_says_run_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from conftest import REPO

    from mira_spark.cli import main

    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copytree(REPO / "anchors", tmp_path / "anchors")
    assert main(["report", "--config", str(tmp_path / "conf" / "local.yaml")]) == 2
    assert "before `mira-spark report`" in capsys.readouterr().err
