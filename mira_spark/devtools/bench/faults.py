"""``mira-spark bench faults``: the whole pipeline under injected faults, and what each fault cost.

Takes ``--scenario NAME|all|each`` (``each``: every single-fault scenario, then ``all``) and ``--docs N``
(an evenly spread subset of the sample corpus; default all of it); gives, per scenario, one table row —
documents in, lost, duplicated, failed rows by reason, deferred, requests the simulators received,
transport retries, output repairs, wasted requests (answers billed but unused), re-asked-slot token
savings — and a final JSON line ``{"bench": "faults", ...}``. Exit code 1 when any document is lost or
duplicated, or a failed row has no reason.

Each scenario runs Sail + Delta in a fresh temporary table root against three simulated endpoints in
threads of this process (127.0.0.1 only). The endpoints start just before the scoring stage, so the
fault windows (seconds after server start; the hang scenario's: each endpoint's first requests) overlap
the scoring. ``endpoint_restart`` stops one endpoint once it has served some requests and starts it
again on the same port after ``down_s``.

The scenario runner (:func:`run_scenario`) is also what ``tests/test_faults.py`` drives.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mira_spark.devtools.simulator.faults import FaultProfile, FaultRule
from mira_spark.devtools.simulator.launcher import SimHandle, free_ports, start_in_thread
from mira_spark.devtools.simulator.server import SimConfig
from mira_spark.resources import default_scorers_file

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from mira_spark.config import Settings

log = logging.getLogger(__name__)

N_ENDPOINTS = 3
SIM_TIME_SCALE = 150.0
SLOTS = 64
WAVE_SIZE = 100
WINDOW_S = 4.0  # fault bursts last this long after the endpoints start (scoring starts within ~1 s)
# Hangs are open for each endpoint's first requests, not for WINDOW_S: with the fixed seeds the first hang
# lands on an endpoint's 9th-13th request, which a wave of the test suite's may only send after WINDOW_S
# on a loaded machine. ~3 hangs per endpoint, each costing one client timeout.
HANG_WINDOW_REQUESTS = 40
HANG_S = 3.0  # a hung request sleeps this long server-side; far beyond the client timeout below
REQUEST_TIMEOUT_S = 1.5  # the simulator answers any sample document in well under 0.2 s
RESTART_AFTER_REQUESTS = 20
RESTART_DOWN_S = 1.5
RESTART_WATCH_S = 120.0  # give up waiting for the restart trigger after this long
RESTART_POLL_S = 0.05
REBIND_ATTEMPTS = 40  # the old socket may linger a moment; retry binding the same port
REBIND_WAIT_S = 0.05
# ~1.2 s per answer: the stopped endpoint drops dozens of requests in flight (its handlers are
# cancelled 0.5 s after the listener closes), which the client must retry elsewhere.
RESTART_TIME_SCALE = 15.0
ALL_TIME_SCALE = 40.0  # ~0.5 s per answer, still well under REQUEST_TIMEOUT_S
OK_SHARE_ALL = 0.8  # the all-faults scenario must still score at least this share of sendable rows ok

# Pool settings of every scenario: small backoffs so a bench run stays short.
BENCH_POOL: dict[str, Any] = {
    "slots_per_endpoint": SLOTS,
    "backoff_initial_s": 0.05,
    "backoff_max_s": 0.5,
    "breaker_probe_s": 0.5,
    "metrics_poll_s": 0.5,
    "connect_timeout_s": 1.0,
    "request_timeout_s": 30.0,
}


@dataclass(frozen=True)
class RestartPlan:
    """Stop endpoint ``endpoint`` once it has received ``after_requests`` and restart it after ``down_s``."""

    endpoint: int = 0
    after_requests: int = RESTART_AFTER_REQUESTS
    down_s: float = RESTART_DOWN_S


@dataclass(frozen=True)
class Scenario:
    """One fault setting: a fault profile per endpoint plus pool / scoring overrides."""

    name: str
    description: str
    profiles: tuple[FaultProfile, ...]
    pool: dict[str, Any] = field(default_factory=dict)
    scoring: dict[str, Any] = field(default_factory=dict)
    restart: RestartPlan | None = None
    time_scale: float = SIM_TIME_SCALE  # lower = slower answers = more requests in flight at a kill


def _rules(*rules: FaultRule, hang_s: float = HANG_S) -> FaultProfile:
    return FaultProfile(rules=rules, hang_s=hang_s)


def _same(profile: FaultProfile) -> tuple[FaultProfile, ...]:
    return (profile,) * N_ENDPOINTS


def _scenarios() -> dict[str, Scenario]:
    w = WINDOW_S
    http = (
        _rules(FaultRule(kind="http_error", status=503, probability=0.6, start_s=0.0, end_s=w)),
        _rules(FaultRule(kind="http_error", status=502, probability=0.5, start_s=0.5, end_s=w)),
        _rules(FaultRule(kind="http_error", status=500, probability=0.3, start_s=0.0, end_s=w),
               FaultRule(kind="http_error", status=503, probability=0.02)),
    )
    out = [
        Scenario("http_5xx", "500/502/503 bursts while the endpoints warm up", http),
        Scenario("rate_limit", "429 with Retry-After 0.3 s",
                 _same(_rules(FaultRule(kind="rate_limit", probability=0.4, retry_after_s=0.3, end_s=w)))),
        Scenario("hang", f"hung requests; client timeout {REQUEST_TIMEOUT_S:g} s",
                 _same(_rules(FaultRule(kind="hang", probability=0.08, end_after_requests=HANG_WINDOW_REQUESTS))),
                 pool={"request_timeout_s": REQUEST_TIMEOUT_S}),
        Scenario("reset", "connections aborted without a response",
                 _same(_rules(FaultRule(kind="reset", probability=0.2, end_s=w)))),
        Scenario("endpoint_restart", f"endpoint 0 killed, back on the same port after {RESTART_DOWN_S:g} s",
                 _same(FaultProfile()), restart=RestartPlan(), time_scale=RESTART_TIME_SCALE),
        Scenario("malformed", "answers without any score line",
                 _same(_rules(FaultRule(kind="malformed", probability=0.3)))),
        Scenario("truncated", "answers cut mid-way, finish_reason=length",
                 _same(_rules(FaultRule(kind="truncated", probability=0.3)))),
        Scenario("missing_dims", "answers missing 2-4 slot lines; partial_policy reask",
                 _same(_rules(FaultRule(kind="missing_dims", probability=0.4))),
                 scoring={"partial_policy": "reask"}),
        Scenario("missing_dims_keep", "answers missing 2-4 slot lines; partial_policy keep",
                 _same(_rules(FaultRule(kind="missing_dims", probability=0.4))),
                 scoring={"partial_policy": "keep"}),
    ]
    every = _rules(
        FaultRule(kind="http_error", status=503, probability=0.15, end_s=w),
        FaultRule(kind="http_error", status=500, probability=0.03),
        FaultRule(kind="rate_limit", probability=0.05, retry_after_s=0.3),
        FaultRule(kind="hang", probability=0.02, end_s=w),
        FaultRule(kind="reset", probability=0.04),
        # 0.1 each so that even the test suite's 80-document run sees every kind (P(none) ~ e^-8)
        FaultRule(kind="malformed", probability=0.1),
        FaultRule(kind="truncated", probability=0.1),
        FaultRule(kind="missing_dims", probability=0.1),
    )
    out.append(Scenario("all", "every fault at once, plus an endpoint restart", _same(every),
                        pool={"request_timeout_s": REQUEST_TIMEOUT_S}, scoring={"partial_policy": "reask"},
                        restart=RestartPlan(), time_scale=ALL_TIME_SCALE))
    return {s.name: s for s in out}


SCENARIOS: dict[str, Scenario] = _scenarios()
SINGLE_FAULTS = tuple(name for name in SCENARIOS if name != "all")


def scenario(name: str) -> Scenario:
    """The scenario called ``name`` (``KeyError`` lists the known ones)."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None


# ---- simulated endpoints ------------------------------------------------------------------------


def _start_on_port(config: SimConfig, port: int) -> SimHandle:
    """Start an endpoint on ``port``, retrying while the previous listener's socket is released."""
    last: Exception | None = None
    for _ in range(REBIND_ATTEMPTS):
        try:
            return start_in_thread(config, port=port)
        except RuntimeError as exc:
            last = exc
            time.sleep(REBIND_WAIT_S)
    raise RuntimeError(f"could not start {config.name} on 127.0.0.1:{port}: {last}")


class Fleet:
    """The endpoints of one scenario; keeps the counters of stopped instances across restarts."""

    def __init__(self, configs: list[SimConfig], ports: list[int]) -> None:
        self.configs = configs
        self.ports = ports
        self.handles: list[SimHandle] = []
        self.retired: list[dict[str, Any]] = []  # /sim/stats of stopped instances
        self.restarts = 0
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        self.handles = [_start_on_port(c, p) for c, p in zip(self.configs, self.ports, strict=True)]

    def restart(self, index: int, down_s: float) -> None:
        handle = self.handles[index]
        # Counters after the stop: a request that arrives while the listener closes is still answered
        # (and so never retried), and must be counted.
        handle.stop()
        self.retired.append(handle.stats())
        self._stop.wait(down_s)
        self.handles[index] = _start_on_port(self.configs[index], self.ports[index])
        self.restarts += 1
        log.info("endpoint %s restarted on port %d", self.configs[index].name, self.ports[index])

    def watch(self, plan: RestartPlan) -> None:
        """In a background thread: restart per ``plan`` once the endpoint has seen enough requests."""

        def run() -> None:
            deadline = time.monotonic() + RESTART_WATCH_S
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    seen = self.handles[plan.endpoint].stats()["requests"]
                except OSError:
                    seen = 0
                if seen >= plan.after_requests:
                    self.restart(plan.endpoint, plan.down_s)
                    return
                self._stop.wait(RESTART_POLL_S)

        self._watcher = threading.Thread(target=run, name="mira-fault-restart", daemon=True)
        self._watcher.start()

    def stats(self) -> list[dict[str, Any]]:
        """``/sim/stats`` of every instance, stopped ones included."""
        return self.retired + [h.stats() for h in self.handles]

    def stop(self) -> None:
        """Stop the watcher and every endpoint, keeping their counters in :attr:`retired`."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(RESTART_DOWN_S + 10)
        handles, self.handles = self.handles, []
        for h in handles:
            h.stop()
        self.retired.extend(h.stats() for h in handles)  # the final counters, taken after each server stopped

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class SimTotals:
    """The simulators' view of a run: what was received, by key."""

    requests: int = 0
    requests_by_id: Counter[str] = field(default_factory=Counter)
    repairs_by_id: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    generation_tokens: int = 0


def sum_stats(stats: list[dict[str, Any]]) -> SimTotals:
    out = SimTotals()
    for s in stats:
        out.requests += s["requests"]
        out.requests_by_id.update(s["requests_by_id"])
        out.repairs_by_id.update(s["repairs_by_id"])
        out.faults.update({k: v for k, v in s["faults"].items() if v})
        out.generation_tokens += s["generation_tokens"]
    return out


# ---- corpus and config ----------------------------------------------------------------------------


def write_documents(path: Path, n: int | None = None, seed: int = 7) -> int:
    """The sample corpus (or ``n`` evenly spread documents of it) as a Delta table; returns the row count."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from mira_spark.devtools.samples import generate_documents

    docs = generate_documents(seed)
    if n is not None and n < len(docs):
        docs = [docs[i * len(docs) // n] for i in range(n)]
    schema = pa.schema([pa.field("doc_id", pa.string(), nullable=False), pa.field("source", pa.string()),
                        pa.field("text", pa.string())])
    path.mkdir(parents=True, exist_ok=True)
    write_deltalake(str(path), pa.Table.from_pylist(docs, schema=schema), mode="overwrite")
    return len(docs)


def scenario_settings(sc: Scenario, work: Path, documents: str, validation: str | None, urls: list[str],
                      wave_size: int = WAVE_SIZE, **overrides: Any) -> Settings:
    """Settings of one scenario run: temporary tables under ``work``, the scenario's pool and scoring."""
    from mira_spark.config import deep_merge, load_settings

    config: dict[str, Any] = {
        "engine": "sail",
        "table_format": "delta",
        "scorers_file": str(default_scorers_file()),
        "tables": {"root": str(work / "tables"), "documents": documents, "validation": validation},
        # The canary guard is off: faults would hit its reference requests too, and this bench counts
        # what the corpus cost (the guard is tested in tests/test_canary.py).
        "scoring": {"wave_size": wave_size, "canary": {"enabled": False}, **sc.scoring},
        "scorers": {"pools": {"text_group_b_pool": {
            "endpoints": [{"url": u} for u in urls], **BENCH_POOL, **sc.pool,
        }}},
    }
    config = deep_merge(config, overrides)
    path = work / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return load_settings(path)


# ---- one scenario ---------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    """What one scenario run did to the documents, and what it cost."""

    scenario: str
    documents_in: int = 0
    routed: int = 0
    lost: int = 0  # input doc_ids with no row in decisions and no row in scores
    unscored: int = 0  # routed doc_ids with no scores row (must equal deferred)
    duplicated: int = 0  # keys with more than one row in scores
    decisions_missing: int = 0
    decisions_duplicated: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # scores rows by error code
    failed_without_reason: int = 0
    parse_status: dict[str, int] = field(default_factory=dict)  # ok scores rows by parse status
    deferred: int = 0
    sim_requests: int = 0  # requests the simulators received
    client_attempts: int = 0  # HTTP sends recorded in raw_outputs (incl. connection refused)
    retries: int = 0  # transport retries: attempts beyond one per send
    repairs: int = 0  # re-asks / follow-ups for malformed, truncated or partial answers
    sim_repair_requests: int = 0  # follow-ups the simulators recognised as slot-only repairs
    wasted_requests: int = 0  # answers produced (billed) but thrown away
    faults: dict[str, int] = field(default_factory=dict)
    reask_tokens_saved: int | None = None  # completion tokens a full re-score would have cost extra
    restarts: int = 0
    stopped: str | None = None
    wall_s: float = 0.0

    @property
    def clean(self) -> bool:
        return (self.lost == 0 and self.duplicated == 0 and self.failed_without_reason == 0
                and self.decisions_missing == 0 and self.decisions_duplicated == 0
                and self.unscored == self.deferred)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reask_savings(rows: list[dict[str, Any]], followups_by_key: Counter[str] | None = None) -> int:
    """Completion tokens saved by asking only for missing slots instead of re-scoring from scratch.

    ``rows``: ok raw outputs with ``repairs > 0`` of a run whose repairs were slot follow-ups. The
    merged answer holds the first answer, then the follow-up lines; the full answer's cost is
    estimated by the simulator's token count of the merged text, the follow-ups' cost as the billed
    completion tokens minus the first answer's. An estimate: the tokenizer is not additive to the token.
    With ``followups_by_key`` (the simulators' ``repairs_by_id``), rows whose repairs were not all slot
    follow-ups (a malformed answer re-asked from scratch) are left out.
    """
    from mira_spark.devtools.simulator.capacity import sim_tokens

    saved = 0
    for r in rows:
        if followups_by_key is not None:
            key = f"{r['doc_id']}|{r['scorer']}|{r['prompt_version']}"
            if followups_by_key[key] != r["repairs"]:
                continue
        text, billed = r["raw_text"] or "", r["completion_tokens"] or 0
        cut = text.find("\nbrief:")
        end = text.find("\n", cut + 1) if cut >= 0 else -1
        first = text if end < 0 else text[:end]
        full = sim_tokens(text) + 1
        followups = billed - (sim_tokens(first) + 1)
        saved += r["repairs"] * full - followups
    return saved


def measure(spark: SparkSession, settings: Settings, run_id: str, sims: SimTotals, reask: bool) -> ScenarioResult:
    """Account for every document of a finished run from the tables (read through Spark)."""
    from pyspark.sql import functions as F

    from mira_spark.store.tables import Tables

    tables = Tables(spark, settings)
    docs = tables.read(tables.documents)
    scores = tables.read("scores")
    decisions = tables.read("decisions").filter(F.col("variant") == settings.selection.variants[0].name)
    raw = tables.read("raw_outputs").filter(F.col("run_id") == run_id)
    res = ScenarioResult(scenario="")
    doc_ids = {r["doc_id"] for r in docs.select("doc_id").collect()}
    res.documents_in = docs.count()
    score_ids = Counter(r["doc_id"] for r in scores.select("doc_id").collect())
    decision_ids = Counter(r["doc_id"] for r in decisions.select("doc_id").collect())
    routed = {r["doc_id"] for r in raw.select("doc_id").distinct().collect()} | set(score_ids)
    res.routed = len(routed)
    res.lost = len(doc_ids - set(score_ids) - set(decision_ids))
    res.duplicated = scores.groupBy("doc_id", "scorer", "prompt_version").count().filter("count > 1").count()
    res.decisions_missing = len(doc_ids - set(decision_ids))
    res.decisions_duplicated = sum(1 for n in decision_ids.values() if n > 1)
    for r in scores.groupBy("status", F.split("error", ":")[0].alias("code")).count().collect():
        if r["status"] == "ok":
            res.ok += r["count"]
        else:
            code = r["code"] or ""
            res.failed[code or "(none)"] = res.failed.get(code or "(none)", 0) + r["count"]
    res.failed_without_reason = scores.filter(
        (F.col("status") != "ok") & (F.col("error").isNull() | (F.trim("error") == ""))
    ).count()
    res.parse_status = {r["parse_status"]: r["count"] for r in
                        scores.filter("status = 'ok'").groupBy("parse_status").count().collect()}
    deferred_ids = {r["doc_id"] for r in raw.filter("status = 'deferred'").select("doc_id").collect()}
    res.deferred = len(deferred_ids - set(score_ids))
    res.unscored = len(routed - set(score_ids))
    agg = raw.filter("attempts > 0").agg(
        F.sum("attempts").alias("attempts"), F.sum("repairs").alias("repairs"),
        F.sum("wasted_requests").alias("wasted"), F.count(F.lit(1)).alias("rows"),
    ).collect()[0]
    res.client_attempts = int(agg["attempts"] or 0)
    res.repairs = int(agg["repairs"] or 0)
    res.retries = res.client_attempts - int(agg["rows"] or 0) - res.repairs
    res.wasted_requests = int(agg["wasted"] or 0)
    res.sim_requests = sims.requests
    res.sim_repair_requests = sum(sims.repairs_by_id.values())
    res.faults = dict(sims.faults)
    if reask and res.sim_repair_requests:
        rows = raw.filter("status = 'ok' AND repairs > 0").select(
            "doc_id", "scorer", "prompt_version", "raw_text", "completion_tokens", "repairs")
        res.reask_tokens_saved = reask_savings([r.asDict() for r in rows.collect()], sims.repairs_by_id)
    return res


def run_scenario(spark: SparkSession, sc: Scenario, work: Path, documents: str, validation: str | None = None,
                 *, wave_size: int = WAVE_SIZE, run_id: str | None = None,
                 time_scale: float | None = None, **overrides: Any) -> tuple[ScenarioResult, SimTotals]:
    """Run the whole pipeline once under ``sc``; returns the accounting and the simulators' counters."""
    from mira_spark.pipeline import run_pipeline

    work.mkdir(parents=True, exist_ok=True)
    run_id = run_id or f"faults-{sc.name}"
    configs = [SimConfig(name=f"{sc.name}-{i}", slots=SLOTS, time_scale=time_scale or sc.time_scale, seed=100 + i, faults=p)
               for i, p in enumerate(sc.profiles)]
    ports = free_ports(len(configs))  # distinct: consecutive free_port() calls may repeat a port
    settings = scenario_settings(sc, work, documents, validation, [f"http://127.0.0.1:{p}/v1" for p in ports],
                                 wave_size=wave_size, **overrides)
    started = time.perf_counter()
    seen: dict[str, Any] = {}

    @contextlib.contextmanager
    def around(stage: str) -> Iterator[None]:
        if stage != "score":  # the endpoints live for the scoring stage only
            yield
            return
        with Fleet(configs, ports) as fleet:
            fleet.start()  # fault windows count from here: just before the first request
            if sc.restart is not None:
                fleet.watch(sc.restart)
            yield
            fleet.stop()  # joins the restart watcher; keeps the counters
            seen["sims"], seen["restarts"] = sum_stats(fleet.stats()), fleet.restarts

    summary = run_pipeline(spark, settings, run_id, around=around)
    sims, restarts = seen["sims"], seen["restarts"]
    policy = settings.scoring.partial_policy
    res = measure(spark, settings, run_id, sims, reask=policy == "reask")
    res.scenario, res.restarts, res.stopped = sc.name, restarts, summary.stopped
    res.wall_s = round(time.perf_counter() - started, 2)
    return res, sims


# ---- command line ---------------------------------------------------------------------------------

COLUMNS = ("scenario", "docs", "lost", "dup", "ok", "failed", "deferred", "sim_req", "retries", "repairs",
           "wasted", "saved_tok", "wall_s")


def _row(r: ScenarioResult) -> list[str]:
    failed = ",".join(f"{k}={v}" for k, v in sorted(r.failed.items())) or "-"
    saved = "-" if r.reask_tokens_saved is None else str(r.reask_tokens_saved)
    return [r.scenario, str(r.documents_in), str(r.lost), str(r.duplicated), str(r.ok), failed, str(r.deferred),
            str(r.sim_requests), str(r.retries), str(r.repairs), str(r.wasted_requests), saved, f"{r.wall_s:.1f}"]


WIDTHS = (17, 4, 4, 3, 4, 44, 8, 7, 7, 7, 6, 9, 6)  # fixed, so rows printed one at a time line up


def format_row(cells: list[str] | tuple[str, ...]) -> str:
    return "  ".join(cell.ljust(w) for cell, w in zip(cells, WIDTHS, strict=True)).rstrip()


def format_table(results: list[ScenarioResult]) -> str:
    return "\n".join([format_row(COLUMNS), *(format_row(_row(r)) for r in results)])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mira-spark bench faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="each",
                   help=f"one of {', '.join(SCENARIOS)}; 'each' = every one in turn (default)")
    p.add_argument("--docs", type=int, default=None, help="score this many documents of the sample (default all)")
    p.add_argument("--wave-size", type=int, default=WAVE_SIZE, help="documents per committed wave")
    p.add_argument("--verbose", action="store_true", help="keep the runner's per-endpoint breaker warnings")
    return p


def _names(choice: str) -> list[str]:
    if choice == "each":
        return list(SCENARIOS)
    scenario(choice)
    return [choice]


def run_many(names: list[str], docs: int | None, wave_size: int) -> Iterator[ScenarioResult]:
    from mira_spark.devtools.samples import write_sample
    from mira_spark.store.engines import sail_session

    with tempfile.TemporaryDirectory(prefix="mira-faults-") as tmp, sail_session("mira-bench-faults") as spark:
        base = Path(tmp)
        write_sample(base / "sample")
        documents = base / "sample" / "documents"
        if docs is not None:
            documents = base / "documents"
            write_documents(documents, docs)
        for name in names:
            res, _ = run_scenario(spark, scenario(name), base / name, str(documents),
                                  str(base / "sample" / "validation"), wave_size=wave_size)
            yield res


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        names = _names(args.scenario)
    except KeyError as exc:
        print(f"bench faults: {exc.args[0]}", file=sys.stderr)
        return 2
    if not args.verbose:  # breaker open/close lines would drown the table; the counts are in it
        logging.getLogger("mira_spark.serving.runner").setLevel(logging.ERROR)
    results: list[ScenarioResult] = []
    print(format_row(COLUMNS), flush=True)
    for res in run_many(names, args.docs, args.wave_size):
        results.append(res)
        print(format_row(_row(res)), flush=True)
    clean = all(r.clean for r in results)
    print(json.dumps({
        "bench": "faults",
        "scenarios": {r.scenario: r.as_dict() for r in results},
        "lost": sum(r.lost for r in results),
        "duplicated": sum(r.duplicated for r in results),
        "failed_without_reason": sum(r.failed_without_reason for r in results),
        "clean": clean,
    }, default=str))
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
