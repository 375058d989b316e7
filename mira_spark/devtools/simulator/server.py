"""aiohttp app: an OpenAI-compatible *simulated* MIRA scorer endpoint (a stand-in for the 35B model).

Takes chat requests shaped like :class:`mira_spark.prompting.prompts.PromptBuilder` builds them; gives answers in
the scorer's exact format from :func:`.judge.judge_document`, after a latency from the capacity model
(:class:`.capacity.SlotScheduler`), with faults from the seeded profile (:mod:`.faults`).

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus
text with vLLM's metric names plus ``mira_sim_*``), ``GET /sim/stats`` and ``POST /sim/reset``.

Behaviour that mirrors vLLM: a prompt whose tokens plus ``max_tokens`` exceed ``max_model_len`` gets
vLLM's 400 body; an answer longer than ``max_tokens`` is cut with ``finish_reason="length"``; ``n`` gives
n choices (independent samples at temperature > 0 when ``sampling_noise`` is on, see :mod:`.sampling`);
``stream`` gives server-sent chunks then ``data: [DONE]``, with a usage chunk on
``stream_options.include_usage``; ``logprobs`` / ``top_logprobs`` (at most :data:`.logprobs.MAX_LOGPROBS`, vLLM's
default cap) give every choice OpenAI's ``logprobs.content``, with each score's tokens carrying the
token-level distribution it was drawn from (:mod:`.logprobs`; streamed chunks carry the entries of their own
tokens; ``tests/test_sim_logprobs.py``). ``tests/test_openai_conformance.py`` checks the rest with the
official ``openai`` client. The
simulator's token count is lower than :func:`mira_spark.prompting.tokens.estimate_tokens` for the same text, so a
prompt the client budgeted never overflows. A document that is one of the calibration references in the
system prompt is answered with the references' scores (up to rounding, :func:`.judge.judge_reference`), as
a well-served checkpoint does; ``score_shift`` moves every score (a mis-served one). A follow-up that starts with the repair text of
:meth:`PromptBuilder.repair_prompt` is answered with only the requested slot lines.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import random
import time
from collections import Counter, OrderedDict
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from mira_spark.devtools.simulator.capacity import (
    SIM_MESSAGE_OVERHEAD_TOKENS,
    CapacityModel,
    RequestShape,
    ServiceDistribution,
    ServiceKind,
    SlotScheduler,
    sim_tokens,
)
from mira_spark.devtools.simulator.faults import FAULT_KINDS, FaultInjector, FaultProfile, FaultRule
from mira_spark.devtools.simulator.judge import (
    Judgement,
    judge_document,
    judge_reference,
    parse_template_dimensions,
    reference_scores,
    render_completion,
    shift_scores,
)
from mira_spark.devtools.simulator.logprobs import MAX_LOGPROBS, choice_logprobs
from mira_spark.devtools.simulator.sampling import document_digest, sample_judgement_with_dists
from mira_spark.prompting.prompts import DOC_BEGIN, extract_document

log = logging.getLogger("mira_spark.devtools.simulator")

REPAIR_PREFIX = "Your answer above is missing these lines"
DEFAULT_MODEL = "whw06/MIRA-Text-Group1"
TOKEN_CACHE_ENTRIES = 64  # static prompt parts (system message, template head) counted once
DEFAULT_TEMPERATURE = 1.0  # vLLM's (and OpenAI's) when a request sends none
STATE_KEY: web.AppKey[SimState] = web.AppKey("sim_state")


class SimConfig(BaseModel):
    """Every knob of one simulated endpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="sim", description="Endpoint label in logs, stats and metrics.")
    model: str = Field(default=DEFAULT_MODEL, description="Model id listed by /v1/models (any name is accepted).")
    max_model_len: int = Field(default=65536, ge=1, description="Context length (prompt + max_tokens).")
    slots: int = Field(default=64, ge=1, description="Concurrent sequences (vLLM max_num_seqs).")
    kv_tokens: int = Field(default=2_097_152, ge=1, description="KV-cache budget over running sequences.")
    speed: float = Field(default=1.0, gt=0, description="Relative speed (2 = twice as fast).")
    time_scale: float = Field(default=150.0, gt=0, description="Wall seconds = model seconds / time_scale.")
    seed: int = Field(default=0, description="Seed of this endpoint's fault decisions.")
    sampling_noise: bool = Field(
        default=False,
        description="Perturb scores per choice at temperature > 0 (seeded by the request's seed, the document and "
        "the choice index); off: every answer is the deterministic judgement, whatever the temperature.")
    sampling_prefix_share: float = Field(
        default=0.0, ge=0, le=1,
        description="Share of the sampling noise variance that comes from the tokens sampled before a score "
        "(rationales, earlier scores) and so is not visible in the score token's logprobs; 0: all of it is "
        "token-level noise, and an expected score from the logprobs removes it all.")
    score_shift: float = Field(
        default=0.0, ge=-10, le=10,
        description="Points added to every slot score (kept within 0-10): a mis-served checkpoint, for the canary "
        "drift guard.")
    score_shift_after: int = Field(
        default=0, ge=0, description="Chat requests answered unshifted before score_shift applies (a node that "
        "starts drifting mid-run).")
    error_rate: float = Field(default=0.0, ge=0, le=1, description="Shorthand: probability of an HTTP 503.")
    malformed_rate: float = Field(default=0.0, ge=0, le=1, description="Shorthand: probability of a garbage answer.")
    faults: FaultProfile = Field(default_factory=FaultProfile, description="Fault rules (checked after shorthands).")
    capacity: CapacityModel | None = Field(
        default=None, description="Full capacity model; when None it is built from slots/kv_tokens/speed/time_scale."
    )
    service: ServiceKind = Field(
        default="tokens", description="tokens: service time from tokens and batch size; fixed: a drawn wall time.")
    service_s: float = Field(default=2.0, gt=0, description="fixed: mean wall seconds per request at speed 1.")
    service_distribution: ServiceDistribution = Field(
        default="constant", description="fixed: constant, exponential or lognormal around service_s.")
    fifo: bool = Field(default=False, description="Strict FIFO: plain slots behind a FIFO queue, no KV budget.")

    def capacity_model(self) -> CapacityModel:
        if self.capacity is not None:
            return self.capacity
        return CapacityModel(slots=self.slots, kv_tokens=self.kv_tokens, speed=self.speed,
                             time_scale=self.time_scale, service=self.service, fixed_service_s=self.service_s,
                             service_distribution=self.service_distribution, service_seed=self.seed,
                             fifo=self.fifo)

    def fault_profile(self) -> FaultProfile:
        return FaultProfile.shorthand(self.error_rate, self.malformed_rate).plus(self.faults)


class SimState:
    """Counters, scheduler and fault injector of one running endpoint."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.scheduler = SlotScheduler(config.capacity_model())
        self.profile = config.fault_profile()
        self.started = time.monotonic()
        self._token_cache: OrderedDict[str, int] = OrderedDict()
        self._ids = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        """Zero the counters and reseed the faults (so a repeated benchmark sees the same faults)."""
        self.injector = FaultInjector(self.profile, self.config.seed)
        self.sampling_rng = random.Random(self.config.seed)  # noise seeds of requests that send no seed
        self.requests = 0
        self.requests_by_id: Counter[str] = Counter()
        self.repairs_by_id: Counter[str] = Counter()
        self.overflows = 0
        self.faults: Counter[str] = Counter()
        self.success: Counter[str] = Counter()  # by finish_reason
        self.prompt_tokens = 0
        self.tokenize_requests = 0
        self.cached_prompt_tokens = 0
        self.generation_tokens = 0
        self.scheduler.reset()

    def next_id(self) -> str:
        return f"chatcmpl-sim-{next(self._ids)}"

    def static_tokens(self, text: str) -> int:
        """Token count of a text that repeats across requests (cached by content)."""
        hit = self._token_cache.get(text)
        if hit is not None:
            self._token_cache.move_to_end(text)
            return hit
        n = sim_tokens(text)
        self._token_cache[text] = n
        if len(self._token_cache) > TOKEN_CACHE_ENTRIES:
            self._token_cache.popitem(last=False)
        return n

    def stats(self, changes: bool = False) -> dict[str, Any]:
        """Counters for ``/sim/stats``; ``changes`` adds the scheduler's change-point log (monotonic clock)."""
        sched = self.scheduler
        out = {
            "simulator": True,
            "name": self.config.name,
            "model": self.config.model,
            "slots": sched.model.slots,
            "speed": sched.model.speed,
            "time_scale": sched.model.time_scale,
            "requests": self.requests,
            "tokenize_requests": self.tokenize_requests,
            "requests_by_id": dict(self.requests_by_id),
            "repairs_by_id": dict(self.repairs_by_id),
            "overflows": self.overflows,
            "faults": {kind: self.faults.get(kind, 0) for kind in FAULT_KINDS},
            "success": dict(self.success),
            "running": sched.running,
            "waiting": sched.waiting,
            "admitted": sched.admitted,
            "busy_slot_seconds": sched.busy_slot_seconds,
            "first_start": sched.first_start,
            "last_start": sched.last_start,
            "steady_window_s": sched.steady_window_s,
            "steady_busy_slot_seconds": sched.steady_busy_slot_seconds,
            "steady_load_seconds": sched.steady_load_seconds,
            "first_start_clock": sched.first_start_clock,
            "last_start_clock": sched.last_start_clock,
            "service": sched.model.service,
            "fifo": sched.model.fifo,
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "mix": sched.mix.as_dict(),
            "uptime_s": time.monotonic() - self.started,
        }
        if changes:
            out["changes"] = sched.change_log()
        return out


def _error(message: str, status: int, err_type: str, headers: dict[str, str] | None = None) -> web.Response:
    """vLLM's error body."""
    body = {"object": "error", "message": message, "type": err_type, "param": None, "code": status}
    return web.json_response(body, status=status, headers=headers)


def overflow_message(max_model_len: int, prompt_tokens: int, max_tokens: int) -> str:
    """vLLM's context-length message, verbatim shape."""
    return (
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
        "completion). Please reduce the length of the messages or completion."
    )


def _content(message: dict[str, Any]) -> str:
    content = message.get("content", "")
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def document_of(user_content: str) -> tuple[str, str]:
    """``(source, document)`` of a user message, using the *last* document marker.

    The prompt's own instructions mention the markers before the wrapped document, and a document
    cannot contain them (they are defused), so the wrapper's marker is the last one; what
    :func:`extract_document` is given starts at the wrapper's ``Source:`` line.
    """
    begin = user_content.rfind(DOC_BEGIN)
    if begin < 0:
        return "", ""
    line_start = user_content.rfind("\n", 0, max(begin - 1, 0)) + 1
    return extract_document(user_content[line_start:])


def _cut_to_tokens(text: str, max_tokens: int) -> str:
    """Longest prefix of ``text`` within ``max_tokens`` simulator tokens (bisection)."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sim_tokens(text[:mid]) + 1 <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


async def _apply_request_fault(rule: FaultRule, request: web.Request, state: SimState) -> web.StreamResponse:
    """Faults that replace the whole response (error status, 429, hang, reset)."""
    if rule.kind == "rate_limit":
        wait = f"{rule.retry_after_s:g}"
        return _error("simulator: rate limit exceeded", 429, "RateLimitError",
                      headers={"Retry-After": wait, "retry-after-ms": str(int(rule.retry_after_s * 1000))})
    if rule.kind == "http_error":
        return _error(f"simulator: injected server error {rule.http_status}", rule.http_status,
                      "InternalServerError")
    if rule.kind == "hang":
        await asyncio.sleep(state.profile.hang_s)
    # reset (and a hang that outlived its sleep): drop the connection without any response bytes.
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError


async def _read_messages(request: web.Request) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """The JSON body and its ``messages`` list (None when the body is not of that shape)."""
    try:
        body = await request.json()
        return body, list(body["messages"])
    except (ValueError, KeyError, TypeError):
        return {}, None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    cfg = state.config
    body, messages = await _read_messages(request)
    if messages is None:
        return _error("simulator: request body must be JSON with a 'messages' list", 400, "BadRequestError")
    sampling = _sampling_of(body)
    if isinstance(sampling, str):
        return _error(sampling, 400, "BadRequestError")
    n, temperature, request_seed = sampling
    top_logprobs = _logprobs_of(body)
    if isinstance(top_logprobs, str):
        return _error(top_logprobs, 400, "BadRequestError")

    state.requests += 1
    request_id = request.headers.get("X-Request-Id", "")
    last = messages[-1] if messages else {}
    is_repair = last.get("role") == "user" and _content(last).startswith(REPAIR_PREFIX)
    if request_id:
        state.requests_by_id[request_id] += 1
        if is_repair:
            state.repairs_by_id[request_id] += 1

    # Prompt tokens; the system message and the template head repeat, so they are counted once.
    prompt_tokens = 0
    prefix_parts: list[str] = []
    prefix_tokens = 0
    doc_message = ""
    for m in messages:
        text = _content(m)
        cut = text.find(DOC_BEGIN)
        if m.get("role") == "system" or (cut >= 0 and not doc_message):
            head = text if cut < 0 else text[:cut]
            head_tokens = state.static_tokens(head)
            tail_tokens = sim_tokens(text[len(head):])
            if not doc_message:
                prefix_parts.append(head)
                prefix_tokens += head_tokens + SIM_MESSAGE_OVERHEAD_TOKENS
            if cut >= 0:
                doc_message = text
            prompt_tokens += head_tokens + tail_tokens + SIM_MESSAGE_OVERHEAD_TOKENS
        else:
            prompt_tokens += sim_tokens(text) + SIM_MESSAGE_OVERHEAD_TOKENS

    max_tokens_raw = body.get("max_tokens") or body.get("max_completion_tokens")
    max_tokens = int(max_tokens_raw) if max_tokens_raw else 0
    if prompt_tokens + max_tokens > cfg.max_model_len or prompt_tokens >= cfg.max_model_len:
        state.overflows += 1
        log.info("simulator %s: context overflow (%d prompt + %d completion > %d)", cfg.name, prompt_tokens,
                 max_tokens, cfg.max_model_len)
        return _error(overflow_message(cfg.max_model_len, prompt_tokens, max_tokens), 400, "BadRequestError")
    budget = max_tokens or (cfg.max_model_len - prompt_tokens)

    rule = state.injector.decide(time.monotonic() - state.started)
    if rule is not None:
        state.faults[rule.kind] += 1
        log.debug("simulator %s: injecting %s into request %s", cfg.name, rule.kind, request_id or "-")
        if rule.kind not in ("malformed", "truncated", "missing_dims"):
            return await _apply_request_fault(rule, request, state)

    # The answer: n choices (vLLM's ``n``), each a sample of the document's judgement.
    dims = parse_template_dimensions(doc_message)
    source, document = document_of(doc_message)
    system = next((_content(m) for m in messages if m.get("role") == "system"), "")
    judgement = (judge_reference(document, source, dims, reference_scores(system))
                 or judge_document(document, source, dims))
    if cfg.score_shift and state.requests > cfg.score_shift_after:
        judgement = shift_scores(judgement, cfg.score_shift)
    if is_repair:
        wanted: list[str] | None = [slot for slot, _ in parse_template_dimensions(_content(last))]
        names = dict(dims)
        names.update(parse_template_dimensions(_content(last)))
        rendered = [(s, names[s]) for s in wanted]
    else:
        wanted, rendered = None, dims
    # Each sample with the (m, sd_token) per slot its scores were drawn from; None: no spread (greedy, noise off).
    samples: list[tuple[Judgement, dict[str, tuple[float, float]] | None]] = [(judgement, None)] * n
    if cfg.sampling_noise and temperature > 0:
        seed = request_seed if request_seed is not None else state.sampling_rng.getrandbits(63)
        digest = document_digest(source, document)
        samples = [sample_judgement_with_dists(judgement, temperature, seed=seed, digest=digest, choice=i,
                                               prefix_share=cfg.sampling_prefix_share) for i in range(n)]
    answers = [render_completion(j, rendered, slots=wanted) for j, _ in samples]
    choices = [_finish_choice(state, rule, text, budget) for text in answers]
    # An answer changed by a fault or the token budget no longer shows its sampled scores: certain tokens only.
    logprobs = [None if top_logprobs is None else
                choice_logprobs(text, dists if text == answer else None, top_logprobs)
                for (text, _, _), answer, (_, dists) in zip(choices, answers, samples, strict=True)]
    completion_tokens = sum(tokens for _, _, tokens in choices)
    finish_reason = choices[0][1]

    # Latency: wait for a slot, then prefill + decode at the batch's step time. The n sequences of one
    # request decode side by side, so the longest sets the time; all of them hold KV room.
    prefix_key = hashlib.blake2b("\x00".join(prefix_parts).encode("utf-8"), digest_size=16).hexdigest()
    cached = state.scheduler.cached_prefix_tokens(prefix_key, prefix_tokens)
    longest = max(tokens for _, _, tokens in choices)
    shape = RequestShape(prompt_tokens=prompt_tokens, completion_tokens=longest, cached_tokens=cached)
    ticket = await state.scheduler.acquire(prompt_tokens + completion_tokens)
    served: RequestShape | None = None
    try:
        await asyncio.sleep(state.scheduler.model.service_s(shape, running=ticket.running_at_admit))
        served = shape
    finally:
        state.scheduler.release(ticket, served)

    state.prompt_tokens += prompt_tokens
    state.cached_prompt_tokens += cached
    state.generation_tokens += completion_tokens
    state.success[finish_reason] += 1
    head = {"id": state.next_id(), "created": int(time.time()), "model": body.get("model") or cfg.model}
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if body.get("stream"):
        options = body.get("stream_options") or {}
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return await _stream_answer(request, head, [(text, reason) for text, reason, _ in choices], logprobs,
                                    usage if include_usage else None)
    return web.json_response({
        **head,
        "object": "chat.completion",
        "choices": [{
            "index": i,
            "message": {"role": "assistant", "content": text},
            "logprobs": logprobs[i],
            "finish_reason": reason,
        } for i, (text, reason, _) in enumerate(choices)],
        "usage": usage,
    })


def _sampling_of(body: dict[str, Any]) -> tuple[int, float, int | None] | str:
    """``(n, temperature, seed)`` of a request, or the 400 message vLLM would give for a bad value."""
    raw_n = body.get("n")
    raw_t = body.get("temperature")
    raw_seed = body.get("seed")
    try:
        n = 1 if raw_n is None else int(raw_n)
        temperature = DEFAULT_TEMPERATURE if raw_t is None else float(raw_t)
        seed = None if raw_seed is None else int(raw_seed)
    except (TypeError, ValueError):
        return "simulator: n and seed must be integers and temperature a number"
    if n < 1:
        return f"n must be at least 1, got {n}."
    if temperature < 0:
        return f"temperature must be non-negative, got {temperature}."
    return n, temperature, seed


def _logprobs_of(body: dict[str, Any]) -> int | str | None:
    """Takes a request body; gives its ``top_logprobs`` (0 when not sent) when it asks for ``logprobs``, None when it
    does not, or the 400 message vLLM would give for a bad value."""
    raw, raw_top = body.get("logprobs"), body.get("top_logprobs")
    if raw is not None and not isinstance(raw, bool):
        return "simulator: logprobs must be a boolean"
    try:
        top = 0 if raw_top is None else int(raw_top)
    except (TypeError, ValueError):
        return "simulator: top_logprobs must be an integer"
    if top < 0:
        return "`top_logprobs` must be a positive value."
    if top > 0 and not raw:
        return "when using `top_logprobs`, `logprobs` must be set to true."
    if top > MAX_LOGPROBS:
        return f"Requested sample logprobs of {top}, which is greater than max allowed: {MAX_LOGPROBS}"
    return top if raw else None


def _finish_choice(state: SimState, rule: FaultRule | None, text: str, budget: int) -> tuple[str, str, int]:
    """``(text, finish_reason, completion_tokens)`` of one choice: answer faults, then the token budget."""
    finish_reason = "stop"
    if rule is not None and rule.kind == "malformed":
        text = state.injector.malformed()
    elif rule is not None and rule.kind == "missing_dims":
        text, _ = state.injector.drop_dims(text)
    completion_tokens = sim_tokens(text) + 1  # + end-of-sequence token
    if rule is not None and rule.kind == "truncated":
        text = state.injector.truncate(text)
        finish_reason = "length"
        completion_tokens = min(budget, max(completion_tokens, sim_tokens(text) + 1))
    if completion_tokens > budget:
        text = _cut_to_tokens(text, budget)
        completion_tokens = budget
        finish_reason = "length"
    return text, finish_reason, completion_tokens


def _stream_pieces(text: str, logprobs: dict[str, Any] | None) -> list[tuple[str, dict[str, Any] | None]]:
    """Takes a choice's text and its logprobs (or None); gives its streamed pieces, one per line, each with the
    ``logprobs`` of its own tokens (None without logprobs: the pieces of ``str.splitlines``)."""
    if logprobs is None:
        return [(piece, None) for piece in text.splitlines(keepends=True) or [""]]
    lines: list[list[dict[str, Any]]] = [[]]
    for entry in logprobs["content"]:
        lines[-1].append(entry)
        if entry["token"] == "\n":
            lines.append([])
    if not lines[-1] and len(lines) > 1:
        lines.pop()
    return [("".join(e["token"] for e in line), {"content": line}) for line in lines]


async def _stream_answer(request: web.Request, head: dict[str, Any], choices: list[tuple[str, str]],
                         logprobs: list[dict[str, Any] | None], usage: dict[str, int] | None) -> web.StreamResponse:
    """vLLM's server-sent events: a role chunk per choice, content chunks (one per answer line, with the
    ``logprobs`` of its tokens when asked for), the last with its ``finish_reason``, a usage chunk with no
    choices when asked for, then ``data: [DONE]``.

    The chunks are written once the answer is complete (no time-to-first-token model): a client sees
    the same total latency as without streaming.
    """
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    chunk_head = {**head, "object": "chat.completion.chunk"}

    async def send(choices_part: list[dict[str, Any]], **extra: Any) -> None:
        data = json.dumps({**chunk_head, "choices": choices_part, **extra}, ensure_ascii=False)
        await response.write(f"data: {data}\n\n".encode())

    for i in range(len(choices)):
        await send([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None}])
    for i, (text, reason) in enumerate(choices):
        pieces = _stream_pieces(text, logprobs[i])
        for k, (piece, piece_logprobs) in enumerate(pieces):
            last = k == len(pieces) - 1
            await send([{"index": i, "delta": {"content": piece}, "logprobs": piece_logprobs,
                         "finish_reason": reason if last else None}])
    if usage is not None:
        await send([], usage=usage)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def list_models(request: web.Request) -> web.Response:
    cfg = request.app[STATE_KEY].config
    return web.json_response({"object": "list", "data": [{
        "id": cfg.model, "object": "model", "created": 0, "owned_by": "mira-simulator",
        "max_model_len": cfg.max_model_len,
    }]})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def metrics_text(state: SimState) -> str:
    """Prometheus exposition with vLLM's metric names plus the simulator's own counters."""
    label = f'model_name="{state.config.model}"'
    sched = state.scheduler
    out = [
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{label}}} {sched.running}",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{label}}} {sched.waiting}",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{label}}} {state.prompt_tokens}",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{label}}} {state.generation_tokens}",
        "# TYPE vllm:request_success_total counter",
    ]
    for reason in ("stop", "length"):
        out.append(f'vllm:request_success_total{{{label},finished_reason="{reason}"}} {state.success.get(reason, 0)}')
    out += [
        "# TYPE mira_sim_requests_total counter",
        f"mira_sim_requests_total{{{label}}} {state.requests}",
        "# TYPE mira_sim_overflows_total counter",
        f"mira_sim_overflows_total{{{label}}} {state.overflows}",
        "# TYPE mira_sim_busy_slot_seconds_total counter",
        f"mira_sim_busy_slot_seconds_total{{{label}}} {sched.busy_slot_seconds:.6f}",
        "# TYPE mira_sim_faults_total counter",
    ]
    out += [f'mira_sim_faults_total{{{label},kind="{k}"}} {state.faults.get(k, 0)}' for k in FAULT_KINDS]
    return "\n".join(out) + "\n"


def prompt_token_count(state: SimState, messages: list[dict[str, Any]]) -> int:
    """The simulator's exact prompt tokens, counted as ``chat_completions`` counts them."""
    total = 0
    for m in messages:
        text = _content(m)
        cut = text.find(DOC_BEGIN)
        head = text if cut < 0 else text[:cut]
        total += state.static_tokens(head) + sim_tokens(text[len(head):]) + SIM_MESSAGE_OVERHEAD_TOKENS
    return total


async def tokenize(request: web.Request) -> web.Response:
    """vLLM's ``POST /tokenize`` for chat messages: ``{"count", "max_model_len", "tokens"}``.

    Token ids are not simulated (an empty list); clients use ``count``.
    """
    state = request.app[STATE_KEY]
    _, messages = await _read_messages(request)
    if messages is None:
        return _error("simulator: /tokenize body must be JSON with a 'messages' list", 400, "BadRequestError")
    state.tokenize_requests += 1
    count = prompt_token_count(state, messages)
    return web.json_response({"count": count, "max_model_len": state.config.max_model_len, "tokens": []})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=metrics_text(request.app[STATE_KEY]), content_type="text/plain")


async def sim_stats(request: web.Request) -> web.Response:
    changes = request.query.get("changes", "") not in ("", "0", "false")
    return web.json_response(request.app[STATE_KEY].stats(changes=changes))


async def sim_reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return web.json_response({"reset": True})


def create_app(config: SimConfig) -> web.Application:
    """The simulator's aiohttp application for one endpoint."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = SimState(config)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/sim/stats", sim_stats)
    app.router.add_post("/sim/reset", sim_reset)
    return app
