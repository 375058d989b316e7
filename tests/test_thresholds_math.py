"""Pure threshold maths (mira_spark.selection.thresholds, mira_spark.selection.hashing): no SparkSession.

The pass-1 / pass-2 machinery is compared with a brute-force sort + cumulative sum (plain Python on
hypothesis-generated tie-heavy rows, pandas on 8,000 rows) for every mode x unit x semantics, with and
without hash sub-buckets; the properties of issue 9 are checked on the same generators.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from fractions import Fraction

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mira_spark.selection.hashing import spark_xxhash64, xxh64
from mira_spark.selection.thresholds import (
    GUMBEL_SALT,
    RANDOM_KEY_BITS,
    ThresholdSpec,
    bucket_lowest_hash,
    choose_bucket_bits,
    composite_of_key,
    exact_cuts,
    find_boundaries,
    gumbel_noise,
    gumbel_order_key,
    hash_bucket,
    matching_budgets,
    min_score_key,
    quantise_score,
    random_order_key,
    refine_boundaries,
    resolve_cuts,
    score_key,
    score_key_scale,
    seeded_hash,
    split_largest_remainder,
    tie_hash,
    unit_budgets,
    unit_name,
)

FAST = settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GROUP_OF = {"web": "text", "news": "text", "zh": "text", "code": "code"}
UNIT_KINDS = ("global", "group", "source")

# --------------------------------------------------------------------------------------------------
# Hashing: Spark's xxhash64, measured on classic Spark 4.2.0 and Sail 0.7.2 (identical on both):
#   df.select(F.xxhash64("doc_id"), F.xxhash64("doc_id", "salt")) with salt = "mira-random:7"
# --------------------------------------------------------------------------------------------------

SPARK_XXHASH64 = [
    ("", -7444071767201028348, 9183427364958083244),
    ("a", -8582455328737087284, -2340319296971966783),
    ("doc-1", -5185708976804142778, 2402081442037643128),
    ("doc-000123", 8305210934432319238, -6080390395037979349),
    ("héllo wörld", 7620070002295215535, 6418844309342356463),
    ("文档-42", 1411443195753436285, -7827939498128573810),
    ("x" * 31, -1716462135722163746, 2701810737288943275),
    ("y" * 32, 5202031258905353636, 1011726519378704312),
    ("z" * 33, -8411362631970189001, -8231937146329563502),
    ("0123456789" * 7 + "abc", -4679469556427111121, 4949334333787789920),
    ("🙂emoji", 604154065763198142, 1065884120942422907),
]


@pytest.mark.parametrize(("doc_id", "h1", "h2"), SPARK_XXHASH64)
def test_spark_xxhash64_matches_spark(doc_id: str, h1: int, h2: int) -> None:
    assert spark_xxhash64(doc_id) == h1 == tie_hash(doc_id)
    assert spark_xxhash64(doc_id, "mira-random:7") == h2 == seeded_hash(doc_id, 7)


@pytest.mark.parametrize(("data", "seed", "expected"), [
    (b"", 0, 0xEF46DB3751D8E999),   # the reference implementation's published values
    (b"a", 0, 0xD24EC4F1A98C6E5B),
    (b"abc", 0, 0x44BC2CF5AD770999),
])
def test_xxh64_reference_vectors(data: bytes, seed: int, expected: int) -> None:
    assert xxh64(data, seed) == expected


def test_null_columns_pass_the_seed_through() -> None:
    assert spark_xxhash64("doc-1", None) == spark_xxhash64("doc-1")
    assert spark_xxhash64(None) == 42


# --------------------------------------------------------------------------------------------------
# Score key
# --------------------------------------------------------------------------------------------------


def test_uniform_scale_is_lcm_1_to_15() -> None:
    s = score_key_scale([1] * 15)
    assert s.multiplier == math.lcm(*range(1, 16)) == 360360
    assert s.exact and s.key_per_point == 3_603_600
    assert s.max_key == 36_036_000


@pytest.mark.parametrize(("weights", "expected_weights", "exact"), [
    ([1, 1, 1], (1, 1, 1), True),
    ([0.5, 0.25, 0.25], (2, 1, 1), True),
    (["1/3", "2/3"], (1, 2), True),
    ([2, 2, 0], (1, 1, 0), True),
    ([3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53], None, False),   # subset-sum lcm too big
])
def test_scale_weights(weights: list, expected_weights: tuple | None, exact: bool) -> None:
    s = score_key_scale(weights)
    if expected_weights is not None:
        assert s.weights == expected_weights
    assert s.exact is exact
    assert sum(s.weights) * 10 * s.resolution * s.multiplier < 2**63


@pytest.mark.parametrize("weights", [[], [0, 0], [-1, 2]])
def test_scale_rejects_bad_weights(weights: list) -> None:
    with pytest.raises(ValueError):
        score_key_scale(weights)


@pytest.mark.parametrize(("scores", "masked", "expected"), [
    ([8.0, 7.0, 9.0], None, Fraction(8)),
    ([8.0, None, 9.0], None, Fraction(17, 2)),
    ([8.0, 7.0, 9.0], [True, False, False], Fraction(8)),
    ([7.5, 7.0, 7.0], None, Fraction(43, 6)),
    ([None, None, None], None, None),
    ([1.0, 2.0, 3.0], [True, True, True], None),
])
def test_score_key_cases(scores: list, masked: list | None, expected: Fraction | None) -> None:
    s = score_key_scale([1, 1, 1])
    key = score_key(scores, s, masked)
    assert (None if key is None else composite_of_key(key, s)) == expected


@pytest.mark.parametrize(("score", "q"), [(7.35, 74), (7.25, 73), (0.05, 1), (10.0, 100), (0.0, 0), (2.5, 25)])
def test_quantise_is_half_up_on_the_double(score: float, q: int) -> None:
    assert quantise_score(score) == q


score_vectors = st.lists(st.one_of(st.none(), st.integers(0, 20).map(lambda x: x / 2)), min_size=5, max_size=5)


@FAST
@given(a=score_vectors, b=score_vectors, weights=st.lists(st.integers(0, 4), min_size=5, max_size=5),
       mask=st.lists(st.booleans(), min_size=5, max_size=5))
def test_score_key_is_exact_and_order_preserving(a: list, b: list, weights: list, mask: list) -> None:
    if not any(weights):
        weights[0] = 1
    s = score_key_scale(weights)
    assert s.exact

    def comp(v: list) -> Fraction | None:
        used = [(w, Fraction(x)) for x, w, m in zip(v, weights, mask, strict=True) if x is not None and w and not m]
        return sum(w * x for w, x in used) / sum(w for w, _ in used) if used else None

    ka, kb = score_key(a, s, mask), score_key(b, s, mask)
    ca, cb = comp(a), comp(b)
    assert (ka is None) == (ca is None) and (kb is None) == (cb is None)
    if ka is not None and kb is not None:
        assert composite_of_key(ka, s) == ca
        assert (ka == kb) == (ca == cb) and (ka < kb) == (ca < cb)


@SOME
@given(a=score_vectors, b=score_vectors)
def test_inexact_scale_is_monotone(a: list, b: list) -> None:
    s = score_key_scale([3, 5, 7, 11, 13])
    weights = s.weights
    s = type(s)(weights, s.resolution, 1 << 10, False)   # force the floor path with a coarse multiplier

    def comp(v: list) -> Fraction | None:
        used = [(w, Fraction(x)) for x, w in zip(v, weights, strict=True) if x is not None]
        return sum(w * x for w, x in used) / sum(w for w, _ in used) if used else None

    ka, kb, ca, cb = score_key(a, s), score_key(b, s), comp(a), comp(b)
    if ka is not None and kb is not None:
        if ca == cb:
            assert ka == kb
        if ca < cb:
            assert ka <= kb


def test_min_score_key() -> None:
    s = score_key_scale([1, 1, 1])
    t = min_score_key("7.5", s)
    assert score_key([7.5, 7.5, 7.5], s) == t
    assert score_key([7.5, 7.5, 7.4], s) < t
    assert min_score_key(75, s, composite_max=100) == t


# --------------------------------------------------------------------------------------------------
# Buckets, random and Gumbel keys
# --------------------------------------------------------------------------------------------------


@FAST
@given(h1=st.integers(-2**63, 2**63 - 1), h2=st.integers(-2**63, 2**63 - 1), bits=st.integers(0, 64))
def test_hash_bucket_is_monotone_and_lowest_hash_inverts(h1: int, h2: int, bits: int) -> None:
    if h1 <= h2:
        assert hash_bucket(h1, bits) <= hash_bucket(h2, bits)
    b = hash_bucket(h1, bits)
    assert bucket_lowest_hash(b, bits) <= h1
    assert hash_bucket(bucket_lowest_hash(b, bits), bits) == b
    if bits:
        assert hash_bucket(bucket_lowest_hash(b, bits) - 1, bits) == b - 1 or b == 0


def test_random_order_is_seeded_hash_ascending() -> None:
    ids = [f"d{i}" for i in range(300)]
    hs = {d: seeded_hash(d, 3) for d in ids}
    by_machinery = sorted(ids, key=lambda d: (-random_order_key(hs[d]), hs[d], d))
    assert by_machinery == sorted(ids, key=lambda d: (hs[d], d))
    assert sorted(ids, key=lambda d: (seeded_hash(d, 4), d)) != by_machinery


def test_gumbel_noise_is_standard_gumbel_and_deterministic() -> None:
    noise = [gumbel_noise(seeded_hash(f"d{i}", 1, GUMBEL_SALT)) for i in range(20000)]
    mean = sum(noise) / len(noise)
    assert abs(mean - 0.5772156649) < 0.03          # Euler–Mascheroni constant
    var = sum((x - mean) ** 2 for x in noise) / len(noise)
    assert abs(var - math.pi**2 / 6) < 0.08
    assert noise[:5] == [gumbel_noise(seeded_hash(f"d{i}", 1, GUMBEL_SALT)) for i in range(5)]
    assert all(math.isfinite(gumbel_noise(h)) for h in (-2**63, -1, 0, 2**63 - 1))


def test_gumbel_rejects_bad_tau() -> None:
    s = score_key_scale([1])
    with pytest.raises(ValueError):
        gumbel_order_key(0, s, 0.0, 0)


# --------------------------------------------------------------------------------------------------
# Largest remainder
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("total", "weights", "expected"), [
    (10, {"a": 1, "b": 1, "c": 1}, {"a": 4, "b": 3, "c": 3}),
    (10, {"c": 1, "b": 1, "a": 1}, {"a": 4, "b": 3, "c": 3}),     # ties by name, not input order
    (7, {"a": 50, "b": 30, "c": 20}, {"a": 4, "b": 2, "c": 1}),   # 3.5, 2.1, 1.4 -> a gets the rest
    (100, {"a": 0, "b": 5}, {"a": 0, "b": 100}),
    (5, {"a": 0, "b": 0}, {"a": 0, "b": 0}),
    (0, {"a": 3}, {"a": 0}),
])
def test_largest_remainder_cases(total: int, weights: dict, expected: dict) -> None:
    assert split_largest_remainder(total, weights) == expected


def test_largest_remainder_alabama_paradox_is_real() -> None:
    """A larger total can give one unit less (why 'larger budget, superset' holds per unit, not per total)."""
    assert split_largest_remainder(10, {"a": 6, "b": 6, "c": 2}) == {"a": 4, "b": 4, "c": 2}
    assert split_largest_remainder(11, {"a": 6, "b": 6, "c": 2}) == {"a": 5, "b": 5, "c": 1}


def reference_largest_remainder(total: int, weights: dict[str, int]) -> dict[str, int]:
    w = sum(weights.values())
    if w == 0:
        return dict.fromkeys(weights, 0)
    quota = {u: Fraction(total * x, w) for u, x in weights.items()}
    parts = {u: math.floor(q) for u, q in quota.items()}
    order = sorted(weights, key=lambda u: (-(quota[u] - parts[u]), u))
    for u in order[: total - sum(parts.values())]:
        parts[u] += 1
    return parts


@FAST
@given(total=st.integers(0, 10**12), weights=st.dictionaries(st.text("abcdef", min_size=1, max_size=3),
                                                               st.integers(0, 10**9), min_size=1, max_size=8))
def test_largest_remainder_sums_exactly(total: int, weights: dict) -> None:
    parts = split_largest_remainder(total, weights)
    assert parts == reference_largest_remainder(total, weights)
    w = sum(weights.values())
    if w:
        assert sum(parts.values()) == total
        for u, x in weights.items():
            quota = Fraction(total * x, w)
            assert math.floor(quota) <= parts[u] <= math.ceil(quota)


# --------------------------------------------------------------------------------------------------
# Brute force reference: full sort + cumulative sum
# --------------------------------------------------------------------------------------------------


def brute_force(rows: list[tuple], spec: ThresholdSpec) -> tuple[set[str], dict[str, tuple[int, int]]]:
    """Kept doc_ids and per-unit (n_kept, tokens_kept) by sorting each unit whole."""
    by_unit: dict[str, list[tuple]] = defaultdict(list)
    for r in rows:
        by_unit[r[0]].append(r)
    if spec.mode == "tokens" and spec.unit_token_budgets is None:
        budgets = reference_largest_remainder(spec.token_budget, {u: sum(r[4] for r in rs) for u, rs in by_unit.items()})
    kept: set[str] = set()
    acct: dict[str, tuple[int, int]] = {}
    for unit, rs in by_unit.items():
        order = sorted(rs, key=lambda r: (-r[1], r[2], r[3]))
        chosen = []
        if spec.mode == "min_score":
            chosen = [r for r in order if r[1] >= spec.min_key]
        else:
            if spec.mode == "fraction":
                budget = min(len(rs), math.floor(spec.fraction_for(unit) * len(rs) + Fraction(1, 2)))
            elif spec.unit_token_budgets is not None:
                budget = spec.unit_token_budgets[unit]
            else:
                budget = budgets[unit]
            cum = 0
            for r in order:
                size = 1 if spec.mode == "fraction" else r[4]
                if spec.semantics == "never_exceed" and cum + size > budget:
                    break
                if spec.semantics == "reach" and cum >= budget:
                    break
                cum += size
                chosen.append(r)
        kept |= {r[3] for r in chosen}
        acct[unit] = (len(chosen), sum(r[4] for r in chosen))
    return kept, acct


def decided(rows: list[tuple], cuts) -> set[str]:
    return {d for u, k, h, d, _t in rows if cuts.decide(u, k, h, d)}


raw_rows = st.lists(
    st.tuples(
        st.sampled_from(sorted(GROUP_OF)),
        st.integers(0, 4),                                                     # few keys: tie-heavy
        st.one_of(st.integers(-3, 3), st.integers(-2**63, 2**63 - 1)),          # colliding hashes too
        st.text("abcxyz", min_size=1, max_size=4),                              # doc_id
        st.one_of(st.integers(0, 12), st.just(0)),                              # zero-token documents too
    ),
    min_size=1, max_size=40, unique_by=lambda r: r[3],
)


def as_rows(raw: list[tuple], kind: str) -> list[tuple]:
    return [(unit_name(kind, src, GROUP_OF[src]), key, h, doc, tok) for src, key, h, doc, tok in raw]


specs = st.one_of(
    st.builds(lambda f, sem: ThresholdSpec(mode="fraction", fraction=f, semantics=sem),
              st.sampled_from(["0", "0.1", "0.25", "0.5", "0.77", "1"]), st.sampled_from(["never_exceed", "reach"])),
    st.builds(lambda b, sem: ThresholdSpec(mode="tokens", token_budget=b, semantics=sem),
              st.integers(0, 250), st.sampled_from(["never_exceed", "reach"])),
    st.builds(lambda k: ThresholdSpec(mode="min_score", min_key=k), st.integers(-1, 6)),
)
bucket_bits = st.sampled_from([None, 0, 1, 2, 8, 62, 64])


@FAST
@given(raw=raw_rows, kind=st.sampled_from(UNIT_KINDS), spec=specs, bits=bucket_bits)
def test_cuts_equal_brute_force(raw: list, kind: str, spec: ThresholdSpec, bits: int | None) -> None:
    rows = as_rows(raw, kind)
    cuts = exact_cuts(rows, spec, bucket_bits=bits)
    kept, acct = brute_force(rows, spec)
    assert decided(rows, cuts) == kept
    for unit, (n_kept, tokens_kept) in acct.items():
        assert (cuts[unit].n_kept, cuts[unit].tokens_kept) == (n_kept, tokens_kept)


@FAST
@given(raw=raw_rows, kind=st.sampled_from(UNIT_KINDS), spec=specs)
def test_budget_met_and_never_exceeded(raw: list, kind: str, spec: ThresholdSpec) -> None:
    rows = as_rows(raw, kind)
    cuts = exact_cuts(rows, spec)
    for unit in cuts:
        cut = cuts[unit]
        if spec.mode == "min_score":
            assert cut.budget_met is None
            continue
        kept = cuts.kept_measure(unit)
        assert cut.budget_met is (not (cut.exhausted and kept < cut.budget))
        if spec.semantics == "never_exceed":
            assert kept <= cut.budget
        else:
            assert kept >= cut.budget or cut.exhausted


@FAST
@given(raw=raw_rows, kind=st.sampled_from(UNIT_KINDS), spec=specs, seed=st.integers(0, 2**32))
def test_input_order_changes_nothing(raw: list, kind: str, spec: ThresholdSpec, seed: int) -> None:
    rows = as_rows(raw, kind)
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    assert exact_cuts(rows, spec) == exact_cuts(shuffled, spec)


@FAST
@given(raw=raw_rows, kind=st.sampled_from(UNIT_KINDS), spec=specs, parts=st.integers(1, 5), seed=st.integers(0, 99))
def test_partitioned_aggregates_merge_to_the_same_cuts(raw: list, kind: str, spec: ThresholdSpec, parts: int,
                                                        seed: int) -> None:
    rows = as_rows(raw, kind)
    rng = random.Random(seed)
    partition = [rng.randrange(parts) for _ in rows]
    partial = defaultdict(lambda: [0, 0])
    for p, (u, k, _h, _d, t) in zip(partition, rows, strict=True):
        partial[(p, u, k)][0] += 1
        partial[(p, u, k)][1] += t
    aggregates = [(u, k, c, t) for (_p, u, k), (c, t) in partial.items()]
    whole = find_boundaries([(u, k, 1, t) for u, k, _h, _d, t in rows], spec)
    assert find_boundaries(aggregates, spec) == whole
    bits = 2
    open_keys = {(u, b.key) for u, b in whole.items() if not b.resolved}
    bucket_partial = defaultdict(lambda: [0, 0])
    for p, (u, k, h, _d, t) in zip(partition, rows, strict=True):
        if (u, k) in open_keys:
            bucket_partial[(p, u, k, hash_bucket(h, bits))][0] += 1
            bucket_partial[(p, u, k, hash_bucket(h, bits))][1] += t
    refined = refine_boundaries(whole, [(u, k, b, c, t) for (_p, u, k, b), (c, t) in bucket_partial.items()], bits)
    assert resolve_cuts(refined, rows) == exact_cuts(rows, spec, bucket_bits=bits)


@FAST
@given(raw=raw_rows, kind=st.sampled_from(UNIT_KINDS), small=st.integers(0, 150), extra=st.integers(0, 150),
       sem=st.sampled_from(["never_exceed", "reach"]))
def test_larger_budget_gives_a_superset(raw: list, kind: str, small: int, extra: int, sem: str) -> None:
    rows = as_rows(raw, kind)
    units = sorted({r[0] for r in rows})
    lo = ThresholdSpec(mode="tokens", unit_token_budgets=dict.fromkeys(units, small), semantics=sem)
    hi = ThresholdSpec(mode="tokens", unit_token_budgets=dict.fromkeys(units, small + extra), semantics=sem)
    assert decided(rows, exact_cuts(rows, lo)) <= decided(rows, exact_cuts(rows, hi))
    f_lo, f_hi = sorted([Fraction(small, 150), Fraction(small + extra, 300)])
    assert decided(rows, exact_cuts(rows, ThresholdSpec(mode="fraction", fraction=f_lo, semantics=sem))) <= \
        decided(rows, exact_cuts(rows, ThresholdSpec(mode="fraction", fraction=f_hi, semantics=sem)))
    if kind == "global":   # a single unit: the global total is that unit's budget, no split paradox
        g_lo = ThresholdSpec(mode="tokens", token_budget=small, semantics=sem)
        g_hi = ThresholdSpec(mode="tokens", token_budget=small + extra, semantics=sem)
        assert decided(rows, exact_cuts(rows, g_lo)) <= decided(rows, exact_cuts(rows, g_hi))


@FAST
@given(raw=raw_rows, kind=st.sampled_from(UNIT_KINDS), spec=specs, pick=st.integers(0, 39), up=st.integers(1, 4))
def test_raising_one_score_never_drops_it(raw: list, kind: str, spec: ThresholdSpec, pick: int, up: int) -> None:
    rows = as_rows(raw, kind)
    i = pick % len(rows)
    u, k, h, d, t = rows[i]
    if not exact_cuts(rows, spec).decide(u, k, h, d):
        return
    raised = [*rows[:i], (u, k + up, h, d, t), *rows[i + 1:]]
    assert exact_cuts(raised, spec).decide(u, k + up, h, d)


@SOME
@given(raw=raw_rows, kind=st.sampled_from(UNIT_KINDS), spec=specs, seed=st.integers(0, 50),
       bits=st.sampled_from([None, RANDOM_KEY_BITS, RANDOM_KEY_BITS + 4, 64]))
def test_random_baseline_equals_seeded_shuffle(raw: list, kind: str, spec: ThresholdSpec, seed: int,
                                               bits: int | None) -> None:
    if spec.mode == "min_score":
        return
    base = as_rows(raw, kind)
    rows = []
    for u, _k, _h, d, t in base:
        h = seeded_hash(d, seed)
        rows.append((u, random_order_key(h), h, d, t))
    cuts = exact_cuts(rows, spec, bucket_bits=bits, floor_bits=RANDOM_KEY_BITS)
    kept, _ = brute_force(rows, spec)
    assert decided(rows, cuts) == kept
    # the brute-force order of the random baseline is simply (seeded hash, doc_id)
    for unit in cuts:
        order = sorted((r for r in rows if r[0] == unit), key=lambda r: (r[2], r[3]))
        flags = [cuts.decide(*r[:4]) for r in order]
        assert flags == sorted(flags, reverse=True)   # a prefix


@SOME
@given(raw=raw_rows, kind=st.sampled_from(UNIT_KINDS), tau=st.sampled_from([0.05, 0.5, 2.0]),
       budget=st.integers(0, 200))
def test_gumbel_sampling_through_the_same_machinery(raw: list, kind: str, tau: float, budget: int) -> None:
    s = score_key_scale([1, 1])
    base = as_rows(raw, kind)
    rows = []
    for u, k, _h, d, t in base:
        key = score_key([float(k), float(k) + 1], s)
        rows.append((u, gumbel_order_key(key, s, tau, seeded_hash(d, 9, GUMBEL_SALT)), tie_hash(d), d, t))
    spec = ThresholdSpec(mode="tokens", token_budget=budget)
    assert decided(rows, exact_cuts(rows, spec)) == brute_force(rows, spec)[0]


def test_gumbel_with_small_tau_approaches_top_k_and_large_tau_random() -> None:
    s = score_key_scale([1])
    docs = [(f"d{i}", float(i % 11)) for i in range(2000)]
    def kept(tau: float) -> float:
        rows = [("g", gumbel_order_key(score_key([x], s), s, tau, seeded_hash(d, 1, GUMBEL_SALT)), tie_hash(d), d, 1)
                for d, x in docs]
        cuts = exact_cuts(rows, ThresholdSpec(mode="fraction", fraction="0.25"))
        chosen = [x for (d, x), r in zip(docs, rows, strict=True) if cuts.decide(*r[:4])]
        return sum(chosen) / len(chosen)
    top, mid, flat = kept(0.01), kept(1.0), kept(1000.0)
    assert top > mid > flat
    assert top >= 8.5 and abs(flat - 5.0) < 0.5


def test_matching_budgets_make_random_spend_the_same_tokens() -> None:
    rng = random.Random(5)
    rows = [(src, rng.randrange(6), tie_hash(f"d{i}"), f"d{i}", rng.randrange(1, 50))
            for i, src in enumerate(rng.choice(["web", "code", "zh"]) for _ in range(500))]
    scored = exact_cuts(rows, ThresholdSpec(mode="min_score", unit="source", min_key=3))
    budgets = matching_budgets(scored)
    rand_rows = [(u, random_order_key(seeded_hash(d, 1)), seeded_hash(d, 1), d, t) for u, _k, _h, d, t in rows]
    rand = exact_cuts(rand_rows, ThresholdSpec(mode="tokens", unit="source", unit_token_budgets=budgets, semantics="reach"),
                      floor_bits=RANDOM_KEY_BITS)
    for unit, b in budgets.items():
        assert b <= rand[unit].tokens_kept < b + 50


# --------------------------------------------------------------------------------------------------
# Accounting, pass-2 checks, specs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "n_kept", "tokens_kept", "lowest", "met"), [
    (ThresholdSpec(mode="tokens", token_budget=25), 2, 20, 8, True),                     # 10+10, next 10 > 25
    (ThresholdSpec(mode="tokens", token_budget=25, semantics="reach"), 3, 30, 7, True),  # third reaches 25
    (ThresholdSpec(mode="tokens", token_budget=1000), 4, 40, 7, False),                  # ran out short
    (ThresholdSpec(mode="tokens", token_budget=0), 0, 0, None, True),
    (ThresholdSpec(mode="tokens", token_budget=0, semantics="reach"), 0, 0, None, True),
    (ThresholdSpec(mode="fraction", fraction="0.5"), 2, 20, 8, True),
    (ThresholdSpec(mode="fraction", fraction="0.6"), 2, 20, 8, True),                    # 2.4 -> 2
    (ThresholdSpec(mode="fraction", fraction="0.625"), 3, 30, 7, True),                  # 2.5 -> 3
    (ThresholdSpec(mode="min_score", min_key=8), 2, 20, 8, None),
    (ThresholdSpec(mode="min_score", min_key=9), 1, 10, 9, None),
    (ThresholdSpec(mode="min_score", min_key=10), 0, 0, None, None),
])
def test_accounting_table(spec: ThresholdSpec, n_kept: int, tokens_kept: int, lowest: int | None,
                          met: bool | None) -> None:
    rows = [("s", 9, 0, "a", 10), ("s", 8, 0, "b", 10), ("s", 7, 0, "c", 10), ("s", 7, 1, "d", 10)]
    cut = exact_cuts(rows, spec)["s"]
    assert (cut.n_kept, cut.tokens_kept, cut.lowest_kept_key, cut.budget_met) == (n_kept, tokens_kept, lowest, met)
    assert (cut.n_in, cut.tokens_in) == (4, 40)


def test_doc_id_breaks_hash_ties() -> None:
    rows = [("s", 1, 5, "b", 1), ("s", 1, 5, "a", 1), ("s", 1, 5, "c", 1)]
    cuts = exact_cuts(rows, ThresholdSpec(mode="fraction", fraction="0.5"))
    assert decided(rows, cuts) == {"a", "b"}
    assert (cuts["s"].last_hash, cuts["s"].last_doc_id) == (5, "b")


def test_bucket_refinement_lists_one_bucket_only() -> None:
    rng = random.Random(1)
    rows = [("s", 1, rng.randrange(-2**63, 2**63), f"d{i}", rng.randrange(1, 9)) for i in range(50_000)]
    spec = ThresholdSpec(mode="tokens", token_budget=sum(r[4] for r in rows) // 3)
    boundaries = find_boundaries([(u, k, 1, t) for u, k, _h, _d, t in rows], spec)
    bits = choose_bucket_bits(boundaries, rows_per_bucket=500)
    assert bits == 7
    buckets = defaultdict(lambda: [0, 0])
    for u, k, h, _d, t in rows:
        buckets[(u, k, hash_bucket(h, bits))][0] += 1
        buckets[(u, k, hash_bucket(h, bits))][1] += t
    refined = refine_boundaries(boundaries, [(u, k, b, c, t) for (u, k, b), (c, t) in buckets.items()], bits)
    listed = [r for r in rows if hash_bucket(r[2], bits) == refined["s"].bucket]
    assert len(listed) < 1000
    assert resolve_cuts(refined, listed) == exact_cuts(rows, spec, bucket_bits=0)


def test_pass2_rejects_rows_that_disagree_with_pass1() -> None:
    rows = [("s", 1, i, f"d{i}", 1) for i in range(4)]
    spec = ThresholdSpec(mode="fraction", fraction="0.5")
    boundaries = find_boundaries([(u, k, 1, t) for u, k, _h, _d, t in rows], spec)
    with pytest.raises(ValueError, match="differ between passes"):
        resolve_cuts(boundaries, rows[:3])
    with pytest.raises(ValueError, match="differ between passes"):
        refine_boundaries(boundaries, [("s", 1, 0, 3, 3)], 1)


def test_unknown_unit_is_an_error() -> None:
    cuts = exact_cuts([("s", 1, 0, "a", 1)], ThresholdSpec(mode="fraction", fraction=1))
    with pytest.raises(KeyError):
        cuts.decide("other", 1, 0, "a")


@pytest.mark.parametrize("kwargs", [
    {"mode": "percent"},
    {"mode": "fraction"},
    {"mode": "tokens"},
    {"mode": "tokens", "token_budget": 5, "unit_token_budgets": {"a": 1}},
    {"mode": "tokens", "token_budget": -1},
    {"mode": "min_score"},
    {"mode": "fraction", "fraction": 0.5, "semantics": "about"},
    {"mode": "fraction", "fraction": 0.5, "unit": "domain"},
])
def test_bad_specs(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ThresholdSpec(**kwargs)


def test_per_unit_fractions_and_explicit_budgets() -> None:
    spec = ThresholdSpec(mode="fraction", unit="source", fraction={"web": "0.5"}, default_fraction="0.25")
    assert unit_budgets(spec, {"web": (10, 0), "code": (10, 0)})["code"].amount == 3
    with pytest.raises(ValueError, match="no budget"):
        unit_budgets(ThresholdSpec(mode="tokens", unit_token_budgets={"web": 3}), {"web": (1, 1), "code": (1, 1)})
    with pytest.raises(ValueError, match="no fraction"):
        unit_budgets(ThresholdSpec(mode="fraction", fraction={"web": 1}), {"code": (1, 1)})


# --------------------------------------------------------------------------------------------------
# 8,000 tie-heavy rows against pandas, every mode x unit x semantics
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_rows() -> dict[str, list[tuple]]:
    rng = random.Random(20261201)
    s = score_key_scale([1] * 3)
    raw = []
    for i in range(8_000):
        src = rng.choice(sorted(GROUP_OF))
        scores = [float(rng.choice([5, 6, 6, 7, 7, 7, 8])) for _ in range(3)]
        doc = f"doc-{i:05d}"
        raw.append((src, score_key(scores, s), tie_hash(doc) % 7 - 3, doc, rng.choice([0, 1, 50, 300, 2000])))
    return {kind: as_rows(raw, kind) for kind in UNIT_KINDS}


def pandas_brute_force(rows: list[tuple], spec: ThresholdSpec, budgets: dict[str, int]) -> set[str]:
    df = pd.DataFrame(rows, columns=["unit", "key", "h", "doc_id", "tokens"])
    if spec.mode == "min_score":
        return set(df.loc[df.key >= spec.min_key, "doc_id"])
    df = df.sort_values(["unit", "key", "h", "doc_id"], ascending=[True, False, True, True])
    df["size"] = 1 if spec.mode == "fraction" else df["tokens"]
    df["cum"] = df.groupby("unit")["size"].cumsum()
    df["budget"] = df["unit"].map(budgets)
    keep = df.cum <= df.budget if spec.semantics == "never_exceed" else (df.cum - df["size"]) < df.budget
    return set(df.loc[keep, "doc_id"])


@pytest.mark.parametrize("kind", UNIT_KINDS)
@pytest.mark.parametrize(("mode", "semantics"), [("fraction", "never_exceed"), ("tokens", "never_exceed"),
                                                 ("tokens", "reach"), ("min_score", "never_exceed")])
def test_eight_thousand_rows_against_pandas(big_rows: dict, kind: str, mode: str, semantics: str) -> None:
    rows = big_rows[kind]
    s = score_key_scale([1] * 3)
    spec = {
        "fraction": ThresholdSpec(mode="fraction", unit=kind, fraction="0.3"),
        "tokens": ThresholdSpec(mode="tokens", unit=kind, token_budget=1_600_000, semantics=semantics),
        "min_score": ThresholdSpec(mode="min_score", unit=kind, min_key=min_score_key("7", s)),
    }[mode]
    units = defaultdict(lambda: [0, 0])
    for u, _k, _h, _d, t in rows:
        units[u][0] += 1
        units[u][1] += t
    budgets = {u: b.amount for u, b in unit_budgets(spec, {u: tuple(v) for u, v in units.items()}).items()}
    expected = pandas_brute_force(rows, spec, budgets)
    assert decided(rows, exact_cuts(rows, spec, bucket_bits=3 if kind == "group" else None)) == expected
