"""API key lookup and log redaction.

Takes a :class:`~mira_spark.config.PoolConfig`; gives the API key from the environment variable it
names, or from a Databricks secret scope via ``dbutils`` (on the driver), or None. Every key resolved
here (or registered with :func:`register_secret`) is replaced by ``***`` in log records of the
``mira_spark`` loggers and by :func:`redact` in error strings, so it never reaches a log or a table.

Resolve the key on the driver and pass it to the tasks: ``dbutils`` is not available on executors.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from mira_spark.config import PoolConfig
from mira_spark.errors import SecretUnavailableError

__all__ = ["SecretUnavailableError", "install_redaction", "redact", "register_secret", "resolve_api_key"]

REDACTED = "***"
# Values this short are more likely to collide with ordinary text than to be keys; never redact them.
MIN_SECRET_LEN = 4
PACKAGE_LOGGER = "mira_spark"

_secrets: set[str] = set()
_lock = threading.Lock()  # Sail runs partitions as threads of one process


def register_secret(value: str | None) -> None:
    """Remember ``value`` so it is redacted from logs and error strings from now on."""
    if value and len(value) >= MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in tuple(_secrets):  # snapshot: another partition thread may register meanwhile
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (and exception text) with registered secrets replaced by ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the caller's bug; do not hide the record
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


REDACTING_FILTER = RedactingFilter()


def install_redaction(logger: logging.Logger | str = PACKAGE_LOGGER) -> None:
    """Attach the filter to ``logger`` (idempotent).

    Logger filters see only records logged on that logger, not ones propagated from children, so each
    module of this package also installs it on its own logger.
    """
    target = logging.getLogger(logger) if isinstance(logger, str) else logger
    if REDACTING_FILTER not in target.filters:
        target.addFilter(REDACTING_FILTER)


install_redaction()


def _find_dbutils() -> Any | None:
    try:  # Databricks notebooks put dbutils in the IPython user namespace
        from IPython import get_ipython  # type: ignore[import-not-found]

        shell = get_ipython()
        if shell is not None and "dbutils" in shell.user_ns:
            return shell.user_ns["dbutils"]
    except ImportError:
        pass
    try:  # jobs and Databricks Connect: build it from the active session (Databricks runtime only)
        from pyspark.dbutils import DBUtils  # type: ignore[import-not-found]
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
        if spark is not None:
            return DBUtils(spark)
    except ImportError:
        pass
    return None


def resolve_api_key(pool: PoolConfig) -> str | None:
    """The pool's API key: ``$<api_key_env>`` if set, else the Databricks secret, else None.

    Raises :class:`SecretUnavailableError` when ``api_key_secret`` is configured but neither the
    environment variable nor ``dbutils`` provides it.
    """
    if pool.api_key_env:
        value = os.environ.get(pool.api_key_env)
        if value:
            register_secret(value)
            return value
    ref = pool.api_key_secret
    if ref is None:
        return None
    dbutils = _find_dbutils()
    if dbutils is None:
        env_hint = (
            f"set the environment variable {pool.api_key_env}" if pool.api_key_env else "set api_key_env"
        )
        raise SecretUnavailableError(
            f"api_key_secret (scope={ref.scope!r}, key={ref.key!r}) is configured but dbutils is not "
            f"available here (not on Databricks, or on an executor); {env_hint}, or resolve the key "
            "on the driver and pass it to the scoring stage"
        )
    try:
        value = dbutils.secrets.get(scope=ref.scope, key=ref.key)
    except Exception as exc:  # the Databricks error type is not importable off-platform
        raise SecretUnavailableError(
            f"could not read secret scope={ref.scope!r} key={ref.key!r}: {type(exc).__name__}; check the "
            "scope exists and this principal may read it (databricks secrets list-acls)"
        ) from None
    register_secret(value)
    return value
