"""spark-submit entry point (YARN, Kubernetes, Databricks spark_python_task): argument parsing only.

    spark-submit --master yarn --archives mira_env.tar.gz#env \
        --conf spark.pyspark.python=./env/bin/python jobs/mira_job.py --config conf/yarn.yaml

The session is the one spark-submit creates (engine: active); the job itself is ``pipeline.run_pipeline``.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="conf/<name>.yaml")
    parser.add_argument("--run-id", default=None)
    args = parser.parse_args(argv)

    from pyspark.sql import SparkSession

    from mira_spark.config import load_settings
    from mira_spark.pipeline import run_pipeline

    settings = load_settings(args.config, {"engine": "active"})
    spark = SparkSession.builder.appName("mira-spark").getOrCreate()
    summary = run_pipeline(spark, settings, args.run_id)
    print(json.dumps({"summary": summary.as_dict()}, default=str))
    return 3 if summary.stopped else 0


if __name__ == "__main__":
    sys.exit(main())
