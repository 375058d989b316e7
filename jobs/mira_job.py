"""spark-submit / Databricks entry point: the session the platform provides, then the pipeline. Argument parsing only.

    mira_job.py [run|<stage of mira_spark.pipeline.STAGES>] --config conf/yarn.yaml [--run-id ID] [--table-format parquet]

* YARN / Kubernetes (``jobs/yarn/submit.sh``): ``spark-submit ... jobs/mira_job.py --config conf/yarn.yaml``.
* Databricks (``jobs/databricks.yml``): one ``spark_python_task`` per stage, ``score`` -> ``parse`` ->
  ``reliability`` -> ``samples`` -> ``select``, all with the job's run id.

The session is the one spark-submit or Databricks creates (``getOrCreate``; engine: active). ``run`` (the
default) is ``pipeline.run_pipeline``; a single stage is handed to the ``mira-spark`` CLI
(``mira-spark <stage> --config ... --engine active``), which finds that session active.
``--table-format parquet`` is for ``spark-submit --master local`` without Delta jars (tests) only.
"""

from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    from mira_spark.pipeline import STAGE_NAMES  # the one stage list


    parser = argparse.ArgumentParser(prog="mira_job.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", nargs="?", default="run", choices=["run", *STAGE_NAMES], help="stage to run (default: run)")
    parser.add_argument("--config", required=True, help="conf/<name>.yaml")
    parser.add_argument("--run-id", default=None, help="id recorded in raw_outputs and run_stats")
    parser.add_argument("--table-format", choices=["delta", "parquet"], default=None,
                        help="override table_format: (parquet: spark-submit --master local without Delta jars)")
    parser.add_argument("--all", action="store_true", help="parse: re-parse every raw output")
    parser.add_argument("--retry-failed", action="store_true", help="run/score: re-send transient failures")
    return parser


def cli_args(args: argparse.Namespace) -> list[str]:
    """The ``mira-spark`` command line a single stage is handed to."""
    argv = [args.stage, "--config", args.config, "--engine", "active"]
    if args.run_id:
        argv += ["--run-id", args.run_id]
    if args.all:
        argv.append("--all")
    if args.retry_failed:
        argv.append("--retry-failed")
    return argv


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table_format and args.stage != "run":
        print("mira_job.py: --table-format applies to the whole run only", file=sys.stderr)
        return 2

    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName(f"mira-spark {args.stage}").getOrCreate()
    if args.stage != "run":
        from mira_spark.cli import main as cli_main

        return cli_main(cli_args(args))

    from mira_spark.config import TRANSIENT_ERRORS, load_settings
    from mira_spark.pipeline import run_pipeline

    overrides: dict = {"engine": "active"}
    if args.table_format:
        overrides["table_format"] = args.table_format
    if args.retry_failed:
        overrides["scoring"] = {"rescore_errors": list(TRANSIENT_ERRORS)}
    settings = load_settings(args.config, overrides)
    summary = run_pipeline(spark, settings, args.run_id)
    print(json.dumps({"summary": summary.as_dict()}, default=str))
    return 3 if summary.stopped else 0


if __name__ == "__main__":
    sys.exit(main())
