"""The default anchors and configs, shipped inside the package so an installed wheel finds them anywhere.

``anchors/`` and ``conf/`` here are symlinks to the repository's top-level folders (one copy of each file);
the build (``[tool.setuptools.package-data]`` in pyproject.toml) copies their files into the wheel as
``mira_spark/resources/anchors/...`` and ``mira_spark/resources/conf/...``, the same relative layout as the
repository, so the configs' relative paths (``scorers_file: scorers.yaml``, ``../anchors/...``) hold in both.
Nothing here looks for the repository: files are found with :func:`importlib.resources.files`.

Examples
--------
>>> default_anchors().name
'group_B_dim_anchors.jsonl'
>>> sorted(p.name for p in default_config().parent.glob("*.yaml"))[:2]
['databricks.yaml', 'local.yaml']
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

ANCHORS_DIR = "anchors"
CONF_DIR = "conf"
DEFAULT_GROUP_ANCHORS = "text/group_B_dim_anchors.jsonl"
DEFAULT_GROUP_CALIBRATION = "text/group_B_calibration.jsonl"
# The demo's second rubric (not a MIRA scorer): Python code, 6 slots, scored by its own simulated pool.
CODE_DEMO_ANCHORS = "code/demo_python_dim_anchors.jsonl"
CODE_DEMO_CALIBRATION = "code/demo_python_calibration.jsonl"
DEMO_CONFIG = "local.yaml"
SCORERS_FILE = "scorers.yaml"


def _packaged(*parts: str) -> Path:
    """A packaged file as a filesystem path (wheels install unzipped, so ``files()`` is a real directory)."""
    resource = files(__name__).joinpath(*parts)
    path = Path(str(resource))
    if not path.exists():
        raise FileNotFoundError(f"packaged resource {'/'.join(parts)} is missing from {files(__name__)}; "
                                "reinstall mira-spark (the wheel ships anchors/ and conf/)")
    return path


def default_anchors() -> Path:
    """The sample scorer group's dimension anchors (``anchors/text/group_B_dim_anchors.jsonl``)."""
    return _packaged(ANCHORS_DIR, *DEFAULT_GROUP_ANCHORS.split("/"))


def default_calibration() -> Path:
    """The sample scorer group's calibration references (``anchors/text/group_B_calibration.jsonl``)."""
    return _packaged(ANCHORS_DIR, *DEFAULT_GROUP_CALIBRATION.split("/"))


def code_demo_anchors() -> Path:
    """The demo code group's dimension anchors (``anchors/code/demo_python_dim_anchors.jsonl``, 6 slots)."""
    return _packaged(ANCHORS_DIR, *CODE_DEMO_ANCHORS.split("/"))


def code_demo_calibration() -> Path:
    """The demo code group's calibration references (``anchors/code/demo_python_calibration.jsonl``)."""
    return _packaged(ANCHORS_DIR, *CODE_DEMO_CALIBRATION.split("/"))


def default_scorers_file() -> Path:
    """The routing file (``conf/scorers.yaml``): the 12 MIRA scorers, Text-Group1 enabled on 2 simulated endpoints."""
    return _packaged(CONF_DIR, SCORERS_FILE)


def default_config() -> Path:
    """The demo run config (``conf/local.yaml``): Sail + Delta, tables under ``../data`` of the config, and the
    demo code group on its own simulated pool."""
    return _packaged(CONF_DIR, DEMO_CONFIG)


def _copy_tree(source: Traversable, target: Path, overwrite: bool) -> list[Path]:
    written: list[Path] = []
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir(), key=lambda e: e.name):
        if entry.name.startswith((".", "__")):
            continue
        out = target / entry.name
        if entry.is_dir():
            written += _copy_tree(entry, out, overwrite)
        elif overwrite or not out.exists():
            out.write_bytes(entry.read_bytes())
            written.append(out)
    return written


def write_demo(directory: str | Path, overwrite: bool = False) -> Path:
    """Write the packaged ``conf/`` and ``anchors/`` into ``directory``; return the demo config's path.

    The layout is the repository's, so ``conf/local.yaml`` puts its tables under ``directory/data``:
    ``mira-spark make-sample --out DIRECTORY/data/sample`` then ``mira-spark run --config
    DIRECTORY/conf/local.yaml``. Existing files are kept unless ``overwrite``.
    """
    root = Path(directory)
    package = files(__name__)
    for name in (CONF_DIR, ANCHORS_DIR):
        _copy_tree(package.joinpath(name), root / name, overwrite)
    return root / CONF_DIR / DEMO_CONFIG
