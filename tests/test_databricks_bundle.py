"""The Databricks Asset Bundle (jobs/databricks.yml + jobs/resources/*.yml) and conf/databricks.yaml.

The Go ``databricks`` CLI cannot be installed here (not on PyPI; ``@databricks/cli`` is not on npm;
``databricks-cli`` 0.18 on PyPI is the legacy CLI without bundles), so ``databricks bundle validate``
cannot run. Instead:

* every job resource is loaded with ``databricks.bundles.jobs.Job.from_dict`` from the PyPI package
  ``databricks-bundles`` 1.22.1 (the ``bundle`` extra): its dataclasses are generated from the CLI's
  bundle schema and reject an unknown key at any depth (``Unexpected field 'x' for class Task``);
* the mappings outside ``resources`` are checked against the keys documented in "Databricks Asset Bundle
  configuration" (docs.databricks.com/dev-tools/bundles/settings: top-level mappings, ``bundle``,
  ``targets``, ``variables``, ``artifacts``, ``sync``) and "deployment modes" (``mode``), cross-checked
  with the CLI's published JSON schema (databricks/cli bundle/schema/jsonschema.json, config.Target etc.);
* every task's command is parsed by the real entry points: jobs/mira_job.py's parser and the
  ``mira-spark`` CLI's, and every file it names (python_file, notebooks, config, wheel) exists here
  under the workspace layout ``sync.paths`` produces.
"""

from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mira_spark.pipeline import STAGE_NAMES

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "jobs"

ROOT_KEYS = {"bundle", "include", "variables", "workspace", "artifacts", "sync", "resources", "targets",
             "run_as", "permissions", "presets", "scripts", "experimental", "python"}
BUNDLE_KEYS = {"name", "databricks_cli_version", "cluster_id", "compute_id", "deployment", "git", "uuid"}
TARGET_KEYS = {"default", "mode", "workspace", "variables", "resources", "run_as", "permissions", "presets",
               "artifacts", "bundle", "cluster_id", "compute_id", "git", "sync"}
VARIABLE_KEYS = {"description", "default", "lookup", "type"}
ARTIFACT_KEYS = {"type", "path", "build", "files", "executable", "dynamic_version"}
SYNC_KEYS = {"include", "exclude", "paths"}
MODES = {"development", "production"}
TASK_TYPES = {"python_wheel_task", "spark_python_task", "notebook_task", "spark_jar_task", "spark_submit_task",
              "sql_task", "pipeline_task", "run_job_task", "condition_task", "for_each_task", "dbt_task"}
STAGE_ORDER = [s for s in STAGE_NAMES if s != "route"]  # route runs inside each stage that needs it


def _load() -> tuple[dict[str, Any], dict[str, tuple[Path, dict[str, Any]]]]:
    root = yaml.safe_load((BUNDLE / "databricks.yml").read_text(encoding="utf-8"))
    jobs: dict[str, tuple[Path, dict[str, Any]]] = {}
    for pattern in root.get("include", []):
        for path in sorted(BUNDLE.glob(pattern)):
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            assert set(doc) <= ROOT_KEYS, f"{path.name}: {set(doc) - ROOT_KEYS}"
            for name, job in doc.get("resources", {}).get("jobs", {}).items():
                jobs[name] = (path, job)
    return root, jobs


ROOT, JOBS = _load()


def _workspace_root() -> Path:
    """Where ``${workspace.file_path}`` lands in this checkout: the common parent of ``sync.paths``."""
    paths = [(BUNDLE / p).resolve() for p in ROOT["sync"]["paths"]]
    common = Path(*[parts[0] for parts in zip(*[p.parts for p in paths], strict=False)
                    if len(set(parts)) == 1])
    return common


def _resolve(value: str, variables: dict[str, Any]) -> str:
    value = re.sub(r"\$\{var\.(\w+)\}", lambda m: str(variables[m.group(1)]["default"]), value)
    return value.replace("${workspace.file_path}", str(_workspace_root()))


def test_top_level_mappings_are_documented() -> None:
    assert set(ROOT) <= ROOT_KEYS, set(ROOT) - ROOT_KEYS
    assert set(ROOT["bundle"]) <= BUNDLE_KEYS and ROOT["bundle"]["name"]
    assert set(ROOT["sync"]) <= SYNC_KEYS
    for name, artifact in ROOT["artifacts"].items():
        assert set(artifact) <= ARTIFACT_KEYS, name
        assert artifact["type"] == "whl" and (BUNDLE / artifact["path"] / "pyproject.toml").is_file()
    for name, variable in ROOT["variables"].items():
        assert set(variable) <= VARIABLE_KEYS and variable.get("description"), name
    assert set(ROOT["targets"]) == {"dev", "prod"}
    for name, target in ROOT["targets"].items():
        assert set(target) <= TARGET_KEYS, (name, set(target) - TARGET_KEYS)
        assert target["mode"] in MODES
        assert set(target.get("variables", {})) <= set(ROOT["variables"]), name
    assert ROOT["targets"]["dev"]["default"] is True and ROOT["targets"]["prod"]["mode"] == "production"


@pytest.mark.parametrize("name", sorted(JOBS))
def test_job_matches_the_bundle_schema(name: str) -> None:
    jobs_models = pytest.importorskip("databricks.bundles.jobs", reason="pip install 'mira-spark[bundle]'")
    _, job = JOBS[name]
    jobs_models.Job.from_dict(job)  # raises ValueError("Unexpected field ...") on any undocumented key
    with pytest.raises(ValueError, match="Unexpected field"):  # the validator does reject a typo
        jobs_models.Job.from_dict({**job, "tasks": [{**job["tasks"][0], "depend_on": []}]})


def test_variables_and_job_parameters_referenced_exist() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in [BUNDLE / "databricks.yml", *BUNDLE.glob("resources/*.yml")])
    used = set(re.findall(r"\$\{var\.(\w+)\}", text))
    assert used <= set(ROOT["variables"]), used - set(ROOT["variables"])
    for name, (_, job) in JOBS.items():
        params = {p["name"] for p in job.get("parameters", [])}
        used = set(re.findall(r"\{\{job\.parameters\.(\w+)\}\}", yaml.safe_dump(job)))
        assert used <= params, (name, used - params)


def test_stage_jobs_are_score_parse_reliability_select_on_classic_and_serverless() -> None:
    classic, serverless = JOBS["mira_select_classic"][1], JOBS["mira_select_serverless"][1]
    for job in (classic, serverless):
        tasks = {t["task_key"]: t for t in job["tasks"]}
        assert list(tasks) == STAGE_ORDER
        for before, after in itertools.pairwise(STAGE_ORDER):
            assert [d["task_key"] for d in tasks[after]["depends_on"]] == [before]
        assert "depends_on" not in tasks["score"]
        for task in tasks.values():
            assert len(TASK_TYPES & set(task)) == 1
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in classic["job_clusters"]}
    for task in classic["tasks"]:
        cluster = clusters[task["job_cluster_key"]]
        assert {"spark_version", "node_type_id", "spark_conf"} <= set(cluster)
        assert cluster["data_security_mode"] in ("USER_ISOLATION", "SINGLE_USER")  # Unity Catalog access modes
        assert [lib["whl"] for lib in task["libraries"]] == ["../../dist/*.whl"]
    envs = {e["environment_key"]: e["spec"] for e in serverless["environments"]}
    assert "job_clusters" not in serverless
    for task in serverless["tasks"]:
        assert not {"job_cluster_key", "new_cluster", "existing_cluster_id", "libraries"} & set(task)
        assert "../../dist/*.whl" in envs[task["environment_key"]]["dependencies"]


def _task_commands() -> list[tuple[str, Path, dict[str, Any]]]:
    return [(f"{name}.{task['task_key']}", path, task) for name, (path, job) in JOBS.items() for task in job["tasks"]]


@pytest.mark.parametrize("key,path,task", _task_commands(), ids=lambda x: x if isinstance(x, str) else "")
def test_task_commands_name_real_subcommands_and_files(key: str, path: Path, task: dict[str, Any]) -> None:
    from mira_spark.cli import build_parser
    from mira_spark.config import load_settings

    variables = ROOT["variables"]
    if "spark_python_task" in task:
        spt = task["spark_python_task"]
        script = (path.parent / spt["python_file"]).resolve()
        assert script == BUNDLE / "mira_job.py"
        sys.path.insert(0, str(BUNDLE))
        try:
            import mira_job
        finally:
            sys.path.remove(str(BUNDLE))
        params = [_resolve(p, variables) for p in spt["parameters"]]
        params = [str(_resolve(variables["config_path"]["default"], variables)) if "job.parameters.config_path" in p
                  else p for p in params]
        args = mira_job.build_parser().parse_args(params)
        assert args.stage == key.rsplit(".", 1)[1]
        cli_args = build_parser().parse_args(mira_job.cli_args(args))  # a real mira-spark subcommand
        assert cli_args.command == args.stage and cli_args.engine == "active"
        config = Path(args.config)
    else:
        notebook = (path.parent / task["notebook_task"]["notebook_path"]).resolve()
        assert notebook.is_file() and notebook.read_text(encoding="utf-8").startswith("# Databricks notebook source")
        config = Path(_resolve(task["notebook_task"]["base_parameters"]["config"], variables))
    assert config == REPO / "conf" / "databricks.yaml"
    settings = load_settings(config)
    assert settings.engine == "active" and settings.tables.schema_name


def test_wheel_the_tasks_install_is_what_the_artifact_builds() -> None:
    artifact = ROOT["artifacts"]["mira_wheel"]
    assert "--wheel-dir dist" in artifact["build"]
    built_in = (BUNDLE / artifact["path"]).resolve() / "dist"
    for _, path, task in _task_commands():
        for lib in task.get("libraries", []):
            assert (path.parent / Path(lib["whl"]).parent).resolve() == built_in


def test_no_secret_in_the_bundle_and_the_key_comes_from_a_secret_scope() -> None:
    from mira_spark.config import load_settings

    text = "\n".join(p.read_text(encoding="utf-8") for p in [BUNDLE / "databricks.yml", *BUNDLE.glob("resources/*.yml")])
    assert not re.search(r"dapi[0-9a-f]{16,}|sk-[A-Za-z0-9]{16,}|api_key\s*:", text)
    settings = load_settings(REPO / "conf" / "databricks.yaml")
    for name, pool in settings.scorers.pools.items():
        if name in {g.pool for g in settings.scorers.groups.values() if "html_cpt" in g.sources}:
            assert pool.api_key_secret is not None and pool.api_key_env is None, name


def test_databricks_config_produces_three_level_names() -> None:
    from mira_spark.config import load_settings
    from mira_spark.store.tables import TABLES, Tables

    settings = load_settings(REPO / "conf" / "databricks.yaml")
    names = [Tables(None, settings).ref(t).name for t in TABLES]  # type: ignore[arg-type]
    names += [settings.tables.documents, settings.tables.validation]
    ident = r"[A-Za-z_][A-Za-z0-9_]*"
    assert all(re.fullmatch(rf"{ident}\.{ident}\.{ident}", n or "") for n in names), names
    assert settings.tables.staging.startswith("/Volumes/")


@pytest.mark.parametrize("tables,message", [
    ({"schema": "mira", "documents": "main.mira.documents"}, "tables.schema must be catalog.schema"),
    ({"schema": "main.mira.x", "documents": "main.mira.documents"}, "tables.schema must be catalog.schema"),
    ({"schema": "main.mira", "documents": "mira.documents"}, "three-level name"),
    ({"schema": "main.mira", "documents": "main.mira.documents", "validation": "teacher"}, "three-level name"),
])
def test_config_rejects_names_that_are_not_three_level(tmp_path: Path, tables: dict, message: str) -> None:
    from mira_spark.config import load_settings
    from mira_spark.errors import ConfigError

    config = tmp_path / "uc.yaml"
    config.write_text(yaml.safe_dump({"engine": "active", "scorers_file": str(REPO / "conf" / "scorers.yaml"),
                                      "tables": tables}), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_settings(config)
