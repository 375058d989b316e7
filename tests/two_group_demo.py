"""The 2-group demo run (a pytest plugin: ``pytest_plugins = ["two_group_demo"]``), shared by the scorer-group
and report tests.

Like ``make demo``: the sample corpus with the code group's documents (``write_sample(code=True)``), the
Text-Group1 pool (the session's two simulated endpoints) and the demo code group exactly as
``conf/local.yaml`` defines it, on its own simulated endpoint serving its model id; run once per session.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, write_config

CODE_GROUP = "code_demo"


def demo_code_group() -> tuple[dict[str, Any], dict[str, Any]]:
    """The code group and its pool from ``conf/local.yaml``, anchors paths made absolute."""
    local = yaml.safe_load((REPO / "conf" / "local.yaml").read_text(encoding="utf-8"))
    group = dict(local["scorers"]["groups"][CODE_GROUP])
    for key in ("anchors", "calibration"):
        group[key] = str((REPO / "conf" / group[key]).resolve())
    return group, local["scorers"]["pools"][group["pool"]]


@dataclass(frozen=True)
class TwoGroupRun:
    config: Path
    root: Path
    sample: Path
    summary: Any  # RunSummary
    text_requests: int
    code_requests: int
    code_model_seen: str


@pytest.fixture(scope="session")
def code_sim() -> Iterator[Any]:
    """One simulated endpoint serving the code group's model id."""
    from mira_spark.devtools.simulator.launcher import start_in_thread
    from mira_spark.devtools.simulator.server import SimConfig

    group, _ = demo_code_group()
    handle = start_in_thread(SimConfig(name="code-sim", model=group["model"], time_scale=400.0))
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def two_group_run(tmp_path_factory: pytest.TempPathFactory, sim_pool: list[Any], code_sim: Any,
                  spark: Any) -> TwoGroupRun:
    from mira_spark.config import load_settings
    from mira_spark.devtools.samples import write_sample
    from mira_spark.pipeline import run_pipeline

    base = tmp_path_factory.mktemp("two_groups")
    sample = base / "sample"
    write_sample(sample, fmt="delta", code=True)
    group, pool = demo_code_group()
    pool = {**pool, "endpoints": [{"url": code_sim.url}], "backoff_initial_s": 0.01, "backoff_max_s": 0.2}
    config = write_config(base / "two_groups.yaml", base / "tables", str(sample / "documents"),
                          str(sample / "validation"), [h.url for h in sim_pool],
                          scoring={"wave_size": 1000},
                          reliability={"min_n": 20},  # the demo has 32 code documents; production default 50
                          scorers={"groups": {CODE_GROUP: group}, "pools": {group["pool"]: pool}})
    text_before = sum(h.stats()["requests"] for h in sim_pool)
    code_before = code_sim.stats()["requests"]
    summary = run_pipeline(spark, load_settings(config), run_id="two-groups")
    return TwoGroupRun(config=config, root=base / "tables", sample=sample, summary=summary,
                       text_requests=sum(h.stats()["requests"] for h in sim_pool) - text_before,
                       code_requests=code_sim.stats()["requests"] - code_before,
                       code_model_seen=code_sim.stats()["model"])
