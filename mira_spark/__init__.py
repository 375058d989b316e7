"""mira-spark: MIRA source-aware mid-training data selection as a Spark job.

Public API: :func:`parse_output` (scorer text -> ScoreCard), :func:`load_settings`, :func:`run`.
Imports are lazy so ``import mira_spark`` stays cheap and Spark-free.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ScoreCard", "load_settings", "parse_output", "run"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("parse_output", "ScoreCard"):
        from mira_spark.parsing import parse as parsing

        return getattr(parsing, name)
    if name == "load_settings":
        from mira_spark.config import load_settings

        return load_settings
    if name == "run":
        from mira_spark.pipeline import run

        return run
    raise AttributeError(name)
