"""Row policy: what one document's request goes through, from its prompt to one final result.

Takes a :class:`~mira_spark.serving.transport.Transport` and the scoring stage's hooks
(:class:`RowHooks`: build the prompt lazily, shrink it after a context-length 400, check an answer,
merge a follow-up); gives exactly one :class:`~mira_spark.serving.types.ScoreResult` per request.

The state machine: send; on a context overflow shrink the prompt once and send again; check the
answer: accept it, re-ask from scratch (malformed or truncated), or ask a follow-up for the missing
slots only and merge it, up to ``max_output_repairs`` times. An answer still missing slots after the
last follow-up is kept (parsed as partial): failing it would throw away paid-for scores. A bug in a
hook costs one row (``internal_error``), never the partition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from mira_spark.serving.client import ChatResponse
from mira_spark.serving.secrets import install_redaction
from mira_spark.serving.transport import SendFailure, Transport, detail
from mira_spark.serving.types import (
    ERR_CONTEXT_OVERFLOW,
    ERR_OUTPUT_INVALID,
    SAMPLE_SEED_STRIDE,
    CheckOutput,
    MergeOutputs,
    OutputVerdict,
    PrepareRequest,
    RunStats,
    ScoreRequest,
    ScoreResult,
    ShrinkRequest,
)

logger = logging.getLogger(__name__)
install_redaction(logger)


@dataclass(frozen=True)
class RowHooks:
    """The scoring stage's pure functions (see :mod:`mira_spark.serving.types`); all optional."""

    check_output: CheckOutput | None = None
    shrink: ShrinkRequest | None = None
    prepare: PrepareRequest | None = None
    merge: MergeOutputs | None = None
    on_result: Callable[[ScoreResult], None] | None = None  # each final result as it completes (the journal)
    on_send: Callable[[int], None] | None = None  # a request's index, just before its first POST (the journal)


def _seed(request: ScoreRequest, res: ScoreResult) -> int:
    """Seed offset of a send: the sample's block, plus one per re-ask (sample 0, no re-ask: 0, as before)."""
    return request.sample * SAMPLE_SEED_STRIDE + res.repairs


class RowPolicy:
    """Scores one request at a time through ``transport``; the repair/shrink state machine."""

    def __init__(self, *, transport: Transport, hooks: RowHooks, max_output_repairs: int, stats: RunStats,
                 clock: Callable[[], float]) -> None:
        self.transport = transport
        self.hooks = hooks
        self.max_output_repairs = max_output_repairs
        self.stats = stats
        self.clock = clock

    async def score(self, request: ScoreRequest) -> ScoreResult:
        res = ScoreResult(index=request.index, status="failed")
        try:
            if self.hooks.prepare is not None:  # build the prompt only when a worker takes the request
                request = self.hooks.prepare(request)
            if request.n > 1:
                return await self._score_choices(request, res)
            return await self._score(request, res)
        except Exception as exc:  # a bug in a hook must cost one row, not the partition
            logger.exception("request %s: unexpected error", request.key)
            res.status, res.error = "failed", detail("internal_error", f"{type(exc).__name__}: {exc}")
            return res
        finally:
            first_send = self.transport.first_send.pop(res.index, None)
            if first_send is not None:
                res.latency_s = self.clock() - first_send

    @staticmethod
    def _bill(res: ScoreResult, response: ChatResponse) -> int:
        """Add the answer's tokens to the row; returns its completion tokens (what wasting it costs)."""
        if response.prompt_tokens is not None:
            res.prompt_tokens = (res.prompt_tokens or 0) + response.prompt_tokens
        if response.completion_tokens is not None:
            res.completion_tokens = (res.completion_tokens or 0) + response.completion_tokens
        res.finish_reason = response.finish_reason
        return response.completion_tokens or 0

    @staticmethod
    def _waste(res: ScoreResult, completion_tokens: int) -> None:
        res.wasted_requests += 1
        res.wasted_completion_tokens += completion_tokens

    def _check(self, request: ScoreRequest, text: str, finish_reason: str | None) -> OutputVerdict:
        if self.hooks.check_output is None:
            return OutputVerdict("accept")
        return self.hooks.check_output(request, text, finish_reason)

    @staticmethod
    def _end(res: ScoreResult, failure: SendFailure) -> ScoreResult:
        res.status = "deferred" if failure.deferred else "failed"
        res.error = failure.error
        return res

    async def _first_answer(self, request: ScoreRequest, res: ScoreResult) -> tuple[ScoreRequest, ChatResponse | SendFailure]:
        """Send; after a context overflow, shrink the prompt once and send again."""
        current = request
        while True:
            out = await self.transport.send(current.messages, request.key, res, seed_offset=_seed(request, res))
            if not (isinstance(out, SendFailure) and out.overflow):
                return current, out
            if res.shrunk or self.hooks.shrink is None:
                return current, out
            smaller = self.hooks.shrink(current)
            if smaller is None:
                return current, SendFailure(detail(ERR_CONTEXT_OVERFLOW, "prompt cannot shrink further"))
            current, res.shrunk = smaller, True

    async def _score_choices(self, request: ScoreRequest, res: ScoreResult) -> ScoreResult:
        """Samples ``sample .. sample + n - 1`` from one request with ``n`` choices (the prompt prefilled once).

        Each choice is checked on its own; a rejected choice, a choice the server did not return (a server
        that ignores ``n``) and every sample after a context overflow go the single-sample path as a re-ask
        with their own seed. The request's tokens are billed on the first sample's row; its attempts too, so
        the rows' attempts still sum to the requests sent. Any other failure fails every sample of it.
        """
        singles = [replace(request, n=1, sample=request.sample + j) for j in range(request.n)]
        results = [res] + [ScoreResult(index=request.index, status="failed") for _ in range(1, request.n)]
        out = await self.transport.send(request.messages, request.key, res, seed_offset=_seed(request, res),
                                        n=request.n)
        if isinstance(out, SendFailure) and not out.overflow:
            for r in results:
                self._end(r, out)
        else:
            answers: list[tuple[str, str | None] | None] = [None] * request.n
            if not isinstance(out, SendFailure):
                self._bill(res, out)
                for j, choice in enumerate([(out.text, out.finish_reason), *out.more][:request.n]):
                    answers[j] = choice
            logprobs = out.logprobs if not isinstance(out, SendFailure) else ()
            for j, (single, r) in enumerate(zip(singles, results, strict=True)):
                answer = answers[j]
                if answer is not None and self._check(single, answer[0], answer[1]).action == "accept":
                    r.status, r.text, r.error, r.finish_reason = "ok", answer[0], None, answer[1]
                    r.endpoint = res.endpoint
                    r.score_tokens = logprobs[j] if j < len(logprobs) else None
                    continue
                if answer is not None:  # rejected: ask this sample again from scratch, its own seed
                    r.repairs += 1
                    self.stats.repairs += 1
                await self._score(single, r)
        res.more = results[1:]
        return res

    async def _score(self, request: ScoreRequest, res: ScoreResult) -> ScoreResult:
        current, out = await self._first_answer(request, res)
        if isinstance(out, SendFailure):
            return self._end(res, out)
        billed = self._bill(res, out)
        text, finish = out.text, out.finish_reason
        tokens = out.logprobs[0] if out.logprobs else None  # None once the text is a merge of two answers

        while True:
            verdict = self._check(current, text, finish)
            if verdict.action == "accept":
                res.status, res.text, res.error, res.score_tokens = "ok", text, None, tokens
                return res
            if res.repairs >= self.max_output_repairs:
                if verdict.action == "followup":
                    # Still missing slots after the last follow-up: the scores it has are usable
                    # (parsed as partial); failing the row would throw away paid-for answers.
                    res.status, res.text, res.error, res.score_tokens = "ok", text, None, tokens
                    return res
                res.text = text
                self._waste(res, billed)  # billed, but the row fails: nothing downstream uses it
                return self._end(res, SendFailure(detail(ERR_OUTPUT_INVALID, verdict.reason)))
            res.repairs += 1
            self.stats.repairs += 1
            if verdict.action == "followup" and verdict.followup:
                messages = [
                    *current.messages,
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": verdict.followup},
                ]
                out = await self.transport.send(messages, request.key, res,
                                                seed_offset=request.sample * SAMPLE_SEED_STRIDE)
                if isinstance(out, SendFailure) and not out.overflow:
                    res.text = text
                    return self._end(res, out)
                if not isinstance(out, SendFailure):
                    billed = self._bill(res, out)
                    merge = self.hooks.merge
                    text = merge(text, out.text) if merge else text + "\n" + out.text
                    finish, tokens = out.finish_reason, None
                    continue
                # The follow-up turn no longer fits the context: ask again from scratch instead.
            self._waste(res, billed)  # the answer being replaced by a fresh one
            out = await self.transport.send(current.messages, request.key, res, seed_offset=_seed(request, res))
            if isinstance(out, SendFailure):
                res.text = text
                return self._end(res, out)
            billed = self._bill(res, out)
            text, finish = out.text, out.finish_reason
            tokens = out.logprobs[0] if out.logprobs else None
