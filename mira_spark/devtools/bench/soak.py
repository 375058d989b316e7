"""``mira-spark bench soak``: a long run under faults; memory and file descriptors stay flat, nothing is lost.

Takes ``--docs N`` (default 200,000) and ``--wave-size W`` (default 20,000: 10 waves); gives one table row
per committed wave — the driver process's resident memory (``VmRSS``) and
open file descriptors (``/proc/self/fd``), seconds — then the accounting of every document (lost,
duplicated, failed by reason, failed without a reason, deferred) and a JSON line ``{"bench": "soak", ...}``.
Exit code 1 when a document is lost or duplicated, a failure has no reason, or retained memory or
descriptors grow by more than :data:`MAX_GROWTH` after the first wave (the first wave's sample is the
baseline: it holds the warmed-up caches, pools and the Sail server). Retained memory is RSS after
``gc.collect()`` and ``malloc_trim(0)``: right after a commit RSS still holds the wave's freed rows (the
allocator's high-water mark: 602-859 MB over one 200,000-document run that retained 601-722 MB), which would
hide or fake a leak; both are printed. Each row also says where the retained memory sits
(:func:`memory_parts`): the main glibc heap, anonymous mappings (where the embedded engine's allocator and
Arrow's pool live), file-backed mappings (shared libraries), the Arrow pool's live bytes, Python's allocated
blocks and the process's threads.

The corpus is the sample corpus replicated under new doc_ids with each text cut to :data:`TEXT_CHARS`
characters (so 200,000 documents fit a laptop's disk), its empty and garbled documents included: they
come out as failed rows with a reason. Faults (:data:`SOAK_FAULTS`: 5xx, 429, resets, hangs, malformed,
truncated and partial answers) are injected for the whole run by three simulated endpoints, each in its
own process so the measured process is the job's driver alone (on Sail the scoring tasks are threads of
it). Sail + Delta in a temporary table root, journal and lease on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mira_spark.devtools.bench.faults import Scenario, ScenarioResult, measure, scenario_settings, sum_stats
from mira_spark.devtools.simulator.faults import FaultProfile, FaultRule

if TYPE_CHECKING:
    from mira_spark.pipeline import RunSummary

DEFAULT_DOCS = 200_000
DEFAULT_WAVE = 20_000
TEXT_CHARS = 1500
MAX_GROWTH = 0.10  # allowed growth of RSS and open descriptors over the first wave's sample
N_ENDPOINTS = 3
SLOTS = 64
TIME_SCALE = 400.0  # fast answers: the soak is about leaks and accounting, not service time
REQUEST_TIMEOUT_S = 2.0  # a hung request (3 s server-side) times out and is retried
CORPUS_CHUNK = 20_000
RUN_ID = "soak"
SOAK_FAULTS = FaultProfile(rules=(
    FaultRule(kind="http_error", status=503, probability=0.01),
    FaultRule(kind="http_error", status=500, probability=0.005),
    FaultRule(kind="rate_limit", probability=0.005, retry_after_s=0.2),
    FaultRule(kind="reset", probability=0.005),
    FaultRule(kind="hang", probability=0.001),
    FaultRule(kind="malformed", probability=0.01),
    FaultRule(kind="truncated", probability=0.01),
    FaultRule(kind="missing_dims", probability=0.02),
), hang_s=3.0)


@dataclass(frozen=True)
class WaveSample:
    wave: int
    rss_mb: float  # as found right after the wave's commit (includes memory the allocator has not returned yet)
    retained_mb: float  # after gc.collect() and malloc_trim(0): what the process still holds
    fds: int
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)  # memory_parts() after the release: where it sits


@dataclass
class SoakResult:
    docs: int
    wave_size: int
    samples: list[WaveSample] = field(default_factory=list)
    accounting: dict[str, Any] = field(default_factory=dict)
    rss_growth: float = 0.0  # of retained memory (the flatness criterion)
    raw_rss_growth: float = 0.0  # of RSS as found after each commit (reported, not judged)
    fd_growth: float = 0.0
    resent_requests: int = 0
    wall_s: float = 0.0

    @property
    def flat(self) -> bool:
        return self.rss_growth <= MAX_GROWTH and self.fd_growth <= MAX_GROWTH

    @property
    def clean(self) -> bool:
        a = self.accounting
        return (a.get("lost") == 0 and a.get("duplicated") == 0 and a.get("failed_without_reason") == 0
                and a.get("decisions_missing") == 0 and a.get("decisions_duplicated") == 0
                and a.get("unscored") == a.get("deferred"))


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so that RSS shows
    what is retained rather than the allocator's high-water mark of the last wave."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: RSS then includes free heap pages
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def process_sample() -> tuple[float, int]:
    """``(resident MiB, open file descriptors)`` of this process (Linux /proc)."""
    rss_kb = 0
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
                break
    return rss_kb / 1024, len(os.listdir("/proc/self/fd"))


def memory_parts() -> dict[str, float]:
    """Where resident memory sits (MiB): the main glibc heap (``[heap]``), anonymous mappings (other malloc
    arenas, mimalloc/jemalloc segments, Rust allocations of the embedded engine), file-backed mappings
    (shared libraries), the Arrow pool's live bytes and the Python objects' allocated blocks (count)."""
    import sys

    import pyarrow as pa

    parts = {"heap": 0, "anon": 0, "file": 0}
    kind = "file"
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            head = line.split(maxsplit=6)
            if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's first line
                name = head[5].strip() if len(head) > 5 else ""
                kind = "heap" if name == "[heap]" else "anon" if not name or name.startswith("[anon") else "file"
            elif head and head[0] == "Rss:":
                parts[kind] += int(head[1])
    out = {k: round(v / 1024, 1) for k, v in parts.items()}
    out["arrow"] = round(pa.total_allocated_bytes() / 2**20, 1)
    out["py_blocks_k"] = round(sys.getallocatedblocks() / 1000, 1)
    out["threads"] = float(len(os.listdir("/proc/self/task")))
    return out


def growth(values: list[float]) -> float:
    """Largest relative growth of any later value over the first one.

    >>> growth([100.0, 104.0, 99.0, 108.0]), growth([5.0])
    (0.08, 0.0)
    """
    if len(values) < 2 or values[0] <= 0:
        return 0.0
    return round(max(v / values[0] - 1 for v in values[1:]), 4)


def write_corpus(path: Path, n: int, seed: int = 7) -> int:
    """``n`` documents: the sample corpus replicated under new doc_ids, texts cut to TEXT_CHARS."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from mira_spark.devtools.samples import generate_documents

    base = generate_documents(seed)
    schema = pa.schema([pa.field("doc_id", pa.string(), nullable=False), pa.field("source", pa.string()),
                        pa.field("text", pa.string())])
    path.mkdir(parents=True, exist_ok=True)
    for start in range(0, n, CORPUS_CHUNK):
        rows = []
        for i in range(start, min(n, start + CORPUS_CHUNK)):
            doc = base[i % len(base)]
            text = doc["text"][:TEXT_CHARS] if isinstance(doc["text"], str) else doc["text"]
            rows.append({"doc_id": f"{doc['doc_id']}-r{i // len(base):05d}", "source": doc["source"], "text": text})
        write_deltalake(str(path), pa.Table.from_pylist(rows, schema=schema), mode="overwrite" if start == 0 else "append")
    return n


def run_soak(docs: int, wave_size: int, work: Path, progress: bool = True) -> SoakResult:
    from mira_spark import pipeline
    from mira_spark.devtools.simulator.launcher import start_processes
    from mira_spark.devtools.simulator.server import SimConfig
    from mira_spark.store.engines import sail_session

    started = time.perf_counter()
    documents = work / "documents"
    write_corpus(documents, docs)
    sc = Scenario("soak", "faults for the whole run", (SOAK_FAULTS,) * N_ENDPOINTS,
                  pool={"request_timeout_s": REQUEST_TIMEOUT_S, "slots_per_endpoint": SLOTS},
                  scoring={"partial_policy": "reask"})
    sims = start_processes([SimConfig(name=f"soak{i}", slots=SLOTS, time_scale=TIME_SCALE, seed=300 + i,
                                      faults=SOAK_FAULTS) for i in range(N_ENDPOINTS)])
    result = SoakResult(docs=docs, wave_size=wave_size)
    try:
        settings = scenario_settings(sc, work, str(documents), None, [h.url for h in sims], wave_size=wave_size)
        with sail_session("mira-bench-soak") as spark:
            wave_started = [time.perf_counter()]

            def on_wave(wave: int, summary: RunSummary) -> None:
                rss, fds = process_sample()
                release_free_memory()
                retained, _ = process_sample()
                sample = WaveSample(wave=wave, rss_mb=round(rss, 1), retained_mb=round(retained, 1), fds=fds,
                                    seconds=round(time.perf_counter() - wave_started[0], 1), parts=memory_parts())
                wave_started[0] = time.perf_counter()
                result.samples.append(sample)
                if progress:
                    print(format_row(_sample_row(sample)), flush=True)

            if progress:
                print(format_row(SAMPLE_COLUMNS), flush=True)
            ctx = pipeline.open_run(spark, settings, RUN_ID)
            ctx.on_wave = on_wave
            try:
                pipeline.run_stages(ctx)
                summary = pipeline.finish_run(ctx, started)
            finally:
                pipeline.release_run(ctx)
            accounting: ScenarioResult = measure(spark, settings, RUN_ID, sum_stats([h.stats() for h in sims]),
                                                 reask=True)
    finally:
        for h in sims:
            h.stop()
    result.accounting = accounting.as_dict()
    result.resent_requests = summary.resent_requests
    result.rss_growth = growth([s.retained_mb for s in result.samples])
    result.raw_rss_growth = growth([s.rss_mb for s in result.samples])
    result.fd_growth = growth([float(s.fds) for s in result.samples])
    result.wall_s = round(time.perf_counter() - started, 1)
    return result


PARTS = ("heap", "anon", "file", "arrow", "py_blocks_k", "threads")
SAMPLE_COLUMNS = ("wave", "rss_mb", "retained_mb", "fds", "wave_s", *(f"{p}" for p in PARTS))
WIDTHS = (5, 9, 12, 5, 8, 8, 8, 8, 8, 12, 8)


def _sample_row(s: WaveSample) -> list[str]:
    return [str(s.wave + 1), f"{s.rss_mb:.1f}", f"{s.retained_mb:.1f}", str(s.fds), f"{s.seconds:.1f}",
            *(f"{s.parts.get(p, 0):g}" for p in PARTS)]


def format_row(cells: list[str] | tuple[str, ...]) -> str:
    return "  ".join(cell.ljust(w) for cell, w in zip(cells, WIDTHS, strict=True)).rstrip()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mira-spark bench soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=DEFAULT_DOCS, help="simulated documents (default 200,000)")
    p.add_argument("--wave-size", type=int, default=DEFAULT_WAVE, help="documents per committed wave")
    p.add_argument("--work-dir", default=None, help="keep the tables here (default: a temporary directory)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger("mira_spark.serving.runner").setLevel(logging.ERROR)  # breaker chatter; counted below
    with tempfile.TemporaryDirectory(prefix="mira-soak-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        res = run_soak(args.docs, args.wave_size, work)
    a = res.accounting
    failed = ",".join(f"{k}={v}" for k, v in sorted(a["failed"].items())) or "-"
    print(f"documents {a['documents_in']}  waves {len(res.samples)}  lost {a['lost']}  duplicated {a['duplicated']}  "
          f"ok {a['ok']}  failed {failed}  failed_without_reason {a['failed_without_reason']}  deferred {a['deferred']}")
    print(f"retained memory growth after wave 1 {100 * res.rss_growth:.1f}% (RSS as found "
          f"{100 * res.raw_rss_growth:.1f}%)  fd growth {100 * res.fd_growth:.1f}%  "
          f"sim requests {a['sim_requests']}  retries {a['retries']}  repairs {a['repairs']}  wall {res.wall_s:.0f} s")
    print(json.dumps({
        "bench": "soak", "docs": res.docs, "wave_size": res.wave_size, "waves": len(res.samples),
        "samples": [asdict(s) for s in res.samples], "rss_growth": res.rss_growth, "raw_rss_growth": res.raw_rss_growth,
        "fd_growth": res.fd_growth,
        "max_growth": MAX_GROWTH, "flat": res.flat, "resent_requests": res.resent_requests,
        "accounting": a, "clean": res.clean, "wall_s": res.wall_s,
    }, default=str))
    return 0 if res.clean and res.flat else 1


if __name__ == "__main__":
    sys.exit(main())
