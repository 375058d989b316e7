"""Reliability with confidence (mira_spark.selection.confidence): pure, no SparkSession.

References: scipy.stats.spearmanr and a direct mid-rank implementation on expanded rows; Fisher z by
hand; DerSimonian–Laird step by step and on the BCG vaccine trials (metafor's dat.bcg, Colditz et al.
1994: Q = 152.233, tau^2 = 0.3088, mu = -0.7141, se 0.1787, fixed-effect -0.4303).
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from mira_spark.selection.confidence import (
    BOOTSTRAP_BELOW_TEACHER_VALUES,
    Estimate,
    MaskRule,
    agreement,
    bootstrap_ci,
    dersimonian_laird,
    doubled_mid_ranks,
    fisher_ci,
    mae_ci,
    mask_decision,
    mask_version,
    merge_masks,
    merge_pair_counts,
    parse_published_mask,
    read_published_mask,
    reliability_cells,
    shrink_mae,
)
from mira_spark.selection.stats import average_ranks

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def expand(counts: list[tuple[float, float, int]]) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for s, t, c in counts:
        xs += [s] * c
        ys += [t] * c
    return xs, ys


def direct_mid_ranks(values: list[float]) -> list[float]:
    """Mid-ranks by sorting every row: the tested reference in ``selection.stats``."""
    return average_ranks(values)


def direct_spearman(xs: list[float], ys: list[float]) -> float | None:
    rx, ry = direct_mid_ranks(xs), direct_mid_ranks(ys)
    n = len(xs)
    mx, my = sum(rx) / n, sum(ry) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


tie_heavy_counts = st.lists(
    st.tuples(st.integers(0, 10).map(float), st.integers(0, 10).map(float), st.integers(1, 30)),
    min_size=1, max_size=25,
)


# --------------------------------------------------------------------------------------------------
# Agreement from counts
# --------------------------------------------------------------------------------------------------


@FAST
@given(counts=tie_heavy_counts)
def test_spearman_from_counts_equals_scipy_and_direct(counts: list) -> None:
    a = agreement(counts)
    xs, ys = expand(counts)
    direct = direct_spearman(xs, ys)
    assert a.n == len(xs)
    assert a.mae == pytest.approx(sum(abs(x - y) for x, y in zip(xs, ys, strict=True)) / len(xs))
    if direct is None:
        assert a.spearman is None
    else:
        assert a.spearman == pytest.approx(direct, abs=1e-12)
        assert a.spearman == pytest.approx(scipy_stats.spearmanr(xs, ys).statistic, abs=1e-12)


@FAST
@given(counts=tie_heavy_counts, parts=st.integers(1, 4), seed=st.integers(0, 99))
def test_partial_counts_merge(counts: list, parts: int, seed: int) -> None:
    rng = random.Random(seed)
    split = []
    for s, t, c in counts:
        cuts = sorted(rng.randrange(c + 1) for _ in range(parts - 1))
        for lo, hi in zip([0, *cuts], [*cuts, c], strict=True):
            split.append((s, t, hi - lo))
    rng.shuffle(split)
    assert agreement(split) == agreement(counts)


def test_negative_zero_is_one_value() -> None:
    assert merge_pair_counts([(-0.0, 1.0, 2), (0.0, 1.0, 3)]) == {(0.0, 1.0): 5}
    assert agreement([(-0.0, 0.0, 1), (0.0, 1.0, 1), (1.0, 1.0, 1)]) == agreement([(0.0, 0.0, 1), (0.0, 1.0, 1),
                                                                                   (1.0, 1.0, 1)])


@pytest.mark.parametrize(("counts", "rho"), [
    ([(1, 1, 1), (2, 2, 1), (3, 3, 1)], 1.0),
    ([(1, 3, 1), (2, 2, 1), (3, 1, 1)], -1.0),
    ([(5, 1, 3), (5, 2, 3)], None),          # student constant
    ([(1, 4, 3), (2, 4, 3)], None),          # teacher constant
    ([], None),
])
def test_agreement_cases(counts: list, rho: float | None) -> None:
    assert agreement(counts).spearman == rho


def test_doubled_mid_ranks() -> None:
    assert doubled_mid_ranks({3.0: 2, 1.0: 1, 7.0: 3}) == {1.0: 2, 3.0: 5, 7.0: 10}   # ranks 1, 2.5, 5


# --------------------------------------------------------------------------------------------------
# Confidence intervals
# --------------------------------------------------------------------------------------------------


def test_fisher_ci_by_hand() -> None:
    # rho 0.5, n 103: z = atanh(0.5) = 0.5493061443; se = sqrt((1 + 0.125) / 100) = 0.1060660172;
    # z_0.975 = 1.9599639845; half width 0.2078856; tanh(0.3414206) = 0.328745, tanh(0.7571917) = 0.639420
    z = 0.5493061443340549
    se = math.sqrt(1.125 / 100)
    half = 1.959963984540054 * se
    lo, hi = fisher_ci(0.5, 103)
    assert lo == pytest.approx(math.tanh(z - half), abs=1e-12) == pytest.approx(0.328745, abs=1e-6)
    assert hi == pytest.approx(math.tanh(z + half), abs=1e-12) == pytest.approx(0.639420, abs=1e-6)


@pytest.mark.parametrize(("rho", "n", "defined"), [(0.5, 3, False), (None, 50, False), (1.0, 50, True),
                                                   (-1.0, 50, True), (0.0, 4, True)])
def test_fisher_ci_edges(rho: float | None, n: int, defined: bool) -> None:
    ci = fisher_ci(rho, n)
    assert (ci is not None) == defined
    if ci is not None:
        assert -1 <= ci[0] <= ci[1] <= 1
        assert ci[0] <= rho <= ci[1] or abs(rho) == 1


def test_mae_ci_by_hand() -> None:
    # errors: 40 x 0, 40 x 1, 20 x 3 -> mean 1.0, sum sq 40 + 180 = 220, var (220 - 100) / 99
    a = agreement([(5, 5, 40), (5, 6, 40), (5, 8, 20)])
    half = 1.959963984540054 * math.sqrt(120 / 99 / 100)
    lo, hi = mae_ci(a)
    assert (lo, hi) == (pytest.approx(1 - half), pytest.approx(1 + half))
    assert mae_ci(agreement([(1, 1, 1)])) is None
    assert mae_ci(agreement([(1, 1, 9)])) == (0.0, 0.0)


def test_bootstrap_is_reproducible_and_seeded() -> None:
    counts = [(s, t, 1 + (s * 7 + t) % 5) for s in range(6) for t in range(3) if abs(s / 2 - t) <= 1]
    a = bootstrap_ci(counts, seed=11, replicates=500)
    assert a == bootstrap_ci(list(reversed(counts)), seed=11, replicates=500)
    assert a != bootstrap_ci(counts, seed=12, replicates=500)
    assert a.spearman[0] < agreement(counts).spearman < a.spearman[1]
    assert a.mae[0] < agreement(counts).mae < a.mae[1]
    assert a.valid == a.replicates == 500


def test_bootstrap_rho_undefined_in_most_replicates() -> None:
    boot = bootstrap_ci([(1, 1, 1), (2, 1, 60)], seed=1, replicates=300)   # teacher constant: rho never defined
    assert boot.spearman is None and boot.valid == 0


def test_bootstrap_roughly_agrees_with_fisher_on_a_large_smooth_cell() -> None:
    rng = random.Random(3)
    counts = defaultdict(int)
    for _ in range(400):
        q = rng.gauss(5, 2)
        counts[(float(round(q + rng.gauss(0, 1.5))), float(round(q)))] += 1
    rows = [(s, t, c) for (s, t), c in counts.items()]
    a = agreement(rows)
    f = fisher_ci(a.spearman, a.n)
    b = bootstrap_ci(rows, seed=5, replicates=1000)
    assert abs(b.spearman[0] - f[0]) < 0.05 and abs(b.spearman[1] - f[1]) < 0.05


# --------------------------------------------------------------------------------------------------
# DerSimonian–Laird and MAE shrinkage
# --------------------------------------------------------------------------------------------------

BCG = [  # tpos, tneg, cpos, cneg
    (4, 119, 11, 128), (6, 300, 29, 274), (3, 228, 11, 209), (62, 13536, 248, 12619), (33, 5036, 47, 5761),
    (180, 1361, 372, 1079), (8, 2537, 10, 619), (505, 87886, 499, 87892), (29, 7470, 45, 7232),
    (17, 1699, 65, 1600), (186, 50448, 141, 27197), (5, 2493, 3, 2338), (27, 16886, 29, 17825),
]


def test_dersimonian_laird_bcg_textbook_values() -> None:
    y = [math.log((a / (a + b)) / (c / (c + d))) for a, b, c, d in BCG]
    v = [1 / a - 1 / (a + b) + 1 / c - 1 / (c + d) for a, b, c, d in BCG]
    r = dersimonian_laird(y, v)
    assert r.q == pytest.approx(152.233, abs=5e-4)
    assert r.tau2 == pytest.approx(0.3088, abs=5e-5)
    assert r.mu == pytest.approx(-0.7141, abs=5e-5)
    assert r.se_mu == pytest.approx(0.1787, abs=5e-5)
    assert r.mu_fixed == pytest.approx(-0.4303, abs=5e-5)


def test_dersimonian_laird_step_by_step() -> None:
    y = [0.2, 0.6, 1.1, 0.4]
    v = [0.04, 0.01, 0.09, 0.02]
    w = [25.0, 100.0, 1 / 0.09, 50.0]
    sw = sum(w)
    ybar = sum(wi * yi for wi, yi in zip(w, y, strict=True)) / sw
    q = sum(wi * (yi - ybar) ** 2 for wi, yi in zip(w, y, strict=True))
    c = sw - sum(wi**2 for wi in w) / sw
    tau2 = max(0.0, (q - 3) / c)
    wstar = [1 / (vi + tau2) for vi in v]
    mu = sum(wi * yi for wi, yi in zip(wstar, y, strict=True)) / sum(wstar)
    b = [vi / (vi + tau2) for vi in v]
    r = dersimonian_laird(y, v)
    assert r.mu_fixed == pytest.approx(ybar) and r.q == pytest.approx(q) and r.tau2 == pytest.approx(tau2)
    assert tau2 > 0
    assert r.mu == pytest.approx(mu) and r.se_mu == pytest.approx(math.sqrt(1 / sum(wstar)))
    for i in range(4):
        assert r.shrunk[i] == pytest.approx((1 - b[i]) * y[i] + b[i] * mu)
        assert r.shrunk_var[i] == pytest.approx((1 - b[i]) * v[i] + b[i] ** 2 / sum(wstar))
        assert min(y[i], mu) <= r.shrunk[i] <= max(y[i], mu)
    # the noisiest estimate moves furthest toward the pooled mean
    assert max(range(4), key=lambda i: r.weights[i]) == 2


def test_dersimonian_laird_homogeneous_pools_completely() -> None:
    r = dersimonian_laird([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])
    assert r.tau2 == 0 and all(x == pytest.approx(0.5) for x in r.shrunk)
    single = dersimonian_laird([0.3], [0.05])
    assert single.tau2 == 0 and single.shrunk == (pytest.approx(0.3),)
    with pytest.raises(ValueError):
        dersimonian_laird([0.3], [0.0])


@pytest.mark.parametrize(("n", "mae_s", "mae_g", "kappa", "expected"), [
    (20, 1.0, 2.0, 20, 1.5), (0, 1.0, 2.0, 20, 2.0), (1000, 1.0, 2.0, 0, 1.0), (60, 3.0, 1.0, 20, 2.5),
])
def test_shrink_mae(n: int, mae_s: float, mae_g: float, kappa: float, expected: float) -> None:
    assert shrink_mae(n, mae_s, mae_g, kappa) == pytest.approx(expected)


# --------------------------------------------------------------------------------------------------
# The reliability table
# --------------------------------------------------------------------------------------------------


def planted_rows(seed: int = 1) -> list[tuple]:
    """Teacher = quality; student = quality + noise; source 'zh' has pure noise on A2; 'tiny' has 6 pairs."""
    rng = random.Random(seed)
    counts: dict[tuple, int] = defaultdict(int)
    for source, n in (("web", 300), ("news", 200), ("zh", 250), ("tiny", 6)):
        for _ in range(n):
            q = rng.randint(0, 10)
            for dim in ("A1", "A2"):
                student = q + rng.choice([-1, 0, 0, 1])
                if source == "zh" and dim == "A2":
                    student = rng.randint(0, 10)
                counts[("text", source, dim, float(max(0, min(10, student))), float(q))] += 1
    return [(*k, c) for k, c in counts.items()]


def test_planted_noisy_cell_is_masked_and_good_ones_are_not() -> None:
    cells = {(c.source, c.dimension): c for c in reliability_cells(planted_rows())}
    assert cells[("zh", "A2")].masked and "spearman" in cells[("zh", "A2")].reason
    for key in [("web", "A1"), ("web", "A2"), ("news", "A1"), ("news", "A2"), ("zh", "A1")]:
        assert not cells[key].masked, cells[key].reason
        assert cells[key].basis == "source" and cells[key].ci_method == "fisher"
    # heterogeneity: tau^2 > 0 for A2 keeps the noisy cell close to its own estimate
    noisy = cells[("zh", "A2")]
    assert noisy.tau2 > 0 and noisy.spearman_shrunk < 0.3


def test_small_cell_borrows_from_its_group() -> None:
    rows = planted_rows()
    cells = {(c.source, c.dimension): c for c in reliability_cells(rows, MaskRule(n_min=10))}
    tiny = cells[("tiny", "A1")]
    assert tiny.n == 6 and tiny.basis == "group" and not tiny.masked
    assert tiny.used.n == sum(c.n for (s, d), c in cells.items() if d == "A1")
    low = {(c.source, c.dimension): c for c in reliability_cells(rows, MaskRule(n_min=4))}[("tiny", "A1")]
    assert low.basis == "source"
    assert low.shrink_weight > 0.5                       # few pairs: mostly the group's z
    assert abs(low.spearman_shrunk - low.used.spearman) < 1e-12
    assert low.mae_shrunk == pytest.approx(shrink_mae(6, low.mae, _group_mae(rows, "A1"), 20))


def _group_mae(rows: list[tuple], dim: str) -> float:
    tot = n = 0
    for _g, _s, d, s, t, c in rows:
        if d == dim:
            tot += abs(s - t) * c
            n += c
    return tot / n


def test_fallback_to_global_and_none() -> None:
    rows = [("g1", "a", "A1", float(s), float(s), 10) for s in range(6)]
    cells = reliability_cells(rows, cells=[("g2", "b", "A1"), ("g2", "b", "A9")])
    by = {(c.group, c.source, c.dimension): c for c in cells}
    assert by[("g1", "a", "A1")].basis == "source"
    assert by[("g2", "b", "A1")].basis == "global" and by[("g2", "b", "A1")].used.n == 60
    none = by[("g2", "b", "A9")]
    assert none.basis == "none" and not none.masked and "no validation pairs" in none.reason


def test_few_teacher_values_get_a_bootstrap_ci() -> None:
    rows = [("g", "s", "A1", float(st_), float(t), 5 + (st_ * 3 + t) % 4)
            for t in range(BOOTSTRAP_BELOW_TEACHER_VALUES - 2) for st_ in range(t * 3, t * 3 + 4)]
    a = reliability_cells(rows, seed=3, replicates=400)[0]
    assert a.ci_method == "bootstrap"
    assert a == reliability_cells(list(reversed(rows)), seed=3, replicates=400)[0]
    assert a.spearman_ci[0] <= a.spearman <= a.spearman_ci[1]


def test_constant_student_is_masked_and_constant_teacher_borrows_rho() -> None:
    rows = [("g", "good", "A1", float(s), float(s), 10) for s in range(8)]
    rows += [("g", "flat", "A1", 5.0, float(t), 10) for t in range(8)]
    rows += [("g", "same", "A1", float(s), 7.0, 5) for s in (6, 7, 8)]
    by = {c.source: c for c in reliability_cells(rows)}
    assert by["flat"].masked and "constant" in by["flat"].reason
    same = by["same"]
    assert same.basis == "source" and same.spearman is None and "teacher scores constant" in same.reason
    assert not same.masked


@pytest.mark.parametrize(("on", "masked"), [("point", False), ("ci_strict", True), ("ci_lenient", False)])
def test_mask_rule_modes(on: str, masked: bool) -> None:
    est = Estimate(1.8, (1.5, 2.2), 0.45, (0.25, 0.6), 40)
    assert mask_decision(est, MaskRule(on=on), "source")[0] is masked


@pytest.mark.parametrize(("est", "reason"), [
    (Estimate(2.5, (2.1, 2.9), 0.8, (0.7, 0.9), 50), "mae 2.50 > 2.00"),
    (Estimate(1.0, (0.8, 1.2), 0.1, (0.0, 0.2), 50), "spearman 0.10 < 0.30"),
    (Estimate(1.0, (0.8, 1.2), None, None, 50), "spearman undefined"),
])
def test_mask_reasons(est: Estimate, reason: str) -> None:
    masked, text = mask_decision(est, MaskRule(), "source")
    assert masked and text.startswith(reason)


def test_mask_rule_validation() -> None:
    with pytest.raises(ValueError):
        MaskRule(on="mean")
    with pytest.raises(ValueError):
        MaskRule(n_min=2)


# --------------------------------------------------------------------------------------------------
# Mask version and published masks
# --------------------------------------------------------------------------------------------------


def test_mask_version_is_stable_and_sensitive() -> None:
    triples = [("web", "A1", False), ("web", "A2", True), ("zh", "A1", False)]
    v = mask_version(triples, MaskRule())
    assert v == mask_version(list(reversed(triples)), MaskRule().as_dict())
    assert v != mask_version([("web", "A1", True), *triples[1:]], MaskRule())
    assert v != mask_version(triples, MaskRule(max_mae=2.5))
    assert v == "dcc8c2e687025809"   # pinned: a change here changes every downstream row's mask_version


MERGE_CASES = [
    # computed, published, replace, union, override
    (True, None, False, True, True),
    (False, None, False, False, False),
    (True, False, False, True, False),
    (False, True, True, True, True),
    (None, True, True, True, True),
    (True, True, True, True, True),
]


@pytest.mark.parametrize(("computed", "published", "replace", "union", "override"), MERGE_CASES)
def test_merge_masks_table(computed: bool | None, published: bool | None, replace: bool, union: bool,
                           override: bool) -> None:
    key = ("web", "A1")
    c = {} if computed is None else {key: computed}
    p = {} if published is None else {key: published}
    assert merge_masks(c, p, "replace")[key].masked is replace
    assert merge_masks(c, p, "union")[key].masked is union
    assert merge_masks(c, p, "override")[key].masked is override
    with pytest.raises(ValueError):
        merge_masks(c, p, "intersect")


def test_read_published_mask_csv_and_jsonl(tmp_path) -> None:
    csv_path = tmp_path / "mask.csv"
    csv_path.write_text("source,dimension,masked\nweb,A1,true\nweb,A2,0\nzh,A3,False\n", encoding="utf-8")
    jl = tmp_path / "mask.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in [
        {"source": "web", "dimension": "A1", "masked": True},
        {"source": "web", "dimension": "A2", "masked": 0},
        {"source": "zh", "dimension": "A3", "masked": "no"},
    ]) + "\n\n", encoding="utf-8")
    expected = {("web", "A1"): True, ("web", "A2"): False, ("zh", "A3"): False}
    assert read_published_mask(csv_path) == expected == read_published_mask(jl)


@pytest.mark.parametrize(("rows", "message"), [
    ([{"source": "web", "dimension": "A1"}], "missing masked"),
    ([{"source": "web", "dimension": "A1", "masked": "maybe"}], "use true/false"),
    ([{"source": "web", "dimension": "A1", "masked": 1}, {"source": "web", "dimension": "A1", "masked": 0}],
     "listed twice"),
])
def test_published_mask_errors(rows: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_published_mask(rows)


def test_published_mask_bad_files(tmp_path) -> None:
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"source": "web"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 1"):
        read_published_mask(bad)
    with pytest.raises(ValueError, match=r"\.csv or \.jsonl"):
        read_published_mask(tmp_path / "m.parquet")


def test_table_shrinkage_matches_step_by_step() -> None:
    rows = planted_rows()
    cells = reliability_cells(rows, MaskRule(n_min=4))
    zc = 1.959963984540054
    for dim in ("A1", "A2"):
        members = [c for c in cells if c.dimension == dim]
        assert all(c.spearman is not None and c.n >= 4 for c in members)
        z = [math.atanh(c.spearman) for c in members]
        v = []
        for c in members:
            if c.ci_method == "fisher":
                v.append((1 + c.spearman**2 / 2) / (c.n - 3))
            else:   # a bootstrapped cell enters with the variance its interval implies
                v.append(((math.atanh(c.spearman_ci[1]) - math.atanh(c.spearman_ci[0])) / (2 * zc)) ** 2)
        w = [1 / x for x in v]
        zbar = sum(a * b for a, b in zip(w, z, strict=True)) / sum(w)
        q = sum(a * (b - zbar) ** 2 for a, b in zip(w, z, strict=True))
        tau2 = max(0.0, (q - (len(z) - 1)) / (sum(w) - sum(a * a for a in w) / sum(w)))
        ws = [1 / (x + tau2) for x in v]
        mu = sum(a * b for a, b in zip(ws, z, strict=True)) / sum(ws)
        mae_g = _group_mae(rows, dim)
        for c, zi, vi in zip(members, z, v, strict=True):
            b = vi / (vi + tau2)
            assert c.tau2 == pytest.approx(tau2)
            assert c.shrink_weight == pytest.approx(b)
            assert c.spearman_shrunk == pytest.approx(math.tanh((1 - b) * zi + b * mu))
            assert c.mae_shrunk == pytest.approx((c.n * c.mae + 20 * mae_g) / (c.n + 20))


def test_table_ignores_row_order_and_partial_counts() -> None:
    rows = planted_rows()
    split = []
    for r in rows:
        c = r[-1]
        split += [(*r[:-1], c // 2), (*r[:-1], c - c // 2)]
    random.Random(4).shuffle(split)
    assert reliability_cells(split) == reliability_cells(rows)
