"""``mira-spark bench expected``: sampled vs expected scores between independent runs, on a real model.

Takes ``[--docs 12] [--dims 5] [--seeds 1,2,3,4] [--doc-chars 240] [--json-only]``; starts llama-cpp-python
serving SmolLM2-135M on 127.0.0.1 (``bench/llama_cpp.py``) and scores the same documents once per seed at
the model card's temperature, through the scoring stage's own partition function with
``scoring.expected_scores`` on and grammar-constrained output (so the tiny model writes the line format).
Each run gives, per document, a composite from the sampled scores (what the text says) and one from the
expected scores (the mean of the model's distribution over each score's tokens, parsing/expected.py;
a slot without one keeps its sampled score, as the pipeline does).

Prints, for both bases: the between-run standard deviation of a document's composite (pooled over the
documents), and the decision flips between the runs of each pair of seeds when each run keeps the top
half of the documents (ties by doc_id); then the share of sampled flips the expected basis removes and
the coverage (share of scored slots that had an expectation); then a JSON line ``{"bench": "expected",
...}``. No extra request is sent for the expected basis: both come from the same answers.

A 135M model that does not know the rubric is not the 35B scorer: the figures say how much of a real
model's sampling spread sits in the score tokens' own distribution (what logprobs remove) and how much
comes from the sampled prefix (what they cannot remove), not what MIRA's scorer does.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mira_spark.devtools.bench.constrained import GROUP, real_documents, real_plan, real_rubric, score_rows
from mira_spark.devtools.bench.llama_cpp import SERVED_MODEL, LlamaServer, LlamaServerUnavailable
from mira_spark.prompting.rubric import Rubric

DEFAULT_DOCS = 12
DEFAULT_DIMS = 5
DEFAULT_MAX_TOKENS = 256

Composites = dict[str, float]  # doc_id -> composite (0-10) of one run


def composites(rows: Sequence[Mapping[str, Any]], rubric: Rubric) -> tuple[Composites, Composites, int, int]:
    """``(sampled, expected, slots scored, slots with an expectation)`` of one run's raw-output rows.

    A document enters only when every rubric slot has a sampled score (the two bases then mean the same
    slots).

    >>> from mira_spark.prompting.rubric import Dimension
    >>> r = Rubric(group="g", dimensions=(Dimension(slot="A1", dimension="x", cluster_size=1),
    ...                                   Dimension(slot="A2", dimension="y", cluster_size=1)))
    >>> composites([{"doc_id": "d", "a1_score": 4.0, "a2_score": 6.0, "expected_scores": [("A1", 5.0)]}], r)
    ({'d': 5.0}, {'d': 5.5}, 2, 1)
    """
    sampled: Composites = {}
    expected: Composites = {}
    scored = covered = 0
    for row in rows:
        values = [row.get(f"a{d.index}_score") for d in rubric.dimensions]
        if any(v is None for v in values):
            continue
        exp = dict(row.get("expected_scores") or ())
        both = [(v, exp.get(d.slot)) for v, d in zip(values, rubric.dimensions, strict=True)]
        scored += len(both)
        covered += sum(e is not None for _, e in both)
        sampled[row["doc_id"]] = statistics.fmean(v for v, _ in both)
        expected[row["doc_id"]] = statistics.fmean(v if e is None else e for v, e in both)
    return sampled, expected, scored, covered


def pooled_sd(runs: Sequence[Composites]) -> float | None:
    """Square root of the mean, over documents in every run, of the between-run sample variance.

    >>> pooled_sd([{"a": 1.0, "b": 5.0}, {"a": 3.0, "b": 5.0}])
    1.0
    """
    common = set.intersection(*(set(r) for r in runs)) if runs else set()
    if len(runs) < 2 or not common:
        return None
    return math.sqrt(statistics.fmean(statistics.variance([r[d] for r in runs]) for d in sorted(common)))


def top_half(run: Composites, docs: set[str]) -> set[str]:
    """The documents a run keeps: the higher half of ``docs`` by composite, ties by doc_id.

    >>> sorted(top_half({"a": 1.0, "b": 2.0, "c": 2.0, "d": 0.0}, {"a", "b", "c", "d"}))
    ['b', 'c']
    """
    order = sorted(docs, key=lambda d: (-run[d], d))
    return set(order[: len(order) // 2])


def flips(a: Composites, b: Composites) -> tuple[int, int]:
    """``(documents whose kept/excluded decision differs, documents in both runs)``.

    >>> flips({"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 2.0})
    (2, 2)
    """
    docs = set(a) & set(b)
    return len(top_half(a, docs) ^ top_half(b, docs)), len(docs)


def sub_rubric(dims: int) -> Rubric:
    """The sample group's first ``dims`` dimensions (fewer tokens per answer on a CPU server)."""
    rubric = real_rubric()
    return rubric.model_copy(update={"dimensions": rubric.dimensions[:dims]})


def summarize(runs: Sequence[tuple[Composites, Composites, int, int]], seeds: Sequence[int]) -> dict[str, Any]:
    """Spread, flips per pair of seeds and the removed share for both bases (see module)."""
    sampled = [r[0] for r in runs]
    expected = [r[1] for r in runs]
    pairs = list(range(0, len(runs) - 1, 2))
    flip_s = sum(flips(sampled[i], sampled[i + 1])[0] for i in pairs)
    flip_e = sum(flips(expected[i], expected[i + 1])[0] for i in pairs)
    decided = sum(flips(sampled[i], sampled[i + 1])[1] for i in pairs)
    sd_s, sd_e = pooled_sd(sampled), pooled_sd(expected)
    scored = sum(r[2] for r in runs)
    return {
        "seeds": list(seeds), "documents": decided // max(1, len(pairs)),
        "sd_sampled": None if sd_s is None else round(sd_s, 4),
        "sd_expected": None if sd_e is None else round(sd_e, 4),
        "sd_ratio": None if not sd_s or sd_e is None else round(sd_e / sd_s, 4),
        "flips_sampled": flip_s, "flips_expected": flip_e, "decided": decided,
        "removed_flips": None if not flip_s else round(1 - flip_e / flip_s, 4),
        "coverage": round(sum(r[3] for r in runs) / scored, 4) if scored else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mira-spark bench expected", description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=DEFAULT_DOCS, help="documents scored per run")
    ap.add_argument("--dims", type=int, default=DEFAULT_DIMS, help="rubric dimensions kept (1-15)")
    ap.add_argument("--seeds", default="1,2,3,4", help="sampling seeds, one run each, taken in pairs for flips")
    ap.add_argument("--doc-chars", type=int, default=240, help="characters kept per document")
    ap.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="completion budget")
    ap.add_argument("--json-only", action="store_true")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) < 2 or len(seeds) % 2 or len(set(seeds)) != len(seeds) or not 1 <= args.dims <= 15:
        ap.error("--seeds takes an even number of different seeds and --dims 1..15")
    rubric = sub_rubric(args.dims)
    docs = [{**d, "scorer": GROUP} for d in real_documents(args.docs, args.doc_chars)]
    runs = []
    started = time.perf_counter()
    try:
        with LlamaServer() as server:
            for seed in seeds:
                plan = real_plan([server.url], "grammar", seed=seed, rubric=rubric, max_tokens=args.max_tokens,
                                 expected_scores=True)
                runs.append(composites(score_rows(docs, plan), rubric))
    except LlamaServerUnavailable as exc:
        print(f"mira-spark bench expected: {exc}", file=sys.stderr)
        return 2
    result = {"bench": "expected", "model": SERVED_MODEL, "dims": args.dims,
              "seconds": round(time.perf_counter() - started, 1), **summarize(runs, seeds)}
    if not args.json_only:
        print(f"real server: llama-cpp-python, {SERVED_MODEL}; {result['documents']} documents x {len(seeds)} runs, "
              f"{args.dims} dimensions, grammar-constrained, temperature of the model card")
        print(f"{'basis':<10} {'between-run sd':>15} {'flips':>7} {'decided':>8}")
        print(f"{'sampled':<10} {result['sd_sampled']!s:>15} {result['flips_sampled']:>7} {result['decided']:>8}")
        print(f"{'expected':<10} {result['sd_expected']!s:>15} {result['flips_expected']:>7} {result['decided']:>8}")
        print(f"expected removes {result['removed_flips']} of the sampled flips (sd ratio {result['sd_ratio']}); "
              f"coverage {result['coverage']} of scored slots; 0 extra requests")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
