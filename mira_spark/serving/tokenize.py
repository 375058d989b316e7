"""Exact prompt token counts from the server's ``POST /tokenize`` (vLLM), for prompts near the budget.

Takes chat message lists; gives one count per list (``None`` when no endpoint could count it). The
scoring stage uses this only for documents its conservative estimate truncated: an exact count lets a
long document keep more of its text while staying provably under ``max_model_len``.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp

from mira_spark.config import PoolConfig
from mira_spark.serving.client import build_headers, session_factory

TOKENIZE_CONCURRENCY = 32
TOKENIZE_TIMEOUT_S = 30.0


async def _count_one(session: aiohttp.ClientSession, base: str, payload: dict[str, Any],
                     headers: dict[str, str]) -> int | None:
    try:
        async with session.post(base + "/tokenize", json=payload, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=TOKENIZE_TIMEOUT_S)) as resp:
            if resp.status != 200:
                return None
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None
    count = body.get("count") if isinstance(body, dict) else None
    return int(count) if isinstance(count, int | float) else None


async def acount_prompt_tokens(pool: PoolConfig, model: str, api_key: str | None,
                               message_lists: list[list[dict[str, str]]]) -> list[int | None]:
    bases = itertools.cycle([e.url.removesuffix("/v1") for e in pool.endpoints])
    limit = asyncio.Semaphore(TOKENIZE_CONCURRENCY)
    headers = build_headers(api_key, "tokenize")
    async with session_factory(pool, TOKENIZE_CONCURRENCY) as session:

        async def one(messages: list[dict[str, str]], base: str) -> int | None:
            async with limit:
                return await _count_one(session, base, {"model": model, "messages": messages}, headers)

        return list(await asyncio.gather(*(one(m, next(bases)) for m in message_lists)))


def count_prompt_tokens(pool: PoolConfig, model: str, api_key: str | None,
                        message_lists: list[list[dict[str, str]]]) -> list[int | None]:
    """Sync wrapper (one event loop in the calling thread)."""
    if not message_lists:
        return []
    return asyncio.run(acount_prompt_tokens(pool, model, api_key, message_lists))
