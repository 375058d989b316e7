"""The Databricks notebooks, run locally as plain Python on Sail with a stub ``dbutils`` and ``display``.

Each notebook file is executed whole (its ``# MAGIC`` cells are comments to Python) in a namespace holding
the test session's ``spark``, a ``dbutils`` whose widgets return their defaults unless the test sets a
value, and a ``display`` that records what it is given. Against the shared demo run.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["mira_demo"]
pytestmark = [pytest.mark.spark]

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))
SEPARATOR = "# COMMAND ----------"


class _Widgets:
    def __init__(self, values: dict[str, str]) -> None:
        self.values, self.defaults = values, {}

    def text(self, name: str, default: str, label: str | None = None) -> None:
        self.defaults[name] = default

    def dropdown(self, name: str, default: str, choices: list[str], label: str | None = None) -> None:
        assert default in choices
        self.defaults[name] = default

    def get(self, name: str) -> str:
        assert name in self.defaults, f"widget {name} read before it was defined"
        return self.values.get(name, self.defaults[name])


class _DBUtils:
    def __init__(self, values: dict[str, str]) -> None:
        self.widgets = _Widgets(values)


def _run_notebook(path: Path, spark: Any, values: dict[str, str]) -> tuple[dict[str, Any], list[Any]]:
    shown: list[Any] = []
    namespace = {"spark": spark, "dbutils": _DBUtils(values), "display": shown.append, "__name__": "__main__"}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    return namespace, shown


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_databricks_source_that_only_calls_the_library(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert source.startswith("# Databricks notebook source\n")
    cells = [c.strip() for c in source.split(SEPARATOR)[1:]] if SEPARATOR in source else []
    first = source.split(SEPARATOR)[0].splitlines()[1:]
    assert cells and all(line.startswith("# MAGIC") for line in first if line.strip()), "first cell: markdown"
    for cell in cells:
        lines = [line for line in cell.splitlines() if line.strip()]
        magic = [line.startswith("# MAGIC") for line in lines]
        assert all(magic) or not any(magic), f"a cell mixes MAGIC and Python lines: {lines[:2]}"
    tree = ast.parse(source)
    for node in tree.body:  # no logic in cells: imports from mira_spark, calls, assignments of calls, names
        assert not isinstance(node, ast.FunctionDef | ast.ClassDef | ast.For | ast.While | ast.If | ast.With
                              | ast.Try), f"{path.name}:{node.lineno}: logic belongs in mira_spark"
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").startswith("mira_spark"), node.module
        elif isinstance(node, ast.Assign | ast.Expr):
            assert isinstance(node.value, ast.Call | ast.Name), f"{path.name}:{node.lineno}"
    widgets = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("text", "dropdown")]
    assert widgets, "reads its options from dbutils.widgets"


def test_pipeline_notebook_runs_the_job_from_widgets(demo_run: Any, spark: Any) -> None:
    namespace, shown = _run_notebook(REPO / "notebooks" / "mira_pipeline.py", spark,
                                     {"config": str(demo_run.config), "run_id": "notebook"})
    assert namespace["dbutils"].widgets.defaults["stage"] == "run"  # the default stage was used
    result = namespace["result"]
    assert result["run_id"] == "notebook" and result["documents_in"] == demo_run.summary["documents_in"]
    assert result["requests_sent"] == 0, "everything was scored by the demo run: nothing is sent again"
    assert sum(k for k, _ in result["kept"].values()) == sum(k for k, _ in demo_run.summary["kept"].values())
    reasons = shown[-1].toPandas()
    variants = {k.split(":")[0] for k in demo_run.summary["kept"]}
    assert reasons["n"].sum() == demo_run.summary["documents_in"] * len(variants)  # once per variant


def test_explore_notebook_queries_and_plots(demo_run: Any, spark: Any) -> None:
    from matplotlib.figure import Figure

    namespace, shown = _run_notebook(REPO / "notebooks" / "mira_explore.py", spark,
                                     {"config": str(demo_run.config)})
    assert {"mira_decisions", "mira_reliability", "mira_thresholds", "scores_long"} <= set(namespace["views"])
    figures = [x for x in shown if isinstance(x, Figure)]
    frames = [x.toPandas() for x in shown if not isinstance(x, Figure)]
    assert len(figures) == 3 and all(f.axes for f in figures)
    per_dimension, masked, thresholds, near = frames
    # sources with scored rows; a source with input rows but none eligible (legacy_forum: every row no_scorer)
    # still has its thresholds row and its (0 kept, 0 eligible) count
    kept = demo_run.summary["kept"]
    sources = {k.split(":")[1] for k, (_kept, n_in) in kept.items() if k.startswith("source:") and n_in}
    assert tuple(kept["source:legacy_forum"]) == (0, 0) and "legacy_forum" not in sources
    assert set(per_dimension["source"]) == sources and (per_dimension["n"] > 0).all()
    assert per_dimension["mean_score"].between(0, 10).all()
    assert masked["masked"].all()
    assert set(thresholds["variant"] + ":" + thresholds["unit"]) == set(demo_run.summary["kept"])
    assert 0 < len(near) <= 20 and near["margin"].abs().is_monotonic_increasing
