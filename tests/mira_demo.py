"""One small demo run shared by the notebook and SQL tests (a pytest plugin: ``pytest_plugins = ["mira_demo"]``).

The sample corpus scored by the two simulated endpoints on the session's Sail engine, like ``make demo``
but on temporary tables (the canary drift guard on, as in ``make demo``); run once per test session.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config


@dataclass(frozen=True)
class DemoRun:
    config: Path
    root: Path
    summary: dict[str, Any]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path, sim_pool: list[Any],
             spark: Any) -> DemoRun:
    from mira_spark.config import load_settings
    from mira_spark.pipeline import run_pipeline

    base = tmp_path_factory.mktemp("demo")
    config = write_config(base / "demo.yaml", base / "tables", str(sample_dir / "documents"),
                          str(sample_dir / "validation"), [h.url for h in sim_pool],
                          scoring={"wave_size": 1000, "canary": {"enabled": True}})
    summary = run_pipeline(spark, load_settings(config), run_id="demo")
    return DemoRun(config=config, root=base / "tables", summary=summary.as_dict())
