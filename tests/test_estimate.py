"""Estimator: pure cost model (no Spark), token histogram handling, and the CLI on --docs/--mean-tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mira_spark.estimate import (
    GpuFigures,
    TokenHistogram,
    bucket_of,
    estimate_layout,
    estimate_layouts,
    gpu_seconds_tp1,
    main,
)

REPO = Path(__file__).resolve().parents[1]
STATIC = 10_000


def hist(docs: int = 1000, mean: float = 8000) -> TokenHistogram:
    return TokenHistogram.from_mean(docs, mean)


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_more_documents_or_tokens_cost_more(tp: int) -> None:
    base = estimate_layout(hist(1000, 8000), STATIC, tp)
    assert estimate_layout(hist(2000, 8000), STATIC, tp).gpu_hours == pytest.approx(2 * base.gpu_hours)
    assert estimate_layout(hist(1000, 16000), STATIC, tp).gpu_hours > base.gpu_hours
    longer = GpuFigures(completion_tokens=1800)
    assert estimate_layout(hist(), STATIC, tp, figures=longer).gpu_hours > base.gpu_hours


@pytest.mark.parametrize("tp", [1, 8])
def test_more_gpus_less_wall_time_same_gpu_hours(tp: int) -> None:
    one, four = estimate_layout(hist(), STATIC, tp, nodes=1), estimate_layout(hist(), STATIC, tp, nodes=4)
    assert four.wall_hours == pytest.approx(one.wall_hours / 4)
    assert four.gpu_hours == pytest.approx(one.gpu_hours)


def test_tp8_node_slower_than_eight_tp1_replicas() -> None:
    by_tp = {e.tp: e for e in estimate_layouts(hist(), STATIC)}
    assert [e.replicas_per_node for e in by_tp.values()] == [1, 2, 4, 8]
    assert by_tp[8].docs_per_s_per_node < by_tp[4].docs_per_s_per_node < by_tp[2].docs_per_s_per_node
    assert by_tp[2].docs_per_s_per_node < by_tp[1].docs_per_s_per_node
    assert by_tp[8].docs_per_s_per_node / by_tp[1].docs_per_s_per_node == pytest.approx(0.45)


def test_issue_figures_reproduced() -> None:
    """~8K-token documents: one TP=8 node ~11 docs/s, eight TP=1 replicas 23-29 docs/s (issue #3)."""
    figures = GpuFigures(utilization=1.0)
    by_tp = {e.tp: e for e in estimate_layouts(hist(1000, 8000), 0, figures=figures)}
    assert 10 <= by_tp[8].docs_per_s_per_node <= 12
    assert 23 <= by_tp[1].docs_per_s_per_node <= 29


def test_prefix_cache_and_utilization() -> None:
    cold = GpuFigures(prefix_cache_share=0.0)
    warm = GpuFigures(prefix_cache_share=1.0)
    assert gpu_seconds_tp1(hist(), STATIC, cold) > gpu_seconds_tp1(hist(), STATIC, warm)
    assert gpu_seconds_tp1(hist(), STATIC, warm) == gpu_seconds_tp1(hist(), 0, warm)
    half = estimate_layout(hist(), STATIC, 1, figures=GpuFigures(utilization=0.5))
    full = estimate_layout(hist(), STATIC, 1, figures=GpuFigures(utilization=1.0))
    assert half.wall_hours == pytest.approx(2 * full.wall_hours)


@pytest.mark.parametrize("tokens, expected", [(0, 0), (1, 0), (2, 1), (3, 2), (1024, 10), (1025, 11)])
def test_bucket_of(tokens: int, expected: int) -> None:
    assert bucket_of(tokens) == expected


def test_histogram_from_tokens_clips_and_keeps_totals() -> None:
    h = TokenHistogram.from_tokens([100, 120, 5000, 70_000, 0], budget=60_000)
    assert h.docs == 5
    assert h.truncated == 1
    assert h.doc_tokens == pytest.approx(100 + 120 + 5000 + 60_000)
    assert [n for _, n in h.bins] == [1, 2, 1, 1]
    flat = TokenHistogram.from_mean(5, h.mean_tokens)
    assert gpu_seconds_tp1(h, STATIC, GpuFigures()) == pytest.approx(gpu_seconds_tp1(flat, STATIC, GpuFigures()))


def test_histogram_from_buckets_and_empty() -> None:
    h = TokenHistogram.from_buckets([(300.0, 3), (0.0, 0), (8000.0, 2)])
    assert (h.docs, h.doc_tokens, h.mean_tokens) == (5, 8300.0, 1660.0)
    empty = TokenHistogram.from_mean(0, 8000)
    assert estimate_layout(empty, STATIC, 8).gpu_hours == 0.0


@pytest.mark.parametrize("bad", [dict(utilization=0.0), dict(prefix_cache_share=1.5), dict(decode_tokens_per_s=0),
                                 dict(tp_efficiency={1: 1.2})])
def test_invalid_figures(bad: dict) -> None:
    with pytest.raises(ValueError):
        GpuFigures(**bad)


def test_unknown_layout_and_negative_inputs() -> None:
    with pytest.raises(ValueError):
        estimate_layout(hist(), STATIC, 3)
    with pytest.raises(ValueError):
        TokenHistogram.from_tokens([-1])
    with pytest.raises(ValueError):
        estimate_layout(hist(), STATIC, 1, nodes=0)


def test_main_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--config", str(REPO / "conf" / "local.yaml"), "--docs", "8000000", "--mean-tokens", "8000",
               "--nodes", "2"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["docs"] == 8_000_000 and out["static_prompt_tokens"] > 0
    layouts = {row["tp"]: row for row in out["layouts"]}
    assert set(layouts) == {1, 2, 4, 8}
    assert layouts[1]["wall_hours"] < layouts[8]["wall_hours"]


def test_main_needs_both_size_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(REPO / "conf" / "local.yaml"), "--docs", "10"]) == 2
