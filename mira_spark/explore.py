"""What the notebooks call: run the job from widget values, register a run's SQL views, plot its tables.

Takes a run config path (``conf/*.yaml``) and an open session; gives the run summary, the view names of
:mod:`mira_spark.store.views` (``mira_<table>``, ``scores_long``) and matplotlib figures of scores, masks and
thresholds. ``notebooks/mira_pipeline.py`` and ``notebooks/mira_explore.py`` hold no logic of their own.
matplotlib is imported only by the plot functions (``pip install 'mira-spark[notebooks]'``; Databricks
runtimes ship it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

def stage_choices() -> list[str]:
    """``run`` and every stage of :data:`mira_spark.pipeline.STAGES` (the notebook's stage widget)."""
    from mira_spark.pipeline import STAGE_NAMES

    return ["run", *STAGE_NAMES]


def run_from_widgets(spark: SparkSession, config: str, stage: str = "run", run_id: str = "") -> dict[str, Any]:
    """Run the whole job (``run``) on ``spark``, or one stage through the CLI on the active session.

    Returns the run summary (``run``) or ``{"stage", "exit_code"}`` for a single stage.
    """
    stages = stage_choices()
    if stage not in stages:
        raise ValueError(f"stage must be one of {', '.join(stages)}, got {stage!r}")
    if stage == "run":
        from mira_spark.config import load_settings
        from mira_spark.pipeline import run_pipeline

        settings = load_settings(config, {"engine": "active"})
        return run_pipeline(spark, settings, run_id or None).as_dict()
    from mira_spark.cli import main as cli_main

    argv = [stage, "--config", config, "--engine", "active"] + (["--run-id", run_id] if run_id else [])
    return {"stage": stage, "exit_code": cli_main(argv)}


def open_run_views(spark: SparkSession, config: str) -> list[str]:
    """(Re)create the SQL views over the tables of the run ``config`` describes; returns their names."""
    from mira_spark.config import load_settings
    from mira_spark.pipeline import load_groups
    from mira_spark.store.tables import Tables
    from mira_spark.store.views import register_views

    settings = load_settings(config, {"engine": "active"})
    return register_views(spark, Tables(spark, settings), load_groups(settings).rubrics)


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower().startswith(("qt", "tk", "gtk", "wx", "macosx")):
        matplotlib.use("Agg")  # no display on a driver
    import matplotlib.pyplot as plt

    return plt


def plot_score_distributions(scores_long: pd.DataFrame) -> Any:
    """One histogram panel per source of the unmasked dimension scores (columns source, score, masked)."""
    plt = _pyplot()
    sources = sorted(scores_long["source"].dropna().unique())
    fig, axes = plt.subplots(1, max(len(sources), 1), figsize=(4 * max(len(sources), 1), 3), squeeze=False)
    for ax, source in zip(axes[0], sources, strict=False):
        cells = scores_long[(scores_long["source"] == source) & ~scores_long["masked"].astype(bool)]
        ax.hist(cells["score"].dropna(), bins=[x - 0.5 for x in range(0, 12)], color="tab:blue")
        ax.set_title(f"{source} ({len(cells)} cells)")
        ax.set_xlabel("score")
    axes[0][0].set_ylabel("cells")
    fig.tight_layout()
    return fig


def plot_reliability_mask(reliability: pd.DataFrame) -> Any:
    """Heat map of teacher-student MAE per (source, slot); masked cells are marked with an x."""
    plt = _pyplot()
    grid = reliability.pivot_table(index="source", columns="slot", values="mae", aggfunc="first")
    slots = sorted(grid.columns, key=lambda s: int(str(s).lstrip("A") or 0))
    grid = grid[slots]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(slots)), 1 + 0.5 * len(grid.index)))
    image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(slots)), slots)
    ax.set_yticks(range(len(grid.index)), grid.index)
    masked = reliability[reliability["masked"].astype(bool)]
    for _, row in masked.iterrows():
        if row["source"] in grid.index and row["slot"] in slots:
            ax.text(slots.index(row["slot"]), list(grid.index).index(row["source"]), "x", ha="center",
                    va="center", color="white")
    fig.colorbar(image, ax=ax, label="MAE (x: masked)")
    fig.tight_layout()
    return fig


def plot_thresholds(decisions: pd.DataFrame, thresholds: pd.DataFrame) -> Any:
    """Composite distribution per unit of one variant (columns unit, decision, composite) with the unit's
    threshold (columns unit, threshold) as a vertical line."""
    plt = _pyplot()
    sources = sorted(thresholds["unit"].dropna().unique())
    fig, axes = plt.subplots(1, max(len(sources), 1), figsize=(4 * max(len(sources), 1), 3), squeeze=False)
    for ax, source in zip(axes[0], sources, strict=False):
        rows = decisions[(decisions["unit"] == source) & decisions["composite"].notna()]
        for decision, color in (("kept", "tab:green"), ("excluded", "tab:gray")):
            part = rows[rows["decision"] == decision]["composite"]
            if len(part):
                ax.hist(part, bins=20, alpha=0.7, color=color, label=decision)
        threshold = thresholds[thresholds["unit"] == source]["threshold"].dropna()
        if len(threshold):
            ax.axvline(float(threshold.iloc[0]), color="tab:red", linestyle="--", label="threshold")
        ax.set_title(source)
        ax.set_xlabel("composite")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
