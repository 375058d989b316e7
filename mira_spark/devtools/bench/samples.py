"""``mira-spark bench samples``: decision flips between two independent runs, for k=1, full k and adaptive k.

Takes ``[--k 3] [--bands 1.5] [--seeds 1,2,3,4] [--max-share 0.15] [--expected] [--prefix-share 0]
[--json-only]``; writes the sample corpus (263 documents, 2
scored sources), starts two simulated endpoints with sampling noise (``SimConfig.sampling_noise``: each
choice at the card's temperature 0.7 moves every dimension score by seeded noise, sd 0.7 score points),
and runs the whole pipeline on Sail + Delta twice per mode and pair of seeds — same documents, same
config, sampling seeds ``(1, 2)``, then ``(3, 4)``, ... (fresh tables each time) — for ``k=1``, full ``k``
(samples 1..k-1 of every document) and adaptive ``k`` (only documents within ``band`` composite points of
their unit's cut; one mode per band of ``--bands``).

Prints, per mode and score variant, the flip rate (share of the variant's documents whose kept/excluded
decision differs between the two runs of a pair, summed over the pairs) and, per mode, requests per
routed document (from ``run_stats``: the ``score`` and ``samples`` stages; a document's extra samples are
the ``n`` choices of one request, so the extra decode tokens are shown too), then a JSON line ``{"bench": "samples", ...}`` with the share of
k=1's flips that adaptive removes and the extra requests it costs (target: >= 50% for <= 15% more), beside the ceiling of a mean of k samples.

The ceiling: a document at distance d from its cut flips between two runs with probability 2p(1 - p),
p = Phi(-d / s), where s is the spread of its composite; summed over documents spread evenly around the
cut that is proportional to s, and the mean of k samples divides s by sqrt(k). So even sampling every
document k times removes at most ``1 - 1/sqrt(k)`` of k=1's flips (42% for k = 3, 59% for k = 6) when the
noise is independent between samples; adaptive k can reach that ceiling but not pass it.
With ``--expected`` two more modes run with ``scoring.expected_scores`` on: ``expected k=1`` (the composite
from each slot's expected score, read from the score tokens' logprobs: zero extra requests) and ``expected
adaptive k`` (both). Expected scores remove the part of the noise that lies in the score tokens' own
distribution, which the ceiling above does not bound; ``--prefix-share`` sets the part they cannot see
(``SimConfig.sampling_prefix_share``: the share of the variance that earlier sampled tokens cause), so the
bench shows the regimes between "all noise is token noise" (0) and "none is" (1). Real-model figures:
``mira-spark bench expected``.

Measured against the simulator only; the noise model is :mod:`mira_spark.devtools.simulator.sampling`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mira_spark.devtools.bench.common import own_sail_session, print_table
from mira_spark.estimate import GpuFigures

TARGET_REMOVED = 0.5
TARGET_EXTRA = 0.15


def gpu_seconds(prompt_tokens: float, completion_tokens: float, figures: GpuFigures | None = None) -> float:
    """GPU-seconds of scoring under ``mira-spark estimate``'s cost model (TP=1 rates, no prefix cache: the
    prompt tokens the server reported, each request's once however many choices it has).

    >>> gpu_seconds(43_000, 6_500)
    2.0
    """
    f = figures or GpuFigures()
    return prompt_tokens / f.prefill_tokens_per_s + completion_tokens / f.decode_tokens_per_s


def mean_of_k_ceiling(k: int) -> float:
    """Share of k=1's flips a mean of k independent samples can remove at most (module docstring).

    >>> round(mean_of_k_ceiling(3), 3), round(mean_of_k_ceiling(6), 3), mean_of_k_ceiling(1)
    (0.423, 0.592, 0.0)
    """
    return 1.0 - 1.0 / math.sqrt(k)
SCORERS_FILE = "conf/scorers.yaml"


@dataclass(frozen=True)
class Mode:
    name: str
    samples: int
    adaptive: bool
    expected: bool = False  # scoring.expected_scores: the composite from the score tokens' expected scores


@dataclass
class Outcome:
    decisions: dict[tuple[str, str], str]  # (variant, doc_id) -> kept | excluded
    requests: int
    documents: int  # routed (scored) documents
    sampled_documents: int  # documents that got extra samples
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Tally:
    """One mode's figures summed over the pairs of runs."""

    flips: dict[str, int]
    decided: dict[str, int]
    requests: float = 0.0  # sum over runs
    prompt_tokens: int = 0  # sum over runs
    completion_tokens: int = 0  # sum over runs
    documents: int = 0  # sum over runs
    sampled: int = 0  # sum over runs
    runs: int = 0

    def add(self, a: Outcome, b: Outcome, variants: list[str]) -> None:
        for v, (f, n) in flip_rates(a, b, variants).items():
            self.flips[v] = self.flips.get(v, 0) + f
            self.decided[v] = self.decided.get(v, 0) + n
        for o in (a, b):
            self.requests += o.requests
            self.prompt_tokens += o.prompt_tokens
            self.completion_tokens += o.completion_tokens
            self.documents += o.documents
            self.sampled += o.sampled_documents
            self.runs += 1


def run_config(root: Path, sample: Path, urls: list[str], seed: int, mode: Mode, band: float,
               scorers_file: str, max_share: float | None = None) -> Path:
    """A run config: fresh tables under ``root``, the corpus at ``sample``, sampling seed ``seed``."""
    config = {
        "engine": "sail",
        "table_format": "delta",
        "scorers_file": str(Path(scorers_file).resolve()),
        "tables": {"root": str(root / "tables"), "documents": str(sample / "documents"),
                   "validation": str(sample / "validation")},
        "sampling": {"seed": seed},
        "scoring": {"wave_size": 1000, "samples": mode.samples, "expected_scores": {"enabled": mode.expected},
                    "adaptive_samples": {"enabled": mode.adaptive, "band": band,
                                         **({} if max_share is None else {"max_share": max_share})}},
        "scorers": {"pools": {"text_group_b_pool": {"endpoints": [{"url": u} for u in urls],
                                                    "slots_per_endpoint": 64}}},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_once(spark: Any, config: Path) -> Outcome:
    from pyspark.sql import functions as F

    from mira_spark.config import load_settings
    from mira_spark.pipeline import run_pipeline
    from mira_spark.store.tables import Tables

    settings = load_settings(config)
    summary = run_pipeline(spark, settings)
    tables = Tables(spark, settings)
    rows = tables.read("decisions").filter(F.col("doc_id").isNotNull()).select("variant", "doc_id", "decision")
    decisions = {(r["variant"], r["doc_id"]): r["decision"] for r in rows.collect()}
    stages = summary.stages
    sampled = stages["samples"].counts.get("documents", 0) if "samples" in stages else 0
    scoring = [st for name, st in stages.items() if name in ("score", "samples")]
    return Outcome(decisions, sum(st.requests for st in scoring), summary.rows_scored, sampled,
                   sum(st.prompt_tokens for st in scoring), sum(st.completion_tokens for st in scoring))


def flip_rates(a: Outcome, b: Outcome, variants: list[str]) -> dict[str, tuple[int, int]]:
    """Per variant: (documents whose decision differs, documents decided in both runs)."""
    out = {}
    for v in variants:
        keys = [k for k in a.decisions if k[0] == v and k in b.decisions]
        out[v] = (sum(a.decisions[k] != b.decisions[k] for k in keys), len(keys))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mira-spark bench samples", description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=3, help="samples per document of the full and adaptive modes")
    ap.add_argument("--bands", default=None,
                    help="adaptive bands, composite points, comma-separated (default: scoring.adaptive_samples.band)")
    ap.add_argument("--seeds", default="1,2,3,4", help="sampling seeds, taken in pairs of independent runs")
    ap.add_argument("--max-share", type=float, default=None,
                    help="adaptive cap on the share of documents sampled (default: scoring.adaptive_samples.max_share)")
    ap.add_argument("--scorers-file", default=SCORERS_FILE, help="scorer groups and pools (default conf/scorers.yaml)")
    ap.add_argument("--expected", action="store_true",
                    help="also run expected k=1 and expected adaptive k (scoring.expected_scores: logprobs)")
    ap.add_argument("--prefix-share", type=float, default=0.0,
                    help="simulator: share of the sampling variance from the sampled prefix, which logprobs "
                    "cannot see (SimConfig.sampling_prefix_share; 0: all of it is in the score tokens)")
    ap.add_argument("--json-only", action="store_true")
    args = ap.parse_args(argv)
    if not 0.0 <= args.prefix_share <= 1.0:
        ap.error("--prefix-share is a share, 0..1")

    from mira_spark.config import AdaptiveSamplesConfig
    from mira_spark.devtools.samples import write_sample
    from mira_spark.devtools.simulator.launcher import start_in_thread
    from mira_spark.devtools.simulator.server import SimConfig

    bands = [AdaptiveSamplesConfig().band] if args.bands is None else [float(b) for b in args.bands.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) < 2 or len(seeds) % 2 or len(set(seeds)) != len(seeds):
        ap.error("--seeds takes an even number of different seeds, e.g. 1,2,3,4")
    pairs = list(zip(seeds[::2], seeds[1::2], strict=True))
    modes = [Mode("k=1", 1, False), Mode(f"full k={args.k}", args.k, False)]
    modes += [Mode(f"adaptive k={args.k} band {b:g}", args.k, True) for b in bands]
    band_of = {m.name: (bands[i - 2] if m.adaptive else bands[0]) for i, m in enumerate(modes)}
    if args.expected:
        modes += [Mode("expected k=1", 1, False, True),
                  Mode(f"expected adaptive k={args.k} band {bands[0]:g}", args.k, True, True)]
        band_of.update({m.name: bands[0] for m in modes[-2:]})
    sims = [start_in_thread(SimConfig(name=f"sim{i}", time_scale=400.0, sampling_noise=True,
                                      sampling_prefix_share=args.prefix_share)) for i in range(2)]
    tallies = {m.name: Tally({}, {}) for m in modes}
    variants: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mira-bench-samples-") as tmp, own_sail_session() as spark:
            work = Path(tmp)
            write_sample(work / "sample", fmt="delta")
            for i, mode in enumerate(modes):
                for pair in pairs:
                    runs = []
                    for seed in pair:
                        root = work / f"run-{i}-{seed}"
                        root.mkdir()
                        cfg = run_config(root, work / "sample", [h.url for h in sims], seed, mode,
                                         band_of[mode.name], args.scorers_file, args.max_share)
                        runs.append(run_once(spark, cfg))
                    variants = variants or sorted({v for v, _ in runs[0].decisions} - {"random"})
                    tallies[mode.name].add(runs[0], runs[1], variants)
    finally:
        for h in sims:
            h.stop()
    print_report(tallies, modes, args.k, bands, seeds, args.json_only, args.prefix_share)
    return 0


def print_report(tallies: dict[str, Tally], modes: list[Mode], k: int, bands: list[float], seeds: list[int],
                 json_only: bool, prefix_share: float = 0.0) -> None:
    base = tallies[modes[0].name]
    base_req = base.requests / base.runs
    base_prompt, base_completion = base.prompt_tokens / base.runs, base.completion_tokens / base.runs
    base_flips = sum(base.flips.values())
    rows, result = [], {}
    for mode in modes:
        t = tallies[mode.name]
        req = t.requests / t.runs
        extra = req / base_req - 1 if base_req else 0.0
        extra_prompt = t.prompt_tokens / t.runs / base_prompt - 1 if base_prompt else 0.0
        extra_completion = t.completion_tokens / t.runs / base_completion - 1 if base_completion else 0.0
        base_gpu = gpu_seconds(base_prompt, base_completion)
        extra_gpu = gpu_seconds(t.prompt_tokens / t.runs, t.completion_tokens / t.runs) / base_gpu - 1 if base_gpu \
            else 0.0
        total = sum(t.flips.values())
        removed = 1 - total / base_flips if base_flips else None
        result[mode.name] = {
            "flips": t.flips, "decided": t.decided, "total_flips": total,
            "flip_rate": {v: round(t.flips[v] / t.decided[v], 4) if t.decided[v] else None for v in t.flips},
            "requests_per_doc": round(t.requests / max(1, t.documents), 4), "extra_requests": round(extra, 4),
            "extra_prompt_tokens": round(extra_prompt, 4), "extra_completion_tokens": round(extra_completion, 4),
            "extra_gpu_time": round(extra_gpu, 4),
            "documents_sampled_per_run": round(t.sampled / t.runs, 1),
            "removed_flips": None if removed is None else round(removed, 4),
        }
        for v in sorted(t.flips):
            rows.append({"mode": mode.name, "variant": v, "flips": t.flips[v],
                         "flip_rate": t.flips[v] / t.decided[v] if t.decided[v] else 0.0,
                         "req_per_doc": t.requests / max(1, t.documents), "extra_req": extra,
                         "extra_completion": extra_completion, "extra_gpu": extra_gpu,
                         "sampled": t.sampled / t.runs, "removed": removed})
    adaptive = [result[m.name] for m in modes if m.adaptive or m.expected]
    met = [r for r in adaptive if r["removed_flips"] is not None and r["removed_flips"] >= TARGET_REMOVED
           and r["extra_requests"] <= TARGET_EXTRA]
    summary = {"bench": "samples", "k": k, "bands": bands, "seeds": seeds, "prefix_share": prefix_share,
               "modes": result,
               "target": {"removed_flips_min": TARGET_REMOVED, "extra_requests_max": TARGET_EXTRA},
               "ceiling_removed_flips": round(mean_of_k_ceiling(k), 4),
               "target_met": bool(met)}
    if not json_only:
        print_table(rows, [("mode", "mode", "s"), ("variant", "variant", "s"), ("flips", "flips", "d"),
                           ("flip_rate", "flip rate", ".3f"), ("req_per_doc", "req/doc", ".3f"),
                           ("extra_req", "extra req", "+.3f"), ("extra_completion", "extra decode tok", "+.3f"),
                           ("extra_gpu", "extra GPU time", "+.3f"),
                           ("sampled", "docs sampled/run", ".1f"),
                           ("removed", "flips removed", ".3f")])
        print(f"ceiling of a mean of {k} samples: {mean_of_k_ceiling(k):.3f} of k=1's flips removed")
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
