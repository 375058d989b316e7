"""Canary drift guard, the pure part: per-endpoint deviation from the calibration references, the verdict.

Takes the scores each endpoint gave the group's calibration references (parsed with the ordinary parser)
and the references' own scores; gives one :class:`CanaryCell` per (endpoint, reference, slot), one
:class:`EndpointVerdict` per endpoint (mean absolute deviation, mean shift, quarantined or not and why) and
the one-line message of a pool whose every endpoint failed. The async part (sending the references) is
:mod:`mira_spark.serving.canary`. Pure logic: imports no Spark and no network code.

The measure is the mean absolute deviation over every scored cell of every reference: a wrong checkpoint
or a mis-served model moves many slots at once, while one slot off by a point on one reference moves the
mean by 1/180 of a point (12 references x 15 slots).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mira_spark.prompting.rubric import CalibrationReference

# An endpoint whose answers give scores for fewer than this share of the cells cannot be checked (down,
# overloaded or answering in another format): it stays out until a later check passes.
MIN_SCORED_SHARE = 0.5

REASON_DRIFT = "drift"  # mean |deviation| above the bound
REASON_UNSCORED = "unscored"  # too few cells scored to judge
REASON_UNREACHABLE = "unreachable"  # no answer to /health when the check started


@dataclass(frozen=True)
class CanaryCell:
    """One slot of one reference as one endpoint scored it (``score`` None: no valid score)."""

    endpoint: str
    ref_id: str
    slot: str
    reference_score: float
    score: float | None

    @property
    def deviation(self) -> float | None:
        """``score - reference_score``; None when the slot has no score."""
        return None if self.score is None else self.score - self.reference_score


@dataclass(frozen=True)
class EndpointVerdict:
    """What one check concluded about one endpoint."""

    endpoint: str
    cells: int
    scored: int
    mean_abs_deviation: float | None
    mean_shift: float | None
    quarantined: bool
    reason: str | None = None
    detail: str | None = None  # the error of an unreachable endpoint

    def describe(self) -> str:
        """``url: mean |deviation| 2.56 (shift +2.56) over 180 cells`` / ``url: unreachable (...)``."""
        if self.reason == REASON_UNREACHABLE:
            return f"{self.endpoint}: unreachable ({self.detail})"
        if self.mean_abs_deviation is None or self.mean_shift is None:
            return f"{self.endpoint}: {self.scored} of {self.cells} cells scored"
        text = (f"{self.endpoint}: mean |deviation| {self.mean_abs_deviation:.2f} "
                f"(shift {self.mean_shift:+.2f}) over {self.scored} cells")
        return text + (f", {self.scored} of {self.cells} scored" if self.reason == REASON_UNSCORED else "")


def select_references(references: Sequence[CalibrationReference], limit: int | None) -> tuple[CalibrationReference, ...]:
    """The references a check sends: the first ``limit`` of the file (all when None)."""
    return tuple(references if limit is None else references[:limit])


def check_due(wave: int, every_waves: int) -> bool:
    """Whether a check runs before ``wave`` (0-based): before the first, then before every N-th.

    >>> [w for w in range(12) if check_due(w, 5)], [w for w in range(3) if check_due(w, 0)]
    ([0, 5, 10], [0])
    """
    return wave == 0 or (every_waves > 0 and wave % every_waves == 0)


def reference_cells(endpoint: str, references: Sequence[CalibrationReference],
                    scores: Mapping[str, Mapping[str, float | None]], slots: Sequence[str]) -> list[CanaryCell]:
    """Cells of one endpoint: ``scores`` maps ref_id -> slot -> parsed score (a reference missing: None)."""
    return [CanaryCell(endpoint, ref.ref_id, slot, float(ref.scores[slot]), scores.get(ref.ref_id, {}).get(slot))
            for ref in references for slot in slots]


def judge_endpoint(endpoint: str, cells: Sequence[CanaryCell], max_deviation: float,
                   unreachable: str | None = None) -> EndpointVerdict:
    """Verdict of one endpoint: quarantined when unreachable, when too few cells were scored, or when the
    mean absolute deviation exceeds ``max_deviation``.

    >>> cells = [CanaryCell("e", "r", f"A{i}", 5.0, 8.0) for i in range(1, 4)]
    >>> v = judge_endpoint("e", cells, 1.5)
    >>> v.quarantined, v.reason, v.mean_abs_deviation, v.mean_shift
    (True, 'drift', 3.0, 3.0)
    """
    deviations = [c.deviation for c in cells if c.deviation is not None]
    n, scored = len(cells), len(deviations)
    mad = sum(abs(d) for d in deviations) / scored if scored else None
    shift = sum(deviations) / scored if scored else None
    if unreachable is not None:
        return EndpointVerdict(endpoint, n, 0, None, None, True, REASON_UNREACHABLE, unreachable)
    if n == 0 or scored < MIN_SCORED_SHARE * n:
        return EndpointVerdict(endpoint, n, scored, mad, shift, True, REASON_UNSCORED)
    assert mad is not None
    if mad > max_deviation:
        return EndpointVerdict(endpoint, n, scored, mad, shift, True, REASON_DRIFT)
    return EndpointVerdict(endpoint, n, scored, mad, shift, False)


def kept_endpoints(verdicts: Iterable[EndpointVerdict]) -> list[str]:
    """Endpoints that passed, in the order given."""
    return [v.endpoint for v in verdicts if not v.quarantined]


def pool_failed_message(group: str, model: str, verdicts: Sequence[EndpointVerdict], max_deviation: float,
                        wave: int, n_waves: int) -> str:
    """One line for a pool whose every endpoint failed the check: which, by how much, and what to do."""
    committed = "wave 1 is committed" if wave == 1 else f"waves 1-{wave} are committed"
    when = "before any document was sent" if wave == 0 else (
        f"before wave {wave + 1}/{n_waves} ({committed}; a rerun scores the rest)")
    return (
        f"group {group}: every endpoint failed the canary check {when}; bound: mean |deviation| <= "
        f"{max_deviation:g} from the calibration references' scores: "
        + "; ".join(v.describe() for v in verdicts)
        + f". Check that each endpoint serves {model} (the right checkpoint and chat template), or raise "
        "scoring.canary.max_deviation, or set scoring.canary.enabled: false to score without the guard."
    )


def canary_rows(run_id: str, wave: int, scorer: str, cells: Sequence[CanaryCell],
                verdicts: Mapping[str, EndpointVerdict]) -> list[tuple[str, int, str, str, str, str, float,
                                                                   float | None, float | None, bool, str | None]]:
    """Rows of the ``canary`` table (``store.schemas.CANARY`` without ``checked_at``), one per cell."""
    return [(run_id, wave, c.endpoint, scorer, c.ref_id, c.slot, c.reference_score, c.score, c.deviation,
             verdicts[c.endpoint].quarantined, verdicts[c.endpoint].reason) for c in cells]
