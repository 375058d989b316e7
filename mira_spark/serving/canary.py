"""Canary drift guard: score each group's calibration references on every endpoint before the corpus.

Takes the run's :class:`~mira_spark.scoring.stage.ScoringPlan` and ``scoring.canary``; gives, before the
first wave and every ``every_waves`` waves (:meth:`CanaryGuard.before_wave`), the plan with the endpoints
that drifted taken out of their pools, and the rows of the ``canary`` table
(``store.schemas.CANARY``: run_id, wave, endpoint, scorer, ref_id, slot, reference_score, score,
deviation, quarantined, reason, checked_at). When every endpoint of a pool fails, it raises
:class:`~mira_spark.errors.CanaryDriftError` (one line: endpoints, deviations, what to do) after the rows
are written, so nothing more is billed.

The references are sent exactly as corpus documents are: prompts from
:class:`~mira_spark.prompting.prompts.PromptBuilder`, the group's sampling (constrained output
included), the ordinary runner (:func:`~mira_spark.serving.runner.run_requests`) on a one-endpoint copy of
the pool, the same output check and repair; answers are parsed with
:func:`~mira_spark.parsing.parse.parse_output`. Every check scores the *configured* pool, quarantined
endpoints included, so a replaced or restarted node rejoins once it passes. The verdict is pure
(:mod:`mira_spark.serving.canary_rules`). Runs on the driver; imports no Spark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from mira_spark.config import CanaryConfig, EndpointConfig
from mira_spark.errors import CanaryDriftError, PoolUnavailableError
from mira_spark.parsing.parse import merge_followup, parse_output
from mira_spark.prompting.prompts import PromptBuilder
from mira_spark.prompting.rubric import CalibrationReference
from mira_spark.scoring.stage import GroupPlan, ScoringPlan, group_sampling, make_check_output
from mira_spark.serving.canary_rules import (
    CanaryCell,
    EndpointVerdict,
    canary_rows,
    check_due,
    judge_endpoint,
    kept_endpoints,
    pool_failed_message,
    reference_cells,
    select_references,
)
from mira_spark.serving.plan import plan_in_flight
from mira_spark.serving.runner import RowHooks, RunnerOptions, run_requests
from mira_spark.serving.types import RunStats, ScoreRequest

log = logging.getLogger(__name__)

CANARY_SOURCE = "calibration"  # the source line of a canary prompt
MAX_CHECK_THREADS = 16  # endpoints checked at once (each one event loop in its own thread)

RowWriter = Callable[[list[tuple[Any, ...]]], None]


def canary_key(run_id: str, wave: int, ref_id: str) -> str:
    """X-Request-Id of a canary request: server logs tell canaries from corpus rows (``doc|scorer|version``)."""
    return f"canary|{run_id}|{wave}|{ref_id}"


def reference_requests(builder: PromptBuilder, references: Sequence[CalibrationReference], run_id: str,
                       wave: int) -> list[ScoreRequest]:
    """One request per reference: its excerpt as the document, prompted like any corpus document."""
    out = []
    for index, ref in enumerate(references):
        prompt = builder.build(CANARY_SOURCE, ref.excerpt)
        out.append(ScoreRequest(index=index, key=canary_key(run_id, wave, ref.ref_id), messages=prompt.messages,
                                est_prompt_tokens=prompt.est_prompt_tokens))
    return out


@dataclass(frozen=True)
class EndpointAnswers:
    """What one endpoint answered: parsed scores per ref_id, or why it could not be asked."""

    endpoint: str
    scores: dict[str, dict[str, float | None]]
    requests_sent: int
    unreachable: str | None = None


def score_references(group: GroupPlan, plan: ScoringPlan, endpoint: EndpointConfig,
                     references: Sequence[CalibrationReference], run_id: str, wave: int,
                     health_check: bool = True) -> EndpointAnswers:
    """Send the references to one endpoint (a one-endpoint copy of the group's pool) and parse the answers.

    ``health_check``: GET /health first and report the endpoint unreachable when it fails (off for pools
    configured with ``startup_check: false``, e.g. llama.cpp, which has no /health).
    """
    builder = PromptBuilder(group.rubric, group.model, plan.max_model_len, plan.sampling.max_tokens)
    requests = reference_requests(builder, references, run_id, wave)
    pool = group.pool.model_copy(update={"endpoints": (endpoint,), "startup_check": health_check,
                                         "in_flight_target": None})
    opts = RunnerOptions(
        pool=pool, sampling=group_sampling(plan.sampling, group.rubric, plan.scoring), model=group.model,
        in_flight=max(1, len(requests)), api_key=group.api_key,
        hooks=RowHooks(check_output=make_check_output(group.rubric, builder, plan.scoring.partial_policy),
                       merge=merge_followup),
        max_output_repairs=plan.scoring.max_output_repairs,
    )
    stats = RunStats()
    try:
        results = run_requests(requests, opts, stats)
    except PoolUnavailableError as exc:
        return EndpointAnswers(endpoint.url, {}, stats.requests_sent, unreachable=str(exc).split(". ")[0])
    scores = {ref.ref_id: dict(parse_output(res.text, group.rubric).scores)
              for ref, res in zip(references, results, strict=True) if res.status == "ok"}
    return EndpointAnswers(endpoint.url, scores, stats.requests_sent)


@dataclass
class CanaryCheck:
    """One check of every group: the plan to score with, the table rows, the verdicts, what it cost."""

    plan: ScoringPlan
    rows: list[tuple[Any, ...]]
    verdicts: dict[str, list[EndpointVerdict]]  # group -> one verdict per configured endpoint
    failed: list[str]  # one message per group whose every endpoint failed
    requests_sent: int


class CanaryGuard:
    """The driver's drift guard over one run: remembers each group's configured endpoints and references.

    ``summary`` (the run summary's ``canary`` dict) is filled with ``checks``, ``requests``,
    ``quarantined`` (one entry per endpoint and check) and ``skipped`` (groups without references).
    """

    def __init__(self, plan: ScoringPlan, cfg: CanaryConfig, run_id: str, n_waves: int,
                 summary: dict[str, Any], health_checked: Collection[str] | None = None) -> None:
        self.cfg = cfg
        # Groups whose endpoints answer /health (pools.<p>.startup_check); default: every group.
        self.health_checked = set(plan.groups if health_checked is None else health_checked)
        self.run_id = run_id
        self.n_waves = n_waves
        self.endpoints = {name: g.pool.endpoints for name, g in plan.groups.items()}
        self.references = {name: select_references(g.rubric.calibration, cfg.references)
                           for name, g in plan.groups.items()}
        self.summary = summary
        summary.update(checks=0, requests=0, quarantined=[],
                       skipped=sorted(name for name, refs in self.references.items() if not refs))
        for name in summary["skipped"]:
            log.warning("canary: group %s has no calibration references (groups.%s.calibration); its endpoints "
                        "are not checked", name, name)

    def check(self, plan: ScoringPlan, wave: int) -> CanaryCheck:
        """Score the references on every configured endpoint; the plan keeps only those that passed."""
        jobs = [(name, ep) for name, refs in self.references.items() if refs for ep in self.endpoints[name]]
        with ThreadPoolExecutor(max_workers=max(1, min(MAX_CHECK_THREADS, len(jobs))),
                                thread_name_prefix="mira-canary") as pool:
            answers = list(pool.map(
                lambda job: score_references(plan.groups[job[0]], plan, job[1], self.references[job[0]],
                                             self.run_id, wave, job[0] in self.health_checked), jobs))
        by_group: dict[str, list[EndpointAnswers]] = {}
        for (name, _), answer in zip(jobs, answers, strict=True):
            by_group.setdefault(name, []).append(answer)
        groups, in_flight = dict(plan.groups), dict(plan.in_flight_per_task)
        rows: list[tuple[Any, ...]] = []
        verdicts: dict[str, list[EndpointVerdict]] = {}
        failed: list[str] = []
        for name, group_answers in by_group.items():
            group = plan.groups[name]
            cells: list[CanaryCell] = []
            judged: dict[str, EndpointVerdict] = {}
            for a in group_answers:
                mine = reference_cells(a.endpoint, self.references[name], a.scores, group.rubric.slots)
                cells += mine
                judged[a.endpoint] = judge_endpoint(a.endpoint, mine, self.cfg.max_deviation, a.unreachable)
            verdicts[name] = list(judged.values())
            rows += canary_rows(self.run_id, wave, name, cells, judged)
            kept = set(kept_endpoints(verdicts[name]))
            if not kept:
                failed.append(pool_failed_message(name, group.model, verdicts[name], self.cfg.max_deviation,
                                                  wave, self.n_waves))
                continue
            pool = group.pool.model_copy(update={"endpoints": tuple(e for e in self.endpoints[name] if e.url in kept)})
            groups[name] = replace(group, pool=pool)
            in_flight[name] = plan_in_flight(pool, plan.concurrent_tasks)
        return CanaryCheck(replace(plan, groups=groups, in_flight_per_task=in_flight), rows, verdicts, failed,
                           sum(a.requests_sent for a in answers))

    def before_wave(self, wave: int, plan: ScoringPlan, write: RowWriter) -> ScoringPlan:
        """Check when due (:func:`~mira_spark.serving.canary_rules.check_due`): write the rows, log and count
        the verdicts, return the plan to score ``wave`` with; raise when a whole pool failed."""
        if not check_due(wave, self.cfg.every_waves) or not any(self.references.values()):
            return plan
        result = self.check(plan, wave)
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        write([(*row, now) for row in result.rows])
        self.summary["checks"] += 1
        self.summary["requests"] += result.requests_sent
        for name, group_verdicts in result.verdicts.items():
            for v in group_verdicts:
                if v.quarantined:
                    log.warning("canary before wave %d: group %s: endpoint quarantined (%s): %s", wave + 1, name,
                                v.reason, v.describe())
                    self.summary["quarantined"].append(
                        {"wave": wave, "group": name, "endpoint": v.endpoint, "reason": v.reason,
                         "mean_abs_deviation": v.mean_abs_deviation})
                else:
                    log.info("canary before wave %d: group %s: %s", wave + 1, name, v.describe())
        if result.failed:
            raise CanaryDriftError(" | ".join(result.failed))
        return result.plan
