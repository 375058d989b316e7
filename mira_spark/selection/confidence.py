"""Reliability with confidence: agreement statistics from pair counts, CIs, shrinkage, mask rule, mask files.

Pure: imports no Spark. What it takes and gives:

* **Input** — pair counts per cell: rows ``(group, source, dimension, student, teacher, count)`` as a
  Spark ``pairs.groupBy("scorer", "source", "slot", "score", "teacher_score").count()`` gives them
  (normalise ``-0.0`` first or here; scores take few distinct values, so these rows are few). Partial
  counts of the same pair (from several partitions) are summed.
* :func:`agreement` — n, MAE and Spearman's ρ of one cell from its counts: mid-ranks are computed per
  distinct value from the marginal counts (no row is sorted) and ρ is the Pearson correlation of the
  mid-ranks, in exact integer arithmetic until the final division.
* :func:`fisher_ci` — 95% CI for ρ by Fisher z with the Bonett–Wright standard error
  ``sqrt((1 + ρ²/2) / (n - 3))``; :func:`bootstrap_ci` — a seeded percentile bootstrap resampling pairs
  from the counts, used instead when a cell has fewer than :data:`BOOTSTRAP_BELOW_TEACHER_VALUES`
  distinct teacher values (the Fisher approximation assumes near-continuous ranks);
  :func:`mae_ci` — normal approximation on the absolute errors (see its docstring for why).
* :func:`dersimonian_laird` — random-effects pooling (between-cell variance τ², pooled mean, BLUP
  shrinkage of each estimate toward it by its precision), applied to Fisher z per (group, dimension);
  MAE is shrunk as ``(n·MAE_s + κ·MAE_g) / (n + κ)`` (:func:`shrink_mae`).
* :func:`reliability_cells` — the whole table: per (group, source, dimension) the raw and shrunk
  estimates with CIs, the ``basis`` (``source`` → ``group`` → ``global`` → ``none``) and the
  :class:`MaskRule` decision (point estimate or a CI bound) with its reason.
* :func:`mask_version` — a stable hash of the sorted (source, dimension, masked) triples and the rule;
  :func:`read_published_mask` / :func:`merge_masks` — a published mask file (CSV or JSONL rows of
  source, dimension, masked) applied ``replace`` / ``union`` / ``override`` on top of the computed one.

>>> a = agreement([(8.0, 9.0, 3), (5.0, 4.0, 2), (2.0, 2.0, 1)])
>>> a.n, round(a.mae, 4), a.spearman
(6, 0.8333, 1.0)
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Literal, NamedTuple

import numpy as np

from mira_spark.selection.hashing import xxh64

DEFAULT_LEVEL = 0.95
"""Confidence level of every interval."""
BOOTSTRAP_BELOW_TEACHER_VALUES = 5
"""A cell with fewer distinct teacher values than this gets a bootstrap CI for ρ instead of Fisher z."""
DEFAULT_BOOTSTRAP_REPLICATES = 2000
DEFAULT_BOOTSTRAP_SEED = 20261201
BOOTSTRAP_MAX_DRAWS = 20_000_000
"""Cap on resampled pairs per cell (replicates x n); large cells get fewer replicates, never below the next."""
BOOTSTRAP_MIN_REPLICATES = 200
BOOTSTRAP_MIN_VALID = 0.5
"""Fraction of replicates with a defined ρ (both sides vary) needed for a bootstrap CI."""
RHO_CLAMP = 1e-9
"""|ρ| is clamped to 1 - RHO_CLAMP before Fisher z, so ρ = ±1 gives a finite (degenerate-side) CI."""
FISHER_MIN_N = 4
"""Fisher z needs n > 3."""
DEFAULT_KAPPA = 20.0
"""MAE shrinkage pseudo-count: a cell of n pairs weighs n / (n + κ) against its group's pooled MAE."""
DEFAULT_N_MIN = 10
"""Pairs a cell needs to be judged on its own (shrunk) estimate; fewer: its group's (see MaskRule)."""
DEFAULT_MAX_MAE = 2.0
DEFAULT_MIN_SPEARMAN = 0.3
SCORE_RANGE = (0.0, 10.0)
MASK_VERSION_CHARS = 16

Basis = Literal["source", "group", "global", "none"]
MaskOn = Literal["point", "ci_strict", "ci_lenient"]
MergeMode = Literal["replace", "union", "override"]
MASK_ON: tuple[str, ...] = ("point", "ci_strict", "ci_lenient")
MERGE_MODES: tuple[str, ...] = ("replace", "union", "override")


def _z_crit(level: float) -> float:
    return NormalDist().inv_cdf(1 - (1 - level) / 2)


# --------------------------------------------------------------------------------------------------
# Agreement from counts
# --------------------------------------------------------------------------------------------------


def merge_pair_counts(counts: Iterable[Sequence]) -> dict[tuple[float, float], int]:
    """``(student, teacher) -> count`` from ``(student, teacher, count)`` rows; ``-0.0`` folded into ``0.0``."""
    merged: dict[tuple[float, float], int] = defaultdict(int)
    for student, teacher, count in counts:
        if count:
            merged[(float(student) + 0.0, float(teacher) + 0.0)] += int(count)
    return dict(merged)


def doubled_mid_ranks(value_counts: Mapping[float, int]) -> dict[float, int]:
    """Twice the mid-rank (1-based, ties averaged) of each distinct value, from its count: an integer.

    >>> doubled_mid_ranks({10.0: 1, 20.0: 2, 30.0: 1})   # ranks 1, 2.5, 4
    {10.0: 2, 20.0: 5, 30.0: 8}
    """
    out: dict[float, int] = {}
    before = 0
    for value in sorted(value_counts):
        c = value_counts[value]
        out[value] = 2 * before + c + 1
        before += c
    return out


class Agreement(NamedTuple):
    """One cell's agreement: n, MAE, ρ (None when either side is constant), distinct values, error sums."""

    n: int
    mae: float | None
    spearman: float | None
    distinct_student: int
    distinct_teacher: int
    abs_error_sum: float
    abs_error_sq_sum: float


def agreement(counts: Iterable[Sequence] | Mapping[tuple[float, float], int]) -> Agreement:
    """n, MAE and Spearman's ρ (Pearson of mid-ranks) from ``(student, teacher, count)`` rows.

    ρ is computed on centred doubled mid-ranks in integers — ``Σ c·(2r_s - n - 1)(2r_t - n - 1)`` over
    ``sqrt(Σ c·(2r_s - n - 1)² · Σ c·(2r_t - n - 1)²)`` — so the only rounding is the final division.

    >>> agreement([(1, 1, 1), (2, 2, 1), (3, 3, 1)]).spearman
    1.0
    >>> agreement([(5, 1, 2), (5, 3, 2)]).spearman is None    # student constant
    True
    """
    pairs = counts if isinstance(counts, Mapping) else merge_pair_counts(counts)
    n = sum(pairs.values())
    if n == 0:
        return Agreement(0, None, None, 0, 0, 0.0, 0.0)
    student_counts: dict[float, int] = defaultdict(int)
    teacher_counts: dict[float, int] = defaultdict(int)
    err = err_sq = 0.0
    for (s, t), c in pairs.items():
        student_counts[s] += c
        teacher_counts[t] += c
        d = abs(s - t)
        err += c * d
        err_sq += c * d * d
    rs = doubled_mid_ranks(student_counts)
    rt = doubled_mid_ranks(teacher_counts)
    centre = n + 1
    sxy = sum(c * (rs[s] - centre) * (rt[t] - centre) for (s, t), c in pairs.items())
    sxx = sum(c * (r - centre) ** 2 for v, r in rs.items() for c in (student_counts[v],))
    syy = sum(c * (r - centre) ** 2 for v, r in rt.items() for c in (teacher_counts[v],))
    rho = None
    if sxx > 0 and syy > 0:
        rho = max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))
    return Agreement(n, err / n, rho, len(student_counts), len(teacher_counts), err, err_sq)


# --------------------------------------------------------------------------------------------------
# Confidence intervals
# --------------------------------------------------------------------------------------------------


def _clamp_rho(rho: float) -> float:
    return max(-1 + RHO_CLAMP, min(1 - RHO_CLAMP, rho))


def fisher_variance(rho: float, n: int) -> float:
    """Bonett–Wright variance of Fisher z for Spearman's ρ: ``(1 + ρ²/2) / (n - 3)``.

    >>> fisher_variance(0.5, 103)
    0.01125
    """
    if n < FISHER_MIN_N:
        raise ValueError(f"Fisher z needs n >= {FISHER_MIN_N}, got {n}")
    return (1 + rho * rho / 2) / (n - 3)


def fisher_ci(rho: float | None, n: int, level: float = DEFAULT_LEVEL) -> tuple[float, float] | None:
    """CI for ρ: ``tanh(atanh(ρ) ± z_{1-α/2} · sqrt((1 + ρ²/2) / (n - 3)))``; None when undefined.

    >>> lo, hi = fisher_ci(0.5, 103)
    >>> round(lo, 4), round(hi, 4)
    (0.3287, 0.6394)
    """
    if rho is None or n < FISHER_MIN_N:
        return None
    r = _clamp_rho(rho)
    z = math.atanh(r)
    half = _z_crit(level) * math.sqrt(fisher_variance(r, n))
    return math.tanh(z - half), math.tanh(z + half)


def mae_ci(a: Agreement, level: float = DEFAULT_LEVEL) -> tuple[float, float] | None:
    """Normal-approximation CI for MAE: ``mean(|e|) ± z · sd(|e|) / sqrt(n)``, clipped to the score range.

    Why normal and not a bootstrap: absolute errors are bounded (0-10), so the mean is close to normal
    at the cell sizes that are judged on their own (n >= n_min; smaller cells borrow from the group);
    it needs only the sums of |e| and |e|², which Spark aggregates for free; and it is deterministic.
    It is degenerate (zero width) when every error is equal. None for n < 2.

    >>> lo, hi = mae_ci(agreement([(5, 5, 50), (5, 7, 50)]))   # errors 0 and 2, mean 1, sd 1.005
    >>> round(lo, 3), round(hi, 3)
    (0.803, 1.197)
    """
    if a.n < 2 or a.mae is None:
        return None
    var = max(0.0, (a.abs_error_sq_sum - a.n * a.mae * a.mae) / (a.n - 1))
    half = _z_crit(level) * math.sqrt(var / a.n)
    return max(SCORE_RANGE[0], a.mae - half), min(SCORE_RANGE[1] - SCORE_RANGE[0], a.mae + half)


def cell_seed(seed: int, *names: str) -> int:
    """A per-cell bootstrap seed from the run seed and the cell's names (independent of cell order).

    >>> cell_seed(1, "text", "web", "A3") == cell_seed(1, "text", "web", "A3") != cell_seed(1, "text", "web", "A4")
    True
    """
    return xxh64("\x1f".join(names).encode("utf-8"), seed)


class BootstrapCI(NamedTuple):
    """Percentile bootstrap intervals of one cell; ``valid`` replicates had a defined ρ."""

    spearman: tuple[float, float] | None
    mae: tuple[float, float]
    replicates: int
    valid: int


def bootstrap_ci(counts: Iterable[Sequence] | Mapping[tuple[float, float], int], seed: int,
                 replicates: int = DEFAULT_BOOTSTRAP_REPLICATES, level: float = DEFAULT_LEVEL) -> BootstrapCI | None:
    """Seeded percentile bootstrap of ρ and MAE, resampling n pairs with replacement from the counts.

    Reproducible: the draws are raw 64-bit outputs of numpy's PCG64 bit generator (whose stream numpy
    keeps stable across versions, unlike its distribution methods) mapped to pair indices, over the
    pairs in sorted order, so the same counts and seed give the same interval in any order of input.
    Each replicate's ρ is the mid-rank Pearson of its resampled counts (as :func:`agreement`). Percentiles
    are numpy's default linear interpolation. None when n < 2 or fewer than :data:`BOOTSTRAP_MIN_VALID`
    of the replicates have a defined ρ for the ρ interval (the MAE interval is still given then).

    >>> c = [(s, t, 3) for s in range(4) for t in range(4) if abs(s - t) <= 1]
    >>> bootstrap_ci(c, seed=7, replicates=300) == bootstrap_ci(list(reversed(c)), seed=7, replicates=300)
    True
    """
    pairs = counts if isinstance(counts, Mapping) else merge_pair_counts(counts)
    keys = sorted(pairs)
    n = sum(pairs.values())
    if n < 2:
        return None
    replicates = max(BOOTSTRAP_MIN_REPLICATES, min(replicates, BOOTSTRAP_MAX_DRAWS // n))
    cum = np.cumsum([pairs[k] for k in keys])
    s_vals = sorted({s for s, _ in keys})
    t_vals = sorted({t for _, t in keys})
    s_idx = np.array([s_vals.index(s) for s, _ in keys])
    t_idx = np.array([t_vals.index(t) for _, t in keys])
    abs_err = np.array([abs(s - t) for s, t in keys])
    gen = np.random.PCG64(seed & ((1 << 64) - 1))
    k = len(keys)
    rhos = np.empty(replicates)
    maes = np.empty(replicates)
    chunk = max(1, BOOTSTRAP_MAX_DRAWS // (4 * n))
    done = 0
    while done < replicates:
        b = min(chunk, replicates - done)
        raw = gen.random_raw(b * n)
        pos = np.minimum(((raw >> np.uint64(11)).astype(np.float64) * (n / 2.0**53)).astype(np.int64), n - 1)
        entry = np.searchsorted(cum, pos, side="right")
        offsets = np.repeat(np.arange(b) * k, n)
        c = np.bincount(entry + offsets, minlength=b * k).reshape(b, k).astype(np.float64)
        rhos[done:done + b] = _rho_rows(c, s_idx, t_idx, len(s_vals), len(t_vals), n)
        maes[done:done + b] = c @ abs_err / n
        done += b
    ok = rhos[~np.isnan(rhos)]
    alpha = (1 - level) / 2
    mae_iv = (float(np.quantile(maes, alpha)), float(np.quantile(maes, 1 - alpha)))
    rho_iv = None
    if len(ok) >= BOOTSTRAP_MIN_VALID * replicates:
        rho_iv = (float(np.quantile(ok, alpha)), float(np.quantile(ok, 1 - alpha)))
    return BootstrapCI(rho_iv, mae_iv, replicates, len(ok))


def _rho_rows(c: np.ndarray, s_idx: np.ndarray, t_idx: np.ndarray, n_s: int, n_t: int, n: int) -> np.ndarray:
    """Mid-rank Pearson ρ of each row of a (replicates x pairs) count matrix; NaN where undefined."""
    ms = np.zeros((c.shape[0], n_s))
    mt = np.zeros((c.shape[0], n_t))
    np.add.at(ms.T, s_idx, c.T)
    np.add.at(mt.T, t_idx, c.T)
    rs = 2 * (np.cumsum(ms, axis=1) - ms) + ms + 1 - (n + 1)   # centred doubled mid-ranks per value
    rt = 2 * (np.cumsum(mt, axis=1) - mt) + mt + 1 - (n + 1)
    sxy = (c * rs[:, s_idx] * rt[:, t_idx]).sum(axis=1)
    sxx = (ms * rs * rs).sum(axis=1)
    syy = (mt * rt * rt).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = sxy / np.sqrt(sxx * syy)
    rho[(sxx <= 0) | (syy <= 0)] = np.nan
    return np.clip(rho, -1.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Shrinkage
# --------------------------------------------------------------------------------------------------


class DLResult(NamedTuple):
    """DerSimonian–Laird random-effects pooling of k estimates ``y_i`` with sampling variances ``v_i``.

    ``q`` Cochran's Q = Σ w_i (y_i - ȳ_FE)², w_i = 1/v_i; ``tau2`` = max(0, (Q - (k-1)) / (Σw - Σw²/Σw));
    ``mu`` = Σ w*_i y_i / Σ w*_i with w*_i = 1/(v_i + τ²), ``se_mu`` = sqrt(1/Σ w*_i); ``shrunk`` the
    BLUPs ``(1 - B_i) y_i + B_i μ`` with ``B_i = v_i / (v_i + τ²)`` (B_i = 1 when τ² = 0: complete
    pooling), ``shrunk_var`` = ``(1 - B_i) v_i + B_i² se_mu²``; ``weights`` = B_i.
    """

    k: int
    mu_fixed: float
    q: float
    tau2: float
    mu: float
    se_mu: float
    shrunk: tuple[float, ...]
    shrunk_var: tuple[float, ...]
    weights: tuple[float, ...]


def dersimonian_laird(estimates: Sequence[float], variances: Sequence[float]) -> DLResult:
    """Random-effects pooling and shrinkage (DerSimonian & Laird 1986).

    >>> r = dersimonian_laird([0.1, 0.5, 0.9], [0.01, 0.01, 0.01])
    >>> round(r.mu, 6), round(r.tau2, 6), [round(x, 4) for x in r.shrunk]
    (0.5, 0.15, [0.125, 0.5, 0.875])
    """
    k = len(estimates)
    if k == 0 or k != len(variances) or any(v <= 0 for v in variances):
        raise ValueError("need as many positive variances as estimates, at least one")
    w = [1 / v for v in variances]
    sw = sum(w)
    mu_fe = sum(wi * y for wi, y in zip(w, estimates, strict=True)) / sw
    q = sum(wi * (y - mu_fe) ** 2 for wi, y in zip(w, estimates, strict=True))
    c = sw - sum(wi * wi for wi in w) / sw
    tau2 = max(0.0, (q - (k - 1)) / c) if k > 1 and c > 0 else 0.0
    ws = [1 / (v + tau2) for v in variances]
    mu = sum(wi * y for wi, y in zip(ws, estimates, strict=True)) / sum(ws)
    var_mu = 1 / sum(ws)
    b = [v / (v + tau2) for v in variances]
    shrunk = tuple((1 - bi) * y + bi * mu for bi, y in zip(b, estimates, strict=True))
    shrunk_var = tuple((1 - bi) * v + bi * bi * var_mu for bi, v in zip(b, variances, strict=True))
    return DLResult(k, mu_fe, q, tau2, mu, math.sqrt(var_mu), shrunk, shrunk_var, tuple(b))


def shrink_mae(n: int, mae_source: float, mae_group: float, kappa: float = DEFAULT_KAPPA) -> float:
    """``(n · MAE_s + κ · MAE_g) / (n + κ)``.

    >>> shrink_mae(20, 1.0, 2.0, kappa=20)
    1.5
    """
    return (n * mae_source + kappa * mae_group) / (n + kappa)


# --------------------------------------------------------------------------------------------------
# The reliability table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskRule:
    """When a (source, dimension) is masked.

    ``on``: ``point`` — ``MAE > max_mae`` or ``ρ < min_spearman`` on the (shrunk) point estimates;
    ``ci_strict`` — masked unless the interval shows reliability (``MAE_hi > max_mae`` or
    ``ρ_lo < min_spearman``); ``ci_lenient`` — masked only when the interval shows unreliability
    (``MAE_lo > max_mae`` or ``ρ_hi < min_spearman``). ``n_min``: pairs a cell needs to be judged on its
    own shrunk estimate (``basis = source``); with fewer, its group's pooled estimate is used if the
    group has ``n_min`` pairs, else the global one, else the cell is kept (``basis = none``).
    """

    max_mae: float = DEFAULT_MAX_MAE
    min_spearman: float = DEFAULT_MIN_SPEARMAN
    n_min: int = DEFAULT_N_MIN
    on: MaskOn = "point"

    def __post_init__(self) -> None:
        if self.on not in MASK_ON:
            raise ValueError(f"on must be one of {MASK_ON}, got {self.on!r}")
        if self.n_min < FISHER_MIN_N:
            raise ValueError(f"n_min must be >= {FISHER_MIN_N} (Fisher z needs n > 3), got {self.n_min}")

    def as_dict(self) -> dict[str, object]:
        return {"max_mae": self.max_mae, "min_spearman": self.min_spearman, "n_min": self.n_min, "on": self.on}


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval and the pairs behind it."""

    mae: float | None
    mae_ci: tuple[float, float] | None
    spearman: float | None
    spearman_ci: tuple[float, float] | None
    n: int


def mask_decision(est: Estimate, rule: MaskRule, basis: Basis) -> tuple[bool, str]:
    """``(masked, reason)`` for an estimate under ``rule``.

    >>> mask_decision(Estimate(2.6, (2.2, 3.0), 0.8, (0.7, 0.9), 50), MaskRule(), "source")
    (True, 'mae 2.60 > 2.00 (source, n 50, point)')
    >>> mask_decision(Estimate(1.0, (0.8, 1.2), 0.25, (0.1, 0.4), 50), MaskRule(on="ci_lenient"), "source")[0]
    False
    """
    if basis == "none":
        return False, "no validation pairs for this cell, its group or globally: kept"
    where = f"({basis}, n {est.n}, {rule.on})"
    mae_v = est.mae
    rho_v = est.spearman
    if rule.on == "ci_strict":
        mae_v = est.mae_ci[1] if est.mae_ci else est.mae
        rho_v = est.spearman_ci[0] if est.spearman_ci else est.spearman
    elif rule.on == "ci_lenient":
        mae_v = est.mae_ci[0] if est.mae_ci else est.mae
        rho_v = est.spearman_ci[1] if est.spearman_ci else est.spearman
    mae_name = {"point": "mae", "ci_strict": "mae upper", "ci_lenient": "mae lower"}[rule.on]
    rho_name = {"point": "spearman", "ci_strict": "spearman lower", "ci_lenient": "spearman upper"}[rule.on]
    reasons = []
    if mae_v is not None and mae_v > rule.max_mae:
        reasons.append(f"{mae_name} {mae_v:.2f} > {rule.max_mae:.2f}")
    if rho_v is None:
        reasons.append("spearman undefined: student scores constant")
    elif rho_v < rule.min_spearman:
        reasons.append(f"{rho_name} {rho_v:.2f} < {rule.min_spearman:.2f}")
    if reasons:
        return True, "; ".join(reasons) + f" {where}"
    return False, f"reliable: mae {est.mae:.2f}, spearman {est.spearman:.2f} {where}"


@dataclass(frozen=True)
class CellReliability:
    """One (group, source, dimension) row of the reliability table.

    Raw: ``n, mae, spearman`` (+ ``distinct_teacher``), ``spearman_ci`` by ``ci_method`` (``fisher`` or
    ``bootstrap``), ``mae_ci``. Shrunk (cells with a Fisher z): ``spearman_shrunk`` (+ CI) by DL within
    the group's dimension (``tau2``, weight ``shrink_weight`` = B), ``mae_shrunk`` (+ CI) with κ.
    Decision: ``basis``, ``used`` (the estimate the rule saw), ``masked``, ``reason``.
    """

    group: str
    source: str
    dimension: str
    n: int
    mae: float | None
    spearman: float | None
    distinct_teacher: int
    spearman_ci: tuple[float, float] | None
    ci_method: str | None
    mae_ci: tuple[float, float] | None
    spearman_shrunk: float | None
    spearman_shrunk_ci: tuple[float, float] | None
    shrink_weight: float | None
    tau2: float | None
    mae_shrunk: float | None
    mae_shrunk_ci: tuple[float, float] | None
    basis: Basis
    used: Estimate
    masked: bool
    reason: str


@dataclass(frozen=True)
class _Pooled:
    estimate: Estimate | None
    dl: DLResult | None
    members: tuple[tuple[str, str], ...]  # (group, source) of the cells in the DL, in its order


def _pool(usable: list[tuple[tuple[str, str], float, float]], pooled_counts: Agreement, level: float,
          n_min: int) -> _Pooled:
    """DL over ``(key, rho, z variance)`` of the cells with a Fisher z, and the pooled MAE over every pair.

    The pooled ρ interval is a prediction interval for a cell of the pool. Without any cell with a Fisher
    z, ρ comes from the pooled counts directly (Fisher interval).
    """
    dl = None
    rho = rho_ci = None
    if usable:
        dl = dersimonian_laird([math.atanh(_clamp_rho(r)) for _k, r, _v in usable], [v for _k, _r, v in usable])
        half = _z_crit(level) * math.sqrt(dl.se_mu ** 2 + dl.tau2)
        rho = math.tanh(dl.mu)
        rho_ci = (math.tanh(dl.mu - half), math.tanh(dl.mu + half))
    elif pooled_counts.spearman is not None:
        rho, rho_ci = pooled_counts.spearman, fisher_ci(pooled_counts.spearman, pooled_counts.n, level)
    if pooled_counts.n < n_min or rho is None:
        return _Pooled(None, dl, tuple(k for k, _r, _v in usable))
    est = Estimate(pooled_counts.mae, mae_ci(pooled_counts, level), rho, rho_ci, pooled_counts.n)
    return _Pooled(est, dl, tuple(k for k, _r, _v in usable))


def reliability_cells(count_rows: Iterable[Sequence], rule: MaskRule = MaskRule(), *,
                      cells: Iterable[tuple[str, str, str]] = (), kappa: float = DEFAULT_KAPPA,
                      level: float = DEFAULT_LEVEL, seed: int = DEFAULT_BOOTSTRAP_SEED,
                      replicates: int = DEFAULT_BOOTSTRAP_REPLICATES) -> list[CellReliability]:
    """The reliability table from ``(group, source, dimension, student, teacher, count)`` rows.

    ``cells``: (group, source, dimension) cells to report even without pairs. Per dimension name:

    1. each cell's :func:`agreement`, its ρ CI (Fisher/Bonett–Wright, or a seeded bootstrap under
       :data:`BOOTSTRAP_BELOW_TEACHER_VALUES` distinct teacher values) and MAE CI;
    2. per (group, dimension): DL on Fisher z over the cells with n >= 4 and a defined ρ (a bootstrapped
       cell's z-variance comes from its bootstrap interval width, ``((z_hi - z_lo) / 2z_crit)²``),
       each cell's z shrunk toward the pooled z; MAE shrunk toward the group's pooled MAE with κ;
    3. basis: ``source`` when the cell has ``n_min`` pairs and a Fisher z (its shrunk estimate;
       interval ``tanh(z* ± z_crit sqrt(var*))``, MAE interval the cell's scaled by n/(n+κ));
       a teacher-constant cell borrows the group's ρ but keeps its own MAE; else ``group`` (pooled ρ with
       a prediction interval ``tanh(μ ± z_crit sqrt(se_μ² + τ²))``, pooled MAE over every pair of the
       group) when the group has ``n_min`` pairs; else ``global`` (the same over every group); else ``none``;
    4. :func:`mask_decision` under ``rule``.

    >>> rows = [("g", "web", "A1", s, s, 5) for s in range(6)] + [("g", "web", "A2", s, 5 - s, 5) for s in range(6)]
    >>> [(c.dimension, c.masked, c.basis) for c in reliability_cells(rows)]
    [('A1', False, 'source'), ('A2', True, 'source')]
    """
    counts: dict[tuple[str, str, str], dict[tuple[float, float], int]] = defaultdict(lambda: defaultdict(int))
    for group, source, dim, student, teacher, count in count_rows:
        if count:
            counts[(str(group), str(source), str(dim))][(float(student) + 0.0, float(teacher) + 0.0)] += int(count)
    keys = sorted(set(counts) | {(str(g), str(s), str(d)) for g, s, d in cells})
    zc = _z_crit(level)

    raw: dict[tuple[str, str, str], tuple[Agreement, tuple[float, float] | None, str | None, float | None]] = {}
    for key in keys:
        pairs = dict(counts.get(key, {}))
        a = agreement(pairs)
        ci, method, var = None, None, None
        if a.spearman is not None and a.n >= FISHER_MIN_N:
            if a.distinct_teacher < BOOTSTRAP_BELOW_TEACHER_VALUES:
                boot = bootstrap_ci(pairs, cell_seed(seed, *key), replicates, level)
                if boot is not None and boot.spearman is not None:
                    ci, method = boot.spearman, "bootstrap"
                    zl, zh = (math.atanh(_clamp_rho(x)) for x in boot.spearman)
                    var = ((zh - zl) / (2 * zc)) ** 2 or None
            if ci is None:
                ci, method = fisher_ci(a.spearman, a.n, level), "fisher"
            if var is None:
                var = fisher_variance(_clamp_rho(a.spearman), a.n)
        raw[key] = (a, ci, method, var)

    def pooled_agreement(members: Iterable[tuple[str, str, str]]) -> Agreement:
        total: dict[tuple[float, float], int] = defaultdict(int)
        for m in members:
            for pair, c in counts.get(m, {}).items():
                total[pair] += c
        return agreement(total)

    by_group_dim: dict[tuple[str, str], list[tuple[str, str, str]]] = defaultdict(list)
    by_dim: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for key in keys:
        by_group_dim[(key[0], key[2])].append(key)
        by_dim[key[2]].append(key)

    def pool(members: list[tuple[str, str, str]]) -> _Pooled:
        usable = [((m[0], m[1]), raw[m][0].spearman, raw[m][3]) for m in members if raw[m][3] is not None]
        return _pool(usable, pooled_agreement(members), level, rule.n_min)

    group_pool = {gd: pool(members) for gd, members in by_group_dim.items()}
    global_pool = {d: pool(members) for d, members in by_dim.items()}

    out: list[CellReliability] = []
    for key in keys:
        group, source, dim = key
        a, ci, method, var = raw[key]
        gp = group_pool[(group, dim)]
        group_mae = pooled_agreement(by_group_dim[(group, dim)]).mae
        cell_mae_ci = mae_ci(a, level)
        rho_s = rho_s_ci = weight = tau2 = None
        if gp.dl is not None and (group, source) in gp.members:
            i = gp.members.index((group, source))
            z_star, v_star = gp.dl.shrunk[i], gp.dl.shrunk_var[i]
            rho_s = math.tanh(z_star)
            rho_s_ci = (math.tanh(z_star - zc * math.sqrt(v_star)), math.tanh(z_star + zc * math.sqrt(v_star)))
            weight, tau2 = gp.dl.weights[i], gp.dl.tau2
        mae_s = mae_s_ci = None
        if a.mae is not None and group_mae is not None:
            mae_s = shrink_mae(a.n, a.mae, group_mae, kappa)
            if cell_mae_ci is not None:
                f = a.n / (a.n + kappa)
                mae_s_ci = (max(0.0, mae_s - f * (a.mae - cell_mae_ci[0])), mae_s + f * (cell_mae_ci[1] - a.mae))

        basis: Basis
        if a.n >= rule.n_min and rho_s is not None:
            basis, used = "source", Estimate(mae_s, mae_s_ci, rho_s, rho_s_ci, a.n)
        elif a.n >= rule.n_min and a.distinct_student <= 1 < a.distinct_teacher:
            basis, used = "source", Estimate(mae_s, mae_s_ci, None, None, a.n)   # a constant student
        elif a.n >= rule.n_min and a.distinct_teacher <= 1 and gp.estimate is not None:
            basis = "source"
            used = Estimate(mae_s, mae_s_ci, gp.estimate.spearman, gp.estimate.spearman_ci, a.n)
        elif gp.estimate is not None:
            basis, used = "group", gp.estimate
        elif global_pool[dim].estimate is not None:
            basis, used = "global", global_pool[dim].estimate
        else:
            basis, used = "none", Estimate(None, None, None, None, 0)
        masked, reason = mask_decision(used, rule, basis)
        if basis == "source" and a.distinct_teacher <= 1 and a.n >= rule.n_min and rho_s is None:
            reason += "; spearman from the group (teacher scores constant)"
        out.append(CellReliability(
            group, source, dim, a.n, a.mae, a.spearman, a.distinct_teacher, ci, method, cell_mae_ci,
            rho_s, rho_s_ci, weight, tau2, mae_s, mae_s_ci, basis, used, masked, reason,
        ))
    return out


# --------------------------------------------------------------------------------------------------
# Mask version, published masks
# --------------------------------------------------------------------------------------------------


def mask_version(triples: Iterable[tuple[str, str, bool]], rule: Mapping[str, object] | MaskRule) -> str:
    """A stable hash of the mask: sha256 of canonical JSON of the sorted (source, dimension, masked)
    triples and the rule, first :data:`MASK_VERSION_CHARS` hex digits. Input order never matters.

    >>> v = mask_version([("web", "A2", True), ("web", "A1", False)], MaskRule())
    >>> v == mask_version([("web", "A1", False), ("web", "A2", True)], MaskRule()), len(v)
    (True, 16)
    """
    rule_dict = rule.as_dict() if isinstance(rule, MaskRule) else dict(rule)
    body = {"mask": sorted([str(s), str(d), bool(m)] for s, d, m in triples), "rule": rule_dict}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:MASK_VERSION_CHARS]


_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def _as_bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{where}: masked is {value!r}; use true/false (or 1/0)")


def parse_published_mask(rows: Iterable[Mapping[str, object]], origin: str = "published mask"
                         ) -> dict[tuple[str, str], bool]:
    """``(source, dimension) -> masked`` from row mappings with those keys; duplicates must agree."""
    out: dict[tuple[str, str], bool] = {}
    for i, row in enumerate(rows, start=1):
        where = f"{origin} row {i}"
        missing = [k for k in ("source", "dimension", "masked") if row.get(k) in (None, "")]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}; every row needs source, dimension, masked")
        key = (str(row["source"]), str(row["dimension"]))
        masked = _as_bool(row["masked"], where)
        if key in out and out[key] != masked:
            raise ValueError(f"{where}: {key} listed twice with different masked values; keep one")
        out[key] = masked
    return out


def read_published_mask(path: str | Path) -> dict[tuple[str, str], bool]:
    """Read a published mask: ``.csv`` with a header (source, dimension, masked) or ``.jsonl`` objects."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        with p.open(newline="", encoding="utf-8") as fh:
            return parse_published_mask(csv.DictReader(fh), str(p))
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        with p.open(encoding="utf-8") as fh:
            rows = []
            for i, line in enumerate(fh, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{p} line {i}: not JSON ({exc.msg}); one object per line") from exc
            return parse_published_mask(rows, str(p))
    raise ValueError(f"{p}: published mask must be .csv or .jsonl")


class MergedMask(NamedTuple):
    masked: bool
    origin: str


def merge_masks(computed: Mapping[tuple[str, str], bool], published: Mapping[tuple[str, str], bool],
                mode: MergeMode) -> dict[tuple[str, str], MergedMask]:
    """Apply a published mask on top of the computed one, per (source, dimension).

    ``replace``: the published mask is the mask; a computed cell it does not list is kept
    (origin ``published:unlisted``). ``union``: masked when either masks it. ``override``: the published
    value where listed, the computed one elsewhere.

    >>> m = merge_masks({("web", "A1"): True, ("web", "A2"): False}, {("web", "A2"): True}, "union")
    >>> m[("web", "A1")], m[("web", "A2")]
    (MergedMask(masked=True, origin='computed'), MergedMask(masked=True, origin='published'))
    """
    if mode not in MERGE_MODES:
        raise ValueError(f"mode must be one of {MERGE_MODES}, got {mode!r}")
    out: dict[tuple[str, str], MergedMask] = {}
    for key in sorted(set(computed) | set(published)):
        c, p = computed.get(key), published.get(key)
        if mode == "replace":
            out[key] = MergedMask(p, "published") if p is not None else MergedMask(False, "published:unlisted")
        elif mode == "override":
            out[key] = MergedMask(p, "published") if p is not None else MergedMask(bool(c), "computed")
        else:
            if c and p:
                out[key] = MergedMask(True, "both")
            elif p:
                out[key] = MergedMask(True, "published")
            else:
                out[key] = MergedMask(bool(c), "computed")
    return out
