"""Prompts are built when a worker takes a request: a task holds only its in-flight prompts."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from mira_spark.config import EndpointConfig, PoolConfig, SamplingConfig
from mira_spark.prompting.prompts import PromptBuilder
from mira_spark.prompting.rubric import load_rubric
from mira_spark.serving.runner import RowHooks, RunnerOptions, run_requests
from mira_spark.serving.types import OutputVerdict, ScoreRequest

REPO = Path(__file__).resolve().parents[1]


def test_prepared_but_unanswered_prompts_never_exceed_in_flight(sim_pool: list[Any]) -> None:
    rubric = load_rubric("g", REPO / "anchors/text/group_B_dim_anchors.jsonl")
    builder = PromptBuilder(rubric, "m", 65536, 2048)
    lock = threading.Lock()
    state = {"outstanding": 0, "peak": 0, "prepared": 0}

    def prepare(req: ScoreRequest) -> ScoreRequest:
        prompt = builder.build("html_cpt", f"<main>文档 {req.index}</main>")
        with lock:
            state["prepared"] += 1
            state["outstanding"] += 1
            state["peak"] = max(state["peak"], state["outstanding"])
        return ScoreRequest(req.index, req.key, prompt.messages, prompt.est_prompt_tokens)

    def check(req: ScoreRequest, text: str, finish: str | None) -> OutputVerdict:
        with lock:
            state["outstanding"] -= 1
        return OutputVerdict("accept")

    pool = PoolConfig(endpoints=tuple(EndpointConfig(url=h.url) for h in sim_pool))
    requests = [ScoreRequest(index=i, key=f"lazy-{i}", messages=[]) for i in range(300)]
    opts = RunnerOptions(pool=pool, sampling=SamplingConfig(), model="m", in_flight=16,
                         hooks=RowHooks(check_output=check, prepare=prepare))
    results = run_requests(requests, opts)
    assert [r.index for r in results] == list(range(300))
    assert all(r.status == "ok" for r in results)
    assert state["prepared"] == 300
    assert state["peak"] <= 16
