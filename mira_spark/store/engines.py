"""Spark sessions for the four engines: Sail (embedded), classic local, Spark Connect URL, active.

Takes ``Settings.engine`` (and ``connect_url``); gives a SparkSession inside a context manager that
cleans up only what it started. Pipeline code uses the DataFrame API that Spark Connect supports, so the
same stages run on all four. Nothing here runs at import time.

Classic ``local`` with ``table_format: delta`` is built with Delta Lake's SQL extension and catalog and
its jars: ``delta_jars`` from the config (``spark.jars``), else ``io.delta:delta-spark_<spark>_2.13:<v>``
fetched from Maven (``spark.jars.packages``, named as delta-spark's ``configure_spark_with_delta_pip``
names it). The session is probed (the Delta catalog is resolved) before it is handed out, so missing
jars stop the run before any work with one :class:`EngineError` line, not a JVM trace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from mira_spark.errors import EngineError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from mira_spark.config import Settings

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
DELTA_VERSION = "4.4.1"  # the `classic` extra's pin (pyproject.toml); an installed delta-spark's version wins
DELTA_SCALA = "2.13"
DRAIN_TIMEOUT_S = 5.0  # waiting for a failed JVM's last output
# Sail's native engine allocates with its own mimalloc (3.x), which keeps a freed page committed for
# `purge_delay` ms (1,000 by default) and purges it only when the thread owning it allocates again, so the
# memory of past queries stays resident in the engine's idle worker threads; and it backs its arena with
# transparent huge pages, where a purged 64 KiB page inside a 2 MiB huge page stays resident. Measured on
# Sail alone (12 cycles of append + mapInArrow + MERGE of 6,000 rows, RSS after gc and malloc_trim):
# 276 -> 408 MB by default, 275 -> 318 MB with purge_delay 0; in the soak (60,000 documents, waves of
# 6,000) the engine's arena held 65 MB after wave 1 with purge_delay 0 and 25 MB with huge pages off too.
# mimalloc reads these when pysail's library loads (pyarrow's own mimalloc when its pool is first used);
# a user's own setting wins.
SAIL_ALLOCATOR_ENV = {"MIMALLOC_PURGE_DELAY": "0", "MIMALLOC_ALLOW_THP": "0"}


def delta_version() -> str:
    """The installed delta-spark's version, else the version the ``classic`` extra pins."""
    from importlib import metadata

    try:
        return metadata.version("delta-spark")
    except metadata.PackageNotFoundError:
        return DELTA_VERSION


def delta_package(version: str, spark_version: str) -> str:
    """Maven coordinate of the Delta jar for a Spark version, as delta-spark's pip helper names it.

    >>> delta_package("4.4.1", "4.2.0")
    'io.delta:delta-spark_4.2_2.13:4.4.1'
    """
    major_minor = ".".join(spark_version.split(".")[:2])
    return f"io.delta:delta-spark_{major_minor}_{DELTA_SCALA}:{version}"


def delta_confs(jars: Sequence[str], package: str) -> dict[str, str]:
    """Spark confs of a classic session with Delta: extension, catalog, and local jars or the package.

    >>> sorted(delta_confs(["/j/a.jar", "/j/b.jar"], "io.delta:x:1"))[:2]
    ['spark.jars', 'spark.sql.catalog.spark_catalog']
    >>> delta_confs([], "io.delta:x:1")["spark.jars.packages"]
    'io.delta:x:1'
    """
    confs = {"spark.sql.extensions": DELTA_EXTENSION, "spark.sql.catalog.spark_catalog": DELTA_CATALOG}
    if jars:
        confs["spark.jars"] = ",".join(jars)
    else:
        confs["spark.jars.packages"] = package
    return confs


def delta_jars_message(package: str, jars: Sequence[str], reason: str, log_path: str | None) -> str:
    """The one line a user gets when the Delta jars cannot be fetched or loaded."""
    version = package.rsplit(":", 1)[-1]
    artifact = package.split(":")[1]
    where = (f"the jars listed in delta_jars ({', '.join(jars)}) do not provide {DELTA_CATALOG}" if jars
             else f"{package} could not be fetched")
    tail = f"; Spark's output is in {log_path}" if log_path else ""
    return (f"engine: local with table_format: delta needs the Delta Lake jars, and {where} ({reason}). "
            f"Download {artifact}-{version}.jar and delta-storage-{version}.jar and list their paths under "
            "delta_jars: in the run config, or run on a cluster that has Delta (engine: active with "
            f"spark-submit --packages {package} or --jars, or Databricks){tail}")


def _resolver_reason(output: str) -> str:
    """The informative part of a failed Ivy resolution (or of any JVM start failure)."""
    hosts = sorted(set(re.findall(r"Host (\S+) not found", output)))
    unresolved = re.search(r"unresolved dependency: ([^\]\n]+)", output)
    parts = []
    if unresolved:
        parts.append(f"unresolved dependency {unresolved.group(1).strip()}")
    if hosts:
        parts.append(f"no route to {', '.join(hosts)}")
    if parts:
        return "; ".join(parts)
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line.startswith(("\tat ", "WARNING"))]
    return lines[-1][:300] if lines else "the JVM exited without output"


class _HeldStderr:
    """Route fd 2 through a pipe while the JVM starts: what it prints is held, then passed through once
    the session is up, or kept out of the terminal (and saved to a file) when the start fails.

    The JVM inherits fd 2 when pyspark launches it, so this is the only place its resolver output can be
    caught; Python's own fd 2 is restored as soon as the JVM runs.
    """

    def __init__(self) -> None:
        self._real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._held = bytearray()
        self._passing = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(read_end,), name="mira-jvm-stderr", daemon=True)
        self._thread.start()

    def _pump(self, read_end: int) -> None:
        while chunk := os.read(read_end, 65536):
            with self._lock:
                if self._passing:
                    os.write(self._real, chunk)
                else:
                    self._held += chunk
        os.close(read_end)

    def restore(self) -> None:
        """Give Python its stderr back (the JVM keeps writing into the pipe)."""
        os.dup2(self._real, 2)

    def pass_through(self) -> None:
        """The session is up: print what was held and pass the JVM's later output straight on."""
        with self._lock:
            os.write(self._real, bytes(self._held))
            self._held.clear()
            self._passing = True

    def failed(self, drain: bool = True) -> tuple[str, str]:
        """The start failed: ``(held output, path of the file it was saved to)``; ``drain``: the JVM exited,
        wait for its last bytes."""
        if drain:
            self._thread.join(DRAIN_TIMEOUT_S)
        with self._lock:
            text = self._held.decode("utf-8", "replace")
        fd, path = tempfile.mkstemp(prefix="mira-spark-delta-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return text, path


def prepare_sail_allocator() -> bool:
    """Set :data:`SAIL_ALLOCATOR_ENV` (unless already set) before pysail's native library is loaded.

    Returns False when that library is already loaded in this process: its allocator has read its options
    and the setting takes effect only in a new process.
    """
    import sys

    for key, value in SAIL_ALLOCATOR_ENV.items():
        os.environ.setdefault(key, value)
    if "pysail._native" in sys.modules:
        log.debug("engine sail: pysail already loaded; %s applies to new processes only", SAIL_ALLOCATOR_ENV)
        return False
    return True


@contextlib.contextmanager
def sail_session(app_name: str = "mira-spark") -> Iterator[SparkSession]:
    """Start an in-process Sail Spark Connect server on 127.0.0.1 (free port) and connect to it."""
    prepare_sail_allocator()
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
def local_session(app_name: str = "mira-spark", cores: str = "*",
                  delta_jars: Sequence[str] | None = None) -> Iterator[SparkSession]:
    """Classic Spark ``local[cores]`` (needs Java 17): parquet when ``delta_jars`` is None, else Delta with
    those local jars (an empty list: the Maven package); raises :class:`EngineError` when Delta does not load.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)
    os.environ.pop("SPARK_REMOTE", None)
    import pyspark
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # The composite's 15-dimension expression compiles to generated methods over the JVM's 8,000-byte JIT
        # limit, which then run interpreted; at this limit Spark falls back from whole-stage codegen for those
        # stages only. Measured: bench select, 1M rows, 176.7 s -> 69.7 s, same kept sets (benchmarks/README.md).
        .config("spark.sql.codegen.hugeMethodLimit", "8000")
    )
    if delta_jars is None:
        spark = builder.getOrCreate()
    else:
        package = delta_package(delta_version(), pyspark.__version__)
        for key, value in delta_confs(delta_jars, package).items():
            builder = builder.config(key, value)
        spark = _start_with_delta(builder, list(delta_jars), package)
    try:
        yield spark
    finally:
        spark.stop()


def _start_with_delta(builder: SparkSession.Builder, jars: list[str], package: str) -> SparkSession:
    """Start the session and resolve the Delta catalog; the JVM's output is held until both worked."""
    held = _HeldStderr()
    try:
        try:
            spark = builder.getOrCreate()
        finally:
            held.restore()
    except Exception as exc:  # the JVM did not start (e.g. Maven unreachable: JAVA_GATEWAY_EXITED)
        output, path = held.failed()
        raise EngineError(delta_jars_message(package, jars, _resolver_reason(output or str(exc)), path)) from None
    try:
        spark.catalog.currentCatalog()  # instantiates spark_catalog, i.e. loads DeltaCatalog from the jars
    except Exception as exc:
        spark.stop()
        output, path = held.failed(drain=False)  # the JVM outlives stop(): nothing more to wait for
        missing = "class not found" if "ClassNotFoundException" in str(exc) + output else type(exc).__name__
        raise EngineError(delta_jars_message(package, jars, f"{DELTA_CATALOG}: {missing}", path)) from None
    held.pass_through()
    return spark


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
        cm = local_session(delta_jars=list(settings.delta_jars) if settings.table_format == "delta" else None)
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
