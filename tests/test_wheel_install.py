"""The built wheel works on its own: installed into a fresh venv, run from a directory outside the checkout.

The wheel is built with ``pip wheel --no-deps`` and installed with ``--no-deps`` into a new venv; its
dependencies come from this venv's site-packages through a ``.pth`` line (a plain path: the editable
install's finder ``.pth`` in that directory is not executed, so the checkout cannot leak in). Then, from a
temporary cwd: ``init-demo`` writes the packaged configs and anchors, ``make-sample`` the corpus,
``serve-sim`` two endpoints for Text-Group1 and one for the demo code group on free ports, ``run`` the
whole job on Sail + Delta (both groups) and ``report``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO

pytestmark = pytest.mark.spark

PACKAGED = (
    "mira_spark/resources/anchors/text/group_B_dim_anchors.jsonl",
    "mira_spark/resources/anchors/text/group_B_calibration.jsonl",
    "mira_spark/resources/anchors/code/demo_python_dim_anchors.jsonl",
    "mira_spark/resources/anchors/code/demo_python_calibration.jsonl",
    "mira_spark/resources/conf/local.yaml",
    "mira_spark/resources/conf/scorers.yaml",
)


def _free_ports(n: int) -> list[int]:
    from mira_spark.devtools.simulator.launcher import free_ports

    return free_ports(n)  # distinct: consecutive free_port() calls may return the same port


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve-sim exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} not healthy after {timeout_s} s")


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the built wheel (dependencies reachable through a .pth line)."""
    work = tmp_path_factory.mktemp("wheel")
    # Without PYTHONPATH: a checkout on it (as when testing a worktree) carries the build's mira_spark.egg-info,
    # and pip would then take mira-spark as installed already and skip installing the wheel.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(REPO)],
                   check=True, cwd=work, env=clean)
    (wheel,) = (work / "dist").glob("mira_spark-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(PACKAGED) <= names, sorted(set(PACKAGED) - names)
    assert not any(n.startswith(("anchors/", "conf/", "tests/")) for n in names)

    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    str(wheel)], check=True, cwd=work, env=clean)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "zz_main_venv_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return venv


def test_wheel_runs_the_demo_outside_the_checkout(wheel_venv: Path, tmp_path: Path) -> None:
    from deltalake import DeltaTable

    bin_dir = wheel_venv / "bin"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", RUST_LOG="error")

    def cli(*args: str, timeout: float = 120) -> str:
        proc = subprocess.run([str(bin_dir / "mira-spark"), *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, f"mira-spark {' '.join(args)}: {proc.returncode}\n{proc.stderr[-3000:]}"
        return proc.stdout

    origin = subprocess.run(
        [str(bin_dir / "python"), "-c",
         "import mira_spark, mira_spark.resources as r; print(mira_spark.__file__); print(r.default_anchors())"],
        cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.split()
    for path in origin:
        assert Path(path).resolve().is_relative_to(wheel_venv.resolve()), path
        assert not Path(path).resolve().is_relative_to(REPO), path

    demo = cwd / "demo"
    config = Path(cli("init-demo", str(demo)).strip())
    assert config == demo / "conf" / "local.yaml"
    assert (demo / "anchors" / "text" / "group_B_dim_anchors.jsonl").is_file()
    assert (demo / "anchors" / "code" / "demo_python_dim_anchors.jsonl").is_file()
    cli("make-sample", "--out", str(demo / "data" / "sample"), "--with-code")

    ports = _free_ports(3)
    scorers = demo / "conf" / "scorers.yaml"
    routing = yaml.safe_load(scorers.read_text(encoding="utf-8"))
    routing["pools"]["text_group_b_pool"]["endpoints"] = [{"url": f"http://127.0.0.1:{p}/v1"} for p in ports[:2]]
    scorers.write_text(yaml.safe_dump(routing, sort_keys=False), encoding="utf-8")
    local = yaml.safe_load(config.read_text(encoding="utf-8"))  # the code group's pool is set in local.yaml
    local["scorers"]["pools"]["code_demo_pool"]["endpoints"] = [{"url": f"http://127.0.0.1:{ports[2]}/v1"}]
    config.write_text(yaml.safe_dump(local, sort_keys=False), encoding="utf-8")
    models = ["whw06/MIRA-Text-Group1"] * 2 + [local["scorers"]["groups"]["code_demo"]["model"]]

    sims = [subprocess.Popen([str(bin_dir / "mira-spark"), "serve-sim", "--port", str(p), "--endpoints", "1",
                              "--time-scale", "400", "--model", model], cwd=cwd, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for p, model in zip(ports, models, strict=True)]
    try:
        for p, sim in zip(ports, sims, strict=True):
            _wait_healthy(f"http://127.0.0.1:{p}/health", sim)
        cli("run", "--config", str(config), timeout=180)
        page = Path(cli("report", "--config", str(config), timeout=180).strip().splitlines()[-1])
        assert page.is_file() and page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    finally:
        for sim in sims:
            sim.terminate()
        for sim in sims:
            sim.wait(timeout=10)

    documents = DeltaTable(str(demo / "data" / "sample" / "documents")).to_pyarrow_table(columns=["doc_id"])
    decisions = DeltaTable(str(demo / "data" / "run" / "decisions")).to_pyarrow_table(
        columns=["variant", "doc_id", "decision"])
    doc_ids = documents.column("doc_id").to_pylist()
    variants = decisions.column("variant").to_pylist()
    decided = [d for d, v in zip(decisions.column("doc_id").to_pylist(), variants, strict=True) if v == "global"]
    assert len(doc_ids) > 0 and set(variants) == {"global", "group", "source", "random"}
    assert sorted(decided) == sorted(doc_ids)  # every input row exactly once per variant
    assert "kept" in set(decisions.column("decision").to_pylist())
    scores = DeltaTable(str(demo / "data" / "run" / "scores")).to_pandas(columns=["scorer"])
    assert set(scores["scorer"]) == {"text_group_b", "code_demo"}  # both groups scored from the wheel
