"""GPU-hours and wall time of scoring a documents table, before anything is sent.

Takes a token histogram of the documents (from ``--docs N --mean-tokens T``, or read from the documents
table through Spark with :func:`mira_spark.prompting.tokens.estimate_tokens`), the static prompt tokens of the real
:class:`~mira_spark.prompting.prompts.PromptBuilder`, and :class:`GpuFigures` (per-GPU prefill/decode speed, a
tensor-parallel efficiency table, completion length, prefix-cache share); gives one
:class:`LayoutEstimate` per layout of an 8-GPU node — the seed's TP=8 (one replica per node) and TP=4 /
TP=2 / TP=1 replicas — with documents/s per node, GPU-hours and wall hours.

The cost model is the simulator's (:mod:`mira_spark.devtools.simulator.capacity`): a request costs its uncached
prompt tokens at the prefill rate plus its completion tokens at the decode rate, on GPUs that a
saturated continuous-batching server keeps busy; a TP=t replica gets ``tp_efficiency[t]`` of t TP=1
GPUs. Every default of :class:`GpuFigures` is an **assumption** (sources in ``benchmarks/README.md``).
Pure functions except :func:`histogram_from_table` and :func:`main`.

>>> h = TokenHistogram.from_mean(1000, 8000)
>>> [e.tp for e in estimate_layouts(h, static_tokens=10_000)]
[8, 4, 2, 1]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

# ---- assumptions (see benchmarks/README.md for where each number comes from) ----------------------
# Qwen3.5-35B-A3B (MoE, ~3B active) on one H200 under vLLM at TP=1, as quoted in issue #3.
PREFILL_TOKENS_PER_S_PER_GPU = 43_000.0
DECODE_TOKENS_PER_S_PER_GPU = 6_500.0  # "~6-7K"; midpoint
# Per-GPU throughput of a TP=t replica relative to t TP=1 replicas. 8 -> 0.45 reproduces the issue's
# "one TP=8 node ~11 docs/s vs eight TP=1 replicas ~23-29 docs/s"; 2 and 4 are interpolated guesses
# (all-reduce cost grows with t; a 3B-active MoE has little per-GPU work to hide it behind).
TP_EFFICIENCY: Mapping[int, float] = {1: 1.0, 2: 0.85, 4: 0.65, 8: 0.45}
COMPLETION_TOKENS = 900  # 15 slot lines with rationales + 4 summary lines (issue #3)
PREFIX_CACHE_SHARE = 0.95  # share of the static prompt served from vLLM's prefix cache
UTILIZATION = 0.97  # share of GPU capacity the scoring stage sustains (bench throughput target)
GPUS_PER_NODE = 8
LAYOUTS = (8, 4, 2, 1)
HISTOGRAM_BASE = 2.0  # bucket edges at powers of two of the document's token count


@dataclass(frozen=True)
class GpuFigures:
    """Throughput assumptions of one GPU type and model."""

    prefill_tokens_per_s: float = PREFILL_TOKENS_PER_S_PER_GPU
    decode_tokens_per_s: float = DECODE_TOKENS_PER_S_PER_GPU
    tp_efficiency: Mapping[int, float] = field(default_factory=lambda: dict(TP_EFFICIENCY))
    completion_tokens: float = COMPLETION_TOKENS
    prefix_cache_share: float = PREFIX_CACHE_SHARE
    utilization: float = UTILIZATION
    gpus_per_node: int = GPUS_PER_NODE

    def __post_init__(self) -> None:
        if self.prefill_tokens_per_s <= 0 or self.decode_tokens_per_s <= 0:
            raise ValueError("token rates must be positive")
        if not 0 <= self.prefix_cache_share <= 1 or not 0 < self.utilization <= 1:
            raise ValueError("prefix_cache_share must be in [0, 1] and utilization in (0, 1]")
        if any(not 0 < e <= 1 for e in self.tp_efficiency.values()):
            raise ValueError("tp_efficiency values must be in (0, 1]")


@dataclass(frozen=True)
class TokenHistogram:
    """Documents by token count: ``bins`` of (mean document tokens, documents)."""

    bins: tuple[tuple[float, int], ...]
    truncated: int = 0  # documents clipped to the prompt budget

    @classmethod
    def from_mean(cls, docs: int, mean_tokens: float) -> TokenHistogram:
        if docs < 0 or mean_tokens < 0:
            raise ValueError("docs and mean_tokens must not be negative")
        return cls(((float(mean_tokens), docs),) if docs else ())

    @classmethod
    def from_tokens(cls, tokens: Iterable[int], budget: int | None = None) -> TokenHistogram:
        """Bucket per-document token counts by powers of two, after clipping each to ``budget``."""
        sums: dict[int, list[float]] = {}
        truncated = 0
        for t in tokens:
            if t < 0:
                raise ValueError("token counts must not be negative")
            if budget is not None and t > budget:
                t, truncated = budget, truncated + 1
            key = bucket_of(t)
            acc = sums.setdefault(key, [0.0, 0])
            acc[0] += t
            acc[1] += 1
        return cls(tuple((s / n, int(n)) for _, (s, n) in sorted(sums.items())), truncated)

    @classmethod
    def from_buckets(cls, rows: Iterable[tuple[float, int]], truncated: int = 0) -> TokenHistogram:
        """From (token sum, documents) per bucket, as a Spark aggregation gives them."""
        return cls(tuple((s / n, int(n)) for s, n in rows if n > 0), truncated)

    @property
    def docs(self) -> int:
        return sum(n for _, n in self.bins)

    @property
    def doc_tokens(self) -> float:
        return sum(t * n for t, n in self.bins)

    @property
    def mean_tokens(self) -> float:
        return self.doc_tokens / self.docs if self.docs else 0.0


def bucket_of(tokens: float) -> int:
    """Histogram bucket of a token count: ``ceil(log2(tokens))`` (0 for 0 or 1 token)."""
    return 0 if tokens <= 1 else math.ceil(math.log(tokens, HISTOGRAM_BASE))


@dataclass(frozen=True)
class LayoutEstimate:
    tp: int
    replicas_per_node: int
    tp_efficiency: float
    gpu_seconds_per_doc: float
    docs_per_s_per_node: float
    gpu_hours: float
    wall_hours: float
    nodes: int


def gpu_seconds_tp1(histogram: TokenHistogram, static_tokens: float, figures: GpuFigures) -> float:
    """GPU-seconds of the whole histogram on TP=1 GPUs at full efficiency."""
    uncached_static = static_tokens * (1 - figures.prefix_cache_share)
    prefill = histogram.doc_tokens + histogram.docs * uncached_static
    decode = histogram.docs * figures.completion_tokens
    return prefill / figures.prefill_tokens_per_s + decode / figures.decode_tokens_per_s


def estimate_layout(histogram: TokenHistogram, static_tokens: float, tp: int, nodes: int = 1,
                    figures: GpuFigures | None = None) -> LayoutEstimate:
    """GPU-hours and wall time for ``nodes`` nodes of TP=``tp`` replicas."""
    figures = figures or GpuFigures()
    if tp not in figures.tp_efficiency:
        raise ValueError(f"no TP efficiency for tp={tp}; known: {sorted(figures.tp_efficiency)}")
    if figures.gpus_per_node % tp:
        raise ValueError(f"tp={tp} does not divide {figures.gpus_per_node} GPUs per node")
    if nodes < 1:
        raise ValueError("nodes must be at least 1")
    eff = figures.tp_efficiency[tp]
    busy_gpu_s = gpu_seconds_tp1(histogram, static_tokens, figures) / eff
    gpu_s = busy_gpu_s / figures.utilization  # GPUs are paid for while the stage leaves them idle too
    docs = histogram.docs
    per_doc = busy_gpu_s / docs if docs else 0.0
    node_rate = figures.gpus_per_node * figures.utilization / per_doc if per_doc > 0 else 0.0
    wall_s = gpu_s / (nodes * figures.gpus_per_node)
    return LayoutEstimate(tp=tp, replicas_per_node=figures.gpus_per_node // tp, tp_efficiency=eff,
                          gpu_seconds_per_doc=per_doc, docs_per_s_per_node=node_rate, gpu_hours=gpu_s / 3600,
                          wall_hours=wall_s / 3600, nodes=nodes)


def pending_gpu_hours(docs: int, doc_tokens: float, static_tokens: float, gpus_per_replica: int,
                      figures: GpuFigures | None = None) -> float | None:
    """The estimate's GPU-hours for ``docs`` documents of ``doc_tokens`` tokens in all, on replicas of
    ``gpus_per_replica`` GPUs (TP = that many); None when the model has no figure for that TP.

    What the run's progress lines compare their GPU-hours with (the cost model is linear in documents and
    tokens, so the mean is exact here).

    >>> round(pending_gpu_hours(1000, 1_000_000, 10_000, 8), 3)
    0.11
    >>> pending_gpu_hours(1000, 1_000_000, 10_000, 3) is None
    True
    """
    figures = figures or GpuFigures()
    if gpus_per_replica not in figures.tp_efficiency or figures.gpus_per_node % gpus_per_replica or docs <= 0:
        return None
    histogram = TokenHistogram.from_mean(docs, doc_tokens / docs)
    return estimate_layout(histogram, static_tokens, gpus_per_replica, figures=figures).gpu_hours


def estimate_layouts(histogram: TokenHistogram, static_tokens: float, nodes: int = 1,
                     figures: GpuFigures | None = None, layouts: Sequence[int] = LAYOUTS) -> list[LayoutEstimate]:
    return [estimate_layout(histogram, static_tokens, tp, nodes, figures) for tp in layouts]


# ---- inputs from the configuration and the documents table -----------------------------------------


def static_prompt_tokens(settings: object) -> tuple[int, int]:
    """(largest static prompt tokens over scorer groups, smallest document budget) from the real builder."""
    from mira_spark.prompting.prompts import PromptBuilder
    from mira_spark.prompting.rubric import load_rubric

    static, budget = 0, 0
    for name, g in settings.scorers.groups.items():  # type: ignore[attr-defined]
        rubric = load_rubric(name, g.anchors, g.calibration, expected_size=g.dimensions)
        b = PromptBuilder(rubric, g.model, settings.serving.max_model_len,  # type: ignore[attr-defined]
                          settings.sampling.max_tokens)  # type: ignore[attr-defined]
        static = max(static, b.static_tokens)
        budget = b.budget if budget == 0 else min(budget, b.budget)
    return static, budget


def histogram_from_table(settings: object, budget: int) -> TokenHistogram:
    """Token histogram of the routed documents of the configured table, computed by Spark tasks."""
    from pyspark.sql import functions as F

    from mira_spark.store.engines import open_session
    from mira_spark.store.tables import Tables

    routes = settings.scorers.group_for_source()  # type: ignore[attr-defined]
    max_chars = settings.scoring.max_text_chars  # type: ignore[attr-defined]

    def tokens(batches: Iterable[object]) -> Iterable[object]:
        import pyarrow as pa

        from mira_spark.prompting.prompts import text_problem
        from mira_spark.prompting.tokens import estimate_tokens

        for batch in batches:
            out = [min(estimate_tokens(t[:max_chars]), budget + 1) for t in batch.column("text").to_pylist()  # type: ignore[attr-defined]
                   if text_problem(t) is None]
            yield pa.RecordBatch.from_pydict({"tokens": pa.array(out, pa.int64())})

    with open_session(settings) as spark:  # type: ignore[arg-type]
        tables = Tables(spark, settings)  # type: ignore[arg-type]
        docs = tables.read(tables.documents).filter(F.col("source").isin(list(routes)))
        toks = docs.select("text").mapInArrow(tokens, "tokens long")
        clipped = toks.select(F.least(F.col("tokens"), F.lit(budget)).alias("t"),
                              (F.col("tokens") > budget).cast("int").alias("cut"))
        agg = clipped.groupBy(F.when(F.col("t") <= 1, 0).otherwise(F.ceil(F.log2(F.col("t")))).alias("b")).agg(
            F.sum("t").alias("s"), F.count(F.lit(1)).alias("n"), F.sum("cut").alias("cut")).collect()
    rows = sorted((r["b"], float(r["s"]), int(r["n"]), int(r["cut"])) for r in agg)
    return TokenHistogram.from_buckets([(s, n) for _, s, n, _ in rows], truncated=sum(c for *_, c in rows))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mira-spark estimate", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="conf/local.yaml", help="run config (scorer groups, table, max_model_len)")
    p.add_argument("--docs", type=int, default=None, help="number of documents (skip reading the table)")
    p.add_argument("--mean-tokens", type=float, default=None, help="mean document tokens (with --docs)")
    p.add_argument("--nodes", type=int, default=1, help="8-GPU nodes available")
    p.add_argument("--completion-tokens", type=float, default=COMPLETION_TOKENS, help="assumed completion length")
    p.add_argument("--prefix-cache-share", type=float, default=PREFIX_CACHE_SHARE,
                   help="assumed share of the static prompt served from the prefix cache")
    p.add_argument("--utilization", type=float, default=UTILIZATION, help="assumed GPU utilization of the stage")
    p.add_argument("--prefill-tps", type=float, default=PREFILL_TOKENS_PER_S_PER_GPU,
                   help="prefill tokens/s per GPU at TP=1")
    p.add_argument("--decode-tps", type=float, default=DECODE_TOKENS_PER_S_PER_GPU,
                   help="decode tokens/s per GPU at TP=1")
    p.add_argument("--json-only", action="store_true", help="print only the final JSON line")
    return p


def print_estimates(histogram: TokenHistogram, static: int, figures: GpuFigures, nodes: int,
                    estimates: Sequence[LayoutEstimate]) -> None:
    """The human-readable table of :func:`main`: inputs, assumptions, then one line per layout."""
    print(f"documents {histogram.docs:,}  mean tokens {histogram.mean_tokens:,.0f}  truncated "
          f"{histogram.truncated:,}  static prompt {static:,} tokens ({figures.prefix_cache_share:.0%} cached)  "
          f"completion {figures.completion_tokens:g}  nodes {nodes}")
    print(f"assumed: prefill {figures.prefill_tokens_per_s:,.0f} / decode {figures.decode_tokens_per_s:,.0f} "
          f"tokens/s per H200 at TP=1; TP efficiency {dict(figures.tp_efficiency)}; "
          f"utilization {figures.utilization:.2f}")
    print(f"{'layout':<16}{'docs/s/node':>12}{'GPU-s/doc':>11}{'GPU-hours':>12}{'wall hours':>12}")
    for e in estimates:
        label = f"TP={e.tp} x{e.replicas_per_node}"
        print(f"{label:<16}{e.docs_per_s_per_node:>12.1f}{e.gpu_seconds_per_doc:>11.3f}"
              f"{e.gpu_hours:>12,.1f}{e.wall_hours:>12,.2f}")


def main(argv: list[str] | None = None) -> int:
    from mira_spark.config import ConfigError, load_settings

    args = _parser().parse_args(argv)
    if (args.docs is None) != (args.mean_tokens is None):
        print("estimate: give both --docs and --mean-tokens, or neither (then the table is read)", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config)
        figures = GpuFigures(prefill_tokens_per_s=args.prefill_tps, decode_tokens_per_s=args.decode_tps,
                             completion_tokens=args.completion_tokens,
                             prefix_cache_share=args.prefix_cache_share, utilization=args.utilization)
        static, budget = static_prompt_tokens(settings)
        if args.docs is not None:
            histogram = TokenHistogram.from_mean(args.docs, min(args.mean_tokens, budget))
        else:
            histogram = histogram_from_table(settings, budget)
        estimates = estimate_layouts(histogram, static, args.nodes, figures)
    except (ConfigError, ValueError) as exc:
        print(f"estimate: {exc}", file=sys.stderr)
        return 2
    if not args.json_only:
        print_estimates(histogram, static, figures, args.nodes, estimates)
    print(json.dumps({
        "estimate": "scoring",
        "docs": histogram.docs,
        "mean_tokens": round(histogram.mean_tokens, 1),
        "truncated": histogram.truncated,
        "static_prompt_tokens": static,
        "assumptions": {**asdict(figures), "tp_efficiency": {str(k): v for k, v in figures.tp_efficiency.items()}},
        "layouts": [asdict(e) for e in estimates],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
