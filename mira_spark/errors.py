"""Errors a user can act on, and how they are told.

Our own error types carry a message that names the file/table/key and the fix. When one of them is
raised inside a Spark task it reaches the driver wrapped in a long Spark/Java error; ``user_message``
digs the original message out so the user never gets only a JVM traceback. Any other Spark error
(an analysis error, a task that failed in Python) is cut down to its one informative line. Every
message passes through :func:`~mira_spark.serving.secrets.redact`, so an API key that found its way
into an exception text is never printed.
"""

from __future__ import annotations

import re

from mira_spark.serving.secrets import redact

USER_ERROR_NAMES = (
    "ConfigError",
    "RubricError",
    "InputError",
    "TableError",
    "EngineError",
    "PoolUnavailableError",
    "SecretUnavailableError",
)
_WRAPPED = re.compile(r"(" + "|".join(USER_ERROR_NAMES) + r"): (.+)")
# The last "SomeError: message" line of a Python traceback embedded in a Spark task failure.
_PYTHON_ERROR_LINE = re.compile(r"^(\w+(?:Error|Exception)): (.+)$", re.MULTILINE)
_SPARK_MODULES = ("pyspark", "py4j", "grpc")
MESSAGE_CHARS = 500  # a message, not a dump: error texts can echo a whole document


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


def user_message(exc: BaseException) -> str | None:
    """The actionable message of ``exc`` (or of a user error wrapped inside it), else None.

    ``None`` means "a bug of ours": the caller should let the traceback through.

    >>> user_message(ValueError("x")) is None
    True
    """
    if type(exc).__name__ in USER_ERROR_NAMES:
        return redact(str(exc))
    text = str(exc)
    match = _WRAPPED.search(text)
    if match:
        return redact(match.group(2).strip())
    if _is_spark_error(exc):
        line = _first_informative_line(text) or type(exc).__name__
        return redact(
            f"Spark could not run the job ({type(exc).__name__}): {_short(line)}. If an input table was "
            "changed by hand, check its columns against the README; rerun with --log-level DEBUG for "
            "the full trace."
        )
    return None
