"""``mira-spark bench samples``' figures from given tallies (no Spark, no server): removed flips, extra
requests, extra GPU time under the estimate's cost model, and the target verdict."""

from __future__ import annotations

import json

import pytest

from mira_spark.devtools.bench.samples import Mode, Tally, print_report
from mira_spark.estimate import DECODE_TOKENS_PER_S_PER_GPU as DECODE
from mira_spark.estimate import PREFILL_TOKENS_PER_S_PER_GPU as PREFILL

MODES = [Mode("k=1", 1, False), Mode("adaptive k=3 band 1.5", 3, True)]


def _report(capsys: pytest.CaptureFixture[str], adaptive_flips: int, adaptive_requests: int) -> dict:
    base = Tally({"global": 60, "source": 40}, {"global": 500, "source": 500}, requests=200.0,
                 prompt_tokens=2_000_000, completion_tokens=180_000, documents=200, runs=2)
    adaptive = Tally({"global": adaptive_flips // 2, "source": adaptive_flips - adaptive_flips // 2},
                     {"global": 500, "source": 500}, requests=float(adaptive_requests), prompt_tokens=2_200_000,
                     completion_tokens=252_000, documents=200, sampled=20, runs=2)
    print_report({"k=1": base, MODES[1].name: adaptive}, MODES, 3, [1.5], [1, 2], json_only=True)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_figures_and_a_met_target(capsys: pytest.CaptureFixture[str]) -> None:
    out = _report(capsys, adaptive_flips=45, adaptive_requests=224)
    mode = out["modes"]["adaptive k=3 band 1.5"]
    assert mode["removed_flips"] == 0.55 and mode["extra_requests"] == 0.12
    assert mode["extra_completion_tokens"] == 0.4
    base_gpu = 1_000_000 / PREFILL + 90_000 / DECODE  # per run
    gpu = 1_100_000 / PREFILL + 126_000 / DECODE
    assert mode["extra_gpu_time"] == round(gpu / base_gpu - 1, 4)
    assert 0.12 < mode["extra_gpu_time"] < 0.4  # between the extra prompt and the extra decode share
    assert out["target_met"] is True and out["ceiling_removed_flips"] == 0.4226


@pytest.mark.parametrize(("flips", "requests"), [(55, 224), (45, 240)])
def test_the_target_needs_both_halves(capsys: pytest.CaptureFixture[str], flips: int, requests: int) -> None:
    """45% removed, or 20% more requests: either misses it."""
    assert _report(capsys, adaptive_flips=flips, adaptive_requests=requests)["target_met"] is False
