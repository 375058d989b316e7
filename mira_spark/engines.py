"""Spark sessions for the four engines: Sail (embedded), classic local, Spark Connect URL, active.

Takes ``Settings.engine`` (and ``connect_url``); gives a SparkSession inside a context manager that
cleans up only what it started. Pipeline code uses the DataFrame API that Spark Connect supports, so the
same stages run on all four. Nothing here runs at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from mira_spark.config import Settings

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The requested engine cannot start; the message says what to install or configure."""


@contextlib.contextmanager
def sail_session(app_name: str = "mira-spark") -> Iterator[SparkSession]:
    """Start an in-process Sail Spark Connect server on 127.0.0.1 (free port) and connect to it."""
    try:
        from pysail.spark import SparkConnectServer
    except ImportError:
        raise EngineError("engine: sail needs pysail; install with `pip install 'mira-spark[sail]'`") from None
    from pyspark.sql import SparkSession

    # Sail logs every no-op hint at WARN; keep its log to errors unless the user asked otherwise.
    os.environ.setdefault("RUST_LOG", "error")
    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    _, port = server.listening_address
    # create(), not getOrCreate(): a second caller in the same process (a test suite's shared session, a
    # benchmark) must get its own session, and stopping ours must not stop theirs.
    spark = SparkSession.builder.remote(f"sc://127.0.0.1:{port}").appName(app_name).create()
    log.info("engine sail: in-process Spark Connect server on 127.0.0.1:%s", port)
    try:
        yield spark
    finally:
        with contextlib.suppress(Exception):
            spark.stop()
        with contextlib.suppress(Exception):
            server.stop()


@contextlib.contextmanager
def local_session(app_name: str = "mira-spark", cores: str = "*") -> Iterator[SparkSession]:
    """Classic Spark ``local[cores]`` (needs Java 17). Used for the parquet parity suite."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)
    os.environ.pop("SPARK_REMOTE", None)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    try:
        yield spark
    finally:
        spark.stop()


@contextlib.contextmanager
def connect_session(url: str, app_name: str = "mira-spark") -> Iterator[SparkSession]:
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(url).appName(app_name).getOrCreate()
    try:
        yield spark
    finally:
        with contextlib.suppress(Exception):
            spark.stop()


@contextlib.contextmanager
def active_session() -> Iterator[SparkSession]:
    """The session Databricks or spark-submit already created; never stopped here."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    if spark is None:
        raise EngineError(
            "engine: active found no running SparkSession; use it from a Databricks notebook/job or "
            "spark-submit, or choose engine: sail | local | connect"
        )
    yield spark


@contextlib.contextmanager
def open_session(settings: Settings) -> Iterator[SparkSession]:
    """Session for ``settings.engine``."""
    if settings.engine == "sail":
        cm = sail_session()
    elif settings.engine == "local":
        cm = local_session()
    elif settings.engine == "connect":
        cm = connect_session(settings.connect_url or "")
    else:
        cm = active_session()
    with cm as spark:
        yield spark


def default_parallelism(spark: SparkSession) -> int:
    """Tasks that run at once: ``spark.default.parallelism`` when set, else this machine's cores."""
    try:
        value = spark.conf.get("spark.default.parallelism", None)
    except Exception:  # some Connect servers refuse unknown keys
        value = None
    if value and str(value).isdigit():
        return max(int(value), 1)
    return max(os.cpu_count() or 2, 1)
