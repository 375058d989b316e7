"""Exact counting with /tokenize lets a truncated document keep more text, never overflowing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from mira_spark.config import EndpointConfig, PoolConfig, SamplingConfig, ScoringConfig
from mira_spark.prompting.prompts import PromptBuilder
from mira_spark.prompting.rubric import load_rubric
from mira_spark.scoring.stage import GroupPlan, ScoringPlan, score_partition
from mira_spark.serving.tokenize import count_prompt_tokens

REPO = Path(__file__).resolve().parents[1]
LONG_DOC = ("<section><h2>响应式导航栏</h2><p>本组件使用语义化标签与媒体查询实现移动端适配。</p></section>\n" * 2500)


def _plan(urls: list[str], exact: bool) -> ScoringPlan:
    rubric = load_rubric("text_group_b", REPO / "anchors/text/group_B_dim_anchors.jsonl",
                         REPO / "anchors/text/group_B_calibration.jsonl")
    pool = PoolConfig(endpoints=tuple(EndpointConfig(url=u) for u in urls), exact_token_count=exact,
                      backoff_initial_s=0.01, backoff_max_s=0.1)
    version = PromptBuilder(rubric, "m", 65536, 2048).version
    return ScoringPlan(groups={"g": GroupPlan("g", "m", rubric, pool, version)}, sampling=SamplingConfig(),
                       scoring=ScoringConfig(), max_model_len=65536, in_flight_per_task={"g": 8})


def _score(plan: ScoringPlan) -> dict[str, Any]:
    batch = pa.RecordBatch.from_pylist([{"doc_id": "long-1", "source": "html_cpt", "scorer": "g", "text": LONG_DOC}])
    rows = [r for b in score_partition(iter([batch]), plan) for r in b.to_pylist()]
    assert len(rows) == 1
    return rows[0]


def test_tokenize_counts_match_the_servers_chat_accounting(sim_pool: list[Any]) -> None:
    plan = _plan([sim_pool[0].url], exact=False)
    builder = PromptBuilder(plan.groups["g"].rubric, "m", 65536, 2048)
    prompt = builder.build("html_cpt", "短文档 <main>ok</main>")
    (count,) = count_prompt_tokens(plan.groups["g"].pool, "m", None, [prompt.messages])
    assert count is not None and 0 < count <= prompt.est_prompt_tokens


def test_exact_counting_keeps_more_text_and_never_overflows(sim_pool: list[Any]) -> None:
    urls = [h.url for h in sim_pool]
    before_overflows = sum(h.stats()["overflows"] for h in sim_pool)
    conservative = _score(_plan(urls, exact=False))
    exact = _score(_plan(urls, exact=True))
    assert conservative["status"] == exact["status"] == "ok"
    assert conservative["truncated"] and exact["truncated"]
    assert exact["kept_chars"] > conservative["kept_chars"]
    assert exact["prompt_tokens"] + 2048 <= 65536
    assert sum(h.stats()["overflows"] for h in sim_pool) == before_overflows


def test_counting_failure_keeps_the_conservative_prompt() -> None:
    plan = _plan(["http://127.0.0.1:9/v1"], exact=True)  # nothing listens on the discard port
    builder = PromptBuilder(plan.groups["g"].rubric, "m", 65536, 2048)
    prompt = builder.build("html_cpt", LONG_DOC)
    assert count_prompt_tokens(plan.groups["g"].pool, "m", None, [prompt.messages]) == [None]
