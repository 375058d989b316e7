"""``mira-spark bench constrained``: parse failures and completion tokens with and without constrained
output, against a real model (SmolLM2-135M on llama-cpp-python, started here on 127.0.0.1).

Each mode scores the same documents through the scoring stage's own partition function
(:func:`mira_spark.scoring.stage.score_partition`: prompts, runner, output check, repairs) with
``scoring.constrained_output`` set to the mode, then parses every raw text with the unchanged parser.
Repairs are off by default so the figures are single-shot format compliance. Prints a table and a JSON
line. The rubric is the sample group's 15 dimensions without calibration references (they would not fit
the tiny model's context); documents are the sample corpus cut to ``--doc-chars``.

Figures are for a 135M model on 2 CPU cores: they show what the constraint does to a model that does
not know the format, not what the 35B scorer does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from mira_spark.config import EndpointConfig, ExpectedScoresConfig, PoolConfig, SamplingConfig, ScoringConfig
from mira_spark.devtools.bench.common import bench_documents
from mira_spark.devtools.bench.llama_cpp import (
    DEFAULT_N_CTX,
    SERVED_MODEL,
    LlamaServer,
    LlamaServerUnavailable,
)
from mira_spark.parsing.parse import parse_output
from mira_spark.prompting.prompts import PromptBuilder
from mira_spark.prompting.rubric import Rubric, load_rubric
from mira_spark.resources import default_anchors
from mira_spark.scoring.stage import GroupPlan, ScoringPlan, score_partition

GROUP = "text_group_b"
DEFAULT_DOCS = 10
DEFAULT_DOC_CHARS = 240
DEFAULT_MAX_TOKENS = 512
DEFAULT_FREE_TEXT_CHARS = 8
DEFAULT_SEED = 1234
REQUEST_TIMEOUT_S = 300.0  # one request at a time on a CPU server: generous, never the limiting factor


def real_rubric() -> Rubric:
    """The sample group's 15 anchor dimensions, without calibration references."""
    return load_rubric(GROUP, default_anchors())


def real_documents(n: int, doc_chars: int = DEFAULT_DOC_CHARS, seed: int = 7) -> list[dict]:
    """``n`` sample documents (unique ids) cut to ``doc_chars`` characters."""
    return [{**d, "text": d["text"][:doc_chars]} for d in bench_documents(n, seed)]


def real_pool(urls: str | Sequence[str], **overrides: Any) -> PoolConfig:
    """llama.cpp endpoints, one sequence at a time each, no /metrics."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    settings: dict[str, Any] = {
        "endpoints": tuple(EndpointConfig(url=u) for u in urls),
        "api_key_env": None,
        "slots_per_endpoint": 1,
        "request_timeout_s": REQUEST_TIMEOUT_S,
        "max_attempts": 2,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 1.0,
        "metrics_poll_s": 0.0,
        "startup_check": False,  # llama-cpp-python has no /health
        "request_id_header": False,  # it rejects a non-UUID X-Request-Id with HTTP 400
    }
    settings.update(overrides)
    return PoolConfig(**settings)


def real_plan(urls: str | Sequence[str], mode: str, *, max_tokens: int = DEFAULT_MAX_TOKENS, repairs: int = 0,
              free_text_chars: int = DEFAULT_FREE_TEXT_CHARS, n_ctx: int = DEFAULT_N_CTX,
              seed: int | None = DEFAULT_SEED, temperature: float = SamplingConfig().temperature,
              rubric: Rubric | None = None, expected_scores: bool = False) -> ScoringPlan:
    """A scoring plan for the llama.cpp servers at ``urls`` with ``scoring.constrained_output = mode``."""
    rubric = rubric or real_rubric()
    builder = PromptBuilder(rubric, SERVED_MODEL, n_ctx, max_tokens)
    pool = real_pool(urls)
    group = GroupPlan(name=GROUP, model=SERVED_MODEL, rubric=rubric, pool=pool,
                      prompt_version=builder.version)
    scoring = ScoringConfig(max_output_repairs=repairs, constrained_output=mode,
                            structured_output_api="llama_cpp", free_text_max_chars=free_text_chars,
                            expected_scores=ExpectedScoresConfig(enabled=expected_scores))
    return ScoringPlan(groups={GROUP: group}, sampling=SamplingConfig(max_tokens=max_tokens, seed=seed,
                                                                        temperature=temperature),
                       scoring=scoring, max_model_len=n_ctx,
                       in_flight_per_task={GROUP: len(pool.endpoints)})


def score_rows(docs: Sequence[dict], plan: ScoringPlan) -> list[dict]:
    """Raw-output rows of ``docs`` (``doc_id, source, scorer, text``) from the stage's partition function."""
    batch = pa.RecordBatch.from_pylist([{k: d[k] for k in ("doc_id", "source", "scorer", "text")} for d in docs])
    out: list[dict] = []
    for result in score_partition(iter([batch]), plan):
        out.extend(result.to_pylist())
    return out


def summarize(rows: Sequence[dict], rubric: Rubric, seconds: float) -> dict[str, Any]:
    """Row statuses, parse statuses of the raw texts, completion tokens and time per document."""
    parse_status = Counter(parse_output(r["raw_text"], rubric).parse_status if r["raw_text"] else "no_text"
                           for r in rows)
    tokens = [r["completion_tokens"] for r in rows if r["completion_tokens"] is not None]
    n = len(rows)
    return {
        "docs": n,
        "row_status": dict(Counter(r["status"] for r in rows)),
        "errors": dict(Counter((r["error"] or "").split(":", 1)[0] for r in rows if r["error"])),
        "parse_status": dict(parse_status),
        "ok_rate": round(parse_status.get("ok", 0) / n, 4) if n else 0.0,
        "parse_failure_rate": round((n - parse_status.get("ok", 0)) / n, 4) if n else 0.0,
        "parse_failed_rate": round((parse_status.get("failed", 0) + parse_status.get("no_text", 0)) / n, 4)
        if n else 0.0,
        "completion_tokens_mean": round(statistics.fmean(tokens), 1) if tokens else None,
        "completion_tokens_max": max(tokens) if tokens else None,
        "finish_reason": dict(Counter(r["finish_reason"] for r in rows)),
        "requests": sum(r["attempts"] for r in rows),
        "seconds": round(seconds, 2),
        "seconds_per_doc": round(seconds / n, 2) if n else None,
    }


def run_mode(urls: Sequence[str], mode: str, docs: Sequence[dict], **plan_args: Any) -> dict[str, Any]:
    plan = real_plan(urls, mode, **plan_args)
    started = time.perf_counter()
    rows = score_rows(docs, plan)
    return summarize(rows, plan.groups[GROUP].rubric, time.perf_counter() - started)


def _table(results: dict[str, dict[str, Any]]) -> str:
    keys = ["docs", "ok_rate", "parse_failure_rate", "parse_failed_rate", "completion_tokens_mean",
            "completion_tokens_max", "requests", "seconds_per_doc", "parse_status", "finish_reason"]
    modes = list(results)
    width = max(len(k) for k in keys)
    col = max(24, *(len(m) for m in modes))
    lines = [f"{'':<{width}}  " + "  ".join(f"{m:<{col}}" for m in modes)]
    for key in keys:
        cells = []
        for m in modes:
            value = results[m][key]
            text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
            cells.append(f"{text:<{col}}")
        lines.append(f"{key:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mira-spark bench constrained", description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=DEFAULT_DOCS, help="documents per mode")
    parser.add_argument("--doc-chars", type=int, default=DEFAULT_DOC_CHARS, help="characters kept per document")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="completion budget")
    parser.add_argument("--free-text-chars", type=int, default=DEFAULT_FREE_TEXT_CHARS,
                        help="scoring.free_text_max_chars for the constrained modes")
    parser.add_argument("--modes", default="off,grammar", help="comma-separated: off, grammar")
    parser.add_argument("--repairs", type=int, default=0, help="scoring.max_output_repairs (0: single shot)")
    parser.add_argument("--servers", type=int, default=1,
                        help="llama.cpp servers in the pool (one thread each when more than one)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="sampling seed sent to the server")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.docs <= 0 or args.servers <= 0 or not modes or any(m not in ("off", "grammar") for m in modes):
        parser.error("--docs must be positive and --modes a list of off, grammar (llama.cpp takes no regex)")

    docs = real_documents(args.docs, args.doc_chars)
    try:
        with contextlib.ExitStack() as stack:
            threads = None if args.servers == 1 else 1
            servers = [stack.enter_context(LlamaServer(n_threads=threads)) for _ in range(args.servers)]
            results = {
                mode: run_mode([s.url for s in servers], mode, docs, max_tokens=args.max_tokens, repairs=args.repairs,
                               free_text_chars=args.free_text_chars, seed=args.seed)
                for mode in modes
            }
            ready_s = max(s.ready_s or 0.0 for s in servers)
    except LlamaServerUnavailable as exc:
        print(f"mira-spark bench constrained: {exc}", file=sys.stderr)
        return 2
    if not args.json_only:
        print(f"real server: {args.servers} x llama-cpp-python, {SERVED_MODEL} (GGUF Q4_1), ready in {ready_s:.1f}s; "
              f"{args.docs} documents of <= {args.doc_chars} chars, max_tokens {args.max_tokens}, "
              f"repairs {args.repairs}")
        print(_table(results))
    print(json.dumps({"bench": "constrained", "model": SERVED_MODEL, "docs": args.docs,
                      "max_tokens": args.max_tokens, "free_text_chars": args.free_text_chars,
                      "repairs": args.repairs, "servers": args.servers, "results": results}, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
