"""Errors a user can act on, and how they are told.

Our own error types carry a message that names the file/table/key and the fix. When one of them is
raised inside a Spark task it reaches the driver wrapped in a long Spark/Java error; ``user_message``
digs the original message out so the user never gets only a JVM traceback.
"""

from __future__ import annotations

import re

USER_ERROR_NAMES = (
    "ConfigError",
    "RubricError",
    "InputError",
    "TableError",
    "EngineError",
    "PoolUnavailableError",
)
_WRAPPED = re.compile(r"(" + "|".join(USER_ERROR_NAMES) + r"): (.+)")


def user_message(exc: BaseException) -> str | None:
    """The actionable message of ``exc`` (or of a user error wrapped inside it), else None."""
    if type(exc).__name__ in USER_ERROR_NAMES:
        return str(exc)
    match = _WRAPPED.search(str(exc))
    if match:
        return match.group(2).strip()
    return None
