"""jobs/yarn/submit.sh, the script a YARN user runs, run here with --master local[2] on classic Spark.

Same script, same packed env: the env is built with jobs/yarn/pack_env.sh (venv-pack) once per test session
(or taken from $MIRA_YARN_ENV_ARCHIVE), the driver runs from it unpacked, the Python workers from the
``--archives ...#environment`` copy Spark unpacks for them. The job runs from a directory outside the
checkout with no PYTHONPATH, so ``mira_spark`` can only come from the packed env. Delta jars are not
reachable here (Maven is blocked), so ``--no-delta`` runs on parquet; the Delta flags are checked on the
dry-run command line instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import write_config

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SUBMIT = REPO / "jobs" / "yarn" / "submit.sh"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def packed_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get("MIRA_YARN_ENV_ARCHIVE")
    if prebuilt and Path(prebuilt).is_file():
        return Path(prebuilt)
    if not (BIN / "venv-pack").exists():
        pytest.fail("venv-pack is missing: `make install` installs the yarn extra")
    out = tmp_path_factory.mktemp("yarn") / "mira_env.tar.gz"
    env = {**os.environ, "PYTHON": sys.executable, "PIP_ARGS": "--no-compile",
           "MIRA_ENV_DIR": str(out.parent / "env"), "VENV_PACK": str(BIN / "venv-pack")}
    started = time.perf_counter()
    proc = subprocess.run([str(REPO / "jobs" / "yarn" / "pack_env.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"packed env: {out.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - started:.0f}s")
    shutil.rmtree(out.parent / "env")  # only the archive is used from here on
    return out


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "SPARK_REMOTE",
                        "SPARK_CONNECT_MODE_ENABLED", "MIRA_API_KEY")}
    import pyspark

    # The "cluster's" Spark: the pip pyspark of this venv (its bin/spark-submit, python/lib/pyspark.zip).
    return {**env, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_HOME": str(Path(pyspark.__file__).parent)}


def _python_errors(stderr: str) -> str:
    """The Python part of spark-submit's stderr (the JVM's INFO lines and stack frames dropped)."""
    keep = [line for line in stderr.splitlines() if " INFO " not in line and not line.lstrip().startswith("at ")]
    return "\n".join(keep)[-4000:]


def test_packed_env_holds_mira_spark_without_pyspark(packed_env: Path) -> None:
    with tarfile.open(packed_env) as tar:
        names = tar.getnames()
    site = [n for n in names if "/site-packages/" in n]
    assert any("/site-packages/mira_spark/pipeline.py" in n for n in site)
    assert any("/site-packages/pyarrow/" in n for n in site) and any("/site-packages/aiohttp/" in n for n in site)
    assert not any("/site-packages/pyspark/" in n for n in site), "the cluster's pyspark must not be shadowed"
    assert "bin/python" in names


def test_submit_local_runs_the_job_from_the_packed_env(packed_env: Path, sim_pool: list[Any],
                                                       tmp_path: Path) -> None:
    from mira_spark.devtools.samples import write_sample

    sample = tmp_path / "sample"
    write_sample(sample, fmt="parquet")
    (tmp_path / "conf").mkdir()
    config = write_config(tmp_path / "conf" / "yarn_local.yaml", tmp_path / "run", str(sample / "documents"),
                          str(sample / "validation"), [h.url for h in sim_pool], engine="active",
                          scoring={"wave_size": 1000})  # one wave: classic Spark pays per job
    work = tmp_path / "cwd"  # outside the checkout: imports come from the packed env only
    work.mkdir()
    proc = subprocess.run([str(SUBMIT), "--master", "local[2]", "--conf-file", str(config), "--no-delta",
                           "--env-archive", str(packed_env), "--run-id", "yarn-smoke", "--",
                           "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.shuffle.partitions=2",
                           "--conf", "spark.log.level=WARN"],
                          cwd=work, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + _python_errors(proc.stderr)
    assert '"summary"' in proc.stdout and '"run_id": "yarn-smoke"' in proc.stdout

    unpacked = Path(str(packed_env).removesuffix(".tar.gz") + ".unpacked")
    assert (unpacked / "bin" / "python").exists()  # the driver's interpreter (client mode)

    documents = pd.read_parquet(sample / "documents")
    all_decisions = pd.read_parquet(tmp_path / "run" / "decisions")
    assert len(all_decisions) == 4 * len(documents), "every input row once per variant (4 default variants)"
    decisions = all_decisions[all_decisions["variant"] == "global"]
    selected = pd.read_parquet(tmp_path / "run" / "selected")
    assert not selected.duplicated(["doc_id", "scorer"]).any()  # each kept document once, with its variants
    selected = selected[["global" in list(v) for v in selected["variants"]]]
    assert len(decisions) == len(documents), "every input row gets exactly one decision per variant"
    assert sorted(decisions["doc_id"].astype(str)) == sorted(documents["doc_id"].astype(str))
    kept = decisions[decisions["decision"] == "kept"]
    assert 0 < len(kept) < len(documents)
    assert sorted(selected["doc_id"]) == sorted(kept["doc_id"])
    raw = pd.read_parquet(tmp_path / "run" / "raw_outputs")
    assert set(raw["run_id"]) == {"yarn-smoke"} and (raw["status"] == "ok").sum() > 0


def test_default_command_is_yarn_cluster_with_delta(tmp_path: Path) -> None:
    archive = tmp_path / "env.tar.gz"
    archive.write_bytes(b"")  # present: no packing for a dry run
    proc = subprocess.run([str(SUBMIT), "--dry-run", "--env-archive", str(archive)], env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cmd = proc.stdout
    for part in ("--master yarn", "--deploy-mode cluster", "--packages io.delta:delta-spark_4.2_2.13:4.4.1",
                 "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension",
                 "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog",
                 "spark.yarn.appMasterEnv.PYSPARK_PYTHON=./environment/bin/python",
                 "spark.sql.codegen.hugeMethodLimit=8000", f"{archive}#environment", "mira/conf/yarn.yaml"):
        assert part.replace("\\", "") in cmd.replace("\\", ""), part
    assert "--table-format" not in cmd

    key = "sk-test-not-a-real-key-1234"
    proc = subprocess.run([str(SUBMIT), "--dry-run", "--env-archive", str(archive), "--no-delta",
                           "--master", "local[4]"], env={**_env(), "MIRA_API_KEY": key},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--deploy-mode client" in proc.stdout and "--packages" not in proc.stdout
    assert "--table-format parquet" in proc.stdout and key not in proc.stdout + proc.stderr
