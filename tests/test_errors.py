"""User errors: one base class, matched by type to an exit code and one stderr line (no Spark needed)."""

from __future__ import annotations

from typing import Any

import pytest

from mira_spark import cli, errors
from mira_spark.config import ConfigError as ConfigErrorFromConfig
from mira_spark.errors import (
    EXIT_SPARK_ERROR,
    EXIT_STOPPED,
    EXIT_USER_ERROR,
    CanaryDriftError,
    CommitConflictError,
    ConfigError,
    DuplicateAttemptsError,
    EngineError,
    InputError,
    LeaseHeldError,
    LeaseLostError,
    MiraError,
    RubricError,
    RunStoppedError,
    TableError,
    cli_outcome,
)
from mira_spark.ingest.documents import InputError as InputErrorFromDocuments
from mira_spark.serving import secrets
from mira_spark.serving.runner import PoolUnavailableError
from mira_spark.serving.secrets import SecretUnavailableError

CASES: list[tuple[BaseException, int, str]] = [
    (ConfigError("run.yaml: invalid configuration\n  scoring.wave_size: must be >= 1 (got 0)"), EXIT_USER_ERROR,
     "mira-spark: configuration error: run.yaml: invalid configuration; scoring.wave_size: must be >= 1 (got 0)"),
    (RubricError("anchors.jsonl line 3: slot A16 exceeds dimensions: 15"), EXIT_USER_ERROR,
     "mira-spark: anchors.jsonl line 3: slot A16 exceeds dimensions: 15"),
    (InputError("documents table t lacks required columns ['text']"), EXIT_USER_ERROR,
     "mira-spark: documents table t lacks required columns ['text']"),
    (EngineError("engine: sail needs pysail"), EXIT_USER_ERROR, "mira-spark: engine: sail needs pysail"),
    (TableError("cannot read table scores (delta): not found"), EXIT_USER_ERROR,
     "mira-spark: cannot read table scores (delta): not found"),
    (CommitConflictError("merge into scores: lost 6 commit races to a concurrent writer; rerun this job"),
     EXIT_USER_ERROR, "mira-spark: merge into scores: lost 6 commit races to a concurrent writer; rerun this job"),
    (RunStoppedError("every endpoint stopped answering during wave 2/7: 40 documents deferred."), EXIT_STOPPED,
     "mira-spark: stopped: every endpoint stopped answering during wave 2/7: 40 documents deferred."),
    (PoolUnavailableError("no endpoint answered GET /health: http://h:1/v1. Nothing was sent."), EXIT_USER_ERROR,
     "mira-spark: no endpoint answered GET /health: http://h:1/v1. Nothing was sent."),
    (CanaryDriftError("group g: every endpoint failed the canary check before any document was sent"),
     EXIT_USER_ERROR,
     "mira-spark: canary drift: group g: every endpoint failed the canary check before any document was sent"),
    (SecretUnavailableError("secret scope='mira' key='k' cannot be read; set MIRA_API_KEY"), EXIT_USER_ERROR,
     "mira-spark: secret scope='mira' key='k' cannot be read; set MIRA_API_KEY"),
    (LeaseHeldError("table root /t is in use by run-a on host h (pid 7)"), EXIT_USER_ERROR,
     "mira-spark: table root in use: table root /t is in use by run-a on host h (pid 7)"),
    (LeaseLostError("table root /t: lease taken over by run-b"), EXIT_USER_ERROR,
     "mira-spark: lease lost: table root /t: lease taken over by run-b"),
    (DuplicateAttemptsError("spark.speculation=true launches duplicate scoring attempts"), EXIT_USER_ERROR,
     "mira-spark: configuration error: spark.speculation=true launches duplicate scoring attempts"),
]


@pytest.mark.parametrize(("exc", "code", "line"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_each_user_error_maps_by_type_to_its_exit_code_and_one_line(exc: BaseException, code: int,
                                                                     line: str) -> None:
    assert cli_outcome(exc) == (code, line)
    assert "\n" not in line


def test_every_error_class_of_ours_derives_from_the_base_and_is_tested() -> None:
    ours = set(errors._all_subclasses(MiraError))
    assert ours <= {type(e) for e, _, _ in CASES}, ours - {type(e) for e, _, _ in CASES}
    # the modules that raise them re-export the one class (no second definition to drift)
    assert ConfigErrorFromConfig is ConfigError and InputErrorFromDocuments is InputError
    assert issubclass(CommitConflictError, TableError) and issubclass(ConfigError, ValueError)


def test_subclass_of_a_user_error_is_matched_by_type_not_name() -> None:
    class SchemaDriftError(TableError):
        """A user error nobody listed by name."""

    assert cli_outcome(SchemaDriftError("table scores lacks columns ['a16_score']")) == (
        EXIT_USER_ERROR, "mira-spark: table scores lacks columns ['a16_score']")
    # a foreign class that merely shares a name is not ours
    impostor = type("ConfigError", (ValueError,), {})
    assert cli_outcome(impostor("looks like ours")) is None


def test_user_error_raised_inside_a_spark_task_is_recognised_in_the_error_text() -> None:
    spark_error = type("PythonException", (Exception,), {"__module__": "pyspark.errors.exceptions.connect"})
    wrapped = spark_error("An exception was thrown from the Python worker:\nTraceback ...\n"
                          "mira_spark.errors.InputError: documents table t: row 3 is unusable\nJVM stacktrace:\n at x")
    assert cli_outcome(wrapped) == (EXIT_USER_ERROR, "mira-spark: documents table t: row 3 is unusable")
    analysis = spark_error("[UNRESOLVED_COLUMN] cannot resolve `nope`\nJVM stacktrace:\n at org.apache")
    code, line = cli_outcome(analysis) or (0, "")
    assert code == EXIT_SPARK_ERROR and line.startswith("mira-spark: Spark could not run the job (PythonException)")
    assert "nope" in line and "\n" not in line


def test_bugs_of_ours_are_not_mapped() -> None:
    assert cli_outcome(ValueError("a bug of ours")) is None
    assert cli_outcome(KeyError("slot")) is None


def test_messages_are_redacted() -> None:
    key = "sk-test-PLANTED-errors-0123456789"
    secrets.register_secret(key)
    code, line = cli_outcome(ConfigError(f"pool p: endpoint rejected key {key}")) or (0, "")
    assert code == EXIT_USER_ERROR and key not in line and "***" in line


@pytest.mark.parametrize(("exc", "code", "line"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_cli_prints_one_line_and_exits_with_the_code(exc: BaseException, code: int, line: str,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def raising(args: Any) -> int:
        raise exc

    monkeypatch.setattr(cli, "cmd_run", raising)
    assert cli.main(["run", "--config", "unused.yaml"]) == code
    assert capsys.readouterr().err.splitlines() == [line]


def test_cli_lets_a_bug_through(monkeypatch: pytest.MonkeyPatch) -> None:
    def raising(args: Any) -> int:
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setattr(cli, "cmd_run", raising)
    with pytest.raises(ZeroDivisionError):
        cli.main(["run", "--config", "unused.yaml"])
