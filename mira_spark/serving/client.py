"""One OpenAI-compatible chat-completion POST, and the session it runs on.

Takes an :class:`aiohttp.ClientSession`, an endpoint base URL (ending in ``/v1``), a JSON payload and
headers; gives a :class:`ChatResponse` (text, finish_reason, token usage) or raises one of a small
error tree: :class:`APIStatusError` (non-2xx: status, body excerpt, Retry-After, request id),
:class:`APITimeoutError`, :class:`APIConnectionError` (refused/reset/disconnected/truncated body), and
:class:`APIResponseError` (2xx with a body that is not a chat completion). Error strings never contain
the request's headers, and pass through :func:`~mira_spark.serving.secrets.redact`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from mira_spark.config import PoolConfig
from mira_spark.parsing.expected import ScoreTokens, compact_logprobs
from mira_spark.serving.retry import parse_retry_after
from mira_spark.serving.secrets import install_redaction, redact

logger = logging.getLogger(__name__)
install_redaction(logger)

# Enough of an error body to diagnose it; bodies can echo the prompt, which must not reach the tables.
BODY_EXCERPT_CHARS = 200
# /health and /metrics must answer fast; a slow answer is treated as no answer.
PROBE_TIMEOUT_S = 5.0
REQUEST_ID_HEADER = "X-Request-Id"


@dataclass(frozen=True)
class ChatResponse:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    request_id: str | None = None
    more: tuple[tuple[str, str | None], ...] = ()  # (text, finish_reason) of choices 1..n-1 (a request's ``n``)
    # Score-token logprobs of each choice (0..n-1) when the request asked for logprobs; None per choice
    # when the server sent none or they do not match the text (parsing/expected.py).
    logprobs: tuple[ScoreTokens | None, ...] = ()


class APIError(Exception):
    """Base of the client's errors."""


class APIStatusError(APIError):
    def __init__(self, status: int, body_excerpt: str, retry_after: float | None, request_id: str | None):
        self.status = status
        self.body_excerpt = body_excerpt
        self.retry_after = retry_after
        self.request_id = request_id
        super().__init__(f"HTTP {status}: {body_excerpt}")


class APITimeoutError(APIError):
    """The request did not complete within the timeout."""


class APIConnectionError(APIError):
    """Connection refused/reset, server disconnected, or the body was cut off."""


class APIResponseError(APIError):
    """A 2xx answer that is not a chat completion (bad JSON, no choices)."""


def excerpt(text: str, limit: int = BODY_EXCERPT_CHARS) -> str:
    """Short single-line, redacted excerpt of a server body."""
    flat = " ".join(text.split())
    flat = redact(flat)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def build_headers(api_key: str | None, request_key: str | None = None) -> dict[str, str]:
    """Authorization only when a key is set; X-Request-Id lets server logs be joined to rows."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if request_key:
        headers[REQUEST_ID_HEADER] = request_key
    return headers


def session_factory(pool: PoolConfig, in_flight: int | None = None) -> aiohttp.ClientSession:
    """The default session: one connection per in-flight request, timeouts from ``pool``.

    ``limit=in_flight`` (0 = unlimited) so the connector never queues a request the runner thinks is
    in flight; keep-alive reuses connections across requests.
    """
    connector = aiohttp.TCPConnector(
        limit=in_flight or 0,
        limit_per_host=0,
        ssl=pool.verify_tls,  # True: default verification (older aiohttp spelled it None); False: skip
    )
    timeout = aiohttp.ClientTimeout(total=pool.request_timeout_s, sock_connect=pool.connect_timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


def _parse_completion(raw: bytes, request_id: str | None) -> ChatResponse:
    try:
        data: Any = json.loads(raw)
        # Choices in index order (a server may list them in any order); choice 0 is the request's sample.
        choice, *rest = sorted(data["choices"], key=lambda c: c.get("index", 0))
        message = choice.get("message") or {}
        usage = data.get("usage") or {}
        more = tuple(((c.get("message") or {}).get("content") or "", c.get("finish_reason")) for c in rest)
        logprobs = tuple(_choice_logprobs(c) for c in (choice, *rest)) if any(
            c.get("logprobs") for c in (choice, *rest)) else ()
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise APIResponseError(f"not a chat completion: {excerpt(raw.decode('utf-8', 'replace'))}") from None
    return ChatResponse(
        text=message.get("content") or "",
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        request_id=request_id,
        more=more,
        logprobs=logprobs,
    )


def _choice_logprobs(choice: Any) -> ScoreTokens | None:
    lp = choice.get("logprobs")
    content = lp.get("content") if isinstance(lp, dict) else None
    return compact_logprobs(content, (choice.get("message") or {}).get("content") or "")


async def post_chat(
    session: aiohttp.ClientSession,
    endpoint_url: str,
    payload: Mapping[str, Any],
    headers: Mapping[str, str],
) -> ChatResponse:
    """POST ``payload`` to ``<endpoint_url>/chat/completions`` and parse the answer."""
    url = endpoint_url.rstrip("/") + "/chat/completions"
    try:
        async with session.post(url, json=payload, headers=headers) as resp:
            raw = await resp.read()
            request_id = resp.headers.get(REQUEST_ID_HEADER) or resp.headers.get("x-request-id")
            if resp.status >= 300:
                raise APIStatusError(
                    resp.status,
                    excerpt(raw.decode("utf-8", "replace")),
                    parse_retry_after(resp.headers),
                    request_id,
                )
    except APIError:
        raise
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise APITimeoutError(f"no answer from {url} in time ({type(exc).__name__})") from None
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError) as exc:
        raise APIConnectionError(redact(f"{url}: {type(exc).__name__}: {exc}")) from None
    return _parse_completion(raw, request_id)


async def get_status(
    session: aiohttp.ClientSession, url: str, timeout_s: float = PROBE_TIMEOUT_S
) -> tuple[int, str]:
    """GET ``url`` -> (status, text); raises APITimeoutError / APIConnectionError like ``post_chat``."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return resp.status, await resp.text(errors="replace")
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
        raise APITimeoutError(f"no answer from {url} within {timeout_s:g}s") from None
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError) as exc:
        raise APIConnectionError(redact(f"{url}: {type(exc).__name__}: {exc}")) from None
