"""The simulator's seeded sampling-noise model (pure: no server, no Spark)."""

from __future__ import annotations

from statistics import mean

import pytest

from mira_spark.devtools.simulator.judge import Judgement, judge_document, recommendation_for
from mira_spark.devtools.simulator.sampling import NOISE_SD_PER_TEMPERATURE, document_digest, sample_judgement

DIMS = [("A1", "Chinese Description Quality"), ("A2", "Semantic HTML Structure"), ("A3", "Accessibility"),
        ("A4", "JavaScript Interactivity Quality"), ("A5", "Responsive Design Implementation")]
DOCS = [f"<header>第{i}页。</header><main><section aria-label='x'>内容{i}，说明。</section></main>" * (1 + i % 4)
        for i in range(40)]


def judged(text: str) -> tuple[Judgement, bytes]:
    return judge_document(text, "html_cpt", DIMS), document_digest("html_cpt", text)


@pytest.mark.parametrize("temperature", [0.0, -0.1])
def test_temperature_zero_is_the_deterministic_judgement(temperature: float) -> None:
    j, d = judged(DOCS[0])
    assert sample_judgement(j, temperature, seed=7, digest=d, choice=3) is j


def test_same_seed_document_and_choice_give_the_same_sample() -> None:
    j, d = judged(DOCS[1])
    assert sample_judgement(j, 0.7, seed=42, digest=d, choice=1) == sample_judgement(j, 0.7, seed=42, digest=d,
                                                                                     choice=1)


def test_choices_seeds_and_documents_change_the_draw() -> None:
    j, d = judged(DOCS[2])
    by_choice = {tuple(sample_judgement(j, 1.0, seed=1, digest=d, choice=c).scores.values()) for c in range(8)}
    by_seed = {tuple(sample_judgement(j, 1.0, seed=s, digest=d, choice=0).scores.values()) for s in range(8)}
    by_digest = {tuple(sample_judgement(j, 1.0, seed=1, digest=bytes([b]), choice=0).scores.values())
                 for b in range(8)}
    assert len(by_choice) >= 6 and len(by_seed) >= 6 and len(by_digest) >= 6


def _mean_abs_shift(temperature: float) -> float:
    shifts = []
    for text in DOCS:
        j, d = judged(text)
        for choice in range(5):
            s = sample_judgement(j, temperature, seed=3, digest=d, choice=choice)
            shifts += [abs(s.scores[k] - j.scores[k]) for k in j.scores]
    return mean(shifts)


def test_spread_grows_with_temperature() -> None:
    low, mid, high = _mean_abs_shift(0.2), _mean_abs_shift(0.7), _mean_abs_shift(1.5)
    assert low < mid < high
    # |N(0, sd)| has mean sd * 0.798; the 0.5 grid and the 0..10 clamp keep it near that at these scales.
    assert mid == pytest.approx(0.798 * NOISE_SD_PER_TEMPERATURE * 0.7, rel=0.25)


def test_scores_stay_on_the_grid_and_in_range() -> None:
    j = Judgement(scores={"A1": 0.0, "A2": 10.0, "A3": 5.0}, rationales={}, overall=50,
                  training_recommendation="downsample", domain_tag="t", brief="综合 50 分。")
    for choice in range(50):
        s = sample_judgement(j, 2.0, seed=0, digest=b"x", choice=choice)
        assert all(0.0 <= v <= 10.0 and v * 2 == int(v * 2) for v in s.scores.values())
        assert list(s.scores) == list(j.scores)


def test_overall_and_recommendation_follow_the_sampled_scores() -> None:
    j, d = judged(DOCS[5])
    for choice in range(20):
        s = sample_judgement(j, 1.5, seed=9, digest=d, choice=choice)
        delta = mean(s.scores.values()) - mean(j.scores.values())
        assert s.overall == max(0, min(100, round(j.overall + 10 * delta)))
        assert s.training_recommendation == recommendation_for(s.overall)
        assert f"综合 {s.overall} 分" in s.brief
        assert s.rationales == j.rationales and s.domain_tag == j.domain_tag


def test_noise_keeps_the_ranking_on_average() -> None:
    good, dg = judged("<header><nav aria-label='导航'>首页。说明，介绍。</nav></header><main><section>" * 20)
    poor, dp = judged("<div onclick='x()'>x</div>")
    g = mean(mean(sample_judgement(good, 0.7, seed=1, digest=dg, choice=c).scores.values()) for c in range(20))
    p = mean(mean(sample_judgement(poor, 0.7, seed=1, digest=dp, choice=c).scores.values()) for c in range(20))
    assert mean(good.scores.values()) > mean(poor.scores.values())
    assert g > p
