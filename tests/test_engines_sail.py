"""Sail's allocator: the embedded engine returns freed pages to the OS at once (issue 11, soak).

Sail's native library allocates with its own mimalloc, which by default keeps freed pages committed for a
second and purges them only when their owning thread allocates again; over a long run the engine's idle
worker threads then hold the memory of past waves (benchmarks/README.md, "Soak"). ``sail_session`` sets
``MIMALLOC_PURGE_DELAY=0`` and ``MIMALLOC_ALLOW_THP=0`` (no transparent huge pages)
before pysail is loaded. mimalloc prints the options it actually uses when
``MIMALLOC_VERBOSE=1``, so each case runs in a fresh interpreter (mimalloc reads options once, at load) and
reads that line: the setting the engine runs with, not the environment we hoped it saw.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from mira_spark.store.engines import SAIL_ALLOCATOR_ENV

START_SAIL = """
from mira_spark.store.engines import sail_session
with sail_session("allocator-test") as spark:
    assert spark.range(3).count() == 3
"""


def _options(code: str, extra_env: dict[str, str]) -> dict[str, set[int]]:
    """Every value each mimalloc option was printed with (pysail's mimalloc, and pyarrow's when it starts)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIMALLOC_")}
    env.update(extra_env, MIMALLOC_VERBOSE="1", RUST_LOG="error")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found: dict[str, set[int]] = {}
    for name, value in re.findall(r"option '(\w+)': (-?\d+)", proc.stderr):
        found.setdefault(name, set()).add(int(value))
    assert "purge_delay" in found, f"mimalloc printed no options (is pysail's allocator still mimalloc?): " \
                                   f"{proc.stderr[-500:]}"
    return found


def test_sail_session_starts_the_engine_with_freed_pages_purged_at_once() -> None:
    assert SAIL_ALLOCATOR_ENV == {"MIMALLOC_PURGE_DELAY": "0", "MIMALLOC_ALLOW_THP": "0"}
    options = _options(START_SAIL, {})
    assert options["purge_delay"] == {0} and options["allow_thp"] == {0}


def test_without_the_setting_the_engine_keeps_freed_pages_for_a_second() -> None:
    """The control: a bare pysail import runs with mimalloc's default, so the case above is not vacuous."""
    options = _options("import pysail.spark", {})
    assert options["purge_delay"] == {1000} and 0 not in options["allow_thp"]


def test_a_users_own_allocator_setting_wins() -> None:
    code = "from mira_spark.store.engines import prepare_sail_allocator\nassert prepare_sail_allocator()\n" \
           "import pysail.spark"
    options = _options(code, {"MIMALLOC_PURGE_DELAY": "250"})
    assert options["purge_delay"] == {250} and options["allow_thp"] == {0}
