"""``mira-spark bench samples``: decision flips between two independent runs, for k=1, full k and adaptive k.

Takes ``[--k 3] [--band 1.5] [--seeds 1,2] [--json-only]``; writes the sample corpus (263 documents, 2
scored sources), starts two simulated endpoints with sampling noise (``SimConfig.sampling_noise``: each
choice at the card's temperature 0.7 moves every dimension score by seeded noise, sd 0.7 score points),
and runs the whole pipeline on Sail + Delta twice per mode — same documents, same config, sampling seeds
``seeds[0]`` and ``seeds[1]`` (fresh tables each time) — for ``k=1``, full ``k`` (samples 1..k-1 of every
document) and adaptive ``k`` (only documents within ``band`` composite points of their unit's cut).

Prints, per mode and score variant, the flip rate (share of the variant's documents whose kept/excluded
decision differs between the two runs) and, per mode, requests per routed document (from ``run_stats``:
the ``score`` and ``samples`` stages), then a JSON line ``{"bench": "samples", ...}`` with the share of
k=1's flips that adaptive removes and the extra requests it costs (target: >= 50% for <= 15% more).
Measured against the simulator only; the noise model is :mod:`mira_spark.devtools.simulator.sampling`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mira_spark.devtools.bench.common import own_sail_session, print_table

TARGET_REMOVED = 0.5
TARGET_EXTRA = 0.15
SCORERS_FILE = "conf/scorers.yaml"


@dataclass(frozen=True)
class Mode:
    name: str
    samples: int
    adaptive: bool


@dataclass
class Outcome:
    decisions: dict[tuple[str, str], str]  # (variant, doc_id) -> kept | excluded
    requests: int
    documents: int  # routed (scored) documents
    sampled_documents: int  # documents that got extra samples


def run_config(root: Path, sample: Path, urls: list[str], seed: int, mode: Mode, band: float,
               scorers_file: str) -> Path:
    """A run config: fresh tables under ``root``, the corpus at ``sample``, sampling seed ``seed``."""
    config = {
        "engine": "sail",
        "table_format": "delta",
        "scorers_file": str(Path(scorers_file).resolve()),
        "tables": {"root": str(root / "tables"), "documents": str(sample / "documents"),
                   "validation": str(sample / "validation")},
        "sampling": {"seed": seed},
        "scoring": {"wave_size": 1000, "samples": mode.samples,
                    "adaptive_samples": {"enabled": mode.adaptive, "band": band}},
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
    requests = sum(st.requests for name, st in stages.items() if name in ("score", "samples"))
    return Outcome(decisions, requests, summary.rows_scored, sampled)


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
    ap.add_argument("--band", type=float, default=None,
                    help="adaptive band, composite points (default: scoring.adaptive_samples.band)")
    ap.add_argument("--seeds", default="1,2", help="the two runs' sampling seeds")
    ap.add_argument("--scorers-file", default=SCORERS_FILE, help="scorer groups and pools (default conf/scorers.yaml)")
    ap.add_argument("--json-only", action="store_true")
    args = ap.parse_args(argv)

    from mira_spark.config import AdaptiveSamplesConfig
    from mira_spark.devtools.samples import write_sample
    from mira_spark.devtools.simulator.launcher import start_in_thread
    from mira_spark.devtools.simulator.server import SimConfig

    band = AdaptiveSamplesConfig().band if args.band is None else args.band
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) != 2 or seeds[0] == seeds[1]:
        ap.error("--seeds takes two different seeds, e.g. 1,2")
    modes = [Mode("k=1", 1, False), Mode(f"full k={args.k}", args.k, False), Mode(f"adaptive k={args.k}", args.k, True)]
    sims = [start_in_thread(SimConfig(name=f"sim{i}", time_scale=400.0, sampling_noise=True)) for i in range(2)]
    outcomes: dict[str, list[Outcome]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="mira-bench-samples-") as tmp, own_sail_session() as spark:
            work = Path(tmp)
            write_sample(work / "sample", fmt="delta")
            for i, mode in enumerate(modes):
                for seed in seeds:
                    root = work / f"run-{i}-{seed}"
                    root.mkdir()
                    cfg = run_config(root, work / "sample", [h.url for h in sims], seed, mode, band,
                                     args.scorers_file)
                    outcomes.setdefault(mode.name, []).append(run_once(spark, cfg))
    finally:
        for h in sims:
            h.stop()

    variants = sorted({v for v, _ in outcomes[modes[0].name][0].decisions} - {"random"})
    base_requests = sum(o.requests for o in outcomes[modes[0].name]) / 2
    rows, result = [], {}
    for mode in modes:
        a, b = outcomes[mode.name]
        flips = flip_rates(a, b, variants)
        requests = (a.requests + b.requests) / 2
        total_flips = sum(f for f, _ in flips.values())
        result[mode.name] = {
            "flips": {v: f for v, (f, _) in flips.items()}, "documents": a.documents,
            "flip_rate": {v: round(f / n, 4) if n else None for v, (f, n) in flips.items()},
            "total_flips": total_flips, "requests_per_doc": round(requests / max(1, a.documents), 4),
            "extra_requests": round(requests / base_requests - 1, 4) if base_requests else None,
            "sampled_documents": [a.sampled_documents, b.sampled_documents],
        }
        for v, (f, n) in flips.items():
            rows.append({"mode": mode.name, "variant": v, "flips": f, "flip_rate": f / n if n else 0.0,
                         "req_per_doc": requests / max(1, a.documents),
                         "extra_req": requests / base_requests - 1 if base_requests else 0.0,
                         "sampled": (a.sampled_documents + b.sampled_documents) / 2})
    k1, adaptive, full = (result[m.name] for m in modes)
    removed = 1 - adaptive["total_flips"] / k1["total_flips"] if k1["total_flips"] else None
    removed_full = 1 - full["total_flips"] / k1["total_flips"] if k1["total_flips"] else None
    summary = {"bench": "samples", "k": args.k, "band": band, "seeds": seeds, "modes": result,
               "adaptive_removed_flips": None if removed is None else round(removed, 4),
               "full_removed_flips": None if removed_full is None else round(removed_full, 4),
               "adaptive_extra_requests": adaptive["extra_requests"],
               "target_met": removed is not None and removed >= TARGET_REMOVED
               and adaptive["extra_requests"] is not None and adaptive["extra_requests"] <= TARGET_EXTRA}
    if not args.json_only:
        print_table(rows, [("mode", "mode", "s"), ("variant", "variant", "s"), ("flips", "flips", "d"),
                           ("flip_rate", "flip rate", ".3f"), ("req_per_doc", "req/doc", ".3f"),
                           ("extra_req", "extra req", "+.3f"), ("sampled", "docs sampled", ".1f")])
        print(f"adaptive removes {summary['adaptive_removed_flips']} of k=1's flips (full: "
              f"{summary['full_removed_flips']}) for {adaptive['extra_requests']:+.3f} requests "
              f"(target >= {TARGET_REMOVED} for <= +{TARGET_EXTRA})")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
