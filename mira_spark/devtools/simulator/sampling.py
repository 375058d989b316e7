"""Seeded sampling noise for the simulator: what ``temperature > 0`` does to a judgement (simulator only).

Takes the deterministic :class:`~.judge.Judgement` of a document, the request's temperature, a seed and
the choice index; gives the judgement of that sample. At temperature 0 it is the judgement itself
(greedy decoding is deterministic, as in vLLM); above 0 every dimension score moves by a Gaussian draw
whose standard deviation grows linearly with the temperature (:data:`NOISE_SD_PER_TEMPERATURE` score
points at temperature 1), is rounded to the scorer's 0.5 grid and clamped to 0..10; ``overall`` moves
with the mean of the scores and the recommendation follows it.

``prefix_share`` splits that noise the way a real model's is split: part of it comes from the tokens
sampled before a score (rationales, earlier scores), which move the centre of the score token's
distribution, and only the rest is token-level noise on the score itself. The server answers
``logprobs`` with the token-level distribution (:func:`grid_distribution` of the ``(m, sd_token)`` that
:func:`sample_judgement_with_dists` gives), so an expected score computed from the logprobs removes only
that part of the noise, as it does on vLLM.

The draw is a pure function of ``(seed, document digest, choice, slot)`` (a local ``random.Random``
seeded from a blake2b hash, never the global generator), so the same request with the same ``seed``
gives the same samples on every run, and the ``n`` choices of one request differ from each other.
The server passes the request's ``seed`` when one is sent and a fresh per-request draw otherwise (as
vLLM samples differently on every unseeded request). A later flip-rate study can send two seeds and
compare decisions.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import replace

from mira_spark.devtools.simulator.judge import SCORE_MAX, SCORE_MIN, Judgement, recommendation_for

# Standard deviation of a dimension score, in score points, per unit of temperature. At the model card's
# 0.7 a score moves by about +-0.5 (one grid step) in two samples out of three: enough for choices to
# differ, small against the 0..10 range, so a good document stays above a poor one on average.
NOISE_SD_PER_TEMPERATURE = 1.0
GRID_STEP = 0.5  # the scorer's score grid, as _grid rounds


def document_digest(source: str, text: str) -> bytes:
    """16-byte digest of a document, the content part of the noise seed."""
    return hashlib.blake2b(f"{source}\x00{text}".encode(), digest_size=16).digest()


def _rng(seed: int, digest: bytes, choice: int) -> random.Random:
    key = hashlib.blake2b(f"{seed}\x00{choice}\x00".encode() + digest, digest_size=8).digest()
    return random.Random(int.from_bytes(key, "big"))


def _grid(x: float) -> float:
    return min(SCORE_MAX, max(SCORE_MIN, round(x * 2) / 2))


def sample_judgement_with_dists(judgement: Judgement, temperature: float, *, seed: int, digest: bytes,
                                choice: int = 0, prefix_share: float = 0.0,
                                ) -> tuple[Judgement, dict[str, tuple[float, float]]]:
    """Takes a judgement, a temperature, the noise seed, the document digest, the choice index and the prefix share;
    gives the judgement of sample ``choice`` and, per slot, the ``(m, sd_token)`` its score token was drawn from.

    ``prefix_share`` (``rho``, 0..1) is the share of the noise variance that comes from the sampled prefix
    (rationales, earlier scores): per slot, ``m = mu + N(0, sd * sqrt(rho))`` is this sample's shifted centre,
    then ``score = grid(m + N(0, sd * sqrt(1 - rho)))``, the token-level draw a score's logprobs show. At
    ``rho = 0`` no prefix draw is made (``m = mu``), so the samples are those of the model without a prefix
    part. At temperature <= 0 the judgement is returned unchanged, with ``(score, 0.0)`` per slot.

    >>> j = Judgement(scores={"A1": 6.0}, rationales={}, overall=50, training_recommendation="downsample",
    ...               domain_tag="t", brief="综合 50 分。")
    >>> sample_judgement_with_dists(j, 0.0, seed=1, digest=b"d")[1]
    {'A1': (6.0, 0.0)}
    >>> _, dists = sample_judgement_with_dists(j, 1.0, seed=1, digest=b"d", prefix_share=0.0)
    >>> dists
    {'A1': (6.0, 1.0)}
    """
    if not 0.0 <= prefix_share <= 1.0:
        raise ValueError(f"prefix_share must be within 0..1, got {prefix_share}")
    if temperature <= 0 or not judgement.scores:
        return judgement, {slot: (score, 0.0) for slot, score in judgement.scores.items()}
    rng = _rng(seed, digest, choice)
    sd = NOISE_SD_PER_TEMPERATURE * temperature
    sd_prefix = sd * math.sqrt(prefix_share)
    sd_token = sd * math.sqrt(1.0 - prefix_share)
    # Slots in a fixed order, so the draws do not depend on dict insertion order.
    scores: dict[str, float] = {}
    dists: dict[str, tuple[float, float]] = {}
    for slot in sorted(judgement.scores):
        mu = judgement.scores[slot]
        m = mu + rng.gauss(0.0, sd_prefix) if prefix_share > 0 else mu
        scores[slot] = _grid(m + rng.gauss(0.0, sd_token))
        dists[slot] = (m, sd_token)
    scores = {slot: scores[slot] for slot in judgement.scores}
    dists = {slot: dists[slot] for slot in judgement.scores}
    old_mean = sum(judgement.scores.values()) / len(judgement.scores)
    new_mean = sum(scores.values()) / len(scores)
    overall = min(100, max(0, round(judgement.overall + 10 * (new_mean - old_mean))))
    brief = judgement.brief.replace(f"综合 {judgement.overall} 分", f"综合 {overall} 分")
    sample = replace(judgement, scores=scores, overall=overall,
                     training_recommendation=recommendation_for(overall), brief=brief)
    return sample, dists


def sample_judgement(judgement: Judgement, temperature: float, *, seed: int, digest: bytes,
                     choice: int = 0, prefix_share: float = 0.0) -> Judgement:
    """The judgement of sample ``choice`` at ``temperature`` (unchanged at temperature <= 0).

    Takes what :func:`sample_judgement_with_dists` takes; gives only its judgement.

    >>> j = Judgement(scores={"A1": 6.0, "A2": 3.5}, rationales={}, overall=50,
    ...               training_recommendation="downsample", domain_tag="t", brief="综合 50 分。")
    >>> sample_judgement(j, 0.0, seed=1, digest=b"d") is j
    True
    >>> a = sample_judgement(j, 0.7, seed=1, digest=b"d", choice=0)
    >>> a == sample_judgement(j, 0.7, seed=1, digest=b"d", choice=0)
    True
    >>> all(s * 2 == int(s * 2) and 0 <= s <= 10 for s in a.scores.values())
    True
    """
    return sample_judgement_with_dists(judgement, temperature, seed=seed, digest=digest, choice=choice,
                                       prefix_share=prefix_share)[0]


def grid_distribution(m: float, sd_token: float) -> dict[float, float]:
    """Takes the centre and the standard deviation of a score's token-level draw; gives the probability of each
    grid value 0, 0.5, ..., 10 of ``grid(m + N(0, sd_token))``, in grid order.

    Value ``v`` takes the bin ``[v - 0.25, v + 0.25]`` (the ties ``_grid`` breaks to the even half have no
    mass), 0 also takes everything below and 10 everything above. Each bin is computed from the tail it
    lies in (``erfc``), so a bin far from ``m`` keeps its small positive mass instead of cancelling to 0.
    ``sd_token <= 0`` is the point mass at ``grid(m)``.

    >>> grid_distribution(6.2, 0.0)[6.0]
    1.0
    >>> round(sum(grid_distribution(9.9, 0.7).values()), 12)
    1.0
    >>> grid_distribution(5.0, 0.5)[5.0] > grid_distribution(5.0, 0.5)[5.5] > grid_distribution(5.0, 0.5)[6.0]
    True
    """
    values = [SCORE_MIN + GRID_STEP * i for i in range(round((SCORE_MAX - SCORE_MIN) / GRID_STEP) + 1)]
    if sd_token <= 0:
        point = _grid(m)
        return {v: 1.0 if v == point else 0.0 for v in values}
    scale = sd_token * math.sqrt(2.0)

    def below(x: float) -> float:  # P(m + N(0, sd) < x)
        return 0.5 * math.erfc((m - x) / scale)

    def above(x: float) -> float:  # P(m + N(0, sd) > x)
        return 0.5 * math.erfc((x - m) / scale)

    half = GRID_STEP / 2
    out: dict[float, float] = {}
    for v in values:
        lo, hi = v - half, v + half
        if v == values[0]:
            out[v] = below(hi)
        elif v == values[-1]:
            out[v] = above(lo)
        elif lo >= m:
            out[v] = max(0.0, above(lo) - above(hi))
        else:
            out[v] = max(0.0, below(hi) - below(lo))
    return out
