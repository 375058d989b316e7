"""Stage order of a run: route -> score (waves) -> parse -> reliability -> select, in one list.

Takes :class:`Settings`; gives the tables under ``tables.root`` (or ``tables.schema``) and a
:class:`RunSummary` of what every stage did. Only this module knows the order of stages: :data:`STAGES`
is the one ordered list that the CLI (``run`` and one command per stage), :func:`run_pipeline`, the
spark-submit entry point, the notebooks, the benchmarks and the tests all run. Each stage's docstring
says which tables and columns it reads and writes.

Routing runs once per run: its narrow result (every input row once, no text) is persisted in the
``routing`` table under the run's id, and every later consumer — pending documents, decisions,
``selected`` — reads that, joining the text back only where it is needed
(:func:`~mira_spark.ingest.documents.attach_text`).

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
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from mira_spark.config import Settings
from mira_spark.errors import DuplicateAttemptsError, PoolUnavailableError
from mira_spark.ingest.documents import attach_text, check_documents, route
from mira_spark.parsing.stage import reparse_raw_outputs, score_rows
from mira_spark.progress import ProgressSink, WaveMeter, job_tag, log_progress
from mira_spark.prompting.prompts import PromptBuilder
from mira_spark.prompting.rubric import Rubric, load_rubric
from mira_spark.runstats import StageStats
from mira_spark.scoring.accounting import wave_stats
from mira_spark.scoring.stage import GroupPlan, ScoringPlan, score_documents
from mira_spark.selection.aggregation import (
    CompositePlan,
    add_composite,
    cell_weights,
    composite_plan,
    score_basis,
    with_score_basis,
)
from mira_spark.selection.reliability import compute_reliability
from mira_spark.selection.samples import combine_samples
from mira_spark.selection.select import Selection, band_documents, select_documents
from mira_spark.serving.canary import CanaryGuard
from mira_spark.serving.health import check_pool_reachable
from mira_spark.serving.plan import plan_in_flight
from mira_spark.serving.preflight import check_served_models
from mira_spark.serving.secrets import resolve_api_key
from mira_spark.store import journal
from mira_spark.store.engines import default_parallelism, open_session
from mira_spark.store.lease import Lease, run_lease
from mira_spark.store.schemas import (
    CANARY_SCHEMA,
    DECISIONS_SCHEMA,
    RAW_OUTPUTS_SCHEMA,
    RELIABILITY_SCHEMA,
    ROUTING_SCHEMA,
    RUN_STATS_SCHEMA,
    SAMPLE_KEYS,
    SAMPLE_OUTPUTS_SCHEMA,
    SAMPLE_QUEUE_SCHEMA,
    SAMPLES_SCHEMA,
    SCORE_KEYS,
    SCORES_SCHEMA,
    SELECTED_SCHEMA,
    THRESHOLDS_SCHEMA,
    WORK_QUEUE_SCHEMA,
)
from mira_spark.store.tables import Tables
from mira_spark.store.views import register_views

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What one run did, as the stages fill it in; ``stages`` are the ``run_stats`` rows it writes."""

    run_id: str
    documents_in: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    pending_before: int = 0
    pending_tokens: int = 0  # routing's tokens of the pending documents (the GPU-hours estimate's input)
    recovered_raw: int = 0
    parsed: int = 0  # rows the parse stage merged into scores
    exact_copies: int = 0  # duplicate rows identical to the routed copy (same doc_id, source, text)
    waves: int = 0
    kept: dict[str, tuple[int, int]] = field(default_factory=dict)  # "<variant>:<unit>" -> (kept, n_in)
    scoring_s: float = 0.0
    wall_s: float = 0.0
    stopped: str | None = None
    canary: dict = field(default_factory=dict)  # drift guard: checks, requests, quarantined, skipped groups
    journal_folded: int = 0  # answers a dead run had journaled, committed at this run's start unasked
    stages: dict[str, StageStats] = field(default_factory=dict)  # what each stage did: the run_stats rows

    def stage(self, name: str) -> StageStats:
        """The counts of stage ``name`` in this run (created empty on first use)."""
        return self.stages.setdefault(name, StageStats(name))

    # The scoring figures are the score stage's counts (one aggregation per wave over its rows).
    @property
    def requests_sent(self) -> int:
        return self.stage("score").requests  # every HTTP request, repairs included

    @property
    def rows_scored(self) -> int:
        return self.stage("score").rows_out

    @property
    def scored_ok(self) -> int:
        return self.stage("score").counts.get("status:ok", 0)

    @property
    def deferred(self) -> int:
        return self.stage("score").counts.get("status:deferred", 0)

    @property
    def truncated(self) -> int:
        return self.stage("score").counts.get("truncated", 0)

    @property
    def failed(self) -> dict[str, int]:
        return self.stage("score").by_prefix("failed")

    @property
    def resent_requests(self) -> int:
        return self.stage("score").resent_requests  # sent again: an earlier attempt died with them in flight

    @property
    def resent_completion_tokens(self) -> int:
        return self.stage("score").resent_completion_tokens

    @property
    def requests_per_s(self) -> float:
        return self.requests_sent / self.scoring_s if self.scoring_s > 0 else 0.0

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("stages")
        for name in ("requests_sent", "rows_scored", "scored_ok", "deferred", "truncated", "failed", "resent_requests",
                     "resent_completion_tokens"):
            out[name] = getattr(self, name)
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
        tables.merge(score_rows(orphans), "scores", SCORES_SCHEMA, SCORE_KEYS)
    return n


def recover_unmerged_samples(tables: Tables) -> int:
    """MERGE into ``samples`` the extra samples in ``sample_outputs`` (ok/failed) it lacks: answers a killed
    run appended but never merged, or that :func:`fold_journal` took from a dead run's journal."""
    _, raw_schema, table_schema = SAMPLE_TARGET.schemas()
    tables.ensure(SAMPLE_TARGET.raw, raw_schema)
    keys = list(SAMPLE_TARGET.keys)
    raw = tables.read(SAMPLE_TARGET.raw).filter(F.col("status").isin("ok", "failed"))
    orphans = raw.join(tables.read(SAMPLE_TARGET.table).select(*keys), on=keys, how="left_anti")
    n = orphans.select(*keys).distinct().count()
    if n:
        log.info("recovering %d extra samples committed by an earlier run but not merged", n)
        tables.merge(score_rows(orphans, table_schema, SAMPLE_TARGET.keys), SAMPLE_TARGET.table, table_schema,
                     SAMPLE_TARGET.keys)
    return n


def fold_journal(tables: Tables, root: str, run_id: str) -> int:
    """Commit what dead runs journaled but never committed, so none of it is requested again.

    Every journaled row whose key is in neither ``scores`` nor ``raw_outputs`` (ok/failed) is appended to
    ``raw_outputs`` under the run and wave that paid for it (then :func:`recover_unmerged` MERGEs it), and
    every journaled extra sample not in ``samples`` to ``sample_outputs`` (the samples stage MERGEs it); the
    dead runs' in-flight lists are kept for this run's waste accounting and their files removed. Runs only
    under the table root's lease, so every other run's journal is a dead run's.
    """
    dead = [r for r in journal.journal_runs(root) if r != run_id]
    if not dead:
        return 0
    n = 0
    for target in (SCORE_TARGET, SAMPLE_TARGET):  # sample 0's waves, then the extra-sample waves
        rows = journal.read_journal(root, origin=True, samples=target is SAMPLE_TARGET)
        if not rows.num_rows:
            continue
        _, raw_schema, table_schema = target.schemas()
        tables.ensure(target.raw, raw_schema)
        tables.ensure(target.table, table_schema)
        run_col, wave_col = journal.ORIGIN_COLUMNS
        df = tables.spark.createDataFrame(rows).withColumnRenamed(run_col, "run_id").withColumnRenamed(
            wave_col, "wave").withColumn("scored_at", F.current_timestamp())
        final = F.col("status").isin("ok", "failed")
        keys = list(target.keys)
        known = tables.read(target.raw).filter(final).select(*keys).unionByName(
            tables.read(target.table).select(*keys))
        fresh = df.join(known, on=keys, how="left_anti")
        folded = fresh.count()
        if folded:
            log.info("committing %d %s answers journaled by dead runs %s (not requested again)", folded,
                     target.stage, dead)
            tables.append(fresh, target.raw, raw_schema)
        n += folded
    kept = journal.retire_runs(root, run_id, dead)
    if kept:
        log.info("%d requests were in flight when runs %s died; this run counts what it sends again", kept, dead)
    return n


def check_duplicate_attempts(spark: SparkSession, journaled: bool) -> None:
    """Refuse Spark settings that launch duplicate scoring attempts unless the journal makes them free."""
    def get(key: str) -> str | None:
        try:
            return spark.conf.get(key, None)
        except Exception:  # a Connect server that does not expose the key: not set
            return None

    found = journal.duplicate_attempt_settings(get)
    if not found:
        return
    if journaled:
        log.info("%s: a duplicate scoring attempt waits for the first one and reuses its journal", found)
        return
    raise DuplicateAttemptsError(
        f"{', '.join(found)} launches duplicate scoring attempts that would each send (and bill) the same "
        "requests; set spark.speculation=false for this job (spark-submit --conf spark.speculation=false, or "
        "the cluster's Spark config), or enable the request journal (journal.enabled: true with tables.root "
        "or tables.staging)"
    )


WAVE_TAIL_IDLE_WARN = 0.02
WaveHook = Callable[[int, "RunSummary"], None]  # called after each committed wave (the soak bench samples there)
# Pending keys (doc_id, source, scorer, hash: ~60 bytes each) up to this many are broadcast to the text
# join, so the documents are read once and never shuffled.
BROADCAST_KEYS_MAX = 2_000_000
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


@dataclass(frozen=True)
class WaveTarget:
    """Where a scoring pass goes: sample 0 (``work_queue`` -> ``raw_outputs`` -> ``scores``) or the extra
    samples (``sample_queue`` -> ``sample_outputs`` -> ``samples``, keyed with ``sample``)."""

    stage: str  # the run_stats row its counts go to
    queue: str
    raw: str
    table: str
    keys: tuple[str, ...]
    extra: tuple[str, ...] = ()  # work columns beyond doc_id, source, scorer, text

    def schemas(self) -> tuple[StructType, StructType, StructType]:
        """(queue, raw, table) Spark schemas."""
        if self.extra:
            return SAMPLE_QUEUE_SCHEMA, SAMPLE_OUTPUTS_SCHEMA, SAMPLES_SCHEMA
        return WORK_QUEUE_SCHEMA, RAW_OUTPUTS_SCHEMA, SCORES_SCHEMA


SCORE_TARGET = WaveTarget("score", "work_queue", "raw_outputs", "scores", SCORE_KEYS)
SAMPLE_TARGET = WaveTarget("samples", "sample_queue", "sample_outputs", "samples", SAMPLE_KEYS, ("sample",))


def score_waves(tables: Tables, settings: Settings, groups: Groups, pending: DataFrame, docs: DataFrame,
                run_id: str, summary: RunSummary, progress: ProgressSink = log_progress,
                lease: Lease | None = None, on_wave: WaveHook | None = None,
                target: WaveTarget = SCORE_TARGET, n_pending: int | None = None) -> None:
    """Score ``pending`` (routed keys, no text) wave by wave into ``target`` (default: sample 0 into scores)."""
    spark = tables.spark
    n_pending = summary.pending_before if n_pending is None else n_pending
    if n_pending == 0:
        return
    check_duplicate_attempts(spark, journal.journal_root(settings) is not None)
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
    # The drift guard checks the pool before the corpus (sample 0); the extra-sample pass of the same run
    # reuses that verdict through the plan it was given.
    canary = _canary_hook(tables, settings, plan, run_id, n_waves, summary, set(checked)) \
        if target is SCORE_TARGET else None
    if canary is not None:  # before the first wave, before anything of the corpus is sent
        plan = canary(0, plan)
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
    with_text = attach_text(pending, docs, broadcast_keys=n_pending <= BROADCAST_KEYS_MAX)
    work = with_text.select("doc_id", "source", "scorer", "prompt_version", "text", *target.extra,
                            F.lit(run_id).alias("run_id")).withColumn(
        "wave", F.pmod(F.xxhash64(F.col("doc_id"), F.lit("wave")), F.lit(n_waves)).cast("int")
    )
    tables.append(work, target.queue, target.schemas()[0], partition_by=("run_id", "wave"))
    queue = tables.read(target.queue).filter(F.col("run_id") == run_id)
    try:
        estimate = pending_estimate(plan, n_pending, summary.pending_tokens) if target is SCORE_TARGET else None
        _run_waves(tables, settings, queue, plan, tasks, checked, n_waves, run_id, summary, progress, target,
                   n_pending, canary, lease, on_wave, estimate)
    finally:
        tables.delete_run(target.queue, run_id)


CanaryHook = Callable[[int, ScoringPlan], ScoringPlan]


def _canary_hook(tables: Tables, settings: Settings, plan: ScoringPlan, run_id: str, n_waves: int,
                 summary: RunSummary, health_checked: set[str]) -> CanaryHook | None:
    """``(wave, plan) -> plan`` without the endpoints that drifted (serving/canary.py); None when off."""
    if not settings.scoring.canary.enabled:
        return None
    guard = CanaryGuard(plan, settings.scoring.canary, run_id, n_waves, summary.canary, health_checked)

    def write(rows: list[tuple]) -> None:
        tables.append(tables.spark.createDataFrame(rows, CANARY_SCHEMA), "canary", CANARY_SCHEMA)

    return lambda wave, current: guard.before_wave(wave, current, write)


def pending_estimate(plan: ScoringPlan, docs: int, tokens: int) -> float | None:
    """``mira-spark estimate``'s GPU-hours for the pending documents on this pool (its replicas' GPUs as the
    TP), for the progress lines to compare with; None without token counts or with mixed replica sizes."""
    from mira_spark.estimate import pending_gpu_hours

    gpus = {e.gpus for g in plan.groups.values() for e in g.pool.endpoints}
    if len(gpus) != 1 or tokens <= 0:
        return None
    static = max(PromptBuilder(g.rubric, g.model, plan.max_model_len, plan.sampling.max_tokens).static_tokens
                 for g in plan.groups.values())
    return pending_gpu_hours(docs, tokens, static, gpus.pop())


def _wave_journal(settings: Settings, run_id: str, wave: int, samples: bool = False) -> journal.JournalSpec | None:
    root = journal.journal_root(settings)
    if root is None:
        return None
    cfg = settings.journal
    return journal.JournalSpec(root=root, run_id=run_id, wave=wave, flush_rows=cfg.flush_rows, flush_s=cfg.flush_s,
                               claim_stale_s=cfg.claim_stale_s, claim_heartbeat_s=cfg.claim_heartbeat_s,
                               samples=samples)


def _run_waves(tables: Tables, settings: Settings, queue: DataFrame, plan: ScoringPlan, tasks: int, checked: dict,
               n_waves: int, run_id: str, summary: RunSummary, progress: ProgressSink, target: WaveTarget,
               n_pending: int, canary: CanaryHook | None = None, lease: Lease | None = None,
               on_wave: WaveHook | None = None, gpu_hours_estimate: float | None = None) -> None:
    started = time.perf_counter()
    totals = summary.stage(target.stage)
    _, raw_schema, table_schema = target.schemas()
    meter = WaveMeter(total_docs=n_pending, n_waves=n_waves, started=started,
                      gpus=sum(e.gpus for g in plan.groups.values() for e in g.pool.endpoints),
                      gpu_hours_estimate=gpu_hours_estimate)
    for wave in range(n_waves):
        if canary is not None and wave > 0:  # every scoring.canary.every_waves waves: a replaced node too
            plan = canary(wave, plan)
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
        with job_tag(tables.spark, f"mira score wave {wave + 1}/{n_waves}"):
            wave_docs = queue.filter(F.col("wave") == wave).select("doc_id", "source", "scorer", "text",
                                                                    *target.extra)
            spec = _wave_journal(settings, run_id, wave, samples=target is SAMPLE_TARGET)
            raw = score_documents(wave_docs, replace(plan, journal=spec), tasks).select(
                "*", F.lit(run_id).alias("run_id"), F.lit(wave).alias("wave"),
                F.current_timestamp().alias("scored_at"),
            )
            staging = tables.staging_path(run_id, wave) if target is SCORE_TARGET else None
            if lease is not None:
                lease.check()  # taken over while this wave was planned: stop before scoring and committing it
            if staging:
                staged = tables.write_staging(raw, staging, raw_schema)  # the wave's one scoring action
                if lease is not None:
                    lease.check()
                tables.append(staged, target.raw, raw_schema)  # retry-safe: re-reads the files
            else:
                tables.append(raw, target.raw, raw_schema)  # the wave's one scoring action
            wave_raw = tables.read(target.raw).filter((F.col("run_id") == run_id) & (F.col("wave") == wave))
            # Under the table root's lease, new keys are appended and keys already there MERGEd
            # (store/tables.upsert_new_keys): a MERGE of a wave of new keys would join the whole growing
            # table. Without the lease another run may commit a key between the check and the append, so
            # one MERGE (its conflict detection) decides. The staged files are the wave's rows.
            commit = tables.upsert_new_keys if lease is not None else tables.merge
            commit(score_rows(staged if staging else wave_raw, table_schema, target.keys), target.table,
                   table_schema, target.keys)
            summary.waves += 1
            # The wave's counts: one aggregation over its own rows — the staged files when there are any
            # (just this wave), rather than a filter over the whole, growing raw table.
            counts = wave_stats(staged if staging else wave_raw)
            if staging:
                tables.drop_staging(staging)
            if spec is not None:  # the wave is committed: what its attempts re-sent, then its journal goes
                waste = journal.wave_waste(spec)
                counts.resent_requests += waste.resent_requests
                counts.resent_completion_tokens += waste.resent_completion_tokens
                journal.clear_wave(spec)
        totals.add(counts)
        totals.count("waves")
        progress(meter.line(wave + 1, totals, time.perf_counter()))
        deferred = counts.counts.get("status:deferred", 0)
        if on_wave is not None:
            on_wave(wave, summary)
        if deferred:
            summary.stopped = (
                f"every endpoint stopped answering during wave {wave + 1}/{n_waves}: {deferred} documents "
                "deferred. Committed waves are kept; restart the endpoints and rerun to score the rest."
            )
            break
    summary.scoring_s += time.perf_counter() - started


def _write_run_stats(tables: Tables, summary: RunSummary) -> None:
    """One ``run_stats`` row per stage that ran (``mira_spark.runstats.StageStats.record``)."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    names = RUN_STATS_SCHEMA.names
    rows = [tuple(st.record(summary.run_id, now)[n] for n in names) for st in summary.stages.values()]
    if rows:
        tables.append(tables.spark.createDataFrame(rows, RUN_STATS_SCHEMA), "run_stats", RUN_STATS_SCHEMA)


def read_run_stats(tables: Tables, run_id: str) -> dict[str, StageStats]:
    """The stages of run ``run_id`` as written to ``run_stats`` (what the CLI summary prints)."""
    if not tables.exists("run_stats"):
        return {}
    rows = tables.read("run_stats").filter(F.col("run_id") == run_id).collect()
    names = list(STAGE_NAMES)
    names.insert(names.index("score"), "canary")  # the drift guard runs at the start of scoring
    order = {name: i for i, name in enumerate(names)}
    stages = sorted((StageStats.from_record(r.asDict()) for r in rows), key=lambda st: order.get(st.stage, 99))
    return {st.stage: st for st in stages}


@dataclass
class RunContext:
    """What the stages of one run share: tables, rubrics, the documents, routing, the summary being filled."""

    spark: SparkSession
    settings: Settings
    tables: Tables
    groups: Groups
    summary: RunSummary
    docs: DataFrame
    versions: DataFrame
    routing: DataFrame | None = None  # set by the route stage: this run's rows of the routing table
    reparse_all: bool = False  # parse stage: re-parse every raw output (after a parser fix)
    progress: ProgressSink = log_progress  # where each wave's progress line goes (the CLI adds a bar)
    lease: Lease | None = None  # the table root's run lease, held from open_run to finish_run
    on_wave: WaveHook | None = None  # called after each committed wave

    def _routing(self) -> DataFrame:
        if self.routing is None:
            raise RuntimeError("the route stage has not run in this run")
        return self.routing

    @property
    def routed(self) -> DataFrame:
        """Rows to score: ``doc_id, source, scorer, text_hash, tokens`` (no text)."""
        return self._routing().filter(F.col("reason").isNull()).select("doc_id", "source", "scorer", "text_hash",
                                                                        "tokens")

    @property
    def rejected(self) -> DataFrame:
        """Rows routing set aside: ``doc_id, source, scorer, reason``."""
        return self._routing().filter(F.col("reason").isNotNull()).select("doc_id", "source", "scorer", "reason")


def open_run(spark: SparkSession, settings: Settings, run_id: str | None = None) -> RunContext:
    """Take the table root's lease, check the documents table and make sure the score tables exist.

    Raises :class:`~mira_spark.errors.LeaseHeldError` naming the live holder when another run holds the
    lease (``lease.wait``: wait for it instead). The lease is released by :func:`finish_run` (or
    :func:`run_pipeline` when a stage fails).
    """
    summary = RunSummary(run_id=run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6])
    lease = run_lease(settings, summary.run_id)
    if lease is not None:
        lease.acquire(wait=settings.lease.wait, wait_limit_s=settings.lease.wait_limit_s)
    try:
        return _open_run(spark, settings, summary, lease)
    except BaseException:
        if lease is not None:
            lease.release()
        raise


def _open_run(spark: SparkSession, settings: Settings, summary: RunSummary, lease: Lease | None) -> RunContext:
    tables = Tables(spark, settings)
    groups = load_groups(settings)
    docs = check_documents(tables.read(tables.documents), tables.documents.label,
                           settings.selection.tokens_column)
    tables.ensure("raw_outputs", RAW_OUTPUTS_SCHEMA)
    tables.ensure("scores", SCORES_SCHEMA)
    return RunContext(spark, settings, tables, groups, summary, docs, _versions_df(spark, groups), lease=lease)


def route_stage(ctx: RunContext) -> None:
    """Route every input row once, narrow, and persist it for the run.

    Reads ``documents`` (doc_id, source, text: the text only to hash it). Writes this run's partition of
    ``routing`` (run_id, doc_id, source, scorer, reason, text_hash); counts documents in and rejected
    by reason.
    """
    routing = route(ctx.spark, ctx.docs, ctx.settings.scorers.group_for_source())
    run_id = ctx.summary.run_id
    if ctx.tables.exists("routing"):  # a routing table of an older layout fails here, by name
        ctx.tables.ensure("routing", ROUTING_SCHEMA)
    ctx.tables.append(routing.withColumn("run_id", F.lit(run_id)), "routing", ROUTING_SCHEMA, partition_by=("run_id",))
    ctx.routing = ctx.tables.read("routing").filter(F.col("run_id") == run_id)
    rows = ctx.routing.groupBy("reason", "exact_copy").count().collect()
    counts: dict[str | None, int] = {}
    for r in rows:
        counts[r["reason"]] = counts.get(r["reason"], 0) + int(r["count"])
    ctx.summary.documents_in = sum(counts.values())
    ctx.summary.rejected = {k: v for k, v in counts.items() if k is not None}
    ctx.summary.exact_copies = sum(int(r["count"]) for r in rows if r["exact_copy"])
    st = ctx.summary.stage("route")
    st.rows_in, st.rows_out = ctx.summary.documents_in, counts.get(None, 0)
    for reason, n in ctx.summary.rejected.items():
        st.count(f"rejected:{reason}", n)
    st.count("exact_copies", ctx.summary.exact_copies)


def score_stage(ctx: RunContext) -> None:
    """Commit what a killed run had paid for, then score every pending document wave by wave.

    Reads ``routing`` (this run), ``scores`` (keys), ``raw_outputs`` (unmerged rows) and the documents'
    text once, for the pending rows. Writes ``work_queue`` (this run, deleted at the end), appends
    ``raw_outputs`` (one Spark action per wave) and MERGEs each wave into ``scores``.
    """
    root = journal.journal_root(ctx.settings)
    if root is not None and ctx.lease is not None:  # only under the lease is every other run's journal dead
        ctx.summary.journal_folded = fold_journal(ctx.tables, root, ctx.summary.run_id)
    ctx.summary.recovered_raw = recover_unmerged(ctx.tables, ctx.groups)
    pending = pending_documents(ctx.routed, ctx.tables.read("scores"), ctx.versions,
                                tuple(ctx.settings.scoring.rescore_errors))
    # One aggregation over the pending keys: how many, and their tokens (the progress lines' estimate).
    counted = pending.agg(F.count(F.lit(1)).alias("n"), F.sum("tokens").alias("tokens")).collect()[0]
    ctx.summary.pending_before = int(counted["n"])
    ctx.summary.pending_tokens = int(counted["tokens"] or 0)
    st = ctx.summary.stage("score")
    st.rows_in = ctx.summary.pending_before
    st.count("recovered_raw", ctx.summary.recovered_raw)
    if ctx.summary.journal_folded:
        st.count("journal_folded", ctx.summary.journal_folded)
    score_waves(ctx.tables, ctx.settings, ctx.groups, pending, ctx.docs, ctx.summary.run_id, ctx.summary,
                ctx.progress, ctx.lease, ctx.on_wave)
    _count_canary(ctx.summary)


def _count_canary(summary: RunSummary) -> None:
    """The drift guard's checks as a ``canary`` row of run_stats (its requests are billed, not corpus rows)."""
    c = summary.canary
    if not c:
        return
    st = summary.stage("canary")
    st.rows_out, st.requests = c.get("checks", 0), c.get("requests", 0)
    for q in c.get("quarantined", []):
        st.count("quarantined")
        st.count(f"quarantined:{q['reason']}")
    st.count("groups_without_references", len(c.get("skipped", [])))


def parse_stage(ctx: RunContext) -> int:
    """Parse raw outputs into ``scores``: the unmerged ones, or all of them (``ctx.reparse_all``).

    Reads ``raw_outputs`` and ``scores`` (keys); MERGEs into ``scores``. Returns the rows parsed.
    """
    if not ctx.reparse_all:
        ctx.summary.parsed = recover_unmerged(ctx.tables, ctx.groups)
    else:
        raw = ctx.tables.read("raw_outputs").join(F.broadcast(ctx.versions), ["scorer", "prompt_version"])
        ctx.tables.merge(reparse_raw_outputs(raw, ctx.groups.rubrics), "scores", SCORES_SCHEMA, SCORE_KEYS)
        ctx.summary.parsed = ctx.tables.read("scores").count()
    ctx.summary.stage("parse").rows_out = ctx.summary.parsed
    return ctx.summary.parsed


def _basis(ctx: RunContext) -> str:
    return score_basis(ctx.settings.selection, ctx.settings.scoring.expected_scores.enabled)


def _current_scores(ctx: RunContext) -> DataFrame:
    """Score rows of the current prompt versions, their ``a*_score`` on ``selection.score_basis``."""
    scores = ctx.tables.read("scores").join(F.broadcast(ctx.versions), ["scorer", "prompt_version"])
    return with_score_basis(scores, _basis(ctx), ctx.settings.selection.score_resolution)


def reliability_stage(ctx: RunContext) -> None:
    """Mask unreliable (source, dimension) cells, with confidence intervals and shrinkage.

    Reads ``scores`` (current prompt versions), the validation (teacher) table and, when configured,
    ``reliability.published_mask``. Overwrites ``reliability`` (source, scorer, slot, dimension, n, mae,
    mae_lo, mae_hi, spearman, spearman_lo, spearman_hi, ..., masked, reason, basis, mask_version).
    """
    tables = ctx.tables
    validation = tables.read(tables.validation) if tables.validation and tables.exists(tables.validation) else None
    reliability = compute_reliability(ctx.spark, _current_scores(ctx), validation, ctx.groups.rubrics,
                                      ctx.settings.reliability)
    tables.overwrite(reliability, "reliability", RELIABILITY_SCHEMA)
    _count_reliability(ctx.summary.stage("reliability"), tables.read("reliability"))


def _count_reliability(st: StageStats, cells: DataFrame) -> None:
    """Cells, masked cells and cells by basis (the reliability table is small: source x dimension)."""
    for r in cells.groupBy("masked", "basis").count().collect():
        n = int(r["count"])
        st.rows_out += n
        st.count("masked", n if r["masked"] else 0)
        st.count(f"basis:{r['basis']}", n)


def _mask_version(reliability: DataFrame) -> str | None:
    versions = [r["mask_version"] for r in reliability.select("mask_version").distinct().collect()]
    return versions[0] if len(versions) == 1 else None


def _current_samples(ctx: RunContext) -> DataFrame | None:
    """Extra samples 1..k-1 of the current prompt versions (None with ``scoring.samples: 1`` or none stored)."""
    k = ctx.settings.scoring.samples
    if k <= 1 or not ctx.tables.exists("samples"):
        return None
    extra = ctx.tables.read("samples").filter(F.col("sample") < k).join(
        F.broadcast(ctx.versions), ["scorer", "prompt_version"])
    return with_score_basis(extra, _basis(ctx), ctx.settings.selection.score_resolution)


def _composite_plan(ctx: RunContext) -> CompositePlan:
    return composite_plan(ctx.groups.rubrics, ctx.settings.selection, ctx.settings.scoring.samples, _basis(ctx))


def composite_scores(ctx: RunContext) -> DataFrame:
    """This run's routed score rows with ``score_key, composite (0-100), dims_used, weights_version,
    mask_version, tokens, tokens_estimated, n_samples, composite_sd`` (reads ``reliability``, ``routing``
    and, with ``scoring.samples`` > 1, ``samples``: the composite is the mean over a document's samples)."""
    tables = ctx.tables
    if tables.exists("reliability") and "mask_version" not in tables.read("reliability").columns:
        reliability_stage(ctx)  # a reliability table of the layout before masks were versioned
    plan = _composite_plan(ctx)
    weights = cell_weights(ctx.spark, tables.read("reliability"), plan)
    tokens = ctx._routing().filter(F.col("reason").isNull()).select("doc_id", "scorer", "tokens", "tokens_estimated")
    scores = _current_scores(ctx).join(tokens, on=["doc_id", "scorer"], how="inner")
    first = add_composite(scores, weights, plan, ctx.settings.selection)
    extra = _current_samples(ctx)
    if extra is not None:
        extra = add_composite(extra, weights, plan, ctx.settings.selection)
    return combine_samples(first, extra, plan)


def _selection(ctx: RunContext) -> Selection:
    tables = ctx.tables
    if not tables.exists("reliability"):
        reliability_stage(ctx)
    still_pending = pending_documents(ctx.routed, tables.read("scores"), ctx.versions)
    return select_documents(ctx.spark, composite_scores(ctx), ctx.rejected, still_pending, ctx.settings.selection,
                            _composite_plan(ctx), _mask_version(tables.read("reliability")))


def decide_stage(ctx: RunContext) -> Selection:
    """Write ``thresholds`` and ``decisions`` for every variant; return the selection ``selected`` gets."""
    selection = _selection(ctx)
    ctx.tables.overwrite(selection.thresholds, "thresholds", THRESHOLDS_SCHEMA)
    ctx.tables.overwrite(selection.decisions, "decisions", DECISIONS_SCHEMA)
    return selection


def samples_stage(ctx: RunContext) -> None:
    """Extra samples (``scoring.samples: k`` > 1): request samples 1..k-1 of every scored document, or, with
    ``scoring.adaptive_samples.enabled``, only of the documents within ``band`` of their unit's cut.

    Adaptive: a first selection (the composite of what is stored: sample 0, plus any samples an earlier
    run added) finds each unit's cut; the ``select`` stage then recomputes composites and cuts with the new
    samples. The reliability mask stays the one computed from sample 0 (it is a property of the scorer on a
    source, and the teacher pairs are sample-0 rows). Reads ``routing``, ``scores``, ``reliability``,
    ``samples``; writes ``sample_queue`` (this run, deleted at the end), appends ``sample_outputs`` and
    MERGEs ``samples`` (one row per doc_id, scorer, prompt_version, sample).
    """
    cfg = ctx.settings.scoring
    if cfg.samples <= 1:
        return
    tables = ctx.tables
    tables.ensure("samples", SAMPLES_SCHEMA)
    recover_unmerged_samples(tables)
    scored = _current_scores(ctx).filter(F.col("status") == "ok").select(*SCORE_KEYS)
    if cfg.adaptive_samples.enabled:
        adaptive = cfg.adaptive_samples
        cap = math.floor(adaptive.max_share * scored.count())
        near, n_near = band_documents(ctx.spark, _selection(ctx).decisions, adaptive.band, cap)
        if n_near > cap:
            log.info("samples: %d documents within %g points of a cut; the %g%% cap (%d) takes the nearest",
                     n_near, adaptive.band, 100 * adaptive.max_share, cap)
        ctx.summary.stage("samples").count("band_documents", n_near)
        scored = scored.join(near, on=["doc_id", "scorer"], how="inner")
    indices = ctx.spark.createDataFrame([(i,) for i in range(1, cfg.samples)], "sample int")
    wanted = (ctx.routed.join(scored, on=["doc_id", "scorer"], how="inner").crossJoin(F.broadcast(indices))
              .join(tables.read("samples").select(*SAMPLE_KEYS), on=list(SAMPLE_KEYS), how="left_anti"))
    st = ctx.summary.stage("samples")
    counts = wanted.groupBy().agg(F.count(F.lit(1)).alias("n"), F.countDistinct("doc_id", "scorer").alias("d")
                                  ).collect()[0]
    n, docs = int(counts["n"]), int(counts["d"] or 0)
    st.rows_in = n
    st.count("documents", docs)
    log.info("samples: %d extra samples for %d documents (k=%d, %s)", n, docs, cfg.samples,
             "adaptive" if cfg.adaptive_samples.enabled else "every document")
    score_waves(tables, ctx.settings, ctx.groups, wanted, ctx.docs, ctx.summary.run_id, ctx.summary,
                ctx.progress, ctx.lease, ctx.on_wave, target=SAMPLE_TARGET, n_pending=n)


def selected_stage(ctx: RunContext, selection: Selection) -> dict[str, dict[str, tuple[int, int]]]:
    """Write ``selected``: each (doc_id, scorer) kept by any variant once, with its text and ``variants``
    (the one join that brings text here; the text is written once however many variants keep it).

    Returns per variant and unit ``(n_kept, n_in)``.
    """
    tables = ctx.tables
    # The text of the copy routing chose: with duplicate doc_ids in the input, joining on doc_id alone
    # would attach every copy's text to the one kept score row. Exact copies (same id, source, text)
    # match twice; routing counted them, and only then is the second match dropped (an aggregation over
    # the wide kept rows, which a corpus without exact copies never pays).
    keys = selection.kept.join(ctx.routed.select("doc_id", "scorer", "text_hash"), on=["doc_id", "scorer"],
                               how="inner")
    selected = attach_text(keys, ctx.docs)
    if ctx.summary.exact_copies:  # rare: only then is there a second match to drop
        selected = selected.dropDuplicates(["doc_id", "scorer"])
    tables.overwrite(selected, "selected", SELECTED_SCHEMA)
    # RunSummary.kept: "<variant>:<unit>" -> (kept, n_in); the select row of run_stats adds tokens per variant.
    for variant, units in selection.counts.items():
        for unit, counts in units.items():
            ctx.summary.kept[f"{variant}:{unit}"] = counts
    return selection.counts


def select_stage(ctx: RunContext) -> None:
    """Composite, thresholds, decisions and ``selected``, for every variant of ``selection.variants``.

    Reads ``scores``, ``reliability``, ``routing`` (this run) and the kept documents' text. Overwrites
    ``thresholds``, ``decisions`` (every input row once per variant, with a reason) and ``selected``.
    """
    selected_stage(ctx, decide_stage(ctx))


@dataclass(frozen=True)
class Stage:
    """One element of the run: its name (the CLI command), what it does, whether it needs routing."""

    name: str
    run: Callable[[RunContext], object]
    needs_routing: bool = False
    enabled: Callable[[Settings], bool] = lambda _settings: True  # false: skipped, no run_stats row


def _samples_enabled(settings: Settings) -> bool:
    return settings.scoring.samples > 1


STAGES: tuple[Stage, ...] = (
    Stage("route", route_stage),
    Stage("score", score_stage, needs_routing=True),
    Stage("parse", parse_stage),
    Stage("reliability", reliability_stage),
    Stage("samples", samples_stage, needs_routing=True, enabled=_samples_enabled),
    Stage("select", select_stage, needs_routing=True),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)

StageWrapper = Callable[[str], AbstractContextManager[object]]


@contextmanager
def _no_wrap(_name: str) -> Iterator[None]:
    yield


def run_stages(ctx: RunContext, names: Sequence[str] | None = None, around: StageWrapper = _no_wrap) -> None:
    """Run the named stages (default: all) in :data:`STAGES` order; routing first when one needs it.

    ``around(name)`` is entered around each stage (e.g. to start fault-injecting servers for ``score``).
    """
    wanted = set(STAGE_NAMES if names is None else names)
    unknown = wanted - set(STAGE_NAMES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; the stages are {list(STAGE_NAMES)}")
    wanted = {name for name in wanted if next(s for s in STAGES if s.name == name).enabled(ctx.settings)}
    if any(s.needs_routing for s in STAGES if s.name in wanted):
        wanted.add("route")
    for stage in STAGES:
        if stage.name in wanted:
            st = ctx.summary.stage(stage.name)
            st.started_at = datetime.now(timezone.utc).replace(tzinfo=None)
            began = time.perf_counter()
            with around(stage.name), job_tag(ctx.spark, f"mira {stage.name}"):
                log.info("stage %s", stage.name)
                stage.run(ctx)
            st.seconds += time.perf_counter() - began
    if "select" in wanted:
        _count_selection(ctx)


def _count_selection(ctx: RunContext) -> None:
    """rows_in: the documents every variant decides on; rows_out: kept (variant, document) pairs over all variants
    (``mira_selected_by_variant``; ``selected`` holds each kept document once);
    counts per ``<variant>:<unit>`` (``kept:``, ``in:``) and per variant (``tokens_kept:``, ``tokens_in:``,
    ``budget_missed:``) from the thresholds table (one row per variant and unit: small)."""
    summary = ctx.summary
    st = summary.stage("select")
    st.rows_in = summary.documents_in
    for unit, (kept, n_in) in summary.kept.items():
        st.rows_out += kept
        st.count(f"kept:{unit}", kept)
        st.count(f"in:{unit}", n_in)
    if not ctx.tables.exists("thresholds"):
        return
    per_variant = ctx.tables.read("thresholds").groupBy("variant").agg(
        F.sum("tokens_kept").alias("kept"), F.sum("tokens_in").alias("tokens_in"),
        F.sum(F.when(F.col("budget_met") == F.lit(False), 1).otherwise(0)).alias("missed"),
    ).collect()
    for r in per_variant:
        st.count(f"tokens_kept:{r['variant']}", int(r["kept"] or 0))
        st.count(f"tokens_in:{r['variant']}", int(r["tokens_in"] or 0))
        st.count(f"budget_missed:{r['variant']}", int(r["missed"] or 0))


def finish_run(ctx: RunContext, started: float) -> RunSummary:
    """Record the run's counts in ``run_stats``, drop its routing rows, register the SQL views."""
    ctx.summary.wall_s = time.perf_counter() - started
    _write_run_stats(ctx.tables, ctx.summary)
    if ctx.routing is not None:
        ctx.tables.delete_run("routing", ctx.summary.run_id)
    register_views(ctx.spark, ctx.tables, ctx.groups.rubrics)
    root = journal.journal_root(ctx.settings)
    if root is not None:
        journal.clear_run(root, ctx.summary.run_id)
    release_run(ctx)
    return ctx.summary


def release_run(ctx: RunContext) -> None:
    """Release the table root's lease (idempotent)."""
    if ctx.lease is not None:
        ctx.lease.release()


def run_pipeline(spark: SparkSession, settings: Settings, run_id: str | None = None,
                 stages: Sequence[str] | None = None, around: StageWrapper = _no_wrap,
                 reparse_all: bool = False, progress: ProgressSink = log_progress) -> RunSummary:
    """The whole job (or the named stages of it, e.g. ``["select"]``) on an open session.

    ``progress`` receives one line per committed wave (documents done, rates, ETA, failures, GPU-hours);
    by default it is logged at INFO, the CLI prints it (a bar on a terminal).
    """
    started = time.perf_counter()
    ctx = open_run(spark, settings, run_id)
    ctx.reparse_all = reparse_all
    ctx.progress = progress
    try:
        run_stages(ctx, stages, around)
        return finish_run(ctx, started)
    finally:
        release_run(ctx)


def run(settings: Settings, run_id: str | None = None) -> RunSummary:
    """Open the configured engine and run the whole job."""
    with open_session(settings) as spark:
        return run_pipeline(spark, settings, run_id)
