"""Progress and cost of a long run, live: one line per committed wave, a bar on a terminal.

Takes the scoring stage's running totals (:class:`~mira_spark.runstats.StageStats`) after each wave and
gives a :class:`WaveProgress` (documents done of total, requests/s, tokens/s, ETA, failures by reason,
GPU-hours so far, projected at the current rate, and against ``mira-spark estimate``'s figure for the
pending documents, when the run has one: the ratio says how the real pool compares with the cost model). Sinks: :func:`log_progress` (INFO log, the
default for library calls and notebooks) and :class:`TerminalProgress` (the CLI: a redrawn bar on a
terminal, plain lines otherwise, e.g. in a Databricks or YARN driver log).

:func:`job_tag` tags the Spark jobs of a stage or wave (``SparkSession.addTag``: the Spark UI lists a
job's tags). Spark Connect has no job-description call (SPARK-46884), so the tag is what names the
stage and wave there; an engine without tags (e.g. Sail) is skipped silently.

>>> from mira_spark.runstats import StageStats
>>> st = StageStats("score", rows_out=500, requests=520, completion_tokens=450_000)
>>> p = WaveMeter(total_docs=1000, n_waves=4, started=0.0, gpus=16, gpu_hours_estimate=0.8).line(2, st, now=100.0)
>>> p.eta_s, round(p.gpu_hours, 3), round(p.gpu_hours_projected, 3)
(100.0, 0.444, 0.889)
>>> p.text().split("GPU-hours ")[1]
'0.44 (projected 0.89; estimate 0.80, projected/estimate 1.11)'
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from mira_spark.runstats import StageStats

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

BAR_WIDTH = 30


@dataclass(frozen=True)
class WaveProgress:
    wave: int
    n_waves: int
    done: int
    total: int
    elapsed_s: float
    requests_per_s: float
    tokens_per_s: float
    eta_s: float | None
    failed: dict[str, int]
    gpu_hours: float
    gpu_hours_projected: float | None
    gpu_hours_estimate: float | None = None  # mira-spark estimate's GPU-hours for the documents pending at start

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def text(self) -> str:
        eta = _duration(self.eta_s) if self.eta_s is not None else "?"
        failed = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items())) or "none"
        projected = f"{self.gpu_hours_projected:.2f}" if self.gpu_hours_projected is not None else "?"
        if self.gpu_hours_estimate:
            ratio = (f", projected/estimate {self.gpu_hours_projected / self.gpu_hours_estimate:.2f}"
                     if self.gpu_hours_projected is not None else "")
            projected += f"; estimate {self.gpu_hours_estimate:.2f}{ratio}"
        return (f"wave {self.wave}/{self.n_waves}: {self.done}/{self.total} documents ({100 * self.fraction:.1f}%), "
                f"{self.requests_per_s:.1f} req/s, {self.tokens_per_s:.0f} tok/s, ETA {eta}, failed: {failed}, "
                f"GPU-hours {self.gpu_hours:.2f} (projected {projected})")


def _duration(seconds: float) -> str:
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@dataclass(frozen=True)
class WaveMeter:
    """Turns running totals into a progress line; ``started`` and ``now`` come from one clock."""

    total_docs: int
    n_waves: int
    started: float
    gpus: int  # GPUs behind the pools' endpoints (EndpointConfig.gpus)
    gpu_hours_estimate: float | None = None  # the cost model's figure for the whole pass (None: not known)

    def line(self, wave: int, totals: StageStats, now: float) -> WaveProgress:
        elapsed = max(now - self.started, 1e-9)
        done = totals.rows_out
        rate = done / elapsed
        remaining = max(self.total_docs - done, 0)
        gpu_hours = self.gpus * elapsed / 3600
        return WaveProgress(
            wave=wave, n_waves=self.n_waves, done=done, total=self.total_docs, elapsed_s=elapsed,
            requests_per_s=totals.requests / elapsed,
            tokens_per_s=(totals.prompt_tokens + totals.completion_tokens) / elapsed,
            eta_s=remaining / rate if rate > 0 else None,
            failed=totals.by_prefix("failed"),
            gpu_hours=gpu_hours,
            gpu_hours_projected=gpu_hours * self.total_docs / done if done else None,
            gpu_hours_estimate=self.gpu_hours_estimate,
        )


ProgressSink = Callable[[WaveProgress], None]


def log_progress(p: WaveProgress) -> None:
    log.info("%s", p.text())


class TerminalProgress:
    """The CLI's sink: a bar redrawn in place on a terminal; plain lines when the stream is not one."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, p: WaveProgress) -> None:
        log_progress(p)
        if not self.tty:
            print(p.text(), file=self.stream, flush=True)
            return
        filled = int(BAR_WIDTH * p.fraction)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        end = "\n" if p.done >= p.total or p.wave >= p.n_waves else ""
        print(f"\r[{bar}] {p.text()}", end=end, file=self.stream, flush=True)


@contextmanager
def job_tag(spark: SparkSession, label: str) -> Iterator[None]:
    """Tag the Spark jobs started inside the block with ``label`` (spaces become ``-``)."""
    tag = label.replace(" ", "-").replace("/", "-of-")
    added = False
    try:
        spark.addTag(tag)
        added = True
    except Exception:  # engines without job tags: nothing to name the jobs with
        log.debug("engine does not take job tags; skipped %s", tag)
    try:
        yield
    finally:
        if added:
            try:
                spark.removeTag(tag)
            except Exception:
                log.debug("could not remove job tag %s", tag)
