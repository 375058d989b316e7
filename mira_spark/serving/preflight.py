"""Preflight against a pool's ``/v1/models`` on the driver, before any document is sent (or billed).

Takes a :class:`~mira_spark.config.PoolConfig`, the scorer group's model name and the configured
``serving.max_model_len``; gives one :class:`ServedModels` per checked endpoint, or raises
:class:`~mira_spark.config.ConfigError` (the CLI prints it as one line) when an endpoint answers with a
model list that does not contain the group's model, or reports a context length (vLLM's per-model
``max_model_len``) smaller than the configured one — prompts sized for the config would then be
rejected, or worse, scored by the wrong checkpoint.

Evidence fails the run, absence does not: an endpoint whose ``/v1/models`` cannot be read (404, bad
JSON, timeout) is logged and skipped, since ``/health`` already decided it is up; a server that lists
the model without a ``max_model_len`` (llama.cpp) passes the length check. Reachability itself is
:func:`~mira_spark.serving.runner.check_pool_reachable`'s job; run it first and pass its healthy URLs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from mira_spark.config import ConfigError, PoolConfig
from mira_spark.serving.client import APIError, build_headers, excerpt, session_factory
from mira_spark.serving.secrets import install_redaction

logger = logging.getLogger(__name__)
install_redaction(logger)

MODELS_TIMEOUT_S = 10.0
MAX_LISTED_MODELS = 8  # an error names at most this many served ids


@dataclass(frozen=True)
class ServedModels:
    """What one endpoint's ``/v1/models`` says: model id -> its ``max_model_len`` (None: not reported)."""

    endpoint: str
    models: dict[str, int | None]

    def max_model_len(self, model: str) -> int | None:
        return self.models.get(model)


def parse_model_list(body: str) -> dict[str, int | None]:
    """``/v1/models`` JSON -> ``{id: max_model_len or None}``; ValueError when it is not a model list.

    >>> parse_model_list('{"object": "list", "data": [{"id": "m", "max_model_len": 4096}, {"id": "n"}]}')
    {'m': 4096, 'n': None}
    """
    data: Any = json.loads(body)
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError("no 'data' list")
    out: dict[str, int | None] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        length = entry.get("max_model_len")
        out[entry["id"]] = length if isinstance(length, int) and not isinstance(length, bool) else None
    return out


def served_problem(served: ServedModels, group: str, model: str, max_model_len: int) -> str | None:
    """Why ``served`` cannot score group ``group`` (None when it can): the text of the preflight error."""
    if model not in served.models:
        listed = sorted(served.models)
        shown = ", ".join(repr(m) for m in listed[:MAX_LISTED_MODELS]) or "no models"
        if len(listed) > MAX_LISTED_MODELS:
            shown += f" and {len(listed) - MAX_LISTED_MODELS} more"
        return (
            f"endpoint {served.endpoint} does not serve model {model!r} of scorer group {group!r}; it serves "
            f"{shown}. Point the pool at a server started with that model (vllm serve {model}, or "
            f"--served-model-name {model}), or set groups.{group}.model to the served name in the scorers file"
        )
    server_len = served.max_model_len(model)
    if server_len is not None and server_len < max_model_len:
        return (
            f"serving.max_model_len is {max_model_len} but endpoint {served.endpoint} serves {model!r} with "
            f"max_model_len {server_len}: prompts sized for {max_model_len} tokens would be rejected. Set "
            f"serving.max_model_len: {server_len} (or restart the server with --max-model-len {max_model_len})"
        )
    return None


async def _fetch(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> ServedModels | str:
    target = url.rstrip("/") + "/models"
    try:
        async with session.get(target, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=MODELS_TIMEOUT_S)) as resp:
            body = await resp.text(errors="replace")
            if resp.status != 200:
                return f"GET {target}: HTTP {resp.status} {excerpt(body, 120)}"
    except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError, APIError) as exc:
        return f"GET {target}: {type(exc).__name__}"
    try:
        return ServedModels(endpoint=url, models=parse_model_list(body))
    except ValueError as exc:
        return f"GET {target}: not a model list ({exc})"


async def fetch_served_models(pool: PoolConfig, urls: Sequence[str], api_key: str | None) -> list[ServedModels | str]:
    """``/v1/models`` of each url: a :class:`ServedModels`, or why it could not be read."""
    headers = build_headers(api_key)
    async with session_factory(pool, 0) as session:
        return list(await asyncio.gather(*(_fetch(session, u, headers) for u in urls)))


def check_served_models(
    pool: PoolConfig,
    *,
    group: str,
    model: str,
    max_model_len: int,
    api_key: str | None = None,
    urls: Sequence[str] | None = None,
) -> list[ServedModels]:
    """Check every endpoint in ``urls`` (default: the pool's) serves ``model`` with room for ``max_model_len``.

    Returns what the endpoints that answered serve. Raises :class:`ConfigError` naming every endpoint
    that serves another model or a shorter context; nothing has been sent at that point.
    """
    urls = list(urls) if urls is not None else [e.url for e in pool.endpoints]
    answers = asyncio.run(fetch_served_models(pool, urls, api_key))
    served: list[ServedModels] = []
    problems: list[str] = []
    for url, answer in zip(urls, answers, strict=True):
        if isinstance(answer, str):
            logger.warning("endpoint %s: cannot verify the served model (%s); continuing", url, answer)
            continue
        served.append(answer)
        problem = served_problem(answer, group, model, max_model_len)
        if problem is not None:
            problems.append(problem)
    if problems:
        raise ConfigError("; ".join(problems) + ". Nothing was sent.")
    for s in served:
        logger.info("endpoint %s serves %s (max_model_len %s)", s.endpoint, model,
                    s.max_model_len(model) or "not reported")
    return served


__all__ = ["ServedModels", "check_served_models", "fetch_served_models", "parse_model_list", "served_problem"]
