"""Which near-cut documents adaptive sampling pays for, under a cap on their share. Pure: imports no Spark.

Adaptive k samples (``scoring.adaptive_samples``) spends extra requests on documents whose composite lies
within ``band`` points of their unit's cut. How many documents that is depends on how densely the corpus
crowds its cuts, so ``max_share`` caps it: at most that share of the scored documents, the ones nearest
their cut. Distances are counted in steps of :data:`BAND_STEP` composite points (one small aggregation);
:func:`last_step_within_cap` finds the farthest step whose documents, with all nearer ones, still fit the
cap. A step is taken whole or not at all, so the cut is reproducible and never depends on row order; it
can leave the cap up to one step's documents unspent.
"""

from __future__ import annotations

from collections.abc import Mapping

BAND_STEP = 0.01  # composite points (0-100) per distance step


def last_step_within_cap(counts: Mapping[int, int], cap: int) -> int | None:
    """The largest step ``s`` with ``sum(counts[t] for t <= s) <= cap`` (steps are >= 0); None when every
    document fits, and below every step (e.g. -1) when not even the nearest step does.

    >>> last_step_within_cap({0: 3, 2: 4, 5: 1}, 10) is None
    True
    >>> last_step_within_cap({0: 3, 2: 4, 5: 1}, 7), last_step_within_cap({0: 3, 2: 4, 5: 1}, 6)
    (4, 1)
    >>> last_step_within_cap({0: 3}, 2)
    -1
    """
    if cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}")
    if sum(counts.values()) <= cap:
        return None
    taken = 0
    for step in sorted(counts):
        if taken + counts[step] > cap:
            return step - 1  # every nearer step fits, this one does not
        taken += counts[step]
    raise AssertionError("unreachable: the total exceeds the cap")
