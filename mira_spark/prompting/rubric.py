"""Anchor rubric of one scorer group: its dimensions and its calibration references.

Takes the two JSONL files a scorer group ships (``anchors/<family>/group_<X>_dim_anchors.jsonl`` and
``..._calibration.jsonl``) and gives a validated, frozen :class:`Rubric` that prompts, parsing and the
score-table schema are built from. Pure logic: imports no Spark.

Errors are :class:`RubricError` with the file, the line number and what to change, because a malformed
anchors file is a user edit, not a programming bug.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mira_spark.errors import RubricError
from mira_spark.store.schemas import MAX_SLOTS

SLOT_PATTERN = re.compile(r"^A([1-9][0-9]?)$")
SCORE_MIN = 0.0
SCORE_MAX = 10.0
OVERALL_MIN = 0
OVERALL_MAX = 100
RECOMMENDATIONS = ("keep", "downsample", "drop")


class Dimension(BaseModel):
    """One anchor dimension: slot ``A<i>``, its verbatim name and its cluster size."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slot: str = Field(description="Slot label, A1..A15, as printed in the scorer's output lines.")
    dimension: str = Field(min_length=1, description="Dimension name, verbatim from the group's anchors file.")
    cluster_size: int = Field(ge=0, description="Size of the teacher's dimension cluster (signal weight).")

    @field_validator("slot")
    @classmethod
    def _slot_shape(cls, value: str) -> str:
        if not SLOT_PATTERN.match(value):
            raise ValueError(f"slot must look like A1..A99, got {value!r}")
        return value

    @field_validator("dimension")
    @classmethod
    def _name_clean(cls, value: str) -> str:
        if value != value.strip() or "\n" in value or ":" in value:
            raise ValueError("dimension name must be one line without ':' or surrounding spaces")
        return value

    @property
    def index(self) -> int:
        """1-based slot number (A7 -> 7)."""
        return int(self.slot[1:])


class CalibrationReference(BaseModel):
    """A canonical example with the teacher's reference score for every slot."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ref_id: str = Field(min_length=1, description="Stable id of the reference.")
    excerpt: str = Field(min_length=1, description="Short document excerpt the scores refer to.")
    scores: dict[str, float] = Field(description="Reference score per slot (A1..A15), 0-10.")
    rationales: dict[str, str] = Field(default_factory=dict, description="Optional one-line reason per slot.")
    overall: int = Field(ge=OVERALL_MIN, le=OVERALL_MAX, description="Reference overall score, 0-100.")
    training_recommendation: str = Field(description="keep | downsample | drop")
    domain_tag: str = Field(min_length=1, description="Short domain tag.")
    brief: str = Field(min_length=1, description="One-sentence summary.")

    @field_validator("scores")
    @classmethod
    def _scores_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for slot, score in value.items():
            if not SLOT_PATTERN.match(slot):
                raise ValueError(f"score key {slot!r} is not a slot like A1")
            if not SCORE_MIN <= float(score) <= SCORE_MAX:
                raise ValueError(f"score for {slot} is {score}, outside {SCORE_MIN:g}-{SCORE_MAX:g}")
        return value

    @field_validator("training_recommendation")
    @classmethod
    def _recommendation(cls, value: str) -> str:
        if value not in RECOMMENDATIONS:
            raise ValueError(f"training_recommendation must be one of {RECOMMENDATIONS}, got {value!r}")
        return value


class Rubric(BaseModel):
    """Dimensions (ordered by slot) and calibration references of one scorer group."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str = Field(description="Scorer group name, e.g. text_group_b.")
    dimensions: tuple[Dimension, ...]
    calibration: tuple[CalibrationReference, ...] = ()

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(d.slot for d in self.dimensions)

    @property
    def names(self) -> dict[str, str]:
        """Slot -> dimension name."""
        return {d.slot: d.dimension for d in self.dimensions}

    @property
    def size(self) -> int:
        return len(self.dimensions)

    def fingerprint(self) -> str:
        """Stable hash of dimensions and references; part of ``prompt_version``."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise RubricError(f"{path}: file not found; check the anchors paths in conf/scorers.yaml")
    rows: list[tuple[int, dict]] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RubricError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise RubricError(f"{path}:{lineno}: each line must be a JSON object")
        rows.append((lineno, row))
    if not rows:
        raise RubricError(f"{path}: file is empty")
    return rows


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "row"
    return f"field {where!r}: {err['msg']}"


M = TypeVar("M", bound=BaseModel)


def _read_unique(path: Path, model: type[M], key: Callable[[M], str], what: str) -> list[tuple[int, M]]:
    """Validate each line of a JSONL file as ``model``; ``key`` must not repeat (``what`` names it)."""
    out: list[tuple[int, M]] = []
    seen: dict[str, int] = {}
    for lineno, row in _read_jsonl(path):
        try:
            item = model.model_validate(row)
        except ValidationError as exc:
            raise RubricError(f"{path}:{lineno}: {_first_error(exc)}") from None
        k = key(item)
        if k in seen:
            raise RubricError(f"{path}:{lineno}: {what} {k} already defined on line {seen[k]}")
        seen[k] = lineno
        out.append((lineno, item))
    return out


def _slot_list(slots: Iterable[str]) -> list[str]:
    return sorted(slots, key=lambda s: int(s[1:]) if s[1:].isdigit() else 10**6)


def load_dimensions(path: str | Path, expected_size: int = 15) -> tuple[Dimension, ...]:
    """Read and validate a ``*_dim_anchors.jsonl`` file.

    Checks: every line parses, slots are unique and exactly ``A1..A{expected_size}``, names are unique
    per slot. The result is ordered by slot number.
    """
    path = Path(path)
    dims = sorted((d for _, d in _read_unique(path, Dimension, lambda d: d.slot, "slot")), key=lambda d: d.index)
    _check_fits(dims, f"{path}")
    expected = [f"A{i}" for i in range(1, expected_size + 1)]
    got = [d.slot for d in dims]
    if got != expected:
        missing, extra = _slot_list(set(expected) - set(got)), _slot_list(set(got) - set(expected))
        raise RubricError(
            f"{path}: expected exactly {expected_size} slots A1..A{expected_size}; "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    return tuple(dims)


def _check_fits(dims: list[Dimension] | tuple[Dimension, ...], where: str) -> None:
    """Reject slots the score table has no columns for (it holds ``A1..A{MAX_SLOTS}``)."""
    beyond = [d.slot for d in dims if d.index > MAX_SLOTS]
    if beyond:
        raise RubricError(
            f"{where}: slots {beyond} exceed the {MAX_SLOTS} slots the score table holds "
            f"(a1_score .. a{MAX_SLOTS}_score); a rubric may use at most A1..A{MAX_SLOTS}"
        )


def load_calibration(path: str | Path, dimensions: tuple[Dimension, ...]) -> tuple[CalibrationReference, ...]:
    """Read ``*_calibration.jsonl``; every reference must score every slot of ``dimensions``."""
    path = Path(path)
    slots = {d.slot for d in dimensions}
    refs: list[CalibrationReference] = []
    for lineno, ref in _read_unique(path, CalibrationReference, lambda r: r.ref_id, "ref_id"):
        if set(ref.scores) != slots:
            missing, extra = _slot_list(slots - set(ref.scores)), sorted(set(ref.scores) - slots)
            raise RubricError(
                f"{path}:{lineno}: reference {ref.ref_id!r} must score every slot; "
                f"missing {missing or 'none'}, unknown {extra or 'none'}"
            )
        refs.append(ref)
    return tuple(refs)


def load_rubric(
    group: str,
    dimensions_path: str | Path,
    calibration_path: str | Path | None = None,
    expected_size: int = 15,
) -> Rubric:
    """Load a scorer group's rubric from its anchors files (a missing file names the group and the fix)."""
    if expected_size > MAX_SLOTS:
        raise RubricError(
            f"group {group!r} ({dimensions_path}): {expected_size} slots do not fit the score table, which "
            f"holds {MAX_SLOTS}; a rubric may use at most A1..A{MAX_SLOTS}"
        )
    for key, path in (("anchors", dimensions_path), ("calibration", calibration_path)):
        if path is not None and not Path(path).is_file():
            raise RubricError(
                f"group {group!r}: {key} file {path} not found; supply the group's file there, point "
                f"groups.{group}.{key} in conf/scorers.yaml at it, or set groups.{group}.enabled: false"
            )
    dims = load_dimensions(dimensions_path, expected_size)
    refs = load_calibration(calibration_path, dims) if calibration_path else ()
    return Rubric(group=group, dimensions=dims, calibration=refs)


def rubric_from_names(group: str, names: Mapping[str, str] | list[str]) -> Rubric:
    """Build a rubric in memory (tests, simulator): ``["name1", ...]`` or ``{"A1": "name1", ...}``."""
    items = names.items() if isinstance(names, Mapping) else ((f"A{i}", n) for i, n in enumerate(names, 1))
    dims = tuple(Dimension(slot=s, dimension=n, cluster_size=0) for s, n in items)
    _check_fits(dims, f"rubric of group {group!r}")
    return Rubric(group=group, dimensions=tuple(sorted(dims, key=lambda d: d.index)))
