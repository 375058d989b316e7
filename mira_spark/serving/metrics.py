"""Read a vLLM server's load from its Prometheus ``/metrics`` text.

Takes the text exposition format; gives :class:`ServerLoad` (requests running + waiting, summed over
label sets such as ``model_name``), or None when neither metric is present. Comments, other metrics,
odd values and malformed lines are skipped rather than raised: a scrape is advice for routing, never a
reason to fail a request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RUNNING_METRIC = "vllm:num_requests_running"
WAITING_METRIC = "vllm:num_requests_waiting"


@dataclass(frozen=True)
class ServerLoad:
    """Requests a server is running and queueing (from every client, not only this one)."""

    running: float
    waiting: float

    @property
    def total(self) -> float:
        return self.running + self.waiting


def _split_sample(line: str) -> tuple[str, str] | None:
    """``name{labels} value [timestamp]`` -> (name, value); labels may hold spaces inside quotes."""
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        close = line.rfind("}")
        if close < brace:
            return None
        name, rest = line[:brace], line[close + 1 :]
    else:
        if space == -1:
            return None
        name, rest = line[:space], line[space:]
    fields = rest.split()
    if not fields:
        return None
    return name.strip(), fields[0]


def parse_server_load(text: str) -> ServerLoad | None:
    """Sum running and waiting requests over all label sets.

    >>> parse_server_load('vllm:num_requests_running{model_name="m"} 3.0\\nvllm:num_requests_waiting{model_name="m"} 1')
    ServerLoad(running=3.0, waiting=1.0)
    """
    sums = {RUNNING_METRIC: 0.0, WAITING_METRIC: 0.0}
    seen = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or not line.startswith("vllm:num_requests_"):
            continue
        sample = _split_sample(line)
        if sample is None or sample[0] not in sums:
            continue
        try:
            value = float(sample[1])
        except ValueError:
            continue
        if not math.isfinite(value) or value < 0:
            continue
        sums[sample[0]] += value
        seen = True
    if not seen:
        return None
    return ServerLoad(running=sums[RUNNING_METRIC], waiting=sums[WAITING_METRIC])
