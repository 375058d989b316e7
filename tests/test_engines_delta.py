"""Delta Lake on classic Spark (engine: local, table_format: delta): confs, config key, and the failure line.

Maven is unreachable on the test machine and no Delta jar is installed, so the two classic-Spark runs
here are the failure paths a user without the jars meets: ``spark.jars.packages`` cannot be resolved
(the JVM exits at start), and ``delta_jars`` lists a jar that does not hold Delta (the session starts,
the catalog probe fails). Both must stop before any work - no chat request reaches the scorer, no
table is written - with one line naming the fix, and no JVM stack trace on the terminal. Each run is
one ``mira-spark run`` subprocess (classic Spark's JVM and the suite's Sail session do not share a
process well); they need Java 17.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config

from mira_spark.config import ConfigError, load_settings
from mira_spark.store.engines import (
    DELTA_CATALOG,
    DELTA_EXTENSION,
    _resolver_reason,
    delta_confs,
    delta_jars_message,
    delta_package,
    delta_version,
)

IVY_FAILURE = """:: resolving dependencies :: org.apache.spark#spark-submit-parent-1;1.0
	Host repo1.maven.org not found. url=https://repo1.maven.org/maven2/io/delta/x.pom
	Host repos.spark-packages.org not found. url=https://repos.spark-packages.org/io/delta/x.pom
		:: io.delta#delta-spark_4.2_2.13;4.4.1: not found
Exception in thread "main" java.lang.RuntimeException: [unresolved dependency: io.delta#delta-spark_4.2_2.13;4.4.1: not found]
	at org.apache.spark.util.MavenUtils$.resolveMavenCoordinates(MavenUtils.scala:539)
"""


# ---------------------------------------------------------------- pure: confs, names, message


def test_package_name_matches_delta_spark_pip_helper() -> None:
    delta = pytest.importorskip("delta", reason="delta-spark is in the classic extra (make install adds it)")
    import pyspark
    from pyspark.sql import SparkSession

    builder = delta.configure_spark_with_delta_pip(SparkSession.Builder())
    assert builder._options["spark.jars.packages"] == delta_package(delta_version(), pyspark.__version__)


def test_confs_carry_extension_catalog_and_jars_or_package() -> None:
    with_jars = delta_confs(["/j/delta-spark.jar", "/j/delta-storage.jar"], "io.delta:p:1")
    assert with_jars == {"spark.sql.extensions": DELTA_EXTENSION, "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
                         "spark.jars": "/j/delta-spark.jar,/j/delta-storage.jar"}
    fetched = delta_confs([], "io.delta:p:1")
    assert fetched["spark.jars.packages"] == "io.delta:p:1" and "spark.jars" not in fetched


def test_resolver_reason_names_the_dependency_and_hosts() -> None:
    reason = _resolver_reason(IVY_FAILURE)
    assert reason == ("unresolved dependency io.delta#delta-spark_4.2_2.13;4.4.1: not found; "
                      "no route to repo1.maven.org, repos.spark-packages.org")
    assert _resolver_reason("") == "the JVM exited without output"


def test_failure_message_is_one_line_with_the_fixes() -> None:
    msg = delta_jars_message("io.delta:delta-spark_4.2_2.13:4.4.1", [], "unresolved", "/tmp/x.log")
    assert "\n" not in msg
    for part in ("could not be fetched", "delta-spark_4.2_2.13-4.4.1.jar", "delta-storage-4.4.1.jar",
                 "delta_jars:", "--packages io.delta:delta-spark_4.2_2.13:4.4.1", "/tmp/x.log"):
        assert part in msg, part


# ---------------------------------------------------------------- config key


def _config(tmp_path: Path, sample_dir: Path, urls: list[str], **overrides: Any) -> Path:
    return write_config(tmp_path / "run.yaml", tmp_path / "tables", str(sample_dir / "documents"),
                        str(sample_dir / "validation"), urls, **{"engine": "local", "table_format": "delta",
                                                                  **overrides})


def test_delta_jars_are_resolved_against_the_config_file(tmp_path: Path) -> None:
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / "delta-spark.jar").write_bytes(b"PK")
    cfg = _config(tmp_path, tmp_path, ["http://127.0.0.1:9/v1"], delta_jars=["jars/delta-spark.jar"])
    assert load_settings(cfg).delta_jars == (str(jars / "delta-spark.jar"),)


def test_missing_delta_jar_is_a_config_error_naming_key_and_file(tmp_path: Path) -> None:
    cfg = _config(tmp_path, tmp_path, ["http://127.0.0.1:9/v1"], delta_jars=["jars/nope.jar"])
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    text = str(err.value)
    assert str(cfg) in text and "delta_jars" in text and str(tmp_path / "jars" / "nope.jar") in text


def test_delta_jars_outside_classic_delta_is_a_config_error(tmp_path: Path) -> None:
    jar = tmp_path / "d.jar"
    jar.write_bytes(b"PK")
    cfg = _config(tmp_path, tmp_path, ["http://127.0.0.1:9/v1"], delta_jars=[str(jar)], engine="sail")
    with pytest.raises(ConfigError, match="delta_jars is read only with engine: local"):
        load_settings(cfg)


# ---------------------------------------------------------------- classic Spark: stops before any work


def _run_cli(cfg: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    return subprocess.run([sys.executable, "-m", "mira_spark.cli", "run", "--config", str(cfg)],
                          capture_output=True, text=True, env=env, timeout=300)


def _assert_stopped_before_work(proc: subprocess.CompletedProcess[str], sim: Any, tables: Path) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]  # the message, nothing held back from the JVM
    assert "\tat " not in out and "Exception in thread" not in out and "Traceback" not in out
    assert sim.stats()["requests"] == 0  # nothing was sent
    assert not tables.exists() or not any(tables.iterdir())  # nothing was written
    return lines[0]


@pytest.mark.timeout(300)
@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="classic Spark needs Java 17")
def test_unfetchable_package_stops_before_any_work(tmp_path: Path, sample_dir: Path) -> None:
    from mira_spark.devtools.simulator.launcher import start_in_thread
    from mira_spark.devtools.simulator.server import SimConfig

    with start_in_thread(SimConfig(name="delta-probe", time_scale=2000.0)) as sim:
        sim.reset()
        proc = _run_cli(_config(tmp_path, sample_dir, [sim.url]))
        line = _assert_stopped_before_work(proc, sim, tmp_path / "tables")
    assert "needs the Delta Lake jars" in line and "could not be fetched" in line
    assert "unresolved dependency io.delta#delta-spark_" in line and "delta_jars:" in line
    log_path = Path(line.rsplit("Spark's output is in ", 1)[1])
    assert "unresolved dependency" in log_path.read_text()  # the JVM's output is kept, not printed
    log_path.unlink()


@pytest.mark.timeout(300)
@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="classic Spark needs Java 17")
def test_local_jars_without_delta_stop_before_any_work(tmp_path: Path, sample_dir: Path) -> None:
    import pyspark

    from mira_spark.devtools.simulator.launcher import start_in_thread
    from mira_spark.devtools.simulator.server import SimConfig

    # A real jar that holds no Delta classes (already on Spark's classpath, so harmless).
    not_delta = sorted((Path(pyspark.__file__).parent / "jars").glob("commons-lang3-*.jar"))[0]
    with start_in_thread(SimConfig(name="delta-probe", time_scale=2000.0)) as sim:
        proc = _run_cli(_config(tmp_path, sample_dir, [sim.url], delta_jars=[str(not_delta)]))
        line = _assert_stopped_before_work(proc, sim, tmp_path / "tables")
    assert f"do not provide {DELTA_CATALOG}" in line and not_delta.name in line
    Path(line.rsplit("Spark's output is in ", 1)[1]).unlink()
