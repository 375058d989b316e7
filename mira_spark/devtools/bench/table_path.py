"""``mira-spark bench table-path``: the Spark cost of a run outside scoring, on a synthetic corpus.

Takes ``--docs N`` (and ``--sources``, ``--pending``, ``--root``, ``--seed``); writes, through the real table
layer, a documents table (``doc_id, source, text`` with 300-1,100-byte texts, a few duplicate ids and
unrouted sources), a ``scores`` table pre-filled synthetically for the routed documents (every column the
parser writes; no scoring requests) and a teacher (validation) table, then times the project's own stage
functions one step at a time on Sail + Delta:

    route -> pending -> reliability -> composite -> select (thresholds + decisions) -> selected

Each step is one small function below (``STEPS``) that calls the pipeline's functions, so the bench keeps
measuring the same work when the stages move. A second, untimed pass records the physical plan of every
DataFrame each step materialises (``explain(mode="formatted")``) and counts the exchange nodes
(``RepartitionExec``, ``CoalescePartitionsExec``, ``SortPreservingMergeExec``) whose output carries the
documents' ``text``, following the column through projections, filters, joins and windows.

Prints a table and a final JSON line ``{"bench": "table-path", "steps": {...}, "total_s": ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql import Column
from pyspark.sql import functions as F

from mira_spark import pipeline
from mira_spark.config import (
    PoolConfig,
    ScorerGroupConfig,
    ScorersConfig,
    SelectionConfig,
    Settings,
    TablesConfig,
)
from mira_spark.devtools.bench.parse import FALLBACK_NAMES
from mira_spark.store.schemas import DOCUMENTS_SCHEMA, SCORES_SCHEMA, conform
from mira_spark.store.tables import Tables

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

DEFAULT_DOCS = 1_000_000
DEFAULT_SEED = 8
N_SLOTS = 15
# Two scorer groups over four sources, plus a source no group scores (rejected as no_scorer).
GROUP_SOURCES = {"text_group_b": ("html_cpt", "html_cpt_web"), "text_group_c": ("web_zh", "web_en")}
UNROUTED_SOURCE = "forum_dump"
UNROUTED_EVERY = 200  # 0.5% of rows
DUPLICATE_EVERY = 500  # 0.2% of rows repeat the previous row's doc_id (same source, other text)
FAILED_EVERY = 211  # ~0.5% of score rows failed (http_503)
PARTIAL_EVERY = 53  # ~2% parsed partially (A15 missing)
PARSE_FAILED_EVERY = 401  # ~0.25% unparseable
DEFAULT_PENDING = 0.01  # share of routed documents without a score row
VALIDATION_PER_SOURCE = 400  # teacher-labelled documents per source
NOISY_SLOTS = ("A14", "A15")  # teacher labels unrelated to the student: masked by reliability
# HTML-ish prose the texts are cut from; a per-document hash tail keeps every text distinct and less
# compressible than a repeated string.
LOREM = (
    "<section class=\"hero\"><h1>响应式企业官网</h1><p>We build landing pages with semantic tags, aria labels "
    "and media queries; 页面包含导航、表单校验与图片懒加载。</p><nav><a href=\"#about\">About</a> "
    "<a href=\"#pricing\">Pricing</a></nav><form><label for=\"email\">Email</label><input id=\"email\" "
    "type=\"email\" required></form><script>document.querySelector('form').addEventListener('submit', "
    "e => { if (!e.target.checkValidity()) e.preventDefault(); });</script><footer>© 2026 示例公司，保留所有权利。"
    "</footer></section>"
)
EXCHANGE_NODES = ("RepartitionExec", "CoalescePartitionsExec", "SortPreservingMergeExec")


# ---- synthetic tables ------------------------------------------------------------------------------------


def bench_settings(root: Path) -> Settings:
    """Settings of the bench run: tables under ``root``, two scorer groups, an endpoint never contacted."""
    anchors = root / "anchors.jsonl"
    anchors.write_text(
        "".join(json.dumps({"slot": f"A{i}", "dimension": n, "cluster_size": 1}, ensure_ascii=False) + "\n"
                for i, n in enumerate(FALLBACK_NAMES, 1)),
        encoding="utf-8",
    )
    pool = PoolConfig(endpoints=({"url": "http://127.0.0.1:9/v1"},), startup_check=False)
    groups = {
        name: ScorerGroupConfig(family="text", model=f"bench/{name}", anchors=anchors, pool="bench_pool",
                                sources=sources, dimensions=N_SLOTS)
        for name, sources in GROUP_SOURCES.items()
    }
    return Settings(
        engine="sail",
        tables=TablesConfig(root=str(root / "tables"), documents=str(root / "tables" / "documents"),
                            validation=str(root / "tables" / "validation")),
        scorers_file=root / "scorers.yaml",
        scorers=ScorersConfig(groups=groups, pools={"bench_pool": pool}),
        selection=SelectionConfig(),
    )


def _h(*cols: Column | str, salt: str = "") -> Column:
    """A non-negative 63-bit hash of the columns (deterministic on every engine, unlike rand())."""
    return F.abs(F.xxhash64(*[F.col(c) if isinstance(c, str) else c for c in cols], F.lit(salt)))


def _source_expr(all_sources: list[str]) -> Column:
    known = F.element_at(F.array(*[F.lit(s) for s in all_sources]),
                         (F.pmod(_h("id", salt="src"), F.lit(len(all_sources))) + 1).cast("int"))
    return F.when(F.col("id") % UNROUTED_EVERY == UNROUTED_EVERY - 1, F.lit(UNROUTED_SOURCE)).otherwise(known)


def _documents(spark: SparkSession, n: int, seed: int) -> DataFrame:
    sources = [s for group in GROUP_SOURCES.values() for s in group]
    ids = spark.range(n).select((F.col("id") + F.lit(seed * 10_000_000_000)).alias("row"))
    dup = (F.col("row") % DUPLICATE_EVERY) == DUPLICATE_EVERY - 1
    owner = F.when(dup, F.col("row") - 1).otherwise(F.col("row"))
    ids = ids.withColumn("id", owner).withColumn("dup", dup)
    start = F.pmod(_h("row", salt="start"), F.lit(len(LOREM) // 2)) + 1
    length = F.pmod(_h("row", salt="len"), F.lit(len(LOREM) // 2)) + 100
    tail = F.concat_ws(" ", *[F.sha2(F.concat(F.col("row").cast("string"), F.lit(f"#{k}")), 512)
                              for k in range(3)])
    text = F.concat(F.lit("<!-- "), F.col("row").cast("string"), F.lit(" --> "),
                    F.substring(F.concat(F.lit(LOREM), F.lit(LOREM)), start, length), F.lit(" "),
                    F.substring(tail, 1, F.pmod(_h("row", salt="tail"), F.lit(300)) + 100))
    return ids.select(
        F.concat(F.lit("doc-"), F.col("id").cast("string")).alias("doc_id"),
        _source_expr(sources).alias("source"),
        text.alias("text"),
    )


def _scorer_expr() -> Column:
    expr = F.lit(None).cast("string")
    for name, sources in GROUP_SOURCES.items():
        expr = F.when(F.col("source").isin(*sources), F.lit(name)).otherwise(expr)
    return expr


def _student_score(slot: int) -> Column:
    """Scores 0..10 with many ties; each slot has its own hash so dimensions differ."""
    return F.pmod(_h("id", salt=f"s{slot}"), F.lit(11)).cast("double")


def _scores(spark: SparkSession, n: int, seed: int, versions: dict[str, str], pending: float) -> DataFrame:
    """One ok/failed score row per routed (first-copy) document, except a ``pending`` share."""
    sources = [s for group in GROUP_SOURCES.values() for s in group]
    base = spark.range(n).select((F.col("id") + F.lit(seed * 10_000_000_000)).alias("id"))
    base = base.filter((F.col("id") % DUPLICATE_EVERY) != DUPLICATE_EVERY - 1).withColumn(
        "source", _source_expr(sources)
    ).withColumn("scorer", _scorer_expr()).filter(F.col("scorer").isNotNull())
    base = base.filter(F.pmod(_h("id", salt="pending"), F.lit(10_000)) >= int(pending * 10_000))
    version = F.lit(None).cast("string")
    for name, v in versions.items():
        version = F.when(F.col("scorer") == name, F.lit(v)).otherwise(version)
    failed = F.col("id") % FAILED_EVERY == 0
    parse_failed = ~failed & (F.col("id") % PARSE_FAILED_EVERY == 0)
    partial = ~failed & ~parse_failed & (F.col("id") % PARTIAL_EVERY == 0)
    ok_parse = ~failed & ~parse_failed
    cols: list[Column] = [
        F.concat(F.lit("doc-"), F.col("id").cast("string")).alias("doc_id"), "source", "scorer",
        version.alias("prompt_version"),
        F.when(failed, F.lit("failed")).otherwise(F.lit("ok")).alias("status"),
        F.when(failed, F.lit("http_503: Service Unavailable")).alias("error"),
    ]
    for i in range(1, N_SLOTS + 1):
        present = ok_parse & ~(partial & F.lit(i == N_SLOTS))
        cols.append(F.when(present, _student_score(i)).alias(f"a{i}_score"))
    for i in range(1, N_SLOTS + 1):
        present = ok_parse & ~(partial & F.lit(i == N_SLOTS))
        rationale = F.concat(F.lit("页面结构清晰，语义标签使用得当；"), F.substring(F.lit(LOREM), i * 7, 60))
        cols.append(F.when(present, rationale).alias(f"a{i}_rationale"))
    cols += [
        F.when(ok_parse, F.pmod(_h("id", salt="overall"), F.lit(101))).cast("int").alias("overall"),
        F.when(ok_parse, F.element_at(F.array(F.lit("keep"), F.lit("downsample"), F.lit("drop")),
                                      (F.pmod(_h("id", salt="rec"), F.lit(3)) + 1).cast("int")))
        .alias("training_recommendation"),
        F.when(ok_parse, F.lit("landing-page")).alias("domain_tag"),
        F.when(ok_parse, F.lit("一个带有响应式布局和表单校验的企业官网落地页，代码整体可用。")).alias("brief"),
        F.when(failed, F.lit(None)).when(parse_failed, F.lit("failed")).when(partial, F.lit("partial"))
        .otherwise(F.lit("ok")).alias("parse_status"),
        F.when(parse_failed, F.array(F.lit("no slot lines found")))
        .when(partial, F.array(F.lit(f"missing A{N_SLOTS}"))).otherwise(F.array().cast("array<string>"))
        .alias("parse_errors"),
        F.lit(False).alias("truncated"),
        (F.pmod(_h("id", salt="len"), F.lit(1000)) + 300).alias("original_chars"),
        (F.pmod(_h("id", salt="pt"), F.lit(400)) + 3000).alias("prompt_tokens"),
        F.when(~failed, F.pmod(_h("id", salt="ct"), F.lit(200)) + 350).alias("completion_tokens"),
        F.lit(1).alias("attempts"),
        F.lit("bench-prefill").alias("run_id"),
        F.current_timestamp().alias("scored_at"),
        F.lit(None).cast("map<string,double>").alias("expected_scores"),  # scoring.expected_scores off
    ]
    return base.select(*cols)


def _validation(spark: SparkSession, tables: Tables) -> DataFrame:
    """Teacher labels for ``VALIDATION_PER_SOURCE`` scored documents per source: student +- 1, noise on
    ``NOISY_SLOTS`` (not derived from the simulator's judge)."""
    scores = tables.read("scores").filter(F.col("status") == "ok")
    ranked = scores.withColumn("_pick", _h("doc_id", salt="teacher")).select("doc_id", "source", "_pick",
                                                                           *[f"a{i}_score" for i in range(1, 16)])
    from pyspark.sql import Window

    picked = ranked.withColumn("_r", F.row_number().over(Window.partitionBy("source").orderBy("_pick"))).filter(
        F.col("_r") <= VALIDATION_PER_SOURCE
    )
    cells = F.array(*[F.struct(F.lit(f"A{i}").alias("slot"), F.col(f"a{i}_score").alias("score"))
                      for i in range(1, N_SLOTS + 1)])
    long = picked.select("doc_id", "source", F.explode(cells).alias("c")).select(
        "doc_id", "source", F.col("c.slot").alias("slot"), F.col("c.score").alias("score")
    ).filter(F.col("score").isNotNull())
    noise = (F.pmod(_h("doc_id", "slot", salt="noise"), F.lit(3)) - 1).cast("double")
    teacher = F.when(F.col("slot").isin(*NOISY_SLOTS), F.pmod(_h("doc_id", "slot", salt="rand"), F.lit(11))
                     .cast("double")).otherwise(F.greatest(F.lit(0.0), F.least(F.lit(10.0), F.col("score") + noise)))
    return long.select("doc_id", "source", "slot", teacher.alias("teacher_score"))


def write_tables(spark: SparkSession, settings: Settings, n_docs: int, seed: int, pending: float) -> dict[str, int]:
    """Documents, pre-filled scores and teacher labels, written through :class:`Tables`."""
    tables = Tables(spark, settings)
    groups = pipeline.load_groups(settings)
    tables.overwrite(_documents(spark, n_docs, seed), "documents", DOCUMENTS_SCHEMA)
    tables.overwrite(_scores(spark, n_docs, seed, groups.versions, pending), "scores", SCORES_SCHEMA)
    validation = _validation(spark, tables)
    tables.overwrite(validation, "validation", validation.schema)
    return {
        "documents": tables.read("documents").count(),
        "scores": tables.read("scores").count(),
        "validation_rows": tables.read("validation").count(),
    }


# ---- the steps: one seam per stage, each calls the pipeline's own functions --------------------------------


@dataclass
class StepState:
    spark: SparkSession
    settings: Settings
    ctx: pipeline.RunContext | None = None
    selection: Any = None
    counts: dict[str, Any] = field(default_factory=dict)


def step_route(s: StepState) -> None:
    """Read and check the documents, route them, count documents in and rejected (``open_run``)."""
    if s.ctx is not None:
        pipeline.release_run(s.ctx)  # the table root's lease of the previous repetition
    s.ctx = pipeline.open_run(s.spark, s.settings, run_id="bench-table-path")
    pipeline.route_stage(s.ctx)
    s.counts["documents_in"] = s.ctx.summary.documents_in
    s.counts["rejected"] = dict(s.ctx.summary.rejected)


def step_pending(s: StepState) -> None:
    """Recover unmerged raw outputs and count the pending documents (``score_stage`` before its waves)."""
    assert s.ctx is not None
    s.ctx.summary.recovered_raw = pipeline.recover_unmerged(s.ctx.tables, s.ctx.groups)
    pending = pipeline.pending_documents(s.ctx.routed, s.ctx.tables.read("scores"), s.ctx.versions,
                                         tuple(s.settings.scoring.rescore_errors))
    s.counts["pending"] = pending.count()


def step_reliability(s: StepState) -> None:
    assert s.ctx is not None
    pipeline.reliability_stage(s.ctx)


def step_composite(s: StepState) -> None:
    """Composite of every current score row, materialised on its own (select recomputes it: no cache on Sail)."""
    assert s.ctx is not None
    row = pipeline.composite_scores(s.ctx).agg(F.count(F.lit(1)).alias("n"), F.sum("composite").alias("sum")).collect()[0]
    s.counts["composite_rows"] = int(row["n"])


def step_select(s: StepState) -> None:
    """Thresholds and decisions written."""
    assert s.ctx is not None
    s.selection = pipeline.decide_stage(s.ctx)


def step_selected(s: StepState) -> None:
    """The kept documents with their text written to ``selected``."""
    assert s.ctx is not None
    pipeline.selected_stage(s.ctx, s.selection)
    s.counts["kept"] = {k: v[0] for k, v in sorted(s.ctx.summary.kept.items())}
    pipeline.release_run(s.ctx)


STEPS: list[tuple[str, Callable[[StepState], None]]] = [
    ("route", step_route),
    ("pending", step_pending),
    ("reliability", step_reliability),
    ("composite", step_composite),
    ("select", step_select),
    ("selected", step_selected),
]


# ---- physical plans: exchanges that carry the text column ----------------------------------------------------


def plan_text(df: DataFrame) -> str:
    """The formatted physical plan of ``df`` (Spark Connect and classic both print it)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        df.explain(mode="formatted")
    return out.getvalue()


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets/parentheses/braces and quotes."""
    parts, depth, cur, quote = [], 0, [], ""
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def _bracket_arg(line: str, key: str, last: bool = False) -> list[str] | None:
    """The comma-separated items of ``key=[...]`` in a plan line (None when absent)."""
    idx = line.rfind(f"{key}=[") if last else line.find(f"{key}=[")
    if idx < 0:
        return None
    start = idx + len(key) + 2
    depth = 1
    for i in range(start, len(line)):
        if line[i] == "[":
            depth += 1
        elif line[i] == "]":
            depth -= 1
            if depth == 0:
                return _split_top(line[start:i])
    return _split_top(line[start:])


@dataclass
class PlanNode:
    name: str
    line: str
    children: list[PlanNode] = field(default_factory=list)


def parse_plan(text: str) -> PlanNode | None:
    """The tree of a DataFusion/Sail formatted physical plan (indentation gives the nesting)."""
    stack: list[tuple[int, PlanNode]] = []
    root: PlanNode | None = None
    for raw in text.splitlines():
        if not raw.strip() or raw.startswith("=="):
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        line = raw.strip()
        node = PlanNode(name=re.split(r"[:,\s]", line, maxsplit=1)[0], line=line)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if stack:
            stack[-1][1].children.append(node)
        else:
            root = root or node
        stack.append((indent, node))
    return root


_REF = re.compile(r"^(?:CAST\()?([^\s@()]+)@(\d+)(?: AS \w+\))?(?: as .+)?$")


def _refs(items: list[str], carry: set[int]) -> set[int]:
    """Output positions of a projection-like list whose item is a plain (or cast) reference to a carried input."""
    out = set()
    for pos, item in enumerate(items):
        m = _REF.match(item.strip())
        if m and int(m.group(2)) in carry:
            out.add(pos)
    return out


def _width(node: PlanNode) -> int:
    schema = _bracket_arg(node.line, "schema", last=True)
    return len(schema) if schema is not None else 0


def text_positions(node: PlanNode, column: str = "text") -> set[int]:
    """Output positions of ``node`` that carry the scanned ``column`` unchanged (renames and casts only)."""
    kids = [text_positions(c, column) for c in node.children]
    line = node.line
    if not node.children:  # a scan: the column by its name, in its projection or else its schema
        proj = _bracket_arg(line, "projection")
        if proj is not None:
            return {i for i, item in enumerate(proj) if item.split("@", 1)[0].strip() == column}
        schema = _bracket_arg(line, "schema", last=True) or []
        return {i for i, f in enumerate(schema) if f.rsplit(":", 1)[0].strip() == column}
    if node.name == "ProjectionExec":
        return _refs(_bracket_arg(line, "expr") or [], kids[0])
    if node.name.endswith("JoinExec"):
        left_w = _width(node.children[0])
        joined = kids[0] | {left_w + p for p in (kids[1] if len(kids) > 1 else set())}
        kind = re.search(r"join_type=(\w+)", line)
        jt = kind.group(1) if kind else "Inner"
        if jt in ("LeftAnti", "LeftSemi", "LeftMark"):
            joined = kids[0]
        elif jt in ("RightAnti", "RightSemi", "RightMark"):
            joined = kids[1]
        proj = _bracket_arg(line, "projection")
        return _refs(proj, joined) if proj is not None else joined
    if node.name == "AggregateExec":
        return _refs(_bracket_arg(line, "gby") or [], kids[0])
    if node.name == "UnionExec" or node.name == "InterleaveExec":
        return set().union(*kids)
    proj = _bracket_arg(line, "projection")
    if proj is not None and node.name == "FilterExec":
        return _refs(proj, kids[0])
    return kids[0]  # sort, repartition, coalesce, window (appends columns), limit, cooperative, ...


def text_exchanges(node: PlanNode | None, column: str = "text") -> tuple[int, int]:
    """(exchange nodes carrying ``column``, all exchange nodes) in the plan tree."""
    if node is None:
        return 0, 0
    carrying = total = 0
    stack = [node]
    while stack:
        n = stack.pop()
        stack.extend(n.children)
        if n.name in EXCHANGE_NODES:
            total += 1
            if text_positions(n, column):
                carrying += 1
    return carrying, total


@contextlib.contextmanager
def record_plans(spark: SparkSession, plans: list[str]) -> Iterator[None]:
    """Record the plan of every DataFrame an action or a table write materialises; writes are skipped
    (the timed pass already wrote the tables), actions still run so the stages get their results."""
    cls = type(spark.range(1))
    originals = {name: getattr(cls, name) for name in ("count", "collect")}
    writes = {name: getattr(Tables, name) for name in ("overwrite", "append")}
    busy = {"on": False}

    def wrap(name: str) -> Callable[..., Any]:
        def recorded(self: DataFrame, *args: Any, **kwargs: Any) -> Any:
            if not busy["on"]:
                busy["on"] = True
                try:
                    # what the action runs: a count plans only the columns it needs (pruning may drop text)
                    executed = self.agg(F.count(F.lit(1))) if name == "count" else self
                    plans.append(plan_text(executed))
                    return originals[name](self, *args, **kwargs)
                finally:
                    busy["on"] = False
            return originals[name](self, *args, **kwargs)
        return recorded

    def write(self: Tables, df: DataFrame, table: str, schema: Any, **kwargs: Any) -> None:
        if table in ("work_queue", "raw_outputs"):  # empty-table bookkeeping: let it through
            writes["append"](self, df, table, schema, **kwargs)
            return
        plans.append(plan_text(conform(df, schema)))

    try:
        for name in originals:
            setattr(cls, name, wrap(name))
        for name in writes:
            setattr(Tables, name, write)
        yield
    finally:
        for name, fn in originals.items():
            setattr(cls, name, fn)
        for name, fn in writes.items():
            setattr(Tables, name, fn)


# ---- the command -------------------------------------------------------------------------------------------


def run_bench(spark: SparkSession, root: Path, n_docs: int, seed: int, pending: float,
              analyse_plans: bool = True) -> dict[str, Any]:
    settings = bench_settings(root)
    t0 = time.perf_counter()
    written = write_tables(spark, settings, n_docs, seed, pending)
    setup_s = time.perf_counter() - t0
    state = StepState(spark, settings)
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}  # Sail runs in this process: its threads' CPU counts here (robust to a busy box)
    for name, fn in STEPS:
        t, c = time.perf_counter(), time.process_time()
        fn(state)
        seconds[name] = time.perf_counter() - t
        cpu[name] = time.process_time() - c
    shuffles: dict[str, dict[str, int]] = {}
    if analyse_plans:
        plan_state = StepState(spark, settings)
        for name, fn in STEPS:
            plans: list[str] = []
            with record_plans(spark, plans):
                fn(plan_state)
            counts = [text_exchanges(parse_plan(p)) for p in plans]
            shuffles[name] = {"plans": len(plans), "text_exchanges": sum(c[0] for c in counts),
                              "exchanges": sum(c[1] for c in counts)}
    total = sum(seconds.values())
    return {
        "bench": "table-path",
        "engine": "sail",
        "docs": n_docs,
        "written": written,
        "setup_s": round(setup_s, 3),
        "steps": {k: round(v, 3) for k, v in seconds.items()},
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "total_s": round(total, 3),
        "total_cpu_s": round(sum(cpu.values()), 3),
        "docs_per_s": round(n_docs / total, 1) if total > 0 else None,
        "text_exchanges": shuffles,
        "text_exchanges_total": sum(v["text_exchanges"] for v in shuffles.values()),
        "counts": state.counts,
    }


def _print_table(result: dict[str, Any]) -> None:
    width = 12
    print(f"table path on Sail + Delta: {result['docs']:,} documents "
          f"(setup {result['setup_s']:.1f}s: {result['written']})")
    print(f"{'step':<{width}} {'seconds':>9} {'cpu s':>8} {'docs/s':>12} {'text exch.':>11} {'exchanges':>10} "
          f"{'plans':>6}")
    for name, secs in result["steps"].items():
        sh = result["text_exchanges"].get(name, {})
        rate = result["docs"] / secs if secs > 0 else 0.0
        print(f"{name:<{width}} {secs:>9.2f} {result['cpu_s'][name]:>8.2f} {rate:>12,.0f} "
              f"{sh.get('text_exchanges', '-'):>11} {sh.get('exchanges', '-'):>10} {sh.get('plans', '-'):>6}")
    print(f"{'total':<{width}} {result['total_s']:>9.2f} {result['total_cpu_s']:>8.2f} "
          f"{result['docs_per_s'] or 0:>12,.0f} {result['text_exchanges_total']:>11}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mira-spark bench table-path", description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=DEFAULT_DOCS, help="documents in the synthetic corpus")
    parser.add_argument("--pending", type=float, default=DEFAULT_PENDING,
                        help="share of routed documents left without a score row")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the synthetic tables")
    parser.add_argument("--root", default=None, help="directory for the tables (default: a temporary one, removed)")
    parser.add_argument("--no-plans", action="store_true", help="skip the physical-plan pass")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if args.docs < 10 or not 0 <= args.pending < 1:
        parser.error("--docs must be at least 10 and --pending in [0, 1)")
    from mira_spark.store.engines import sail_session

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="mira-table-path-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        with sail_session("mira-bench-table-path") as spark:
            result = run_bench(spark, root, args.docs, args.seed, args.pending, analyse_plans=not args.no_plans)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    if not args.json_only:
        _print_table(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
