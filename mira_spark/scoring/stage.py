"""The scoring stage: routed documents -> raw outputs, one row per document, via ``mapInArrow``.

Takes a DataFrame with ``doc_id, source, scorer, text`` and a :class:`ScoringPlan`; gives a DataFrame in
``store.schemas.RAW_OUTPUT`` (its Arrow and Spark schemas come from that one definition): the completion
text, status (ok | failed | deferred), error code, attempts, endpoint, latency, tokens, finish_reason and
what truncation did. Each Spark task runs one
asyncio loop (``serving.runner``) over its partition with a bounded number of requests in flight;
documents that cannot be scored (empty, garbled) get a failed row without a request being sent.

The Spark side is thin: prompts, the output check and the runner are pure modules; this file only
moves Arrow batches between them.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import pyarrow as pa

from mira_spark.config import PoolConfig, SamplingConfig, ScoringConfig
from mira_spark.parsing.parse import ParsedAnswer
from mira_spark.prompting.constrained import OutputLimits, request_fields
from mira_spark.prompting.prompts import Prompt, PromptBuilder, text_problem
from mira_spark.prompting.rubric import Rubric
from mira_spark.serving.plan import task_share
from mira_spark.serving.types import CheckOutput, OutputVerdict, RunStats, ScoreRequest, ScoreResult
from mira_spark.store.journal import JournalSpec, JournalWriter, key_of, request_id, run_journaled
from mira_spark.store.schemas import ANSWER_ARROW_SCHEMA, RAW_OUTPUT_ARROW_SCHEMA, SAMPLE_OUTPUT_ARROW_SCHEMA

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

OUTPUT_CHUNK_ROWS = 2048
SHRINK_FACTOR = 0.7  # after a context-length 400, keep this share of the document's estimated tokens

@dataclass(frozen=True)
class GroupPlan:
    """What a task needs to score one scorer group's documents."""

    name: str
    model: str
    rubric: Rubric
    pool: PoolConfig
    prompt_version: str
    api_key: str | None = field(default=None, repr=False)  # resolved on the driver; never logged


@dataclass(frozen=True)
class ScoringPlan:
    groups: dict[str, GroupPlan]
    sampling: SamplingConfig
    scoring: ScoringConfig
    max_model_len: int
    in_flight_per_task: dict[str, int]  # scorer group -> requests in flight per task
    concurrent_tasks: int = 1  # scoring tasks running at once; each fills 1/concurrent_tasks of each pool
    journal: JournalSpec | None = None  # the wave's request journal (store/journal.py); None: no journal


def make_check_output(rubric: Rubric, builder: PromptBuilder, policy: str,
                      parsed: dict[tuple[int, int], tuple[str, ParsedAnswer]] | None = None) -> CheckOutput:
    """The runner's output hook: retry malformed/truncated answers, re-ask only missing slots.

    Every answer the runner keeps has been through this check, which has to parse it to decide; with
    ``parsed``, the check records ``request.index -> (text, parsed answer)`` so the task turns the final
    answers into score columns without parsing them again.
    """
    from mira_spark.parsing.parse import answer_missing_slots, answer_status, parse_answer

    def check(request: ScoreRequest, text: str, finish_reason: str | None) -> OutputVerdict:
        answer = parse_answer(text, rubric)
        if parsed is not None:
            parsed[(request.index, request.sample)] = (text, answer)
        if finish_reason == "length":
            return OutputVerdict("retry", reason="truncated_output")
        if answer_status(answer) == "failed":
            return OutputVerdict("retry", reason="malformed_output")
        missing = answer_missing_slots(answer, rubric)
        if missing and policy == "reask" and len(request.messages) <= 2:
            return OutputVerdict("followup", reason="missing_slots", followup=builder.repair_prompt(missing))
        return OutputVerdict("accept")

    return check


def _answers_batch(rows: list[dict], answers: list[ParsedAnswer], rubric: Rubric,
                   schema: pa.Schema = RAW_OUTPUT_ARROW_SCHEMA) -> pa.RecordBatch:
    """One group's output rows and their parsed answers -> a batch in ``schema`` (raw output, or with ``sample``)."""
    from mira_spark.parsing.parse import answers_batch, table_columns

    request_side = pa.RecordBatch.from_pylist(rows, schema=ANSWER_ARROW_SCHEMA)
    columns = {name: request_side.column(name) for name in ANSWER_ARROW_SCHEMA.names}
    columns.update(table_columns(answers_batch(answers, rubric), RAW_OUTPUT_ARROW_SCHEMA))
    if "sample" in schema.names:
        columns["sample"] = pa.array([r["sample"] for r in rows], pa.int32())
    return pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema)


def group_sampling(sampling: SamplingConfig, rubric: Rubric, scoring: ScoringConfig) -> SamplingConfig:
    """Sampling of one group's requests: the configured one plus, when ``scoring.constrained_output`` is
    on, the structured-output field built from this group's rubric (``mira_spark.prompting.constrained``)."""
    fields = request_fields(rubric, scoring.constrained_output, scoring.structured_output_api,
                            OutputLimits.from_max_chars(scoring.free_text_max_chars))
    if scoring.expected_scores.enabled:
        fields = {**fields, "logprobs": True, "top_logprobs": scoring.expected_scores.top_logprobs}
    if not fields:
        return sampling
    return sampling.model_copy(update={"extra_body": {**sampling.extra_body, **fields}})


def _refit_truncated(builder: PromptBuilder, group: GroupPlan, plan: ScoringPlan,
                     prompts: list[tuple[Prompt, str, str, dict, dict]]) -> list[tuple[Prompt, str, str, dict, dict]]:
    """Let truncated documents keep more text when the server's exact count shows room.

    Two ``/tokenize`` calls per truncated document (the estimate, then the refit); a refit is used only
    when its exact count fits ``max_model_len`` with the completion budget, so no request is sent that is
    known to overflow. Any counting failure keeps the conservative prompt.
    """
    from mira_spark.serving.tokenize import count_prompt_tokens

    limit = plan.max_model_len - plan.sampling.max_tokens
    todo = [i for i, p in enumerate(prompts) if p[0].truncated]
    if not todo:
        return prompts
    first = count_prompt_tokens(group.pool, group.model, group.api_key, [prompts[i][0].messages for i in todo])
    refits: dict[int, Prompt] = {}
    for i, exact in zip(todo, first, strict=True):
        prompt, source, text, _, _ = prompts[i]
        if exact is not None:
            candidate = builder.refit(source, text, prompt, exact)
            if candidate is not prompt:
                refits[i] = candidate
    second = count_prompt_tokens(group.pool, group.model, group.api_key, [p.messages for p in refits.values()])
    out = list(prompts)
    for (i, candidate), exact in zip(refits.items(), second, strict=True):
        if exact is not None and exact <= limit:
            _, source, text, row, base = prompts[i]
            out[i] = (candidate, source, text, row, base)
    return out


def _expected_scores(result: ScoreResult, rubric: Rubric) -> list[tuple[str, float]] | None:
    """``expected_scores`` of a kept answer (map entries), from its score tokens' logprobs; None without."""
    from mira_spark.parsing.expected import expected_scores

    if result.status != "ok" or result.score_tokens is None:
        return None
    found = expected_scores(result.text, rubric, result.score_tokens)
    return sorted(found.items()) if found else None


def _result_row(base: dict, result: ScoreResult, text: str, cap: int,
                fitted: tuple[bool, int | None, int | None], rubric: Rubric) -> dict:
    """The output row of one scored document (``base``: its request-independent fields)."""
    truncated, kept_chars, est_tokens = fitted
    truncated = truncated or len(text) > cap
    return {
        **base,
        "truncated": truncated or result.shrunk,
        "kept_chars": kept_chars,
        "est_prompt_tokens": est_tokens,
        "status": result.status,
        "error": result.error,
        "attempts": result.attempts,
        "repairs": result.repairs,
        "wasted_requests": result.wasted_requests,
        "wasted_completion_tokens": result.wasted_completion_tokens,
        "endpoint": result.endpoint,
        "latency_s": result.latency_s,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "finish_reason": result.finish_reason,
        "retry_causes": result.retry_causes,
        "raw_text": result.text,
        "shrunk": result.shrunk,
        "expected_scores": _expected_scores(result, rubric),
    }


def _score_group(plan: ScoringPlan, group: GroupPlan, rows: list[dict], stats: RunStats,
                 schema: pa.Schema = RAW_OUTPUT_ARROW_SCHEMA, journal: JournalWriter | None = None) -> pa.RecordBatch:
    """Score one group's rows of a task: one output row per input row, its answer parsed once.

    Rows with a ``sample`` index (the sample waves) are sent with that sample's seed and keep the index.
    With ``journal``, each request is marked sent when a worker takes it and each final row is journaled
    as it completes (with its parsed answer), so a fault re-sends only what was in flight.
    """
    from mira_spark.parsing.parse import merge_followup, parse_answer
    from mira_spark.serving.runner import RowHooks, RunnerOptions, run_requests

    builder = PromptBuilder(group.rubric, group.model, plan.max_model_len, plan.sampling.max_tokens)
    cap = plan.scoring.max_text_chars
    out: list[dict] = []
    answers: list[ParsedAnswer] = []  # aligned with ``out``
    unanswered = parse_answer(None, group.rubric)  # the parse of "no answer": failed, output empty
    checked: dict[tuple[int, int], tuple[str, ParsedAnswer]] = {}
    requests: list[ScoreRequest] = []
    pending: list[tuple[dict, dict]] = []  # (input row, output row) awaiting a result, in request order
    by_index: dict[int, tuple[dict, dict]] = {}  # request index -> (input row, output row)
    docs: dict[int, tuple[str, str]] = {}
    candidates: list[tuple[str, str, dict, dict]] = []  # (source, capped text, input row, output row)
    for row in rows:
        base = {
            "doc_id": row["doc_id"],
            "source": row["source"],
            "scorer": group.name,
            "model": group.model,
            "prompt_version": group.prompt_version,
            "attempts": 0,
            "repairs": 0,
            "wasted_requests": 0,
            "wasted_completion_tokens": 0,
            "truncated": False,
            "shrunk": False,
            "original_chars": len(row["text"]) if isinstance(row["text"], str) else None,
            "sample": row.get("sample") or 0,
        }
        problem = text_problem(row["text"])
        if problem:
            out.append({**base, "status": "failed", "error": problem})
            answers.append(unanswered)
            continue
        candidates.append((row["source"] or "", row["text"][:cap], row, base))

    # What the prompt did to each document (small fields only: prompts themselves are built when a
    # worker takes the request and dropped when it is answered, so a task holds only in-flight prompts).
    fitted: dict[int, tuple[bool, int, int]] = {}
    eager: dict[int, Prompt] = {}
    if group.pool.exact_token_count:  # exact counting needs the prompts up front, in one batch
        refits = _refit_truncated(builder, group, plan,
                                  [(builder.build(s_, t_), s_, t_, r_, b_) for s_, t_, r_, b_ in candidates])
        eager = {i: item[0] for i, item in enumerate(refits)}
    followers = _choice_groups(candidates) if group.pool.supports_n and "sample" in schema.names else {}
    skipped = {i for rest in followers.values() for i in rest}
    for index, (source, text, row, base) in enumerate(candidates):
        docs[index] = (source, text)
        if index in skipped:
            continue
        sample = base["sample"]
        n = 1 + len(followers.get(index, ()))
        key = request_id(key_of(base))
        prompt = eager.get(index)
        if prompt is not None:
            fitted[index] = (prompt.truncated, prompt.kept_chars, prompt.est_prompt_tokens)
            requests.append(ScoreRequest(index=index, key=key, messages=prompt.messages,
                                         est_prompt_tokens=prompt.est_prompt_tokens, sample=sample, n=n))
        else:
            requests.append(ScoreRequest(index=index, key=key, messages=[], sample=sample, n=n))
        pending.append((row, base))
        by_index[index] = (row, base)

    def prepare(request: ScoreRequest) -> ScoreRequest:
        if request.messages:
            return request
        source, text = docs[request.index]
        prompt = builder.build(source, text)
        fitted[request.index] = (prompt.truncated, prompt.kept_chars, prompt.est_prompt_tokens)
        return replace(request, messages=prompt.messages, est_prompt_tokens=prompt.est_prompt_tokens)

    def shrink(request: ScoreRequest) -> ScoreRequest | None:
        source, text = docs[request.index]
        doc_tokens = request.est_prompt_tokens - builder.static_tokens
        smaller = builder.build(source, text, token_budget=int(doc_tokens * SHRINK_FACTOR))
        if smaller.est_prompt_tokens >= request.est_prompt_tokens:
            return None
        return replace(request, messages=smaller.messages, est_prompt_tokens=smaller.est_prompt_tokens)

    def choices(index: int) -> list[tuple[dict, dict]]:
        """(input row, output row) of each sample a request asks for: its own, then its ``n`` followers'."""
        return [by_index[index], *((candidates[j][2], candidates[j][3]) for j in followers.get(index, ()))]

    def sent(index: int) -> None:
        if journal is not None:
            for _, base in choices(index):
                journal.sent(key_of(base))

    def record(result: ScoreResult) -> None:
        if journal is None:
            return
        members = choices(result.index)
        results = [result, *_choice_results(result, len(members) - 1)] if len(members) > 1 else [result]
        for (row, base), one in zip(members, results, strict=True):
            journal.add(_result_row(base, one, row["text"], cap, fitted.get(result.index, (False, None, None)),
                                    group.rubric),
                        _answer_of(one, checked.get((result.index, base["sample"])), unanswered, group.rubric))

    if requests:
        opts = RunnerOptions(
            pool=group.pool,
            sampling=group_sampling(plan.sampling, group.rubric, plan.scoring),
            model=group.model,
            in_flight=plan.in_flight_per_task.get(group.name, 64),
            api_key=group.api_key,
            hooks=RowHooks(check_output=make_check_output(group.rubric, builder, plan.scoring.partial_policy,
                                                          checked),
                           shrink=shrink, prepare=prepare, merge=merge_followup, on_result=record,
                           on_send=sent),
            max_output_repairs=plan.scoring.max_output_repairs,
            share=task_share(plan.concurrent_tasks),
        )
        results: list[ScoreResult] = run_requests(requests, opts, stats)
        rows_of = [(req.index, row, base, result) for req, (row, base), result in zip(requests, pending, results,
                                                                                       strict=True)]
        rows_of += [(index, candidates[j][2], candidates[j][3], extra) for (index, _, _, result) in list(rows_of)
                    for j, extra in zip(followers.get(index, ()), _choice_results(result, len(followers.get(index, ()))),
                                        strict=True)]
        for index, row, base, result in rows_of:
            answers.append(_answer_of(result, checked.get((index, base["sample"])), unanswered, group.rubric))
            out.append(_result_row(base, result, row["text"], cap, fitted.get(index, (False, None, None)), group.rubric))
    return _answers_batch(out, answers, group.rubric, schema)


def _choice_groups(candidates: list[tuple[str, str, dict, dict]]) -> dict[int, list[int]]:
    """Extra samples of one document with consecutive indices, to be asked as the ``n`` choices of one request:
    ``{first candidate: [the candidates of the samples after it]}`` (only groups of two or more)."""
    by_doc: dict[str, list[int]] = {}
    for i, (_, _, row, _) in enumerate(candidates):
        by_doc.setdefault(row["doc_id"], []).append(i)
    groups: dict[int, list[int]] = {}
    for members in by_doc.values():
        members.sort(key=lambda i: candidates[i][3]["sample"])
        head = members[0]
        for prev, i in itertools.pairwise(members):
            if candidates[i][3]["sample"] == candidates[prev][3]["sample"] + 1:
                groups.setdefault(head, []).append(i)
            else:
                head = i
    return groups


def _choice_results(result: ScoreResult, n: int) -> list[ScoreResult]:
    """The results of a request's other ``n`` samples; when the request never got to its choices (deferred
    before it was sent, an internal error), each sample gets the request's status and error."""
    if len(result.more) == n:
        return result.more
    return [ScoreResult(index=result.index, status=result.status, error=result.error) for _ in range(n)]


def _answer_of(result: ScoreResult, checked: tuple[str, ParsedAnswer] | None, unanswered: ParsedAnswer,
               rubric: Rubric) -> ParsedAnswer:
    """The parsed answer of a final result: the check's own parse of exactly this text (the normal case)."""
    from mira_spark.parsing.parse import parse_answer

    if result.status != "ok":
        return unanswered  # failed and deferred rows carry no scores (their text, if any, was rejected)
    if checked is not None and checked[0] is result.text:
        return checked[1]
    return parse_answer(result.text, rubric)  # only without a check hook: never on the scoring path


def score_partition(batches: Iterator[pa.RecordBatch], plan: ScoringPlan,
                    schema: pa.Schema = RAW_OUTPUT_ARROW_SCHEMA) -> Iterator[pa.RecordBatch]:
    """Body of the mapInArrow function: every input row yields exactly one output row (in ``schema``)."""
    rows: list[dict] = []
    seen: set[tuple[str, str, int]] = set()
    for batch in batches:
        for row in batch.to_pylist():
            # Exact copies of a document (same doc_id, source and text) reach the same task (rows are
            # hash-partitioned by doc_id); routing already reported the extra copies as duplicates.
            key = (row["doc_id"], row["scorer"], row.get("sample") or 0)
            if key not in seen:
                seen.add(key)
                rows.append(row)
    if not rows:
        return
    # Longest documents first: they finish last, so starting them first shortens the task's tail.
    rows.sort(key=lambda r: -(len(r["text"]) if isinstance(r["text"], str) else 0))
    if plan.journal is None:
        out, stats = _score_rows(plan, rows, schema)
        reused = 0
    else:
        out, stats, reused = _score_journaled(plan, plan.journal, rows, schema)
    if out.num_rows != len(rows):  # the exactly-once invariant of the stage
        raise RuntimeError(f"scoring produced {out.num_rows} rows for {len(rows)} inputs")
    log.info("scoring task: %d rows (%d from the journal), %d requests, %d retries, %d repairs", len(rows), reused,
             sum(s.requests_sent for s in stats.values()), sum(s.retries for s in stats.values()),
             sum(s.repairs for s in stats.values()))
    yield from out.to_batches(max_chunksize=OUTPUT_CHUNK_ROWS)


def _score_rows(plan: ScoringPlan, rows: list[dict], schema: pa.Schema = RAW_OUTPUT_ARROW_SCHEMA,
                journal: JournalWriter | None = None) -> tuple[pa.Table, dict[str, RunStats]]:
    by_group: dict[str, list[dict]] = {}
    for row in rows:
        by_group.setdefault(row["scorer"], []).append(row)
    # Each scorer group has its own endpoint pool: score the groups side by side (one event loop per
    # thread) so one group's tail never leaves another group's GPUs idle.
    stats = {name: RunStats() for name in by_group}
    with ThreadPoolExecutor(max_workers=max(1, len(by_group)), thread_name_prefix="mira-group") as pool:
        futures = [pool.submit(_score_group, plan, plan.groups[name], group_rows, stats[name], schema, journal)
                   for name, group_rows in sorted(by_group.items())]
        out = pa.Table.from_batches([future.result() for future in futures], schema=schema)
    return out, stats


def _score_journaled(plan: ScoringPlan, spec: JournalSpec, rows: list[dict],
                     schema: pa.Schema = RAW_OUTPUT_ARROW_SCHEMA) -> tuple[pa.Table, dict[str, RunStats], int]:
    """Score a partition through the journal: journaled rows are reused, the rest sent and journaled."""
    keys = [(r["doc_id"], r["scorer"], plan.groups[r["scorer"]].prompt_version, int(r.get("sample") or 0))
            for r in rows]

    def encode(out_rows: list[dict], answers: list) -> pa.Table:
        by_group: dict[str, tuple[list[dict], list]] = {}
        for row, answer in zip(out_rows, answers, strict=True):
            group_rows, group_answers = by_group.setdefault(row["scorer"], ([], []))
            group_rows.append(row)
            group_answers.append(answer)
        return pa.Table.from_batches([_answers_batch(r, a, plan.groups[g].rubric, schema)
                                      for g, (r, a) in by_group.items()], schema=schema)

    def score(positions: list[int], writer: JournalWriter) -> tuple[pa.Table, dict[str, RunStats]]:
        return _score_rows(plan, [rows[i] for i in positions], schema, writer)

    outcome = run_journaled(spec, keys, score, encode=encode)
    if outcome.scored is None:
        return outcome.reused, {}, outcome.reused.num_rows
    scored, stats = outcome.scored
    return pa.concat_tables([outcome.reused, scored]), stats, outcome.reused.num_rows


def score_documents(routed: DataFrame, plan: ScoringPlan, tasks: int) -> DataFrame:
    """Spark stage: ``doc_id, source, scorer, text`` -> raw outputs (``RAW_OUTPUT_STREAM_SCHEMA``).

    With a ``sample`` column (extra samples, ``scoring.samples``), each row is one sample's request and the
    output carries the index (``SAMPLE_OUTPUT_STREAM_SCHEMA``).
    """
    from pyspark.sql import functions as F

    from mira_spark.store.schemas import RAW_OUTPUT_STREAM_SCHEMA, SAMPLE_OUTPUT_STREAM_SCHEMA

    sampled = "sample" in routed.columns
    schema = SAMPLE_OUTPUT_ARROW_SCHEMA if sampled else RAW_OUTPUT_ARROW_SCHEMA

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return score_partition(batches, plan, schema)

    # Hash partitioning by doc_id spreads long documents evenly and is deterministic on task retry.
    columns = ["doc_id", "source", "scorer", "text", *(["sample"] if sampled else [])]
    spread = routed.select(*columns).repartition(tasks, F.xxhash64("doc_id"))
    return spread.mapInArrow(fn, SAMPLE_OUTPUT_STREAM_SCHEMA if sampled else RAW_OUTPUT_STREAM_SCHEMA)
