"""Sail's allocator: the embedded engine returns freed pages to the OS at once (issue 11, soak).

Sail's native library allocates with its own mimalloc, which by default keeps freed pages committed for a
second and purges them only when their owning thread allocates again; over a long run the engine's idle
worker threads then hold the memory of past waves (benchmarks/README.md, "Soak"). ``sail_session`` sets
``MIMALLOC_PURGE_DELAY=0`` before pysail is loaded. mimalloc prints the options it actually uses when
``MIMALLOC_VERBOSE=1``, so each case runs in a fresh interpreter (mimalloc reads options once, at load) and
reads that line: the setting the engine runs with, not the environment we hoped it saw.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from mira_spark.store.engines import SAIL_ALLOCATOR_ENV

START_SAIL = """
from mira_spark.store.engines import sail_session
with sail_session("allocator-test") as spark:
    assert spark.range(3).count() == 3
"""


def _purge_delay(code: str, extra_env: dict[str, str]) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIMALLOC_")}
    env.update(extra_env, MIMALLOC_VERBOSE="1", RUST_LOG="error")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.findall(r"option 'purge_delay': (-?\d+)", proc.stderr)
    assert found, f"mimalloc printed no options (is pysail's allocator still mimalloc?): {proc.stderr[-500:]}"
    return int(found[0])


def test_sail_session_starts_the_engine_with_freed_pages_purged_at_once() -> None:
    assert SAIL_ALLOCATOR_ENV == {"MIMALLOC_PURGE_DELAY": "0"}
    assert _purge_delay(START_SAIL, {}) == 0


def test_without_the_setting_the_engine_keeps_freed_pages_for_a_second() -> None:
    """The control: a bare pysail import runs with mimalloc's default, so the case above is not vacuous."""
    assert _purge_delay("import pysail.spark", {}) == 1000


@pytest.mark.parametrize("value", ["250"])
def test_a_users_own_allocator_setting_wins(value: str) -> None:
    code = "from mira_spark.store.engines import prepare_sail_allocator\nassert prepare_sail_allocator()\n" \
           "import pysail.spark"
    assert _purge_delay(code, {"MIMALLOC_PURGE_DELAY": value}) == int(value)
