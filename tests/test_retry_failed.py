"""`--retry-failed`: failed rows with transient error codes become pending again; nothing else does."""

from __future__ import annotations

from typing import Any

import pytest

from mira_spark.cli import build_parser
from mira_spark.config import TRANSIENT_ERRORS
from mira_spark.pipeline import pending_documents

pytestmark = pytest.mark.spark


def test_only_transient_failures_are_rescored(spark: Any) -> None:
    routed = spark.createDataFrame(
        [(d, "html_cpt", "g", "t") for d in ("ok1", "f503", "ftimeout", "fempty", "f400", "new")],
        "doc_id string, source string, scorer string, text string",
    )
    versions = spark.createDataFrame([("g", "v1")], "scorer string, prompt_version string")
    scores = spark.createDataFrame(
        [
            ("ok1", "g", "v1", "ok", None),
            ("f503", "g", "v1", "failed", "http_503: Service Unavailable"),
            ("ftimeout", "g", "v1", "failed", "timeout: read timed out"),
            ("fempty", "g", "v1", "failed", "empty_text"),
            ("f400", "g", "v1", "failed", "http_400: bad request"),
        ],
        "doc_id string, scorer string, prompt_version string, status string, error string",
    )
    plain = {r["doc_id"] for r in pending_documents(routed, scores, versions).collect()}
    assert plain == {"new"}
    retry = {r["doc_id"] for r in pending_documents(routed, scores, versions, TRANSIENT_ERRORS).collect()}
    assert retry == {"new", "f503", "ftimeout"}


def test_cli_flag_parses() -> None:
    args = build_parser().parse_args(["run", "--config", "conf/local.yaml", "--retry-failed"])
    assert args.retry_failed is True
