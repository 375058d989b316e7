"""Exact token / document budgets per unit without sorting a unit in one task. Pure: imports no Spark.

What it takes and gives, in the order a Spark job uses it:

1. **Order keys** (computed once per row, in Spark, and kept in one column that every later pass reads):

   * :func:`score_key` — the composite as an exact fixed-point integer (see :class:`ScoreKeyScale`);
   * :func:`random_order_key` — the ``random`` baseline: the top bits of a seeded hash of doc_id;
   * :func:`gumbel_order_key` — τ-sampling: ``composite / τ + Gumbel(hash(seed, doc_id))``, quantised.

   Every row also has a **tie hash** (``xxhash64(doc_id)`` for score and Gumbel keys, the seeded hash for
   ``random``). The total order inside a unit is ``(order_key desc, tie_hash asc, doc_id asc)``; a
   selection is always a *prefix* of that order.
2. **Pass 1** — Spark aggregates ``(unit, order_key) -> count, tokens`` (:class:`KeyAggregate`); the
   driver calls :func:`unit_budgets` (fraction / tokens / min_score; a global token budget is split over
   units by largest remainder, :func:`split_largest_remainder`) and :func:`find_boundaries`, which gives
   each unit's boundary key and how much budget is left for that key's rows (:class:`Boundary`).
3. **Pass 2a (optional)** — for units whose boundary key holds many rows, Spark aggregates
   ``(unit, key, hash_bucket(tie_hash, bits)) -> count, tokens`` over the boundary keys only
   (:class:`BucketAggregate`, :func:`choose_bucket_bits`); :func:`refine_boundaries` narrows each boundary
   to one bucket.
4. **Pass 2b** — Spark lists the rows ``(unit, key, tie_hash, doc_id, tokens)`` of the boundary keys (or
   boundary buckets) only (:class:`BoundaryRow`); :func:`resolve_cuts` orders those few rows exactly and
   gives :class:`Cuts`.
5. **Filter** — the cuts are broadcast and :meth:`Cuts.decide` (or the equivalent SQL predicate in
   :class:`Cut`'s docstring) decides every row, map-only.

Budget semantics (a prefix of the order is kept; ``cum`` counts tokens, or documents in ``fraction`` mode):

* ``never_exceed`` (default): a row is kept when the cumulative measure *including* it is <= budget;
* ``reach``: a row is kept when the cumulative measure *before* it is < budget, so the first row that
  reaches the budget is included (and the budget is met unless the unit runs out).

Exactness: keys are integers, the order is total (doc_id is unique per unit), and pass 2 checks that the
rows it receives are exactly the rows pass 1 counted, so the result equals a full sort + cumulative sum
(``tests/test_thresholds_math.py`` proves it against a brute-force sort).

>>> rows = [("s", 30, 1, "a", 5), ("s", 30, 2, "b", 5), ("s", 20, 0, "c", 5)]
>>> cuts = exact_cuts(rows, ThresholdSpec(mode="tokens", token_budget=7, semantics="reach"))
>>> [cuts.decide(u, k, h, d) for u, k, h, d, _ in rows]
[True, True, False]
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import reduce
from typing import Literal, NamedTuple

from mira_spark.selection.hashing import spark_xxhash64

Mode = Literal["fraction", "tokens", "min_score"]
UnitKind = Literal["global", "group", "source"]
Semantics = Literal["never_exceed", "reach"]
Measure = Literal["documents", "tokens", "none"]

MODES: tuple[str, ...] = ("fraction", "tokens", "min_score")
UNIT_KINDS: tuple[str, ...] = ("global", "group", "source")
SEMANTICS: tuple[str, ...] = ("never_exceed", "reach")
GLOBAL_UNIT = "global"
"""Unit name every row gets under ``unit: global``."""

SCORE_MAX = 10
"""Dimension scores are 0..SCORE_MAX (the rubric's range)."""
DEFAULT_SCORE_RESOLUTION = 10
"""Score quanta per point: scores are taken to tenths (the parser accepts '7.5')."""
INT64_LIMIT = 1 << 63
"""Keys and every product computed for them stay below this, so Spark's ``long`` arithmetic is exact."""
FALLBACK_MULTIPLIER_BITS = 40
"""When no multiplier makes every weighted mean exact within int64, keys use 2**this (or less) instead."""
MAX_WEIGHT_SUM = 1 << 16
"""Integer weights (after clearing denominators) may sum to at most this (subset sums are enumerated)."""

HASH_BITS = 64
RANDOM_KEY_BITS = 16
"""The ``random`` order key is the top RANDOM_KEY_BITS bits of the seeded hash: 65,536 keys in pass 1."""
RANDOM_SALT = "mira-random:"
GUMBEL_SALT = "mira-gumbel:"
GUMBEL_KEY_SCALE = 256
"""τ-sampling keys are ``floor((composite/τ + G) * GUMBEL_KEY_SCALE)``: steps of 1/256 on the Gumbel scale."""
DEFAULT_ROWS_PER_BUCKET = 4096
"""Pass 2a aims at about this many rows in the one bucket pass 2b lists."""
MAX_BUCKET_BITS = 48


# --------------------------------------------------------------------------------------------------
# Exact score key
# --------------------------------------------------------------------------------------------------


def _fraction(value: float | int | str | Fraction) -> Fraction:
    """A number as an exact fraction, taking floats by their decimal form (0.1 -> 1/10)."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, float):
        return Fraction(repr(value))
    return Fraction(value)


def _lcm(values: Iterable[int]) -> int:
    return reduce(math.lcm, values, 1)


@dataclass(frozen=True)
class ScoreKeyScale:
    """How a weighted mean of dimension scores becomes an integer key.

    ``key = (sum_i w_i * q_i) * multiplier // W_used`` where ``q_i = round_half_up(score_i * resolution)``
    over the unmasked, present dimensions, ``w_i`` are the integer weights and ``W_used`` their sum over
    those dimensions. When ``exact`` is true, ``multiplier`` is a multiple of every possible ``W_used``
    (the lcm of the weights' subset sums; ``lcm(1..15) = 360360`` for 15 uniform weights), so the
    division is exact: ``key = composite * resolution * multiplier`` on the 0-10 scale, equal composites
    give equal keys and distinct composites distinct keys. Otherwise (weights whose subset sums have no
    lcm within int64) ``multiplier`` is a power of two and ``key = floor(...)``: still a pure integer
    function, order preserved weakly (composites closer than ``1 / key_per_point`` may tie, and ties
    are then broken by the tie hash like any other tie).

    Spark computes the same integer with ``long`` columns:
    ``(w1 * q1 + ... ) * multiplier div (w1 * present1 + ...)``, ``q_i = CAST(round(a{i}_score *
    resolution) AS BIGINT)`` (Spark's ``round`` is half-up on the double, as :func:`quantise_score`).
    """

    weights: tuple[int, ...]
    resolution: int
    multiplier: int
    exact: bool

    @property
    def key_per_point(self) -> int:
        """Key units per composite point (0-10 scale)."""
        return self.resolution * self.multiplier

    @property
    def max_key(self) -> int:
        return SCORE_MAX * self.key_per_point


def score_key_scale(weights: Sequence[float | int | str | Fraction], resolution: int = DEFAULT_SCORE_RESOLUTION
                    ) -> ScoreKeyScale:
    """The key scale for dimension ``weights`` (any non-negative numbers; floats by their decimal form).

    >>> s = score_key_scale([1] * 15)
    >>> s.multiplier, s.key_per_point, s.exact
    (360360, 3603600, True)
    >>> score_key_scale(["0.5", "0.25", "0.25"]).weights   # common denominator cleared, gcd removed
    (2, 1, 1)
    """
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    fracs = [_fraction(w) for w in weights]
    if not fracs or any(f < 0 for f in fracs) or not any(f > 0 for f in fracs):
        raise ValueError(f"weights must be non-negative with at least one positive, got {list(weights)}")
    denom = _lcm(f.denominator for f in fracs)
    ints = [int(f * denom) for f in fracs]
    g = reduce(math.gcd, [w for w in ints if w], 0)
    ints = [w // g for w in ints]
    total = sum(ints)
    if total > MAX_WEIGHT_SUM:
        raise ValueError(f"integer weights {ints} sum to {total} > {MAX_WEIGHT_SUM}: use coarser weights")
    sums: set[int] = {0}
    for w in ints:
        if w:
            sums |= {s + w for s in sums}
    sums.discard(0)
    bound = INT64_LIMIT // (total * SCORE_MAX * resolution)
    multiplier = _lcm(sums)
    exact = multiplier < bound
    if not exact:
        multiplier = 1 << min(FALLBACK_MULTIPLIER_BITS, bound.bit_length() - 1)
    return ScoreKeyScale(tuple(ints), resolution, multiplier, exact)


def quantise_score(score: float, resolution: int = DEFAULT_SCORE_RESOLUTION) -> int:
    """``round_half_up(score * resolution)`` on the double product, exactly as Spark's ``round``.

    >>> quantise_score(7.35), quantise_score(7.25), quantise_score(7.0)
    (74, 73, 70)
    """
    return math.floor(Fraction(score * resolution) + Fraction(1, 2))


def score_key(scores: Sequence[float | None], scale: ScoreKeyScale, masked: Sequence[bool] | None = None
              ) -> int | None:
    """The exact integer key of the weighted mean of the unmasked, present scores; None when there is none.

    >>> s = score_key_scale([1, 1, 1])
    >>> score_key([8.0, 7.0, None], s) == score_key([7.5, None, 7.5], s)   # both composites are 7.5
    True
    >>> score_key([8.0, 7.0, 9.0], s) / s.key_per_point                    # mean of 8, 7, 9
    8.0
    >>> score_key([8.0, 7.0, 9.0], s, masked=[False, True, True]) / s.key_per_point
    8.0
    >>> score_key([None, 7.0, 9.0], s, masked=[False, True, True]) is None
    True
    """
    if len(scores) != len(scale.weights):
        raise ValueError(f"{len(scores)} scores for {len(scale.weights)} weights")
    numerator = 0
    used = 0
    for i, (score, w) in enumerate(zip(scores, scale.weights, strict=True)):
        if score is None or w == 0 or (masked is not None and masked[i]):
            continue
        numerator += w * quantise_score(score, scale.resolution)
        used += w
    if used == 0:
        return None
    return numerator * scale.multiplier // used


def composite_of_key(key: int, scale: ScoreKeyScale) -> Fraction:
    """The composite (0-10 scale) a score key stands for; exact when ``scale.exact``.

    >>> composite_of_key(score_key([6.0, 7.0], score_key_scale([1, 1])), score_key_scale([1, 1]))
    Fraction(13, 2)
    """
    return Fraction(key, scale.key_per_point)


def min_score_key(min_score: float | str | Fraction, scale: ScoreKeyScale, composite_max: int = SCORE_MAX) -> int:
    """The smallest key whose composite is >= ``min_score`` (given on a 0..``composite_max`` scale).

    Exact when ``scale.exact``; otherwise a row whose composite is within one key step above the
    threshold may fall below it.

    >>> s = score_key_scale([1, 1])
    >>> min_score_key(7, s) == score_key([7.0, 7.0], s), min_score_key(70, s, composite_max=100) == min_score_key(7, s)
    (True, True)
    """
    threshold = _fraction(min_score) * SCORE_MAX / composite_max
    return math.ceil(threshold * scale.key_per_point)


# --------------------------------------------------------------------------------------------------
# Random and Gumbel order keys, hash buckets
# --------------------------------------------------------------------------------------------------


def tie_hash(doc_id: str) -> int:
    """The tie hash of score and Gumbel orderings: Spark's ``xxhash64(doc_id)``."""
    return spark_xxhash64(doc_id)


def seeded_hash(doc_id: str, seed: int, salt: str = RANDOM_SALT) -> int:
    """Spark's ``xxhash64(doc_id, '<salt><seed>')``: a per-seed pseudo-random signed 64-bit value.

    >>> seeded_hash("doc-1", 7) != seeded_hash("doc-1", 8)
    True
    """
    return spark_xxhash64(doc_id, f"{salt}{seed}")


def hash_bucket(h: int, bits: int) -> int:
    """The top ``bits`` bits of the signed hash shifted to unsigned: monotone in ``h``.

    Spark: ``shiftrightunsigned(h ^ -9223372036854775808, 64 - bits)`` (and 0 when bits is 0).

    >>> hash_bucket(-2**63, 4), hash_bucket(-1, 4), hash_bucket(0, 4), hash_bucket(2**63 - 1, 4)
    (0, 7, 8, 15)
    """
    if not 0 <= bits <= HASH_BITS:
        raise ValueError(f"bits must be in 0..64, got {bits}")
    return (h + (1 << 63)) >> (HASH_BITS - bits)


def bucket_lowest_hash(bucket: int, bits: int) -> int:
    """The smallest signed hash in ``bucket`` (inverse of :func:`hash_bucket` at its lower edge)."""
    return (bucket << (HASH_BITS - bits)) - (1 << 63)


def random_order_key(h: int) -> int:
    """The ``random`` baseline's order key from its seeded hash ``h``; the tie hash is ``h`` itself.

    Keys are descending in ``h``'s top bits, so the whole order is ``h`` ascending, then doc_id: a
    seeded uniform permutation that needs only 2**RANDOM_KEY_BITS keys in pass 1.

    >>> random_order_key(-2**63) > random_order_key(2**63 - 1)
    True
    """
    return (1 << RANDOM_KEY_BITS) - 1 - hash_bucket(h, RANDOM_KEY_BITS)


def gumbel_noise(h: int) -> float:
    """Standard Gumbel noise ``-log(-log(u))``, ``u = (top 52 bits of h as unsigned + 0.5) / 2**52``.

    52 bits, not 53, so that ``u`` stays strictly below 1 in a double (``2**53 - 0.5`` would round up).

    >>> math.isfinite(gumbel_noise(-1)) and math.isfinite(gumbel_noise(0))
    True
    """
    u = ((((h + (1 << 64)) % (1 << 64)) >> 12) + 0.5) / (1 << 52)
    return -math.log(-math.log(u))


def gumbel_order_key(key: int, scale: ScoreKeyScale, tau: float, h: int) -> int:
    """τ-sampling key: ``floor((composite / tau + gumbel_noise(h)) * GUMBEL_KEY_SCALE)``.

    Taking the top of ``composite/τ + G`` is seeded Gumbel top-k: documents are drawn without
    replacement with probability proportional to ``exp(composite/τ)`` (τ -> 0 is the plain top-k).
    ``h`` is :func:`seeded_hash` with :data:`GUMBEL_SALT`; the tie hash stays ``xxhash64(doc_id)``.

    The float step is the only one not reproduced bit for bit by every engine (``log`` may differ in the
    last ulp between libms). Exactness of the *cut* does not depend on it: compute this key once per row
    (a pandas/Arrow UDF running this function keeps it identical to the driver), store it in a column,
    and let pass 1, pass 2 and the filter read that column. Quantising to integers keeps pass 1 small
    and the comparisons exact.

    >>> s = score_key_scale([1])
    >>> gumbel_order_key(score_key([9.0], s), s, 1.0, 0) > gumbel_order_key(score_key([1.0], s), s, 1.0, 0)
    True
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    composite = key / scale.key_per_point
    return math.floor((composite / tau + gumbel_noise(h)) * GUMBEL_KEY_SCALE)


# --------------------------------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------------------------------


def split_largest_remainder(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split ``total`` over units in proportion to ``weights`` so the parts sum exactly to ``total``.

    Each unit gets ``floor(total * w / W)``; the units with the largest remainders get one more until
    the total is reached, ties in remainder going to the unit name that sorts first. All-zero weights
    give all zeros (there is nothing to split over).

    >>> split_largest_remainder(10, {"a": 1, "b": 1, "c": 1})
    {'a': 4, 'b': 3, 'c': 3}
    >>> sum(split_largest_remainder(25_000, {"web": 31_000, "code": 12_000, "zh": 7_000}).values())
    25000
    """
    if total < 0 or any(w < 0 for w in weights.values()):
        raise ValueError("total and weights must be non-negative")
    weight_sum = sum(weights.values())
    if weight_sum == 0:
        return dict.fromkeys(weights, 0)
    parts = {u: total * w // weight_sum for u, w in weights.items()}
    left = total - sum(parts.values())
    by_remainder = sorted(weights, key=lambda u: (-(total * weights[u] % weight_sum), u))
    for u in by_remainder[:left]:
        parts[u] += 1
    return parts


def round_half_up_fraction(n: int, fraction: float | str | Fraction) -> int:
    """``round_half_up(fraction * n)`` exactly on the fraction's decimal form, within [0, n].

    >>> round_half_up_fraction(152, 0.4), round_half_up_fraction(5, 0.5), round_half_up_fraction(3, 2)
    (61, 3, 3)
    """
    exact = _fraction(fraction) * n
    return max(0, min(n, math.floor(exact + Fraction(1, 2))))


@dataclass(frozen=True)
class ThresholdSpec:
    """One variant's threshold rule.

    ``mode``: ``fraction`` (keep ``round_half_up(fraction x documents)`` per unit; ``fraction`` is one
    number or a unit -> number mapping with ``default_fraction`` for the rest), ``tokens`` (a token
    budget: ``token_budget`` split over units in proportion to their eligible tokens by largest
    remainder, or ``unit_token_budgets`` given per unit) or ``min_score`` (keep every row whose key is
    >= ``min_key``, see :func:`min_score_key`; no budget, no tie-break). ``semantics`` applies to the
    budget modes. ``unit`` only documents how rows were given their unit names (see :func:`unit_name`).
    """

    mode: Mode
    unit: UnitKind = "global"
    semantics: Semantics = "never_exceed"
    fraction: float | str | Fraction | Mapping[str, float | str | Fraction] | None = None
    default_fraction: float | str | Fraction | None = None
    token_budget: int | None = None
    unit_token_budgets: Mapping[str, int] | None = None
    min_key: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.unit not in UNIT_KINDS:
            raise ValueError(f"unit must be one of {UNIT_KINDS}, got {self.unit!r}")
        if self.semantics not in SEMANTICS:
            raise ValueError(f"semantics must be one of {SEMANTICS}, got {self.semantics!r}")
        if self.mode == "fraction" and self.fraction is None:
            raise ValueError("mode fraction needs fraction")
        if self.mode == "tokens" and (self.token_budget is None) == (self.unit_token_budgets is None):
            raise ValueError("mode tokens needs exactly one of token_budget, unit_token_budgets")
        if self.token_budget is not None and self.token_budget < 0:
            raise ValueError(f"token_budget must be >= 0, got {self.token_budget}")
        if self.mode == "min_score" and self.min_key is None:
            raise ValueError("mode min_score needs min_key (see min_score_key)")

    def fraction_for(self, unit: str) -> Fraction:
        if isinstance(self.fraction, Mapping):
            value = self.fraction.get(unit, self.default_fraction)
            if value is None:
                raise ValueError(f"no fraction for unit {unit!r} and no default_fraction")
            return _fraction(value)
        assert self.fraction is not None
        return _fraction(self.fraction)


def unit_name(kind: UnitKind, source: str, group: str) -> str:
    """The unit a row belongs to under ``kind`` (MIRA-Global / -Group / -Source).

    >>> unit_name("global", "web", "text"), unit_name("group", "web", "text"), unit_name("source", "web", "text")
    ('global', 'text', 'web')
    """
    if kind == "global":
        return GLOBAL_UNIT
    if kind == "group":
        return group
    if kind == "source":
        return source
    raise ValueError(f"unit must be one of {UNIT_KINDS}, got {kind!r}")


@dataclass(frozen=True)
class UnitBudget:
    """A unit's budget: ``amount`` documents or tokens; for ``min_score``, measure ``none``."""

    measure: Measure
    amount: int


def unit_budgets(spec: ThresholdSpec, totals: Mapping[str, tuple[int, int]]) -> dict[str, UnitBudget]:
    """Each unit's budget from its eligible ``(count, tokens)`` totals.

    >>> unit_budgets(ThresholdSpec(mode="tokens", token_budget=10), {"a": (3, 30), "b": (1, 10)})
    {'a': UnitBudget(measure='tokens', amount=8), 'b': UnitBudget(measure='tokens', amount=2)}
    >>> unit_budgets(ThresholdSpec(mode="fraction", fraction=0.5), {"a": (3, 30)})
    {'a': UnitBudget(measure='documents', amount=2)}
    """
    if spec.mode == "fraction":
        return {u: UnitBudget("documents", round_half_up_fraction(c, spec.fraction_for(u)))
                for u, (c, _t) in totals.items()}
    if spec.mode == "tokens":
        if spec.unit_token_budgets is not None:
            missing = sorted(set(totals) - set(spec.unit_token_budgets))
            if missing:
                raise ValueError(f"unit_token_budgets has no budget for units {missing}")
            return {u: UnitBudget("tokens", int(spec.unit_token_budgets[u])) for u in totals}
        assert spec.token_budget is not None
        split = split_largest_remainder(spec.token_budget, {u: t for u, (_c, t) in totals.items()})
        return {u: UnitBudget("tokens", split[u]) for u in totals}
    return {u: UnitBudget("none", 0) for u in totals}


# --------------------------------------------------------------------------------------------------
# Pass 1: boundaries from per-(unit, key) aggregates
# --------------------------------------------------------------------------------------------------


class KeyAggregate(NamedTuple):
    """Pass-1 row: ``groupBy(unit, order_key).agg(count, sum(tokens))``; column order as here."""

    unit: str
    key: int
    count: int
    tokens: int


class BucketAggregate(NamedTuple):
    """Pass-2a row: ``groupBy(unit, order_key, bucket).agg(count, sum(tokens))`` over boundary keys."""

    unit: str
    key: int
    bucket: int
    count: int
    tokens: int


class BoundaryRow(NamedTuple):
    """Pass-2b row: one document of a boundary key (or boundary bucket)."""

    unit: str
    key: int
    hash: int
    doc_id: str
    tokens: int


@dataclass(frozen=True)
class Boundary:
    """Where a unit's prefix ends, after pass 1 (and optionally pass 2a).

    Rows with ``order_key > key`` are kept and ``< key`` excluded; the rows at ``key`` are resolved by
    pass 2. ``key`` is None when every row is kept (the unit fits its budget). ``before_*`` count the
    rows ranked before the rows still to be resolved (higher keys, plus lower buckets once a bucket is
    chosen); ``key_*`` count the rows to resolve (the whole key, or the one bucket). ``resolved`` means
    no row listing is needed: the rows at ``key`` are kept up to the hash bound ``(last_hash, None)``.
    ``above_count`` counts the rows with a higher key (fixed by pass 1).
    """

    unit: str
    measure: Measure
    budget: int
    semantics: Semantics
    n_in: int
    tokens_in: int
    key: int | None
    before_count: int
    before_tokens: int
    key_count: int
    key_tokens: int
    above_count: int
    lowest_key: int
    next_higher_key: int | None
    bucket_bits: int | None = None
    bucket: int | None = None
    resolved: bool = False
    last_hash: int | None = None

    @property
    def remaining(self) -> int:
        """Budget left for the rows still to resolve, in the unit's measure."""
        before = self.before_count if self.measure == "documents" else self.before_tokens
        return self.budget - before


def merge_key_aggregates(rows: Iterable[Sequence]) -> dict[str, dict[int, tuple[int, int]]]:
    """Sum partial ``(unit, key, count, tokens)`` aggregates (e.g. from several partitions) per unit and key."""
    merged: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for unit, key, count, tokens in rows:
        cell = merged[unit][int(key)]
        cell[0] += int(count)
        cell[1] += int(tokens)
    return {u: {k: (c, t) for k, (c, t) in keys.items()} for u, keys in merged.items()}


def unit_totals(aggregates: Mapping[str, Mapping[int, tuple[int, int]]]) -> dict[str, tuple[int, int]]:
    """``unit -> (count, tokens)`` of merged aggregates."""
    return {u: (sum(c for c, _ in keys.values()), sum(t for _, t in keys.values())) for u, keys in aggregates.items()}


def _group_fits(before: int, amount: int, budget: int, semantics: Semantics) -> bool:
    """Whether a whole group of rows adding ``amount`` after ``before`` is certainly kept."""
    return before + amount <= budget if semantics == "never_exceed" else before + amount < budget


def find_boundaries(aggregates: Iterable[Sequence], spec: ThresholdSpec) -> dict[str, Boundary]:
    """Pass 1: each unit's boundary key from per-(unit, key) count and token aggregates.

    ``aggregates`` are ``(unit, key, count, tokens)`` rows in any order, possibly several partial rows
    per (unit, key) (they are summed). Keys are walked from the highest down with cumulative sums.

    >>> b = find_boundaries([("s", 9, 2, 20), ("s", 8, 3, 30), ("s", 7, 1, 10)],
    ...                     ThresholdSpec(mode="tokens", token_budget=35))
    >>> b["s"].key, b["s"].before_tokens, b["s"].remaining
    (8, 20, 15)
    """
    merged = merge_key_aggregates(aggregates)
    totals = unit_totals(merged)
    budgets = unit_budgets(spec, totals)
    out: dict[str, Boundary] = {}
    for unit in sorted(merged):
        keys = merged[unit]
        n_in, tokens_in = totals[unit]
        budget = budgets[unit]
        ordered = sorted(keys, reverse=True)
        common = dict(unit=unit, measure=budget.measure, budget=budget.amount, semantics=spec.semantics,
                      n_in=n_in, tokens_in=tokens_in, lowest_key=ordered[-1])
        if spec.mode == "min_score":
            assert spec.min_key is not None
            kept = [k for k in ordered if k >= spec.min_key]
            out[unit] = Boundary(
                **common, key=spec.min_key - 1, before_count=sum(keys[k][0] for k in kept),
                before_tokens=sum(keys[k][1] for k in kept), key_count=0, key_tokens=0,
                above_count=sum(keys[k][0] for k in kept),
                next_higher_key=kept[-1] if kept else None, resolved=True, last_hash=None,
            )
            continue
        before_c = before_t = 0
        boundary: Boundary | None = None
        previous: int | None = None
        for k in ordered:
            c, t = keys[k]
            before = before_c if budget.measure == "documents" else before_t
            if not _group_fits(before, c if budget.measure == "documents" else t, budget.amount, spec.semantics):
                boundary = Boundary(**common, key=k, before_count=before_c, before_tokens=before_t,
                                    key_count=c, key_tokens=t, above_count=before_c, next_higher_key=previous)
                break
            before_c += c
            before_t += t
            previous = k
        if boundary is None:
            boundary = Boundary(**common, key=None, before_count=before_c, before_tokens=before_t,
                                key_count=0, key_tokens=0, above_count=before_c, next_higher_key=previous,
                                resolved=True)
        elif _nothing_fits(boundary):
            boundary = replace(boundary, resolved=True, last_hash=None)
        out[unit] = boundary
    return out


def _nothing_fits(b: Boundary) -> bool:
    """No row to resolve can be kept, whatever its size: only true for document counts (size 1)."""
    if b.measure != "documents":
        return b.semantics == "reach" and b.remaining <= 0
    return b.remaining <= 0


# --------------------------------------------------------------------------------------------------
# Pass 2a: hash sub-buckets of the boundary keys
# --------------------------------------------------------------------------------------------------


def choose_bucket_bits(boundaries: Mapping[str, Boundary], rows_per_bucket: int = DEFAULT_ROWS_PER_BUCKET,
                       floor_bits: int = 0) -> int:
    """Bucket bits so the fullest unresolved boundary key splits into buckets of ~``rows_per_bucket`` rows.

    ``floor_bits``: bits the order key already consumed (``RANDOM_KEY_BITS`` for the random baseline,
    whose key *is* the hash's top bits), so the buckets split inside a key. 0 means pass 2a is not
    worth it: the boundary keys' rows are few enough to list directly.

    >>> b = find_boundaries([("s", 1, 1_000_000, 1_000_000)], ThresholdSpec(mode="fraction", fraction=0.5))
    >>> choose_bucket_bits(b)
    8
    """
    largest = max((b.key_count for b in boundaries.values() if not b.resolved), default=0)
    if largest <= rows_per_bucket:
        return 0
    return min(MAX_BUCKET_BITS, floor_bits + math.ceil(math.log2(largest / rows_per_bucket)))


def refine_boundaries(boundaries: Mapping[str, Boundary], bucket_aggregates: Iterable[Sequence], bits: int
                      ) -> dict[str, Boundary]:
    """Pass 2a: narrow each unresolved boundary to one hash bucket of its boundary key.

    ``bucket_aggregates``: ``(unit, key, bucket, count, tokens)`` rows with ``bucket = hash_bucket(tie_hash,
    bits)``; rows of other keys are ignored, partial rows are summed. Raises when the buckets do not add
    up to the key's pass-1 totals (the two passes saw different keys).
    """
    per: dict[tuple[str, int], dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for unit, key, bucket, count, tokens in bucket_aggregates:
        cell = per[(unit, int(key))][int(bucket)]
        cell[0] += int(count)
        cell[1] += int(tokens)
    out: dict[str, Boundary] = {}
    for unit, b in boundaries.items():
        if b.resolved or b.key is None:
            out[unit] = b
            continue
        buckets = per.get((unit, b.key), {})
        got = (sum(c for c, _ in buckets.values()), sum(t for _, t in buckets.values()))
        if got != (b.key_count, b.key_tokens):
            raise ValueError(f"unit {unit!r} key {b.key}: buckets hold {got} (count, tokens), pass 1 counted "
                             f"{(b.key_count, b.key_tokens)}: the order key or tokens differ between passes")
        before_c, before_t = b.before_count, b.before_tokens
        chosen: Boundary | None = None
        for bucket in sorted(buckets):
            c, t = buckets[bucket]
            before = before_c if b.measure == "documents" else before_t
            if not _group_fits(before, c if b.measure == "documents" else t, b.budget, b.semantics):
                chosen = replace(b, bucket_bits=bits, bucket=bucket, before_count=before_c, before_tokens=before_t,
                                 key_count=c, key_tokens=t)
                break
            before_c += c
            before_t += t
        if chosen is None:  # cannot happen: pass 1 said the whole key does not fit
            raise AssertionError(f"unit {unit!r}: no boundary bucket in key {b.key}")
        if _nothing_fits(chosen):
            bound = bucket_lowest_hash(chosen.bucket, bits) - 1 if chosen.before_count > b.above_count else None
            chosen = replace(chosen, resolved=True, last_hash=bound)
        out[unit] = chosen
    return out


# --------------------------------------------------------------------------------------------------
# Pass 2b: exact cut from the boundary rows; the cuts and the row decision
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """A unit's exact cut and its accounting.

    A row of the unit with ``(order_key, tie_hash, doc_id)`` is kept when ``key is None`` (everything
    kept), or ``order_key > key``, or ``order_key == key and last_hash is not None and (tie_hash <
    last_hash or (tie_hash == last_hash and (last_doc_id is None or doc_id <= last_doc_id)))``.
    As Spark SQL over the broadcast cuts joined on unit::

        cut_key IS NULL OR k > cut_key OR (k = cut_key AND last_hash IS NOT NULL AND (h < last_hash
          OR (h = last_hash AND (last_doc_id IS NULL OR doc_id <= last_doc_id))))

    (doc_id compares by code point in Python and by UTF-8 bytes in Spark: the same order.)
    ``lowest_kept_key`` is the threshold the variant reports (None when nothing is kept);
    ``budget_met``: ``reach`` — kept >= budget; ``never_exceed`` — kept == budget, or kept < budget and
    the first excluded row would have exceeded it; False when the unit ran out of rows short of its
    budget (``exhausted``: every row kept); None for ``min_score``.
    """

    unit: str
    key: int | None
    last_hash: int | None
    last_doc_id: str | None
    measure: Measure
    budget: int
    semantics: Semantics
    n_in: int
    tokens_in: int
    n_kept: int
    tokens_kept: int
    lowest_kept_key: int | None
    budget_met: bool | None
    exhausted: bool

    def keeps(self, key: int, h: int, doc_id: str) -> bool:
        if self.key is None or key > self.key:
            return True
        if key < self.key or self.last_hash is None:
            return False
        if h != self.last_hash:
            return h < self.last_hash
        return self.last_doc_id is None or doc_id <= self.last_doc_id


@dataclass(frozen=True)
class Cuts:
    """Every unit's :class:`Cut`; small enough to broadcast. ``decide`` is the map-only filter."""

    cuts: Mapping[str, Cut] = field(default_factory=dict)

    def decide(self, unit: str, key: int, h: int, doc_id: str) -> bool:
        """Whether the row is kept. A unit pass 1 never saw raises KeyError (the passes disagree)."""
        return self.cuts[unit].keeps(key, h, doc_id)

    def __getitem__(self, unit: str) -> Cut:
        return self.cuts[unit]

    def __iter__(self) -> Iterator[str]:
        return iter(self.cuts)

    def kept_measure(self, unit: str) -> int:
        cut = self.cuts[unit]
        return cut.n_kept if cut.measure == "documents" else cut.tokens_kept


def _finish(b: Boundary, key: int | None, last_hash: int | None, last_doc_id: str | None, n_kept: int,
            tokens_kept: int, boundary_kept: bool, next_size: int | None) -> Cut:
    exhausted = n_kept == b.n_in
    if b.measure == "none":
        met = None
    else:
        kept = n_kept if b.measure == "documents" else tokens_kept
        if b.semantics == "reach":
            met = kept >= b.budget
        else:
            met = kept == b.budget or (next_size is not None and kept + next_size > b.budget >= kept)
    if n_kept == 0:
        lowest = None
    elif key is None:
        lowest = b.lowest_key
    else:
        lowest = key if boundary_kept else b.next_higher_key
    return Cut(b.unit, key, last_hash, last_doc_id, b.measure, b.budget, b.semantics, b.n_in, b.tokens_in,
               n_kept, tokens_kept, lowest, met, exhausted)


def resolve_cuts(boundaries: Mapping[str, Boundary], rows: Iterable[Sequence]) -> Cuts:
    """Pass 2b: the exact cuts from the rows of each unresolved boundary key (or boundary bucket).

    ``rows``: ``(unit, key, tie_hash, doc_id, tokens)``; rows outside a unit's boundary key/bucket are
    ignored, so a superset is fine. Raises when the rows of a boundary do not match pass 1's (or pass
    2a's) count and tokens. A ``reach`` unit's rows are kept up to the first that reaches the budget;
    a ``never_exceed`` unit's while the cumulative measure stays within it.

    >>> b = find_boundaries([("s", 5, 3, 30)], ThresholdSpec(mode="fraction", fraction="0.34"))
    >>> cuts = resolve_cuts(b, [("s", 5, 7, "x", 10), ("s", 5, -3, "y", 10), ("s", 5, 7, "w", 10)])
    >>> cuts["s"].last_hash, cuts["s"].last_doc_id, cuts["s"].n_kept
    (-3, 'y', 1)
    """
    wanted: dict[tuple[str, int], Boundary] = {
        (u, b.key): b for u, b in boundaries.items() if not b.resolved and b.key is not None
    }
    listed: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for unit, key, h, doc_id, tokens in rows:
        b = wanted.get((unit, int(key)))
        if b is None or (b.bucket is not None and hash_bucket(int(h), b.bucket_bits or 0) != b.bucket):
            continue
        listed[unit].append((int(h), str(doc_id), int(tokens)))
    out: dict[str, Cut] = {}
    for unit, b in boundaries.items():
        if b.resolved:
            # Resolved without rows: everything kept, min_score, or no row can fit (document counts, or a
            # reach budget of 0); a never_exceed token boundary is never resolved without its rows.
            n_kept, tokens_kept = b.before_count, b.before_tokens
            next_size = 1 if b.measure == "documents" and n_kept < b.n_in else None
            out[unit] = _finish(b, b.key, b.last_hash, None, n_kept, tokens_kept,
                                boundary_kept=b.key is not None and b.last_hash is not None, next_size=next_size)
            continue
        items = sorted(listed.get(unit, []))
        got = (len(items), sum(t for _, _, t in items))
        if got != (b.key_count, b.key_tokens):
            raise ValueError(f"unit {unit!r} key {b.key}: listed rows hold {got} (count, tokens), the aggregates "
                             f"{(b.key_count, b.key_tokens)}: the order key, hash or tokens differ between passes")
        cum = b.before_count if b.measure == "documents" else b.before_tokens
        n_kept, tokens_kept = b.before_count, b.before_tokens
        last: tuple[int, str] | None = None
        next_size: int | None = None
        for h, doc_id, tokens in items:
            size = 1 if b.measure == "documents" else tokens
            keep = cum + size <= b.budget if b.semantics == "never_exceed" else cum < b.budget
            if not keep:
                next_size = size
                break
            cum += size
            n_kept += 1
            tokens_kept += tokens
            last = (h, doc_id)
        if last is not None:
            last_hash, last_doc = last
        elif b.bucket is not None and b.before_count > b.above_count:
            last_hash, last_doc = bucket_lowest_hash(b.bucket, b.bucket_bits or 0) - 1, None
        else:
            last_hash, last_doc = None, None
        out[unit] = _finish(b, b.key, last_hash, last_doc, n_kept, tokens_kept,
                            boundary_kept=last_hash is not None, next_size=next_size)
    return Cuts(out)


# --------------------------------------------------------------------------------------------------
# The whole machinery over in-memory rows (reference, small data, the report)
# --------------------------------------------------------------------------------------------------


def exact_cuts(rows: Iterable[Sequence], spec: ThresholdSpec, bucket_bits: int | None = None,
               rows_per_bucket: int = DEFAULT_ROWS_PER_BUCKET, floor_bits: int = 0) -> Cuts:
    """Pass 1, pass 2a (when worth it, or when ``bucket_bits`` is given) and pass 2b over in-memory rows.

    ``rows``: ``(unit, order_key, tie_hash, doc_id, tokens)``. This is what the Spark stages do with
    aggregates, on a list; it is also the reference the tests compare with a brute-force sort.

    >>> rows = [("a", 1, h, f"d{h}", 1) for h in range(10)]
    >>> cuts = exact_cuts(rows, ThresholdSpec(mode="fraction", fraction=0.3), bucket_bits=62)
    >>> cuts["a"].n_kept, cuts["a"].last_hash
    (3, 2)
    """
    rows = [(u, int(k), int(h), str(d), int(t)) for u, k, h, d, t in rows]
    boundaries = find_boundaries(((u, k, 1, t) for u, k, _h, _d, t in rows), spec)
    if bucket_bits is None:
        bucket_bits = choose_bucket_bits(boundaries, rows_per_bucket, floor_bits)
    if bucket_bits > 0:
        open_keys = {(u, b.key) for u, b in boundaries.items() if not b.resolved}
        buckets = [(u, k, hash_bucket(h, bucket_bits), 1, t) for u, k, h, _d, t in rows if (u, k) in open_keys]
        boundaries = refine_boundaries(boundaries, buckets, bucket_bits)
    return resolve_cuts(boundaries, rows)


def matching_budgets(cuts: Cuts) -> dict[str, int]:
    """Tokens each unit kept: the ``unit_token_budgets`` of a baseline matched to this variant.

    The random baseline of a ``min_score`` (or ``fraction``) variant runs ``mode: tokens`` with these,
    so it spends the same tokens per unit.
    """
    return {u: cuts[u].tokens_kept for u in cuts}


# --------------------------------------------------------------------------------------------------
# Accounting: units without eligible rows, the quantity a cut is on
# --------------------------------------------------------------------------------------------------

CUT_ON_COMPOSITE = "composite"
CUT_ON_RANDOM = "random_score"
CUT_ON_GUMBEL = "gumbel_key"
NO_ELIGIBLE_ROWS = "no_eligible_rows"


def cut_on(method: str, tau: float | None) -> str:
    """What a variant's cut is on, so its ``threshold`` can be read (see :func:`threshold_value`).

    >>> cut_on("score", None), cut_on("score", 0.5), cut_on("random", None)
    ('composite', 'gumbel_key', 'random_score')
    """
    if method == "random":
        return CUT_ON_RANDOM
    return CUT_ON_GUMBEL if tau is not None else CUT_ON_COMPOSITE


def random_score(h: int) -> float:
    """The random baseline's score of a row from its seeded hash: :func:`random_order_key` / 2**16, in [0, 1).

    Uniform over documents; the baseline keeps the highest first, like a composite. Rows with the same
    score (1/65,536 steps) are ordered by the hash itself, then doc_id.

    >>> random_score(-2**63), random_score(2**63 - 1)
    (0.9999847412109375, 0.0)
    """
    return random_order_key(h) / (1 << RANDOM_KEY_BITS)


def threshold_value(kind: str, key: int | None, composite_of: Callable[[int], float]) -> float | None:
    """The threshold a user reads, from the lowest kept order key, in the unit the cut is on (``kind``).

    ``composite``: the lowest kept composite (``composite_of(key)``, 0-100); ``random_score``: the lowest
    kept :func:`random_score`; ``gumbel_key``: the lowest kept ``composite/τ + G`` (0-10 composite, steps
    of 1/GUMBEL_KEY_SCALE). In every case rows above the threshold are kept, rows below excluded, rows at it
    split by the tie hash then doc_id. None when nothing is kept.

    >>> threshold_value("random_score", 1 << 15, float), threshold_value("gumbel_key", 512, float)
    (0.5, 2.0)
    >>> threshold_value("composite", 36, lambda k: k / 2), threshold_value("composite", None, float)
    (18.0, None)
    """
    if key is None:
        return None
    if kind == CUT_ON_RANDOM:
        return key / (1 << RANDOM_KEY_BITS)
    if kind == CUT_ON_GUMBEL:
        return key / GUMBEL_KEY_SCALE
    return composite_of(key)


def empty_cut(unit: str, spec: ThresholdSpec) -> Cut:
    """The cut of a unit that has input documents but no eligible row (all failed, masked or vetoed).

    Nothing is kept. Its budget is what the spec gives a unit of no eligible documents or tokens: 0 for
    ``fraction`` and a split ``token_budget`` (the split is over eligible tokens, so the others get its
    share), the unit's own entry of ``unit_token_budgets`` (0 when it has none). ``budget_met`` follows the
    semantics as for any unit: true when that budget is 0, false when a budget was asked of the unit
    (``unit_token_budgets``), None for ``min_score``.

    >>> c = empty_cut("s", ThresholdSpec(mode="tokens", token_budget=100))
    >>> c.n_kept, c.budget, c.budget_met, c.lowest_kept_key
    (0, 0, True, None)
    >>> empty_cut("s", ThresholdSpec(mode="tokens", unit_token_budgets={"s": 50})).budget_met
    False
    >>> empty_cut("s", ThresholdSpec(mode="min_score", min_key=3)).budget_met is None
    True
    """
    if spec.mode == "min_score":
        measure: Measure = "none"
        budget = 0
    elif spec.mode == "fraction":
        measure, budget = "documents", 0
    else:
        measure = "tokens"
        budget = int((spec.unit_token_budgets or {}).get(unit, 0))
    met = None if measure == "none" else budget == 0  # both semantics: kept (0) >= / == budget
    return Cut(unit, None, None, None, measure, budget, spec.semantics, 0, 0, 0, 0, None, met, True)


def with_empty_units(cuts: Cuts, units: Iterable[str], spec: ThresholdSpec) -> Cuts:
    """``cuts`` plus an :func:`empty_cut` for every unit of ``units`` it lacks (units with no eligible row).

    >>> cuts = with_empty_units(Cuts({}), ["a"], ThresholdSpec(mode="fraction", fraction=0.5))
    >>> sorted(cuts), cuts["a"].n_in
    (['a'], 0)
    """
    out = dict(cuts.cuts)
    for unit in units:
        if unit not in out:
            out[unit] = empty_cut(unit, spec)
    return Cuts(out)


def unit_inputs(kind: UnitKind, rows: Iterable[Sequence]) -> dict[str, dict[str, int]]:
    """Per unit of ``kind``, the input rows that were not eligible, by reason, and ``""`` for eligible ones.

    ``rows``: ``(source, scorer, reason, count)`` over every input row of a variant (``reason`` None when
    the row competes for the cut). Rows whose unit is null (no scorer, under ``group``) are left out, as in
    ``decisions``.

    >>> unit_inputs("group", [("a", "g", None, 3), ("b", "g", "all_dims_masked", 2), ("c", None, "no_scorer", 1)])
    {'g': {'': 3, 'all_dims_masked': 2}}
    """
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for source, scorer, reason, count in rows:
        unit = GLOBAL_UNIT if kind == "global" else (scorer if kind == "group" else source)
        if unit is None:
            continue
        out[unit][reason or ""] += int(count)
    return {u: dict(sorted(r.items())) for u, r in sorted(out.items())}


def no_eligible_note(reasons: Mapping[str, int]) -> str | None:
    """The ``note`` of a unit's thresholds row: None when some row competed, else why none could.

    >>> no_eligible_note({"": 2, "pending": 1}) is None
    True
    >>> no_eligible_note({"scoring_failed:http_503": 2, "all_dims_masked": 5})
    'no_eligible_rows: all_dims_masked 5, scoring_failed:http_503 2'
    """
    if reasons.get("", 0):
        return None
    return f"{NO_ELIGIBLE_ROWS}: " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
