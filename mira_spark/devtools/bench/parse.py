"""``mira-spark bench parse``: parsing throughput of scorer completions on one core.

Takes ``--outputs N`` (and ``--repeat``, ``--seed``); gives a small table (outputs, CPU and wall seconds,
outputs/s, parse status counts) and a final JSON line ``{"bench": "parse", "outputs_per_s": ...}`` that scripts can grep. The
completions are synthetic but shaped like the real scorer's (15 slot lines with ~100-character Chinese
and English rationales, 1.5-2 KB each) with the format drift and damage seen from real models, so the
timing covers the slow paths too. Generation is deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections import Counter

from mira_spark.parsing.parse import parse_batch
from mira_spark.prompting.rubric import Rubric, load_rubric
from mira_spark.resources import default_anchors

# The 15 dimension names of the model card (the table-path bench writes a synthetic anchors file from them).
FALLBACK_NAMES = [
    "Chinese Description Quality", "Feature Completeness", "Frontend Technical Appropriateness",
    "JavaScript Interactivity Quality", "Semantic HTML Structure", "Code Readability & Organization",
    "Accessibility (a11y) Compliance", "Visual Design & Polish", "Practical Real-world Utility",
    "Performance Awareness", "Technical Correctness", "Security & Safety",
    "Responsive Design Implementation", "Responsive Design Execution", "Accessibility Compliance",
]
PHRASES = [
    "描述清晰，功能点覆盖较全", "代码结构合理但缺少注释", "交互逻辑完整，事件绑定规范",
    "semantic tags are used for header and nav", "缺少 aria-label 与 alt 文本", "配色统一，间距略显拥挤",
    "uses flexbox and media queries for the main layout", "存在内联脚本，可能有 XSS 风险",
    "图片未做懒加载，首屏资源偏大", "the form validation is handled on the client only",
]
SEPARATORS = [" — ", " – ", " - ", ": ", "：", " ", " —— "]
DEFAULT_OUTPUTS = 20_000
DEFAULT_SEED = 20260501


def bench_rubric() -> Rubric:
    return load_rubric("text_group_b", default_anchors())


def synthetic_output(rng: random.Random, rubric: Rubric) -> str:
    """One completion: mostly clean, sometimes drifted (colons, bold, bullets, CRLF), sometimes damaged."""
    bullet = rng.choice(["", "", "", "- ", "* ", "{i}. "])
    bold = rng.random() < 0.15
    colon = "：" if rng.random() < 0.1 else ":"
    sep = rng.choice(SEPARATORS)
    lines = []
    for i, dim in enumerate(rubric.dimensions, start=1):
        score = rng.choice([rng.randint(0, 10), round(rng.uniform(0, 10), 1)])
        slash = " / " if rng.random() < 0.1 else "/"
        rationale = "，".join(rng.sample(PHRASES, 3)) + "。"
        label = f"**[{dim.slot}] {dim.dimension}**{colon}" if bold else f"[{dim.slot}] {dim.dimension}{colon}"
        lines.append(f"{bullet.format(i=i)}{label} {score:g}{slash}10{sep}{rationale}")
    lines += [
        f"overall: {rng.randint(0, 100)}",
        f"training_recommendation: {rng.choice(['keep', 'downsample', 'drop', 'Keep', '保留'])}",
        "domain_tag: landing-page",
        "brief: 一个带有响应式布局和表单校验的企业官网落地页，代码整体可用。",
    ]
    damage = rng.random()
    if damage < 0.05:
        lines = lines[: rng.randint(3, len(lines) - 1)]  # cut at max_tokens, mid-line below
        lines[-1] = lines[-1][: rng.randint(1, len(lines[-1]))]
    elif damage < 0.08:
        del lines[rng.randint(0, rubric.size - 1)]
    elif damage < 0.09:
        return "I'm sorry, I cannot score this document."
    elif damage < 0.10:
        rng.shuffle(lines)
    text = "\n".join(lines)
    if rng.random() < 0.1:
        text = "以下是评分结果：\n```\n" + text + "\n```"
    if rng.random() < 0.05:
        text = text.replace("\n", "\r\n")
    return text


def synthetic_outputs(n: int, rubric: Rubric, seed: int = DEFAULT_SEED) -> list[str]:
    rng = random.Random(seed)
    return [synthetic_output(rng, rubric) for _ in range(n)]


def _pin_one_core() -> None:
    # The target is per core; pinning keeps a multi-core box from flattering the number.
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[0]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mira-spark bench parse", description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=int, default=DEFAULT_OUTPUTS, help="number of completions to parse")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs; the best is reported")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the synthetic completions")
    args = parser.parse_args(argv)
    if args.outputs <= 0 or args.repeat <= 0:
        parser.error("--outputs and --repeat must be positive")

    _pin_one_core()
    rubric = bench_rubric()
    texts = synthetic_outputs(args.outputs, rubric, args.seed)
    parse_batch(texts[:200], rubric)  # warm the regex and layout caches outside the timing
    # CPU time of this (single-threaded) process is the per-core cost; wall time also counts waiting for
    # the core on a shared machine. Best of --repeat runs is the least disturbed estimate (as timeit);
    # the median is shown too so a noisy machine is visible.
    cpu_runs: list[float] = []
    wall_runs: list[float] = []
    for _ in range(args.repeat):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        batch = parse_batch(texts, rubric)
        cpu_runs.append(time.process_time() - cpu_start)
        wall_runs.append(time.perf_counter() - wall_start)
    cpu_seconds, seconds = min(cpu_runs), min(wall_runs)
    rate = args.outputs / cpu_seconds
    median_rate = args.outputs / statistics.median(cpu_runs)
    wall_rate = args.outputs / seconds
    statuses = Counter(batch.column("parse_status").to_pylist())
    mean_chars = sum(len(t) for t in texts) / len(texts)

    rows = [
        ("outputs", f"{args.outputs}"),
        ("mean chars", f"{mean_chars:.0f}"),
        ("cpu seconds", f"{cpu_seconds:.3f}"),
        ("wall seconds", f"{seconds:.3f}"),
        ("outputs/s (cpu, best)", f"{rate:,.0f}"),
        ("outputs/s (cpu, median)", f"{median_rate:,.0f}"),
        ("outputs/s (wall)", f"{wall_rate:,.0f}"),
        *((f"status {s}", f"{statuses.get(s, 0)}") for s in ("ok", "partial", "failed")),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value:>12}")
    print(json.dumps({
        "bench": "parse",
        "outputs": args.outputs,
        "cpu_seconds": round(cpu_seconds, 4),
        "wall_seconds": round(seconds, 4),
        "repeat": args.repeat,
        "outputs_per_s": round(rate, 1),
        "outputs_per_s_median": round(median_rate, 1),
        "outputs_per_s_wall": round(wall_rate, 1),
        "status_counts": dict(statuses),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
