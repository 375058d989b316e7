"""Command line: argument parsing only; every command calls a library function.

``mira-spark run --config conf/local.yaml`` runs the whole job; ``score``, ``parse``, ``reliability`` and
``select`` run one stage each; ``serve-sim`` starts simulated scorer endpoints; ``make-sample`` writes
the sample corpus; ``init-demo DIR`` writes the packaged configs and anchors into ``DIR``; ``report`` writes
the static HTML selection report of a run; ``bench`` prints benchmark figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from mira_spark.errors import EXIT_SPARK_ERROR, EXIT_STOPPED, EXIT_USER_ERROR, RunStoppedError, cli_outcome

log = logging.getLogger(__name__)

__all__ = ["EXIT_SPARK_ERROR", "EXIT_STOPPED", "EXIT_USER_ERROR", "main"]


def _load(args) -> object:
    from mira_spark.config import TRANSIENT_ERRORS, load_settings

    overrides: dict = {}
    if getattr(args, "engine", None):
        overrides["engine"] = args.engine
    if getattr(args, "retry_failed", False):
        overrides["scoring"] = {"rescore_errors": list(TRANSIENT_ERRORS)}
    if getattr(args, "wait_for_lease", False):
        overrides["lease"] = {"wait": True}
    return load_settings(args.config, overrides)


def cmd_run(args) -> int:
    from mira_spark.pipeline import read_run_stats, run_pipeline
    from mira_spark.progress import TerminalProgress
    from mira_spark.runstats import summary_lines
    from mira_spark.store.engines import open_session
    from mira_spark.store.tables import Tables

    settings = _load(args)
    stages = None if args.command == "run" else [args.command]
    with open_session(settings) as spark:
        summary = run_pipeline(spark, settings, args.run_id, stages=stages,
                               reparse_all=args.command == "parse" and args.all, progress=TerminalProgress())
        recorded = read_run_stats(Tables(spark, settings), summary.run_id)  # the summary is what run_stats holds
    if args.command == "parse":
        print(f"parsed {summary.parsed} raw outputs into scores")
    print("\n".join([*summary_lines(summary.run_id, recorded, summary.stopped), f"  wall time    {summary.wall_s:.1f}s"]))
    run_stats = {name: st.record(summary.run_id, st.started_at) for name, st in recorded.items()}  # type: ignore[arg-type]
    print(json.dumps({"summary": summary.as_dict(), "run_stats": run_stats}, default=str))
    if summary.stopped:
        raise RunStoppedError(summary.stopped)
    return 0


def cmd_report(args) -> int:
    from mira_spark.selection.report import write_report
    from mira_spark.store.engines import open_session

    settings = _load(args)
    with open_session(settings) as spark:
        page = write_report(spark, settings, args.out)
    print(page)
    return 0


def cmd_serve_sim(argv: list[str]) -> int:
    from mira_spark.devtools.simulator.launcher import serve_sim_main

    return serve_sim_main(argv)


def cmd_make_sample(argv: list[str]) -> int:
    from mira_spark.devtools.samples import make_sample_main

    return make_sample_main(argv)


def cmd_init_demo(argv: list[str]) -> int:
    from mira_spark.resources import write_demo

    parser = argparse.ArgumentParser(
        prog="mira-spark init-demo",
        description="Write the packaged conf/ and anchors/ into DIR (the repository's layout); then "
                    "`mira-spark make-sample --out DIR/data/sample` and `mira-spark run --config DIR/conf/local.yaml`.")
    parser.add_argument("directory", help="where conf/ and anchors/ are written (created if missing)")
    parser.add_argument("--force", action="store_true", help="overwrite files that already exist")
    args = parser.parse_args(argv)
    config = write_demo(args.directory, overwrite=args.force)
    print(config)
    return 0


BENCHES = {
    "parse": "mira_spark.devtools.bench.parse",
    "throughput": "mira_spark.devtools.bench.throughput",
    "client-overhead": "mira_spark.devtools.bench.client_overhead",
    "faults": "mira_spark.devtools.bench.faults",
    "constrained": "mira_spark.devtools.bench.constrained",
    "table-path": "mira_spark.devtools.bench.table_path",
    "routing": "mira_spark.devtools.bench.routing",
    "select": "mira_spark.devtools.bench.select",
    "soak": "mira_spark.devtools.bench.soak",
    "samples": "mira_spark.devtools.bench.samples",
    "expected": "mira_spark.devtools.bench.expected",
}


def cmd_bench(argv: list[str]) -> int:
    import importlib

    if not argv or argv[0] not in BENCHES:
        print(f"usage: mira-spark bench {{{','.join(BENCHES)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHES[argv[0]])
    return module.main(argv[1:])


def cmd_estimate(argv: list[str]) -> int:
    from mira_spark.estimate import main as estimate_main

    return estimate_main(argv)


PASSTHROUGH = {"serve-sim": cmd_serve_sim, "make-sample": cmd_make_sample, "init-demo": cmd_init_demo,
               "bench": cmd_bench, "estimate": cmd_estimate}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mira-spark", description=__doc__)
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default)")
    from mira_spark.pipeline import STAGES

    sub = parser.add_subparsers(dest="command", required=True)
    stage_commands = [("run", "the whole pipeline: " + " -> ".join(s.name for s in STAGES))]
    stage_commands += [(s.name, (s.run.__doc__ or s.name).strip().splitlines()[0]) for s in STAGES]
    for name, help_text in stage_commands:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="conf/<name>.yaml")
        p.add_argument("--engine", choices=["sail", "local", "connect", "active"], help="override engine:")
        p.add_argument("--run-id", default=None, help="id recorded in raw_outputs and run_stats")
        p.add_argument("--wait-for-lease", action="store_true",
                       help="when another live run holds the table root, wait for it instead of refusing")
        if name in ("run", "score"):
            p.add_argument("--retry-failed", action="store_true",
                           help="send again documents whose scoring failed transiently (5xx, 429, timeouts)")
        if name == "parse":
            p.add_argument("--all", action="store_true", help="re-parse every raw output of this prompt version")
    report = sub.add_parser("report", help="write the run's selection report: one HTML page with PNG plots")
    report.add_argument("--config", required=True, help="conf/<name>.yaml of the run")
    report.add_argument("--engine", choices=["sail", "local", "connect", "active"], help="override engine:")
    report.add_argument("--out", default=None, help="directory for index.html and its PNGs "
                                                    "(default: <tables.root>/report)")
    for name, help_text in [
        ("serve-sim", "start simulated scorer endpoints (stand-ins for vLLM; see --help)"),
        ("make-sample", "write the sample corpus and validation table"),
        ("init-demo", "write the packaged demo configs (conf/) and anchors (anchors/) into a directory"),
        ("bench", "benchmarks: parse | throughput | routing | client-overhead | faults | table-path | constrained | "
                  "select | soak | samples | expected"),
        ("estimate", "GPU-hours and wall time for a documents table, before anything is sent"),
    ]:
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    level = "WARNING"
    if len(argv) >= 2 and argv[0] == "--log-level":
        level, argv = argv[1], argv[2:]
    logging.basicConfig(level=getattr(logging, level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in PASSTHROUGH:
        return PASSTHROUGH[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    from mira_spark.serving.secrets import install_redaction

    install_redaction(log)
    try:
        return cmd_report(args) if args.command == "report" else cmd_run(args)
    except Exception as exc:
        outcome = cli_outcome(exc)  # by type: MiraError subclasses carry their exit code and label
        if outcome is None:
            raise  # a bug of ours: the traceback is the useful report
        if not isinstance(exc, RunStoppedError):
            log.debug("full error behind the message below", exc_info=True)
        code, line = outcome
        print(line, file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
