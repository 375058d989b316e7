"""Stage order of a run: documents -> route -> score (waves) -> parse -> reliability -> composite -> select.

Takes :class:`Settings`; gives the tables under ``tables.root`` (or ``tables.schema``) and a
:class:`RunSummary` of what every stage did. Only this module knows the order of stages.

Exactly-once: each wave of pending documents is scored by one Spark action that appends its raw
outputs, then the wave's raw outputs are reduced to one row per key, parsed and MERGEd into
``scores`` before the next wave starts. A document is pending while ``scores`` has no row for its
``(doc_id, scorer, prompt_version)``, so a rerun (or a restart after a kill) sends only what was not
committed; raw outputs appended by a run that died before its MERGE are parsed at the next start
without being requested again.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from mira_spark.aggregation import add_composite
from mira_spark.config import Settings
from mira_spark.documents import check_documents, route
from mira_spark.engines import default_parallelism, open_session
from mira_spark.errors import PoolUnavailableError
from mira_spark.prompts import PromptBuilder
from mira_spark.reliability import compute_reliability
from mira_spark.rubric import Rubric, load_rubric
from mira_spark.scores import parse_raw_outputs
from mira_spark.scoring import GroupPlan, ScoringPlan, score_documents
from mira_spark.selection import Selection, select_documents
from mira_spark.serving.health import check_pool_reachable
from mira_spark.serving.plan import plan_in_flight
from mira_spark.serving.preflight import check_served_models
from mira_spark.serving.secrets import resolve_api_key
from mira_spark.tables import (
    DECISIONS_SCHEMA,
    RAW_OUTPUTS_SCHEMA,
    RELIABILITY_SCHEMA,
    RUN_STATS_SCHEMA,
    SCORE_KEYS,
    SCORES_SCHEMA,
    THRESHOLDS_SCHEMA,
    WORK_QUEUE_SCHEMA,
    Tables,
)
from mira_spark.views import register_views

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_id: str
    documents_in: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    pending_before: int = 0
    recovered_raw: int = 0
    waves: int = 0
    requests_sent: int = 0
    rows_scored: int = 0
    scored_ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    deferred: int = 0
    truncated: int = 0
    kept: dict[str, tuple[int, int]] = field(default_factory=dict)  # source -> (kept, n_in)
    scoring_s: float = 0.0
    wall_s: float = 0.0
    stopped: str | None = None

    @property
    def requests_per_s(self) -> float:
        return self.requests_sent / self.scoring_s if self.scoring_s > 0 else 0.0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["requests_per_s"] = round(self.requests_per_s, 2)
        return out


@dataclass(frozen=True)
class Groups:
    rubrics: dict[str, Rubric]
    versions: dict[str, str]


def load_groups(settings: Settings) -> Groups:
    rubrics, versions = {}, {}
    for name, g in settings.scorers.groups.items():
        rubric = load_rubric(name, g.anchors, g.calibration, expected_size=g.dimensions)
        builder = PromptBuilder(rubric, g.model, settings.serving.max_model_len, settings.sampling.max_tokens)
        rubrics[name], versions[name] = rubric, builder.version
    return Groups(rubrics, versions)


def make_plan(settings: Settings, groups: Groups, concurrent_tasks: int) -> ScoringPlan:
    plans, in_flight = {}, {}
    for name, g in settings.scorers.groups.items():
        pool = settings.scorers.pools[g.pool]
        plans[name] = GroupPlan(name=name, model=g.model, rubric=groups.rubrics[name], pool=pool,
                                prompt_version=groups.versions[name], api_key=resolve_api_key(pool))
        in_flight[name] = plan_in_flight(pool, concurrent_tasks)
    return ScoringPlan(groups=plans, sampling=settings.sampling, scoring=settings.scoring,
                       max_model_len=settings.serving.max_model_len, in_flight_per_task=in_flight,
                       concurrent_tasks=concurrent_tasks)


def _versions_df(spark: SparkSession, groups: Groups) -> DataFrame:
    return spark.createDataFrame(sorted(groups.versions.items()), "scorer string, prompt_version string")


def pending_documents(routed: DataFrame, scores: DataFrame, versions: DataFrame,
                      rescore_errors: tuple[str, ...] = ()) -> DataFrame:
    """Routed documents without a committed score row for the current prompt version.

    ``rescore_errors`` (error codes such as ``http_503``, ``timeout``) makes failed rows with those codes
    pending again: a rerun with ``--retry-failed`` re-sends what a long outage exhausted, nothing else.
    """
    keyed = routed.join(F.broadcast(versions), on="scorer", how="inner")
    done = scores
    if rescore_errors:
        code = F.split(F.coalesce(F.col("error"), F.lit("")), ":")[0]
        done = scores.filter(~((F.col("status") == "failed") & code.isin(*rescore_errors)))
    return keyed.join(done.select(*SCORE_KEYS), on=list(SCORE_KEYS), how="left_anti")


def recover_unmerged(tables: Tables, groups: Groups) -> int:
    """Commit what a run that was killed mid-wave had already paid for, without requesting it again.

    Two windows: scored rows staged but never appended to ``raw_outputs`` (killed during the append),
    and raw outputs appended but never merged into ``scores`` (killed between append and MERGE).
    """
    versions = F.broadcast(_versions_df(tables.spark, groups))
    staged = tables.read_staged(RAW_OUTPUTS_SCHEMA)
    if staged is not None:
        logged = tables.read("raw_outputs").select("run_id", "wave", *SCORE_KEYS)
        lost = staged.join(logged, on=["run_id", "wave", *SCORE_KEYS], how="left_anti")
        n_staged = lost.count()
        if n_staged:
            log.info("recovering %d staged raw outputs of a run killed before its append", n_staged)
            tables.append(lost, "raw_outputs", RAW_OUTPUTS_SCHEMA)
    raw = tables.read("raw_outputs").filter(F.col("status").isin("ok", "failed"))
    orphans = raw.join(tables.read("scores").select(*SCORE_KEYS), on=list(SCORE_KEYS), how="left_anti")
    orphans = orphans.join(versions, ["scorer", "prompt_version"])
    n = orphans.select(*SCORE_KEYS).distinct().count()
    if n:
        log.info("recovering %d raw outputs committed by an earlier run but not merged", n)
        tables.merge(parse_raw_outputs(orphans, groups.rubrics), "scores", SCORES_SCHEMA, SCORE_KEYS)
    return n


WAVE_TAIL_IDLE_WARN = 0.02
# Requests one task's event loop keeps in flight comfortably (measured: 2,006 mean at the servers from one
# task at ~1.7 ms CPU per request; benchmarks/README.md).
MAX_IN_FLIGHT_PER_TASK = 2048


def plan_tasks(settings: Settings, parallelism: int) -> int:
    """Scoring tasks per wave: as few as can carry the pools' in-flight target, at most ``parallelism``.

    Scoring is I/O-bound: one task drives ~2,000 requests in flight on well under a core, while every
    extra task splits the pool's slots into shares that are balanced less well (on Sail, tasks are
    threads of one process: 2 tasks reached 0.95 utilization where 1 task reached 0.99). So tasks follow
    the load, not the cluster's core count; ``scoring.tasks`` overrides.

    >>> from mira_spark.config import load_settings
    >>> plan_tasks(load_settings("conf/local.yaml"), parallelism=64)
    1
    """
    total = sum(plan_in_flight(settings.scorers.pools[g.pool], 1) for g in settings.scorers.groups.values())
    return max(1, min(parallelism, math.ceil(total / MAX_IN_FLIGHT_PER_TASK)))


def wave_tail_idle(wave_docs: int, in_flight: int) -> float:
    """Share of a wave the pool spends draining: the last ~in-flight requests finish one by one.

    A wave lasts about ``wave_docs / in_flight`` service times and its tail about half of one, so the idle
    share is ``in_flight / (2 * wave_docs)`` (capped at 1).

    >>> round(wave_tail_idle(20000, 1127), 3), wave_tail_idle(10, 100)
    (0.028, 1.0)
    """
    if wave_docs <= 0:
        return 0.0
    return min(1.0, in_flight / (2 * wave_docs))


def score_waves(tables: Tables, settings: Settings, groups: Groups, pending: DataFrame, run_id: str,
                summary: RunSummary) -> None:
    spark = tables.spark
    n_pending = summary.pending_before
    if n_pending == 0:
        return
    concurrent = default_parallelism(spark)
    tasks = settings.scoring.tasks or plan_tasks(settings, concurrent)
    plan = make_plan(settings, groups, min(tasks, concurrent))
    checked = {name: g.pool for name, g in plan.groups.items() if g.pool.startup_check}
    for name, pool in checked.items():
        healthy = check_pool_reachable(pool)
        log.info("group %s: %d of %d endpoints healthy", name, len(healthy), len(pool.endpoints))
        group = plan.groups[name]  # right model, room for max_model_len: checked before anything is billed
        check_served_models(pool, group=name, model=group.model, max_model_len=plan.max_model_len,
                            api_key=group.api_key, urls=healthy)
    # The driver checks before every wave; tasks skip their own start-up check, so a pool that dies
    # between waves stops the run cleanly (here, or as deferred rows) instead of failing a Spark job.
    plan = replace(plan, groups={
        name: replace(g, pool=g.pool.model_copy(update={"startup_check": False})) for name, g in plan.groups.items()
    })
    n_waves = math.ceil(n_pending / settings.scoring.wave_size)
    for name in plan.groups:
        in_flight = plan.in_flight_per_task[name] * min(tasks, concurrent)
        idle = wave_tail_idle(min(settings.scoring.wave_size, n_pending), in_flight)
        if n_waves > 1 and idle > WAVE_TAIL_IDLE_WARN:
            log.warning(
                "group %s: waves of %d documents with %d requests in flight leave the pool idle ~%.0f%% of "
                "the time while each wave drains; raise scoring.wave_size to >= %d to keep that under 1%%",
                name, settings.scoring.wave_size, in_flight, 100 * idle, math.ceil(in_flight / 0.02),
            )
    # The pending documents, text included, are materialised once per run, partitioned by wave: each
    # wave then reads its own partition instead of re-reading, re-routing and re-joining the whole
    # corpus, and never re-derives "not yet in scores" from a table the previous wave just changed.
    # Keyed by run_id so concurrent runs on one table root never read each other's lists.
    work = pending.select("doc_id", "source", "scorer", "prompt_version", "text",
                          F.lit(run_id).alias("run_id")).withColumn(
        "wave", F.pmod(F.xxhash64(F.col("doc_id"), F.lit("wave")), F.lit(n_waves)).cast("int")
    )
    tables.append(work, "work_queue", WORK_QUEUE_SCHEMA, partition_by=("run_id", "wave"))
    queue = tables.read("work_queue").filter(F.col("run_id") == run_id)
    try:
        _run_waves(tables, settings, groups, queue, plan, tasks, checked, n_waves, run_id, summary)
    finally:
        tables.delete_run("work_queue", run_id)


def _run_waves(tables: Tables, settings: Settings, groups: Groups, queue: DataFrame, plan: ScoringPlan,
               tasks: int, checked: dict, n_waves: int, run_id: str, summary: RunSummary) -> None:
    started = time.perf_counter()
    for wave in range(n_waves):
        if wave > 0 and checked:
            try:
                for pool in checked.values():
                    check_pool_reachable(pool)
            except PoolUnavailableError as exc:
                summary.stopped = (
                    f"every endpoint stopped answering before wave {wave + 1}/{n_waves} ({exc}) Committed "
                    "waves are kept; restart the endpoints and rerun to score the rest."
                )
                break
        wave_docs = queue.filter(F.col("wave") == wave).select("doc_id", "source", "scorer", "text")
        raw = score_documents(wave_docs, plan, tasks).select(
            "*", F.lit(run_id).alias("run_id"), F.lit(wave).alias("wave"), F.current_timestamp().alias("scored_at")
        )
        staging = tables.staging_path(run_id, wave)
        if staging:
            staged = tables.write_staging(raw, staging, RAW_OUTPUTS_SCHEMA)  # the wave's one scoring action
            tables.append(staged, "raw_outputs", RAW_OUTPUTS_SCHEMA)  # retry-safe: re-reads the files
        else:
            tables.append(raw, "raw_outputs", RAW_OUTPUTS_SCHEMA)  # the wave's one scoring action
        wave_raw = tables.read("raw_outputs").filter((F.col("run_id") == run_id) & (F.col("wave") == wave))
        tables.merge(parse_raw_outputs(wave_raw, groups.rubrics), "scores", SCORES_SCHEMA, SCORE_KEYS)
        summary.waves += 1
        if staging:
            tables.drop_staging(staging)
        counts = wave_raw.groupBy("status").agg(F.count(F.lit(1)).alias("n")).collect()
        deferred = sum(r["n"] for r in counts if r["status"] == "deferred")
        log.info("wave %d/%d committed: %s", wave + 1, n_waves, {r["status"]: r["n"] for r in counts})
        if deferred:
            summary.stopped = (
                f"every endpoint stopped answering during wave {wave + 1}/{n_waves}: {deferred} documents "
                "deferred. Committed waves are kept; restart the endpoints and rerun to score the rest."
            )
            break
    summary.scoring_s = time.perf_counter() - started


def _collect_run_counts(tables: Tables, run_id: str, summary: RunSummary) -> None:
    raw = tables.read("raw_outputs").filter(F.col("run_id") == run_id)
    agg = raw.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum("attempts").alias("attempts"),
        F.sum("repairs").alias("repairs"),
        F.sum(F.when(F.col("status") == "ok", 1).otherwise(0)).alias("ok"),
        F.sum(F.when(F.col("status") == "deferred", 1).otherwise(0)).alias("deferred"),
        F.sum(F.col("truncated").cast("int")).alias("truncated"),
    ).collect()[0]
    summary.rows_scored = int(agg["rows"] or 0)
    summary.requests_sent = int(agg["attempts"] or 0)  # every HTTP request, repairs included
    summary.scored_ok = int(agg["ok"] or 0)
    summary.deferred = int(agg["deferred"] or 0)
    summary.truncated = int(agg["truncated"] or 0)
    failed = raw.filter(F.col("status") == "failed").groupBy(F.split("error", ":")[0].alias("e")).count().collect()
    summary.failed = {r["e"]: int(r["count"]) for r in failed}


def _write_run_stats(tables: Tables, summary: RunSummary) -> None:
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = [
        ("input", "documents_in", summary.documents_in), ("score", "pending_before", summary.pending_before),
        ("score", "requests_sent", summary.requests_sent), ("score", "rows_scored", summary.rows_scored),
        ("score", "scored_ok", summary.scored_ok), ("score", "deferred", summary.deferred),
        ("score", "truncated", summary.truncated), ("score", "recovered_raw", summary.recovered_raw),
        ("score", "seconds", summary.scoring_s),
    ]
    rows += [("route", f"rejected:{k}", v) for k, v in summary.rejected.items()]
    rows += [("score", f"failed:{k}", v) for k, v in summary.failed.items()]
    rows += [("select", f"kept:{k}", v[0]) for k, v in summary.kept.items()]
    df = tables.spark.createDataFrame(
        [(summary.run_id, s, m, float(v), now) for s, m, v in rows], RUN_STATS_SCHEMA
    )
    tables.append(df, "run_stats", RUN_STATS_SCHEMA)


@dataclass
class RunContext:
    """What the stages of one run share: tables, rubrics, routed documents, the summary being filled."""

    spark: SparkSession
    settings: Settings
    tables: Tables
    groups: Groups
    summary: RunSummary
    docs: DataFrame
    routed: DataFrame
    rejected: DataFrame
    versions: DataFrame


def open_run(spark: SparkSession, settings: Settings, run_id: str | None = None) -> RunContext:
    """Read and route the documents and make sure the score tables exist."""
    summary = RunSummary(run_id=run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6])
    tables = Tables(spark, settings)
    groups = load_groups(settings)
    docs = check_documents(tables.read(tables.documents), tables.documents.label)
    routing = route(spark, docs, settings.scorers.group_for_source())
    summary.documents_in = docs.count()
    summary.rejected = {r["reason"]: int(r["count"]) for r in routing.rejected.groupBy("reason").count().collect()}
    tables.ensure("raw_outputs", RAW_OUTPUTS_SCHEMA)
    tables.ensure("scores", SCORES_SCHEMA)
    return RunContext(spark, settings, tables, groups, summary, docs, routing.routed, routing.rejected,
                      _versions_df(spark, groups))


def score_stage(ctx: RunContext) -> None:
    """Recover unmerged raw outputs, then score every pending document wave by wave."""
    ctx.summary.recovered_raw = recover_unmerged(ctx.tables, ctx.groups)
    pending = pending_documents(ctx.routed, ctx.tables.read("scores"), ctx.versions,
                                tuple(ctx.settings.scoring.rescore_errors))
    ctx.summary.pending_before = pending.count()
    score_waves(ctx.tables, ctx.settings, ctx.groups, pending, ctx.summary.run_id, ctx.summary)
    _collect_run_counts(ctx.tables, ctx.summary.run_id, ctx.summary)


def parse_stage(ctx: RunContext, reparse_all: bool = False) -> int:
    """Parse raw outputs into ``scores``: the unmerged ones, or all of them (after a parser fix)."""
    if not reparse_all:
        return recover_unmerged(ctx.tables, ctx.groups)
    raw = ctx.tables.read("raw_outputs").join(F.broadcast(ctx.versions), ["scorer", "prompt_version"])
    ctx.tables.merge(parse_raw_outputs(raw, ctx.groups.rubrics), "scores", SCORES_SCHEMA, SCORE_KEYS)
    return ctx.tables.read("scores").count()


def _current_scores(ctx: RunContext) -> DataFrame:
    return ctx.tables.read("scores").join(F.broadcast(ctx.versions), ["scorer", "prompt_version"])


def reliability_stage(ctx: RunContext) -> None:
    tables = ctx.tables
    validation = tables.read(tables.validation) if tables.validation and tables.exists(tables.validation) else None
    reliability = compute_reliability(ctx.spark, _current_scores(ctx), validation, ctx.groups.rubrics,
                                      ctx.settings.reliability)
    tables.overwrite(reliability, "reliability", RELIABILITY_SCHEMA)


def composite_scores(ctx: RunContext) -> DataFrame:
    """Current score rows with ``composite`` and ``dims_used`` added (reads the reliability table)."""
    return add_composite(_current_scores(ctx), ctx.tables.read("reliability"))


def decide_stage(ctx: RunContext) -> Selection:
    """Write ``thresholds`` and ``decisions``; return the selection whose kept rows ``selected`` gets."""
    tables = ctx.tables
    if not tables.exists("reliability"):
        reliability_stage(ctx)
    scored = composite_scores(ctx)
    still_pending = pending_documents(ctx.routed, tables.read("scores"), ctx.versions)
    selection = select_documents(ctx.spark, scored, ctx.rejected, still_pending, ctx.settings.selection)
    tables.overwrite(selection.thresholds, "thresholds", THRESHOLDS_SCHEMA)
    tables.overwrite(selection.decisions, "decisions", DECISIONS_SCHEMA)
    return selection


def selected_stage(ctx: RunContext, selection: Selection) -> None:
    """Write ``selected`` (the kept rows with their text) and record kept counts per source."""
    tables = ctx.tables
    # Text from the routed copy: with duplicate doc_ids in the input, joining the raw documents would
    # attach every copy's text to the one kept score row.
    selected = selection.kept.join(ctx.routed.select("doc_id", "scorer", "text"), on=["doc_id", "scorer"],
                                   how="inner").drop("masked_slots")
    tables.overwrite(selected, "selected", selected.schema)
    for r in tables.read("thresholds").collect():
        ctx.summary.kept[r["source"]] = (int(r["n_kept"]), int(r["n_in"]))


def select_stage(ctx: RunContext) -> None:
    """Composite, thresholds, decisions and ``selected``."""
    selected_stage(ctx, decide_stage(ctx))


def finish_run(ctx: RunContext, started: float) -> RunSummary:
    ctx.summary.wall_s = time.perf_counter() - started
    _write_run_stats(ctx.tables, ctx.summary)
    register_views(ctx.spark, ctx.tables, ctx.groups.rubrics)
    return ctx.summary


def run_pipeline(spark: SparkSession, settings: Settings, run_id: str | None = None) -> RunSummary:
    """The whole job on an open session."""
    started = time.perf_counter()
    ctx = open_run(spark, settings, run_id)
    score_stage(ctx)
    reliability_stage(ctx)
    select_stage(ctx)
    return finish_run(ctx, started)


def run(settings: Settings, run_id: str | None = None) -> RunSummary:
    """Open the configured engine and run the whole job."""
    with open_session(settings) as spark:
        return run_pipeline(spark, settings, run_id)
