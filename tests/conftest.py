"""Shared fixtures: the sample corpus, simulated endpoints on 127.0.0.1, run configs, a Sail session."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RUST_LOG", "error")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample corpus and validation table as Delta tables (written once per test session)."""
    from mira_spark.devtools.samples import write_sample

    out = tmp_path_factory.mktemp("sample")
    write_sample(out, fmt="delta")
    return out


@pytest.fixture(scope="session")
def sim_pool() -> Iterator[list[Any]]:
    """Two simulated scorer endpoints in threads of the test process."""
    from mira_spark.devtools.simulator.launcher import start_in_thread
    from mira_spark.devtools.simulator.server import SimConfig

    handles = [start_in_thread(SimConfig(name=f"sim{i}", time_scale=400.0)) for i in range(2)]
    yield handles
    for h in handles:
        h.stop()


def write_config(path: Path, root: Path, documents: str, validation: str | None, endpoints: list[str],
                 **overrides: Any) -> Path:
    """A run config like conf/local.yaml, pointed at temporary tables and the given endpoints."""
    from mira_spark.config import deep_merge

    config: dict[str, Any] = {
        "engine": "sail",
        "table_format": "delta",
        "scorers_file": str(REPO / "conf" / "scorers.yaml"),
        "tables": {"root": str(root), "documents": documents, "validation": validation},
        # The canary guard sends calibration references before the corpus; tests that count requests per
        # document keep it off, tests of the guard (test_canary, the demo run) turn it on.
        "scoring": {"wave_size": 100, "canary": {"enabled": False}},
        "scorers": {
            "pools": {
                "text_group_b_pool": {
                    "endpoints": [{"url": u} for u in endpoints],
                    "slots_per_endpoint": 64,
                    "backoff_initial_s": 0.01,
                    "backoff_max_s": 0.2,
                    "breaker_probe_s": 0.5,
                }
            }
        },
    }
    config = deep_merge(config, overrides)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def make_config(tmp_path: Path, sample_dir: Path, sim_pool: list[Any]) -> Callable[..., Path]:
    def make(name: str = "run.yaml", endpoints: list[str] | None = None, **overrides: Any) -> Path:
        return write_config(
            tmp_path / name,
            tmp_path / "tables",
            str(sample_dir / "documents"),
            str(sample_dir / "validation"),
            endpoints or [h.url for h in sim_pool],
            **overrides,
        )

    return make


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One in-process Sail session for the whole test session."""
    from mira_spark.store.engines import sail_session

    with sail_session("mira-spark-tests") as session:
        yield session


def score_keys(rows: Iterable[Any]) -> set[str]:
    """``doc_id|scorer|prompt_version`` of table rows: the request id the simulators log."""
    return {f"{r['doc_id']}|{r['scorer']}|{r['prompt_version']}" for r in rows}


def requests_by_key(sims: Iterable[Any]) -> Counter[str]:
    """Requests the simulators received, per request id, summed over endpoints."""
    total: Counter[str] = Counter()
    for h in sims:
        total.update(h.stats()["requests_by_id"])
    return total
