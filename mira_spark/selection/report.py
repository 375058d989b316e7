"""The selection report: one static HTML page with PNG plots that opens from disk.

Takes a run's small aggregates (:class:`ReportData`: pandas frames of a few hundred rows at most) and gives
``index.html`` plus one PNG per plot in a directory (:func:`render_report`):

* per-source dimension histograms (one PNG per source, one panel per dimension);
* per scorer group, a source x dimension heat map of MAE and of Spearman's rho, masked cells crossed
  out, confidence intervals printed in the cells when the reliability table has them;
* per variant, each unit's retention curve (tokens kept vs composite threshold) with its cut;
* kept vs excluded tokens per source (one panel per variant);
* for several variants, the Jaccard overlap of their kept sets and the source mix of each against the
  raw mixture (tokens);
* the canary table (endpoint drift against the calibration references) when a run wrote one.

The plotting is pure (pandas in, files out; matplotlib's object API, no pyplot state, no Spark).
:func:`read_report_data` is the thin Spark side: it runs group-bys over the run's tables and collects only
their results, never the corpus. It reads today's tables and the ones selection is moving to (a
``variant`` column in decisions and thresholds, ``unit_kind``/``unit``, ``tokens``, CI columns); a missing
column falls back (one variant named ``default``, units = sources, tokens estimated from the text) and
the page says so.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mira_spark.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from pyspark.sql import DataFrame, SparkSession

    from mira_spark.config import Settings

DEFAULT_VARIANT = "default"
CURVE_BINS = 400  # composite bins per run for the retention curves (the cut itself is exact in thresholds)
HIST_STEP = 0.5  # scores are binned to half points, the scorer's resolution
DPI = 100
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("summary", "histograms", "reliability", "retention", "tokens", "variants", "canary")
CANARY_COLUMNS = ("run_id", "endpoint", "scorer", "slot", "reference_score", "score", "deviation", "quarantined")


@dataclass(frozen=True)
class ReportData:
    """What the page shows, as small frames (column lists in each field's comment)."""

    histograms: pd.DataFrame  # source, scorer, slot, dimension, score, n
    reliability: pd.DataFrame  # source, scorer, slot, dimension, mae, spearman, masked [, *_lo, *_hi, n, basis]
    thresholds: pd.DataFrame  # variant, unit_kind, unit, method, threshold [, n_in, n_kept, tokens_in, tokens_kept,...]
    curves: pd.DataFrame  # variant, source, scorer, composite, n, tokens (rows competing on the threshold)
    tokens: pd.DataFrame  # variant, source, decision [, reason], n, tokens (every decision row)
    overlap: pd.DataFrame  # variant_a, variant_b, n_both (kept documents in both; a <= b)
    canary: pd.DataFrame | None = None  # the canary table's rows (CANARY_COLUMNS), None when there is none
    title: str = "mira-spark selection report"
    notes: tuple[str, ...] = field(default=())  # fallbacks taken while reading, shown at the top


# ---------------------------------------------------------------------------------------- pure maths
def normalize_thresholds(thresholds: pd.DataFrame) -> pd.DataFrame:
    """The thresholds table in the new layout: today's (per source, no variant) gets the defaults.

    A table from before ``cut_on`` gets it from ``method`` and ``tau`` (its threshold was the composite's).

    >>> old = pd.DataFrame({"source": ["a"], "scorer": ["g"], "threshold": [6.5], "n_kept": [3]})
    >>> normalize_thresholds(old)[["variant", "unit_kind", "unit", "method", "cut_on"]].values.tolist()
    [['default', 'source', 'a', 'score', 'composite']]
    """
    out = thresholds.copy()
    if "variant" not in out:
        out["variant"] = DEFAULT_VARIANT
    if "unit_kind" not in out:
        out["unit_kind"] = "source"
    if "unit" not in out:
        out["unit"] = out.get("source", "all")
    if "method" not in out:
        out["method"] = "score"
    if "cut_on" not in out:
        tau = out["tau"] if "tau" in out else pd.Series(float("nan"), index=out.index)
        out["cut_on"] = ["random_score" if m == "random" else ("gumbel_key" if not pd.isna(t) else "composite")
                         for m, t in zip(out["method"], tau, strict=True)]
    return out


def unit_of(unit_kind: str, source: str, scorer: str, units: Sequence[str]) -> str | None:
    """The unit a (source, scorer) row belongs to under ``unit_kind``; ``units`` are the variant's units.

    >>> unit_of("source", "a", "g", ["a", "b"]), unit_of("group", "a", "g", ["g"]), unit_of("global", "a", "g", ["all"])
    ('a', 'g', 'all')
    """
    if unit_kind == "global":
        return units[0] if len(units) == 1 else None
    unit = scorer if unit_kind == "group" else source
    return unit if unit in units else None


def retention_curve(points: pd.DataFrame) -> pd.DataFrame:
    """Tokens (and documents) kept at each threshold: sums over composite >= threshold, descending.

    ``points``: composite, n, tokens (one row per composite value or bin). Returns composite, n_kept,
    tokens_kept ordered by composite descending.

    >>> pts = pd.DataFrame({"composite": [5.0, 7.0, 6.0, 7.0], "n": [1, 1, 2, 1], "tokens": [10, 30, 20, 5]})
    >>> retention_curve(pts).values.tolist()
    [[7.0, 2.0, 35.0], [6.0, 4.0, 55.0], [5.0, 5.0, 65.0]]
    """
    grouped = points.groupby("composite", as_index=False)[["n", "tokens"]].sum()
    grouped = grouped.sort_values("composite", ascending=False, kind="mergesort")
    return pd.DataFrame({"composite": grouped["composite"].astype(float).to_numpy(),
                         "n_kept": grouped["n"].cumsum().astype(float).to_numpy(),
                         "tokens_kept": grouped["tokens"].cumsum().astype(float).to_numpy()})


def jaccard_matrix(overlap: pd.DataFrame, kept: dict[str, int]) -> pd.DataFrame:
    """Variant x variant Jaccard index of kept document sets: |A and B| / |A or B|.

    ``overlap`` holds ``n_both`` per pair (either order); ``kept`` the size of each set.

    >>> ov = pd.DataFrame({"variant_a": ["g", "g"], "variant_b": ["g", "r"], "n_both": [4, 2]})
    >>> jaccard_matrix(ov, {"g": 4, "r": 4}).round(3).values.tolist()
    [[1.0, 0.333], [0.333, 1.0]]
    """
    names = sorted(kept)
    both = {(r.variant_a, r.variant_b): int(r.n_both) for r in overlap.itertuples()}
    both.update({(b, a): n for (a, b), n in list(both.items())})
    out = pd.DataFrame(index=names, columns=names, dtype=float)
    for a in names:
        for b in names:
            inter = kept[a] if a == b else both.get((a, b), 0)
            union = kept[a] + kept[b] - inter
            out.loc[a, b] = inter / union if union else float("nan")
    return out


def source_mix(tokens: pd.DataFrame) -> pd.DataFrame:
    """Token share per source of the raw mixture and of each variant's kept set (rows sum to 1).

    ``tokens``: variant, source, decision, n, tokens. The raw mixture is every input row of one variant
    (each variant decides every row once, so any variant's rows are the whole input).
    """
    first = sorted(tokens["variant"].unique())[0]
    raw = tokens[tokens["variant"] == first].groupby("source")["tokens"].sum().rename("raw mixture")
    kept = tokens[tokens["decision"] == "kept"].pivot_table(index="variant", columns="source", values="tokens",
                                                          aggfunc="sum", fill_value=0)
    mix = pd.concat([raw.to_frame().T, kept]).fillna(0.0)
    return mix.div(mix.sum(axis=1).where(lambda s: s > 0), axis=0).fillna(0.0)


def reasons_table(tokens: pd.DataFrame) -> pd.DataFrame:
    """Documents and tokens per (variant, decision, reason), with the sources involved.

    >>> t = pd.DataFrame({"variant": ["v"] * 3, "source": ["a", "b", "x"], "decision": ["kept", "kept", "excluded"],
    ...                   "reason": ["selected", "selected", "no_scorer"], "n": [2, 1, 3], "tokens": [5, 5, 9]})
    >>> reasons_table(t).values.tolist()
    [['v', 'excluded', 'no_scorer', 'x', 3, 9], ['v', 'kept', 'selected', 'a, b', 3, 10]]
    """
    df = tokens if "reason" in tokens else tokens.assign(reason="")
    out = df.groupby(["variant", "decision", "reason"], as_index=False).agg(
        sources=("source", lambda s: ", ".join(sorted({str(x) for x in s}))), n=("n", "sum"), tokens=("tokens", "sum"))
    return out.sort_values(["variant", "decision", "reason"], kind="mergesort").reset_index(drop=True)


def canary_summary(canary: pd.DataFrame) -> pd.DataFrame:
    """Per (run, endpoint, scorer): slots checked, mean and max |deviation|, quarantined."""
    df = canary.assign(abs_dev=canary["deviation"].abs(), quarantined=canary["quarantined"].astype(bool))
    out = df.groupby(["run_id", "endpoint", "scorer"], as_index=False).agg(
        slots=("slot", "count"), mean_abs_deviation=("abs_dev", "mean"), max_abs_deviation=("abs_dev", "max"),
        quarantined=("quarantined", "max"))
    return out.sort_values(["run_id", "endpoint", "scorer"], kind="mergesort").reset_index(drop=True)


# ------------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("mira-spark report draws its plots with matplotlib, which is not installed: "
                          "pip install 'mira-spark[report]' (make install adds it)") from None
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _grid(n: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return max(1, math.ceil(n / cols)), cols


def _slot_order(slot: str) -> int:
    return int(slot[1:]) if slot[1:].isdigit() else 0


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))[:60]


def plot_histograms(hist: pd.DataFrame, source: str) -> Figure:
    """One panel per dimension of ``source``: documents per score."""
    rows = hist[hist["source"] == source]
    dims = sorted({(s, d) for s, d in zip(rows["slot"], rows["dimension"], strict=True)}, key=lambda x: _slot_order(x[0]))
    nrows, ncols = _grid(len(dims), 5)
    fig = _figure(3.0 * ncols, 2.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (slot, dim) in zip(axes.flat, dims, strict=False):
        cell = rows[rows["slot"] == slot].sort_values("score")
        ax.bar(cell["score"], cell["n"], width=HIST_STEP * 0.9, color="#4c72b0")
        ax.set_title(f"{slot} {dim}"[:40], fontsize=8)
        ax.set_xlim(-0.5, 10.5)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(dims):]:
        ax.set_visible(False)
    fig.suptitle(f"{source}: documents per score, by dimension", fontsize=10)
    return fig


def _cell_text(row: pd.Series, value: str, lo: str, hi: str) -> str:
    text = "" if pd.isna(row.get(value)) else f"{row[value]:.2f}"
    if lo in row and hi in row and not pd.isna(row[lo]) and not pd.isna(row[hi]):
        text += f"\n[{row[lo]:.2f}, {row[hi]:.2f}]"
    return text


def plot_reliability(rel: pd.DataFrame, scorer: str) -> Figure:
    """Source x dimension heat maps of MAE and rho for one scorer group; masked cells crossed out."""
    import numpy as np

    rows = rel[rel["scorer"] == scorer]
    sources = sorted(rows["source"].unique())
    slots = sorted(rows["slot"].unique(), key=_slot_order)
    names = dict(zip(rows["slot"], rows["dimension"], strict=True))
    fig = _figure(max(6.0, 0.9 * len(slots) + 2.5), 2.0 + 1.6 * len(sources))
    axes = fig.subplots(2, 1, squeeze=False)[:, 0]
    panels = (("mae", "mae_lo", "mae_hi", "MAE (teacher vs student; lower is better)", "viridis_r", (0.0, None)),
              ("spearman", "spearman_lo", "spearman_hi", "Spearman rho (higher is better)", "RdYlGn", (-1.0, 1.0)))
    for ax, (value, lo, hi, title, cmap, (vmin, vmax)) in zip(axes, panels, strict=True):
        grid = np.full((len(sources), len(slots)), np.nan)
        for r in rows.itertuples(index=False):
            v = getattr(r, value, None)
            grid[sources.index(r.source), slots.index(r.slot)] = np.nan if v is None or pd.isna(v) else float(v)
        finite = grid[np.isfinite(grid)]
        top = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0) or 1.0
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=top, aspect="auto")
        fig.colorbar(image, ax=ax, shrink=0.8)
        for _, r in rows.iterrows():
            i, j = sources.index(r["source"]), slots.index(r["slot"])
            ax.text(j, i, _cell_text(r, value, lo, hi), ha="center", va="center", fontsize=6)
            if bool(r["masked"]):
                ax.plot([j - 0.45, j + 0.45], [i - 0.45, i + 0.45], color="black", lw=1)
                ax.plot([j - 0.45, j + 0.45], [i + 0.45, i - 0.45], color="black", lw=1)
        ax.set_xticks(range(len(slots)), [f"{s} {names[s]}"[:22] for s in slots], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(sources)), sources, fontsize=7)
        ax.set_title(f"{scorer}: {title}; X = masked", fontsize=9)
    return fig


def plot_retention(curves: pd.DataFrame, thresholds: pd.DataFrame, variant: str) -> Figure | None:
    """Each unit's tokens kept vs threshold for one variant, with its cut where the cut is on the composite
    (None: nothing to draw, the random baseline)."""
    cuts = thresholds[thresholds["variant"] == variant]
    units = [str(u) for u in cuts["unit"].tolist()]
    if not units or (cuts["method"] == "random").all():
        return None
    kind = str(cuts["unit_kind"].iloc[0])
    rows = curves[curves["variant"] == variant].copy()
    rows["unit"] = [unit_of(kind, s, g, units) for s, g in zip(rows["source"], rows["scorer"], strict=True)]
    nrows, ncols = _grid(len(units), 3)
    fig = _figure(4.2 * ncols, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (_, cut) in zip(axes.flat, cuts.iterrows(), strict=False):
        curve = retention_curve(rows[rows["unit"] == str(cut["unit"])])
        ax.step(curve["composite"], curve["tokens_kept"], where="post", color="#4c72b0")
        if cut.get("cut_on", "composite") == "composite" and not pd.isna(cut.get("threshold")):
            ax.axvline(float(cut["threshold"]), color="#c44e52", ls="--", lw=1,
                       label=f"cut {float(cut['threshold']):.3g}")
        if "tokens_kept" in cut and not pd.isna(cut["tokens_kept"]):
            ax.axhline(float(cut["tokens_kept"]), color="#55a868", ls=":", lw=1,
                       label=f"kept {int(cut['tokens_kept']):,} tokens")
        ax.set_title(f"{cut['unit_kind']} {cut['unit']}", fontsize=9)
        ax.set_xlabel("threshold (composite)", fontsize=8)
        ax.set_ylabel("tokens kept", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(units):]:
        ax.set_visible(False)
    fig.suptitle(f"variant {variant}: retention curves", fontsize=10)
    return fig


def plot_tokens(tokens: pd.DataFrame) -> Figure:
    """Kept vs excluded tokens per source, one panel per variant."""
    variants = sorted(tokens["variant"].unique())
    nrows, ncols = _grid(len(variants), 2)
    fig = _figure(5.5 * ncols, 3.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, variant in zip(axes.flat, variants, strict=False):
        table = tokens[tokens["variant"] == variant].pivot_table(
            index="source", columns="decision", values="tokens", aggfunc="sum", fill_value=0)
        kept = table.get("kept", pd.Series(0, index=table.index))
        excluded = table.get("excluded", pd.Series(0, index=table.index))
        ax.barh(table.index, kept, color="#55a868", label="kept")
        ax.barh(table.index, excluded, left=kept, color="#c8c8c8", label="excluded")
        ax.set_title(f"variant {variant}", fontsize=9)
        ax.set_xlabel("tokens", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(variants):]:
        ax.set_visible(False)
    return fig


def plot_overlap(jaccard: pd.DataFrame) -> Figure:
    fig = _figure(1.2 * len(jaccard) + 2.5, 1.0 * len(jaccard) + 1.5)
    ax = fig.subplots()
    image = ax.imshow(jaccard.to_numpy(dtype=float), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8)
    for i in range(len(jaccard)):
        for j in range(len(jaccard)):
            ax.text(j, i, f"{jaccard.iat[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(jaccard)), jaccard.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(jaccard)), jaccard.index, fontsize=8)
    ax.set_title("Jaccard overlap of kept documents", fontsize=9)
    return fig


def plot_mix(mix: pd.DataFrame) -> Figure:
    fig = _figure(7.5, 0.5 * len(mix) + 1.8)
    ax = fig.subplots()
    left = pd.Series(0.0, index=mix.index)
    colors = [f"C{i % 10}" for i in range(len(mix.columns))]
    for source, color in zip(mix.columns, colors, strict=True):
        ax.barh(mix.index, mix[source], left=left, color=color, label=str(source))
        left = left + mix[source]
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of tokens", fontsize=8)
    ax.set_title("source mix: raw mixture vs each variant's kept set", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def plot_canary(summary: pd.DataFrame) -> Figure:
    """Mean |deviation| per endpoint and scorer of the latest run (run ids sort by time: ``<UTC stamp>-<hex>``)."""
    latest = summary["run_id"].astype(str).max()
    summary = summary[summary["run_id"].astype(str) == latest]
    fig = _figure(max(5.0, 0.8 * len(summary) + 2.0), 3.2)
    ax = fig.subplots()
    labels = [f"{e}\n{s}" for e, s in zip(summary["endpoint"], summary["scorer"], strict=True)]
    colors = ["#c44e52" if q else "#55a868" for q in summary["quarantined"]]
    ax.bar(range(len(summary)), summary["mean_abs_deviation"], color=colors)
    ax.set_xticks(range(len(summary)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("mean |score - reference|", fontsize=8)
    ax.set_title(f"canary, run {latest}: deviation per endpoint (red = quarantined)", fontsize=9)
    return fig


# -------------------------------------------------------------------------------------------- page
def _table(df: pd.DataFrame, floats: str = "{:.3f}") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            shown = floats.format(v) if isinstance(v, float) and not math.isnan(v) else ("" if v is None or (
                isinstance(v, float) and math.isnan(v)) else str(v))
            cells.append(f"<td>{html.escape(shown)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _save(fig: Figure, out: Path, name: str, images: list[str]) -> str:
    fig.savefig(out / name, dpi=DPI)
    images.append(name)
    return f'<img src="{html.escape(name)}" alt="{html.escape(name)}">'


_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px}img{max-width:100%;border:1px solid #ddd;"
          "margin:.5em 0}table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;"
          "padding:2px 6px;text-align:right}th{background:#f3f3f3}.note{color:#8a5a00}")


def render_report(data: ReportData, out_dir: str | Path) -> Path:
    """Write ``out_dir/index.html`` and its PNGs (relative links: the directory opens from disk anywhere)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()  # a PNG of an earlier report that this one would not reference
    images: list[str] = []
    thresholds = normalize_thresholds(data.thresholds)
    parts = [f"<h1>{html.escape(data.title)}</h1>"]
    parts.append('<section id="summary"><h2>Summary</h2>')
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in data.notes]
    shown = [c for c in ("variant", "unit_kind", "unit", "mode", "method", "budget", "cut_on", "threshold", "n_docs",
                         "n_in", "n_kept", "tokens_in", "tokens_kept", "kept_fraction", "budget_met",
                         "tokens_estimated", "note")
             if c in thresholds]
    parts.append("<h3>Thresholds per variant and unit</h3>" + _table(thresholds[shown]))
    parts.append("<h3>Decisions by reason (every input row once per variant)</h3>"
                 + _table(reasons_table(data.tokens)) + "</section>")

    parts.append('<section id="histograms"><h2>Dimension scores per source</h2>')
    for source in sorted(data.histograms["source"].unique()):
        parts.append(_save(plot_histograms(data.histograms, source), out, f"hist_{_safe(source)}.png", images))
    parts.append("</section>")

    parts.append('<section id="reliability"><h2>Reliability: MAE and rho per source and dimension</h2>')
    if {"mae_lo", "spearman_lo"} & set(data.reliability.columns):
        parts.append("<p>Cells show the estimate and its 95% confidence interval [lo, hi].</p>")
    for scorer in sorted(data.reliability["scorer"].unique()):
        parts.append(_save(plot_reliability(data.reliability, scorer), out, f"reliability_{_safe(scorer)}.png", images))
    masked = data.reliability[data.reliability["masked"].astype(bool)]
    cols = [c for c in ("source", "scorer", "slot", "dimension", "n", "mae", "spearman", "reason", "basis") if c in masked]
    parts.append(f"<h3>Masked cells ({len(masked)})</h3>" + _table(masked[cols]) + "</section>")

    parts.append('<section id="retention"><h2>Retention curves (tokens kept vs threshold)</h2>')
    for variant in sorted(thresholds["variant"].unique()):
        fig = plot_retention(data.curves, thresholds, variant)
        if fig is None:
            parts.append(f"<p>variant {html.escape(variant)}: random baseline, no score threshold to plot.</p>")
        else:
            parts.append(_save(fig, out, f"retention_{_safe(variant)}.png", images))
    parts.append("</section>")

    parts.append('<section id="tokens"><h2>Kept vs excluded tokens per source</h2>')
    parts.append(_save(plot_tokens(data.tokens), out, "tokens_per_source.png", images) + "</section>")

    parts.append('<section id="variants"><h2>Variants: overlap and source mix</h2>')
    kept = data.tokens[data.tokens["decision"] == "kept"].groupby("variant")["n"].sum()
    kept_sets = {v: int(kept.get(v, 0)) for v in sorted(data.tokens["variant"].unique())}
    if len(kept_sets) > 1:
        jaccard = jaccard_matrix(data.overlap, kept_sets)
        parts.append(_save(plot_overlap(jaccard), out, "variants_jaccard.png", images))
        parts.append(_table(jaccard.reset_index(names="variant")))
    else:
        parts.append("<p>One variant in this run: no overlap to compare.</p>")
    mix = source_mix(data.tokens)
    parts.append(_save(plot_mix(mix), out, "variants_source_mix.png", images))
    parts.append(_table(mix.reset_index(names="set")) + "</section>")

    parts.append('<section id="canary"><h2>Canary: endpoints against the calibration references</h2>')
    if data.canary is None or data.canary.empty:
        parts.append("<p>No canary table in this run.</p>")
    else:
        summary = canary_summary(data.canary)
        parts.append(_save(plot_canary(summary), out, "canary.png", images))
        parts.append(_table(summary))
    parts.append("</section>")

    page = out / "index.html"
    page.write_text("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>"
                    f"{html.escape(data.title)}</title><style>{_STYLE}</style></head><body>\n"
                    + "\n".join(parts) + "\n</body></html>\n", encoding="utf-8")
    return page


# -------------------------------------------------------------------------------- Spark side (thin)
def default_report_dir(settings: Settings) -> Path:
    """``<tables.root>/report`` for a local table root; elsewhere the caller must name a directory."""
    root = settings.tables.root
    if not root or ("://" in root and not root.startswith("file://")):
        raise ConfigError("the tables are not on a local path (tables.schema or a cloud tables.root): give "
                          "mira-spark report --out <local directory>")
    return Path(root.removeprefix("file://")) / "report"


def _estimated_tokens(docs: DataFrame) -> DataFrame:
    """``doc_id, tokens`` from the project's token estimate, in a mapInArrow pass (text stays in its task)."""
    import pyarrow as pa

    from mira_spark.prompting.tokens import estimate_tokens

    def estimate(batches: Any) -> Any:
        for batch in batches:
            texts = batch.column("text").to_pylist()
            yield pa.RecordBatch.from_arrays(
                [batch.column("doc_id"), pa.array([estimate_tokens(t) if t else 0 for t in texts], pa.int64())],
                names=["doc_id", "tokens"])

    from pyspark.sql import functions as F

    return (docs.select("doc_id", "text").mapInArrow(estimate, "doc_id string, tokens long")
            .groupBy("doc_id").agg(F.max("tokens").alias("tokens")))


def read_report_data(spark: SparkSession, settings: Settings) -> ReportData:
    """Collect the report's aggregates from a run's tables (group-by results only, never the corpus)."""
    from pyspark.sql import functions as F

    from mira_spark.pipeline import load_groups
    from mira_spark.store.tables import Tables

    tables = Tables(spark, settings)
    groups = load_groups(settings)
    notes: list[str] = []
    for table in ("scores", "reliability", "thresholds", "decisions"):
        if not tables.exists(table):
            raise ConfigError(f"table {tables.ref(table).label} does not exist: run `mira-spark run --config ...` "
                              "before `mira-spark report`")

    versions = spark.createDataFrame(sorted(groups.versions.items()), "scorer string, prompt_version string")
    scores = tables.read("scores").join(F.broadcast(versions), ["scorer", "prompt_version"]).filter("status = 'ok'")
    hist_parts = []
    for name, rubric in groups.rubrics.items():
        cells = F.array(*[F.struct(F.lit(d.slot).alias("slot"), F.lit(d.dimension).alias("dimension"),
                                   F.col(f"a{d.index}_score").alias("score")) for d in rubric.dimensions])
        hist_parts.append(scores.filter(F.col("scorer") == name).select("source", "scorer", F.explode(cells).alias("c")))
    hist = hist_parts[0]
    for part in hist_parts[1:]:
        hist = hist.unionByName(part)
    histograms = (hist.filter(F.col("c.score").isNotNull())
                  .groupBy("source", "scorer", F.col("c.slot").alias("slot"), F.col("c.dimension").alias("dimension"),
                           (F.round(F.col("c.score") / HIST_STEP) * HIST_STEP).alias("score"))
                  .count().withColumnRenamed("count", "n").toPandas())

    reliability = tables.read("reliability").toPandas()
    thresholds = tables.read("thresholds").toPandas()
    decisions = tables.read("decisions")
    if "variant" not in decisions.columns:
        decisions = decisions.withColumn("variant", F.lit(DEFAULT_VARIANT))
    if "tokens" not in decisions.columns:
        notes.append("decisions has no tokens column: tokens are the project's estimate from each document's text.")
        decisions = decisions.join(_estimated_tokens(tables.read(tables.documents)), "doc_id", "left")
    decisions = decisions.withColumn("tokens", F.coalesce(F.col("tokens").cast("long"), F.lit(0)))
    tokens = (decisions.groupBy("variant", "source", "decision", "reason")
              .agg(F.count(F.lit(1)).alias("n"), F.sum("tokens").alias("tokens")).toPandas())

    competing = decisions.filter(F.col("composite").isNotNull()
                                 & ((F.col("decision") == "kept") | (F.col("reason") == "below_threshold")))
    lo, hi = competing.agg(F.min("composite"), F.max("composite")).first()
    width = ((hi - lo) / CURVE_BINS) if lo is not None and hi is not None and hi > lo else 1.0
    base = lo if lo is not None else 0.0
    curves = (competing.groupBy("variant", "source", "scorer",
                                (F.floor((F.col("composite") - base) / width) * width + base).alias("composite"))
              .agg(F.count(F.lit(1)).alias("n"), F.sum("tokens").alias("tokens")).toPandas())

    kept = decisions.filter(F.col("decision") == "kept").select("variant", "doc_id").distinct()
    overlap = (kept.alias("a").join(kept.alias("b"), "doc_id")
               .filter(F.col("a.variant") <= F.col("b.variant"))
               .groupBy(F.col("a.variant").alias("variant_a"), F.col("b.variant").alias("variant_b"))
               .count().withColumnRenamed("count", "n_both").toPandas())

    canary = None
    if tables.exists("canary"):
        frame = tables.read("canary")
        if set(CANARY_COLUMNS) <= set(frame.columns):
            canary = (frame.groupBy("run_id", "endpoint", "scorer", "slot", "quarantined")
                      .agg(F.avg("reference_score").alias("reference_score"), F.avg("score").alias("score"),
                           F.avg("deviation").alias("deviation")).toPandas())
        else:
            notes.append(f"canary table lacks columns {sorted(set(CANARY_COLUMNS) - set(frame.columns))}: not shown.")
    where = settings.tables.root or settings.tables.schema_name
    return ReportData(histograms=histograms, reliability=reliability, thresholds=thresholds, curves=curves,
                      tokens=tokens, overlap=overlap, canary=canary, title=f"mira-spark selection report: {where}",
                      notes=tuple(notes))


def write_report(spark: SparkSession, settings: Settings, out_dir: str | Path | None = None) -> Path:
    """Read the run's aggregates and render the page; returns the path of ``index.html``."""
    return render_report(read_report_data(spark, settings), out_dir or default_report_dir(settings))
