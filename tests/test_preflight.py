"""Preflight against /v1/models: the group's model must be served, with room for serving.max_model_len.

Against simulated endpoints (their /v1/models reports ``max_model_len`` per model, like vLLM); the same
check against the real llama.cpp server is in ``test_real_llm.py``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import write_config

from mira_spark import cli
from mira_spark.config import ConfigError, EndpointConfig, PoolConfig, load_settings
from mira_spark.devtools.simulator.launcher import SimHandle, start_in_thread
from mira_spark.devtools.simulator.server import DEFAULT_MODEL, SimConfig
from mira_spark.serving.preflight import ServedModels, check_served_models, parse_model_list, served_problem
from mira_spark.store.tables import Tables


def _pool(*urls: str) -> PoolConfig:
    return PoolConfig(endpoints=tuple(EndpointConfig(url=u) for u in urls))


@pytest.fixture
def sims() -> Iterator[dict[str, SimHandle]]:
    handles = {
        "right": start_in_thread(SimConfig(name="right", max_model_len=65536)),
        "wrong_model": start_in_thread(SimConfig(name="wrong_model", model="someone/Other-Model-7B")),
        "short": start_in_thread(SimConfig(name="short", max_model_len=32768)),
    }
    yield handles
    for h in handles.values():
        h.stop()


@pytest.mark.parametrize(
    ("served", "config_len", "expect"),
    [
        ({"m": 65536}, 65536, None),
        ({"m": 131072}, 65536, None),
        ({"m": None}, 65536, None),  # llama.cpp: no length reported, nothing to compare
        ({"m": 32768}, 65536, "set serving.max_model_len: 32768"),
        ({"other": 65536}, 65536, "does not serve model 'm' of scorer group 'g'; it serves 'other'"),
        ({}, 65536, "it serves no models"),
    ],
)
def test_served_problem_table(served: dict[str, int | None], config_len: int, expect: str | None) -> None:
    problem = served_problem(ServedModels("http://h:1/v1", served), "g", "m", config_len)
    if expect is None:
        assert problem is None
    else:
        assert problem is not None and expect.lower() in problem.lower() and "http://h:1/v1" in problem


@pytest.mark.parametrize("body", ["[]", '{"data": 3}', "not json"])
def test_parse_model_list_rejects_what_is_not_a_model_list(body: str) -> None:
    with pytest.raises(ValueError):
        parse_model_list(body)


def test_simulator_reports_max_model_len_like_vllm(sims: dict[str, SimHandle]) -> None:
    served = check_served_models(_pool(sims["short"].url), group="g", model=DEFAULT_MODEL, max_model_len=4096)
    assert [s.models for s in served] == [{DEFAULT_MODEL: 32768}]


def test_matching_pool_passes(sims: dict[str, SimHandle]) -> None:
    served = check_served_models(_pool(sims["right"].url), group="g", model=DEFAULT_MODEL, max_model_len=65536)
    assert [s.endpoint for s in served] == [sims["right"].url]
    assert served[0].max_model_len(DEFAULT_MODEL) == 65536


def test_wrong_model_names_endpoint_and_what_it_serves(sims: dict[str, SimHandle]) -> None:
    pool = _pool(sims["right"].url, sims["wrong_model"].url)
    with pytest.raises(ConfigError) as info:
        check_served_models(pool, group="text_group_b", model=DEFAULT_MODEL, max_model_len=65536)
    message = str(info.value)
    assert sims["wrong_model"].url in message and sims["right"].url not in message
    assert "'someone/Other-Model-7B'" in message and f"--served-model-name {DEFAULT_MODEL}" in message
    assert "groups.text_group_b.model" in message and message.endswith("Nothing was sent.")


def test_config_longer_than_server_says_what_to_set(sims: dict[str, SimHandle]) -> None:
    with pytest.raises(ConfigError, match=r"Set serving\.max_model_len: 32768") as info:
        check_served_models(_pool(sims["short"].url), group="g", model=DEFAULT_MODEL, max_model_len=65536)
    assert sims["short"].url in str(info.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_models_server() -> Iterator[str]:
    """An endpoint with /health but no /v1/models (404)."""
    loop = asyncio.new_event_loop()
    port = _free_port()
    app = web.Application()

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/v1"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def test_unreadable_model_list_is_skipped_with_a_warning(no_models_server: str, sims: dict[str, SimHandle],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    pool = _pool(no_models_server, sims["right"].url)
    served = check_served_models(pool, group="g", model=DEFAULT_MODEL, max_model_len=65536)
    assert [s.endpoint for s in served] == [sims["right"].url]
    assert any(no_models_server in r.getMessage() and "HTTP 404" in r.getMessage() for r in caplog.records)


@pytest.mark.spark
def test_cli_run_stops_in_one_line_before_sending(spark: Any, sample_dir: Path, tmp_path: Path,
                                                  sims: dict[str, SimHandle],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    wrong = sims["wrong_model"]
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "tables", str(sample_dir / "documents"), None,
                       [wrong.url])
    code = cli.main(["run", "--config", str(cfg), "--engine", "active"])
    _out, err = capsys.readouterr()
    assert code == cli.EXIT_USER_ERROR
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mira-spark: configuration error: endpoint " + wrong.url)
    assert "someone/Other-Model-7B" in lines[0]
    assert wrong.stats()["requests"] == 0  # nothing billed
    assert Tables(spark, load_settings(cfg)).read("raw_outputs").count() == 0
