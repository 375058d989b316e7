"""Routing carries each document's token count: the documents' own column where given, else the estimate."""

from __future__ import annotations

from typing import Any

import pytest

from mira_spark.ingest.documents import InputError, check_documents, route
from mira_spark.prompting.tokens import estimate_tokens

pytestmark = pytest.mark.spark

TEXTS = {"a": "hello world " * 50, "b": "页面设计与交互" * 20, "c": "<div>x</div>" * 30, "d": ""}


def test_tokens_come_from_the_column_where_given_else_the_estimate(spark: Any) -> None:
    rows = [("a", "web", TEXTS["a"], 111), ("b", "web", TEXTS["b"], None), ("c", "other", TEXTS["c"], 7),
            ("d", "web", TEXTS["d"], None)]
    df = spark.createDataFrame(rows, "doc_id string, source string, text string, n_tokens int")
    docs = check_documents(df, "docs", tokens_column="n_tokens")
    got = {r["doc_id"]: r for r in route(spark, docs, {"web": "g"}).collect()}
    assert (got["a"]["tokens"], got["a"]["tokens_estimated"]) == (111, False)
    assert (got["b"]["tokens"], got["b"]["tokens_estimated"]) == (estimate_tokens(TEXTS["b"]), True)
    assert got["b"]["tokens"] > 100  # ~1 token per CJK character: the estimate really ran
    assert (got["c"]["tokens"], got["c"]["reason"]) == (7, "no_scorer")  # rejected rows keep their count
    assert (got["d"]["tokens"], got["d"]["tokens_estimated"]) == (0, True)

    plain = {r["doc_id"]: r for r in route(spark, check_documents(df, "docs"), {"web": "g"}).collect()}
    assert all(r["tokens_estimated"] for r in plain.values())
    assert plain["a"]["tokens"] == estimate_tokens(TEXTS["a"]) != 111


@pytest.mark.parametrize(("column", "message"), [("missing", "has no column 'missing'"),
                                                 ("text", "expected an integer token count")])
def test_a_bad_tokens_column_is_named(spark: Any, column: str, message: str) -> None:
    df = spark.createDataFrame([("a", "web", "x")], "doc_id string, source string, text string")
    with pytest.raises(InputError, match=message):
        check_documents(df, "docs", tokens_column=column)
