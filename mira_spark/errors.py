"""Errors a user can act on, and how the command line tells them.

Every error a user can fix derives from :class:`MiraError`; its message names the file, table or key and
the fix, and its class says how the CLI ends (:attr:`MiraError.exit_code`, :attr:`MiraError.label`).
:func:`cli_outcome` maps an exception *by type* to an exit code and one stderr line; the CLI calls
nothing else.

One case cannot be matched by type: a user error raised inside a Spark task reaches the driver as the
text of a Spark/Java error (the Python object does not cross the task boundary). :func:`cli_outcome`
then recognises the class name of one of the user errors below in that text and digs the original
message out, so the user never gets only a JVM traceback. Any other Spark error (an analysis error, a
task that failed in Python) is cut down to its one informative line. Every message passes through
:func:`~mira_spark.serving.secrets.redact`, so an API key that found its way into an exception text is
never printed.

This module imports nothing of the project at load time, so every module can import its errors from here.
"""

from __future__ import annotations

import re
from typing import ClassVar

EXIT_SPARK_ERROR = 1  # Spark failed for a reason that is not one of ours
EXIT_USER_ERROR = 2  # bad config, input, rubric, table, unreachable pool: the message says what to fix
EXIT_STOPPED = 3  # the pool died mid-run: committed waves are kept, rerun to finish
CLI_PREFIX = "mira-spark: "
MESSAGE_CHARS = 500  # a message, not a dump: error texts can echo a whole document


class MiraError(Exception):
    """Base of every error a user can act on; the message says what to fix."""

    exit_code: ClassVar[int] = EXIT_USER_ERROR
    label: ClassVar[str] = ""  # printed before the message, e.g. "configuration error"


class ConfigError(MiraError, ValueError):
    """Invalid configuration; the message says which file and key, and what is allowed."""

    label = "configuration error"


class RubricError(MiraError, ValueError):
    """A rubric file is missing or malformed; the message names the file, the line and the fix."""


class InputError(MiraError, ValueError):
    """The documents table cannot be used as given; the message says how to fix it."""


class EngineError(MiraError, RuntimeError):
    """The requested engine cannot start; the message says what to install or configure."""


class TableError(MiraError, RuntimeError):
    """A table is missing or has the wrong shape; the message names it and what to do."""


class CommitConflictError(TableError):
    """A Delta commit lost every retry to a concurrent writer; committed work is kept, rerun."""


class PoolUnavailableError(MiraError, RuntimeError):
    """No endpoint of a pool answered at start; nothing was sent."""


class CanaryDriftError(PoolUnavailableError):
    """Every endpoint of a pool failed the canary drift check (scoring.canary); nothing more was sent."""

    label = "canary drift"


class SecretUnavailableError(MiraError, RuntimeError):
    """A secret scope is configured but cannot be read here."""


class LeaseHeldError(MiraError, RuntimeError):
    """Another live run holds the table root's lease; the message names it (run, host, pid, heartbeat)."""

    label = "table root in use"


class LeaseLostError(MiraError, RuntimeError):
    """This run's lease was taken over (its heartbeat went stale); it stops before committing more."""

    label = "lease lost"


class DuplicateAttemptsError(MiraError, RuntimeError):
    """The Spark configuration launches duplicate task attempts that would each bill; the message says how
    to turn that off for this job."""

    label = "configuration error"


class RunStoppedError(MiraError):
    """The run stopped cleanly before finishing (every endpoint stopped answering); rerun to finish."""

    exit_code = EXIT_STOPPED
    label = "stopped"


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def user_error_names() -> tuple[str, ...]:
    """Class names of every user error, to recognise one in the text of a Spark task failure."""
    classes = _all_subclasses(MiraError)
    return tuple(sorted({c.__name__ for c in classes}))


# The last "SomeError: message" line of a Python traceback embedded in a Spark task failure.
_PYTHON_ERROR_LINE = re.compile(r"^(\w+(?:Error|Exception)): (.+)$", re.MULTILINE)
_SPARK_MODULES = ("pyspark", "py4j", "grpc")


def _is_spark_error(exc: BaseException) -> bool:
    return any(cls.__module__.split(".")[0] in _SPARK_MODULES for cls in type(exc).__mro__)


def _first_informative_line(text: str) -> str:
    """The Python error line of a task failure, else the first line before any JVM stack trace."""
    python_lines = _PYTHON_ERROR_LINE.findall(text)
    if python_lines:
        name, message = python_lines[-1]
        return f"{name}: {message.strip()}"
    head = text.split("JVM stacktrace:", 1)[0].strip()
    for line in head.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _short(text: str) -> str:
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def _redact(text: str) -> str:
    from mira_spark.serving.secrets import redact

    return redact(text)


def _wrapped_user_message(text: str) -> str | None:
    match = re.search(r"\b(" + "|".join(user_error_names()) + r"): (.+)", text)
    return match.group(2).strip() if match else None


def user_message(exc: BaseException) -> str | None:
    """The actionable message of ``exc`` (or of a user error wrapped inside it), else None.

    ``None`` means "a bug of ours": the caller should let the traceback through.

    >>> user_message(InputError("documents table t lacks column text"))
    'documents table t lacks column text'
    >>> user_message(ValueError("x")) is None
    True
    """
    if isinstance(exc, MiraError):
        return _redact(str(exc))
    wrapped = _wrapped_user_message(str(exc))
    if wrapped is not None:
        return _redact(wrapped)
    if _is_spark_error(exc):
        line = _first_informative_line(str(exc)) or type(exc).__name__
        return _redact(
            f"Spark could not run the job ({type(exc).__name__}): {_short(line)}. If an input table was "
            "changed by hand, check its columns against the README; rerun with --log-level DEBUG for "
            "the full trace."
        )
    return None


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def cli_outcome(exc: BaseException) -> tuple[int, str] | None:
    """Exit code and the one stderr line the CLI prints for ``exc``; None for a bug of ours (re-raise).

    >>> cli_outcome(ConfigError("run.yaml: scoring.wave_size must be >= 1"))
    (2, 'mira-spark: configuration error: run.yaml: scoring.wave_size must be >= 1')
    >>> cli_outcome(KeyError("x")) is None
    True
    """
    message = user_message(exc)
    if message is None:
        return None
    if isinstance(exc, MiraError):
        code, label = exc.exit_code, exc.label
    elif _wrapped_user_message(str(exc)) is not None:
        code, label = EXIT_USER_ERROR, ""
    else:  # a Spark error that is not one of ours
        code, label = EXIT_SPARK_ERROR, ""
    return code, CLI_PREFIX + (f"{label}: " if label else "") + _one_line(message)
