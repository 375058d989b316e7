"""k samples per document (issue 9 item 5) on Sail + Delta against simulated endpoints with sampling noise.

One module fixture scores the sample corpus at seeds 1 and 2 with k=1, then adds adaptive k=3 samples on
the same tables (seed 1: a document's two extra samples as the ``n=2`` choices of one request; seed 2:
``supports_n: false``, one request per sample), re-selects with k=1, and finally completes full k=3 at seed 1. Each test checks one promise:
adaptive samples go to the band documents only, k=1 ignores stored samples and gives the k=1 decisions,
full k stores k samples per document and the composite is their mean, and adaptive flips less than k=1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config

from mira_spark.config import load_settings
from mira_spark.pipeline import run_pipeline
from mira_spark.store.schemas import slot_score
from mira_spark.store.tables import Tables

pytestmark = pytest.mark.spark

K = 3
BAND = 1.5
CAPPED_SHARE = 0.04  # below the band's share of the corpus (~10%): the cap binds
DECISION_COLUMNS = ("variant", "doc_id", "decision", "reason", "composite", "threshold", "n_samples", "composite_sd")


@dataclass
class Stored:
    decisions: dict[tuple[str, str], dict[str, Any]]  # (variant, doc_id) -> row
    samples: dict[str, set[int]]  # doc_id -> extra sample indices stored
    requests: dict[str, int]  # run_stats requests per stage of the run


@dataclass
class Runs:
    k1: dict[int, Stored]  # seed -> after the k=1 run
    adaptive: dict[int, Stored]  # seed -> after the adaptive k=3 run on the same tables
    k1_again: Stored  # seed 1: select with k=1 after the adaptive samples were stored
    full: Stored  # seed 1: full k=3 after adaptive
    settings: Any  # seed 1, full k=3
    ok_docs: int
    capped: Stored  # seed 1, adaptive k=3 on fresh tables with max_share CAPPED_SHARE


def _read(spark: Any, settings: Any, summary: Any) -> Stored:
    tables = Tables(spark, settings)
    rows = tables.read("decisions").filter("doc_id is not null").select(*DECISION_COLUMNS).collect()
    decisions = {(r["variant"], r["doc_id"]): r.asDict() for r in rows}
    samples: dict[str, set[int]] = {}
    if tables.exists("samples"):
        for r in tables.read("samples").select("doc_id", "sample").collect():
            samples.setdefault(r["doc_id"], set()).add(r["sample"])
    return Stored(decisions, samples, {name: st.requests for name, st in summary.stages.items()})


@pytest.fixture(scope="module")
def runs(spark: Any, sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    from mira_spark.devtools.simulator.launcher import start_in_thread
    from mira_spark.devtools.simulator.server import SimConfig

    sims = [start_in_thread(SimConfig(name="noisy", time_scale=400.0, sampling_noise=True))]
    work = tmp_path_factory.mktemp("k_samples")

    def settings(seed: int, samples: int, adaptive: bool, max_share: float = 1.0) -> Any:
        name = f"{seed}" if max_share == 1.0 else f"{seed}-capped"
        cfg = write_config(work / f"run-{name}-{samples}-{adaptive}.yaml", work / f"tables-{name}",
                           str(sample_dir / "documents"), str(sample_dir / "validation"), [sims[0].url],
                           sampling={"seed": seed},
                           scorers={"pools": {"text_group_b_pool": {"supports_n": seed == 1}}},
                           scoring={"wave_size": 1000, "samples": samples,
                                    "adaptive_samples": {"enabled": adaptive, "band": BAND, "max_share": max_share}})
        return load_settings(cfg)

    def run(s: Any, stages: list[str] | None = None) -> Stored:
        return _read(spark, s, run_pipeline(spark, s, stages=stages))

    try:
        k1, adaptive = {}, {}
        for seed in (1, 2):
            k1[seed] = run(settings(seed, 1, False))
            adaptive[seed] = run(settings(seed, K, True))
        k1_again = run(settings(1, 1, False), ["select"])
        full_settings = settings(1, K, False)
        full = run(full_settings)
        ok_docs = Tables(spark, full_settings).read("scores").filter("status = 'ok'").count()
        capped = run(settings(1, K, True, max_share=CAPPED_SHARE))
        yield Runs(k1, adaptive, k1_again, full, full_settings, ok_docs, capped)
    finally:
        for h in sims:
            h.stop()


def _band(stored: Stored) -> set[str]:
    """Documents within BAND of their unit's cut in a score variant, from the k=1 decisions (the reference)."""
    return {doc for (variant, doc), r in stored.decisions.items()
            if variant != "random" and r["threshold"] is not None and r["composite"] is not None
            and r["reason"] in ("selected", "below_threshold") and abs(r["composite"] - r["threshold"]) <= BAND}


def test_adaptive_samples_only_band_documents(runs: Runs) -> None:
    for seed in (1, 2):
        band = _band(runs.k1[seed])
        assert 0 < len(band) < runs.ok_docs / 4  # the case: a few documents near the cuts, not all of them
        assert set(runs.adaptive[seed].samples) == band
        assert all(indices == {1, 2} for indices in runs.adaptive[seed].samples.values())
        # sample 0 was committed by the k=1 run: the adaptive run sent only the band's extra samples
        assert runs.adaptive[seed].requests.get("score", 0) == 0
        per_doc = 1 if seed == 1 else K - 1  # n=2 choices in one request, or one request per sample
        assert runs.adaptive[seed].requests["samples"] == per_doc * len(band)
        sampled = {doc for (v, doc), r in runs.adaptive[seed].decisions.items() if r["n_samples"] == K}
        assert sampled == band


def test_k1_ignores_stored_samples_and_gives_the_k1_decisions(runs: Runs) -> None:
    assert runs.adaptive[1].samples  # the case: extra samples are stored when k=1 selects again
    before, after = runs.k1[1].decisions, runs.k1_again.decisions
    assert after == before
    assert {r["n_samples"] for r in after.values() if r["composite"] is not None} == {1}
    assert all(r["composite_sd"] is None for r in after.values())
    # the adaptive run did move decisions: otherwise the equality above would say nothing
    assert any(runs.adaptive[1].decisions[key]["composite"] != r["composite"] for key, r in before.items())


def test_full_k_stores_k_samples_and_takes_their_mean(spark: Any, runs: Runs) -> None:
    assert len(runs.full.samples) == runs.ok_docs
    assert all(indices == {1, 2} for indices in runs.full.samples.values())
    # only what adaptive had not stored was requested: one request (n=2) per document
    assert runs.full.requests["samples"] == runs.ok_docs - len(runs.adaptive[1].samples)
    tables = Tables(spark, runs.settings)
    masked = {(r["source"], int(r["slot"][1:])) for r in tables.read("reliability").filter("masked").collect()}
    slots = range(1, 16)
    cols = ["doc_id", "source", "status", *(slot_score(i) for i in slots)]
    per_doc: dict[str, list[Fraction]] = {}
    for table in ("scores", "samples"):
        for r in tables.read(table).filter("status = 'ok'").select(*cols).collect():
            used = [Fraction(str(r[slot_score(i)])) for i in slots
                    if r[slot_score(i)] is not None and (r["source"], i) not in masked]
            per_doc.setdefault(r["doc_id"], []).append(sum(used) / len(used) * 10)
    extra = {}
    for r in tables.read("samples").select("doc_id", "sample", *(slot_score(i) for i in slots)).collect():
        extra[(r["doc_id"], r["sample"])] = tuple(r[slot_score(i)] for i in slots)
    differ = sum(extra[(doc, 1)] != extra[(doc, 2)] for doc in runs.full.samples)
    assert differ > 0.9 * len(runs.full.samples)  # the n choices of one request are distinct samples
    checked = 0
    for (variant, doc), r in runs.full.decisions.items():
        if variant != "global" or r["composite"] is None:
            continue
        composites = per_doc[doc]
        assert r["n_samples"] == K == len(composites)
        assert r["composite"] == pytest.approx(float(sum(composites) / K), abs=1e-9)
        mean = sum(composites) / K
        sd = float(sum((c - mean) ** 2 for c in composites) / (K - 1)) ** 0.5
        assert r["composite_sd"] == pytest.approx(sd, abs=1e-9)
        checked += 1
    assert checked == runs.ok_docs


def test_adaptive_flips_fewer_decisions_than_k1(runs: Runs) -> None:
    def flips(a: Stored, b: Stored) -> int:
        return sum(r["decision"] != b.decisions[key]["decision"] for key, r in a.decisions.items()
                   if key[0] != "random")

    k1 = flips(runs.k1[1], runs.k1[2])
    adaptive = flips(runs.adaptive[1], runs.adaptive[2])
    assert k1 > 0  # the case: sampling noise flips decisions between two independent runs
    assert adaptive < k1


def _steps(stored: Stored) -> dict[str, int]:
    """Band documents -> their nearest distance to a cut, in 0.01-point steps (k=1 decisions)."""
    band = _band(stored)
    out: dict[str, int] = {}
    for (variant, doc), r in stored.decisions.items():
        if doc in band and variant != "random" and r["threshold"] is not None and r["composite"] is not None \
                and r["reason"] in ("selected", "below_threshold"):
            step = math.floor(abs(r["composite"] - r["threshold"]) / 0.01)
            out[doc] = min(out.get(doc, step), step)
    return out


def test_max_share_caps_the_extra_samples_to_the_nearest_documents(runs: Runs) -> None:
    """Fresh tables at seed 1 (so sample 0 equals the k=1 run's): the cap takes the band's nearest documents."""
    steps = _steps(runs.k1[1])
    cap = math.floor(CAPPED_SHARE * runs.ok_docs)
    assert 0 < cap < len(steps)  # the case: more band documents than the cap allows
    sampled = set(runs.capped.samples)
    assert len(sampled) == cap and sampled <= set(steps)  # the cap is filled exactly
    skipped = set(steps) - sampled
    farthest = max(steps[d] for d in sampled)
    assert farthest <= min(steps[d] for d in skipped)  # nearest first
    assert runs.capped.requests["samples"] == len(sampled)  # n=2 choices: one request per document
