"""Seeded sampling noise for the simulator: what ``temperature > 0`` does to a judgement (simulator only).

Takes the deterministic :class:`~.judge.Judgement` of a document, the request's temperature, a seed and
the choice index; gives the judgement of that sample. At temperature 0 it is the judgement itself
(greedy decoding is deterministic, as in vLLM); above 0 every dimension score moves by a Gaussian draw
whose standard deviation grows linearly with the temperature (:data:`NOISE_SD_PER_TEMPERATURE` score
points at temperature 1), is rounded to the scorer's 0.5 grid and clamped to 0..10; ``overall`` moves
with the mean of the scores and the recommendation follows it.

The draw is a pure function of ``(seed, document digest, choice, slot)`` (a local ``random.Random``
seeded from a blake2b hash, never the global generator), so the same request with the same ``seed``
gives the same samples on every run, and the ``n`` choices of one request differ from each other.
The server passes the request's ``seed`` when one is sent and a fresh per-request draw otherwise (as
vLLM samples differently on every unseeded request). A later flip-rate study can send two seeds and
compare decisions.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace

from mira_spark.devtools.simulator.judge import SCORE_MAX, SCORE_MIN, Judgement, recommendation_for

# Standard deviation of a dimension score, in score points, per unit of temperature. At the model card's
# 0.7 a score moves by about +-0.5 (one grid step) in two samples out of three: enough for choices to
# differ, small against the 0..10 range, so a good document stays above a poor one on average.
NOISE_SD_PER_TEMPERATURE = 1.0


def document_digest(source: str, text: str) -> bytes:
    """16-byte digest of a document, the content part of the noise seed."""
    return hashlib.blake2b(f"{source}\x00{text}".encode(), digest_size=16).digest()


def _rng(seed: int, digest: bytes, choice: int) -> random.Random:
    key = hashlib.blake2b(f"{seed}\x00{choice}\x00".encode() + digest, digest_size=8).digest()
    return random.Random(int.from_bytes(key, "big"))


def _grid(x: float) -> float:
    return min(SCORE_MAX, max(SCORE_MIN, round(x * 2) / 2))


def sample_judgement(judgement: Judgement, temperature: float, *, seed: int, digest: bytes,
                     choice: int = 0) -> Judgement:
    """The judgement of sample ``choice`` at ``temperature`` (unchanged at temperature <= 0).

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
    if temperature <= 0 or not judgement.scores:
        return judgement
    rng = _rng(seed, digest, choice)
    sd = NOISE_SD_PER_TEMPERATURE * temperature
    # Slots in a fixed order, so the draws do not depend on dict insertion order.
    scores = {slot: _grid(judgement.scores[slot] + rng.gauss(0.0, sd)) for slot in sorted(judgement.scores)}
    scores = {slot: scores[slot] for slot in judgement.scores}
    old_mean = sum(judgement.scores.values()) / len(judgement.scores)
    new_mean = sum(scores.values()) / len(scores)
    overall = min(100, max(0, round(judgement.overall + 10 * (new_mean - old_mean))))
    brief = judgement.brief.replace(f"综合 {judgement.overall} 分", f"综合 {overall} 分")
    return replace(judgement, scores=scores, overall=overall, training_recommendation=recommendation_for(overall),
                   brief=brief)
