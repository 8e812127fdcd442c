"""`dmdb compare`: several fits (fitted or imported) judged on the same evaluation runs.

The first fit is the reference. Every fit's LDS is taken on the reference's test
runs, and on the targets all the fits share: a fit recorded on other runs (an
import with ``--eval all``, a fit at another alpha) is re-evaluated there with
:func:`dmdb.catalog.evaluate_fit`, and the comparison says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dmdb.catalog import Pairs, evaluate_fit, fit_label
from dmdb.db import Database
from dmdb.errors import FitError, UsageError

TOP_K = 10
# LDS differences below this are float round-off, not one fit beating another.
BEAT_MARGIN = 1e-9


@dataclass
class Comparison:
    """The result of :func:`compare`.

    table : one row per fit, in the order given (the first is the reference)
    lds : fit_id -> float array of shape (len(targets),), per-target LDS on the
        reference's test runs
    """

    table: pa.Table
    reference: int
    targets: np.ndarray
    n_eval_runs: int
    lds: dict[int, np.ndarray]
    labels: dict[int, str]
    notes: list[str] = field(default_factory=list)

    def figure(self) -> Any:
        """A matplotlib Figure: each fit's per-target LDS against the reference's, y = x."""
        return comparison_figure(self)

    def save_figure(self, path: str | Path) -> Path:
        out = Path(path)
        if out.parent != Path() and not out.parent.is_dir():
            raise UsageError(f"{out.parent}: no such folder for the figure")
        self.figure().savefig(out)
        return out


def compare(db: Database, fits: list[int] | None = None) -> Comparison:
    """Compare fits on the first one's test runs and on the targets they share.

    Parameters
    ----------
    fits : list of fit_id, optional
        The first is the reference. Default: every fit that is not a learning-curve
        refit, in fit_id order.

    Returns
    -------
    Comparison, whose table has columns fit_id, name, solver, targets, eval_runs,
    mean_lds, median_lds, beats_first (the fraction of targets where the fit's LDS is
    higher than the reference's), top10_overlap (the mean share of each target's 10
    most positive weights that the reference's top 10 also holds), rank (1 = highest
    mean LDS) and recomputed (whether the LDS was re-evaluated here).
    """
    ids = _choose_fits(db, fits)
    info = {r["fit_id"]: r for r in db.sql(
        "SELECT fit_id, solver, target_lo, target_hi, parameters FROM fits "
        "WHERE list_contains(?, fit_id)", [ids]).to_pylist()}
    ref = ids[0]
    runs = _test_runs(db, ref)
    if len(runs) < 3:
        raise FitError(f"fit {ref} records {len(runs)} test run(s); the reference of a "
                       "comparison needs at least 3 (put a fit with test runs first)")
    lo = max(info[f]["target_lo"] for f in ids)
    hi = min(info[f]["target_hi"] for f in ids)
    if lo >= hi:
        raise UsageError(f"fits {', '.join(map(str, ids))} share no target; compare fits of "
                         "overlapping target ranges")
    notes = [f"reference: fit {ref}; every LDS is on its {len(runs)} test runs, targets "
             f"{lo}:{hi}"]
    lds: dict[int, np.ndarray] = {}
    top: dict[int, list[np.ndarray]] = {}
    recomputed: dict[int, bool] = {}
    for f in ids:
        bias, weights = db.load_fit(f)
        weights = weights[lo:hi]
        recomputed[f] = not np.array_equal(_test_runs(db, f), runs)
        if recomputed[f]:
            lds[f] = evaluate_fit(db, bias[lo:hi], weights, runs, lo, _pairs(db, f, lo, hi))[2]
            notes.append(f"fit {f} was evaluated on other runs when recorded; its LDS is "
                         f"recomputed on fit {ref}'s test runs")
        else:
            lds[f] = _stored_lds(db, f, lo, hi)
        top[f] = _top_positive(weights, TOP_K)
    if any(info[f]["target_lo"] != lo or info[f]["target_hi"] != hi for f in ids):
        notes.append(f"the fits cover different targets; only the {hi - lo} they share count")
    labels = {f: _label(db, info[f]) for f in ids}
    table = _table(ids, info, labels, lds, top, recomputed, len(runs), hi - lo)
    return Comparison(table, ref, np.arange(lo, hi), len(runs), lds, labels, notes)


def _choose_fits(db: Database, fits: list[int] | None) -> list[int]:
    if fits is None:
        ids = db.sql("SELECT fit_id FROM fits WHERE parameters->>'learning_curve_of' IS NULL "
                     "ORDER BY fit_id").column(0).to_pylist()
    else:
        ids = [int(f) for f in fits]
        for f in ids:
            db.check_fit(f)
        if len(set(ids)) != len(ids):
            raise UsageError(f"--fits names a fit twice: {','.join(map(str, ids))}")
    if len(ids) < 2:
        raise UsageError("compare needs at least two fits; fit again, or add one with "
                         "`dmdb import-fit DB FILE`")
    return ids


def _pairs(db: Database, fit_id: int, lo: int, hi: int) -> Pairs | None:
    """A second-order fit's interactions on targets lo..hi-1, counted from lo (or None)."""
    t, a, b, phi = db.load_interactions(fit_id)
    keep = (t >= lo) & (t < hi)
    return (t[keep] - lo, a[keep], b[keep], phi[keep]) if keep.any() else None


def _test_runs(db: Database, fit_id: int) -> np.ndarray:
    return db.sql("SELECT run_id FROM fit_runs WHERE fit_id = ? AND split = 'test' "
                  "ORDER BY run_id", [fit_id]).column(0).to_numpy().astype(np.int64)


def _stored_lds(db: Database, fit_id: int, lo: int, hi: int) -> np.ndarray:
    rows = db.sql("SELECT target_idx, test_spearman FROM datamodels WHERE fit_id = ? "
                  "AND target_idx >= ? AND target_idx < ?", [fit_id, lo, hi]).to_pydict()
    out = np.full(hi - lo, np.nan)
    values = np.array([np.nan if v is None else v for v in rows["test_spearman"]], np.float64)
    out[np.asarray(rows["target_idx"], dtype=np.int64) - lo] = values
    return out


def _top_positive(weights: Any, k: int) -> list[np.ndarray]:
    """Each row's k most positive columns, ties to the smaller train_idx (as top_influencers)."""
    out = []
    for t in range(weights.shape[0]):
        start, end = weights.indptr[t], weights.indptr[t + 1]
        idx, w = weights.indices[start:end], weights.data[start:end]
        keep = w > 0
        idx, w = idx[keep], w[keep]
        out.append(idx[np.lexsort((idx, -w))[:k]])
    return out


def _overlap(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    shares = [len(np.intersect1d(x, y)) / max(len(x), len(y))
              for x, y in zip(a, b, strict=True) if len(x) or len(y)]
    return float(np.mean(shares)) if shares else float("nan")


def _label(db: Database, row: dict[str, Any]) -> str:
    name = fit_label(db, row["fit_id"])
    return name if row["solver"] == "imported" else f"dmdb fit ({row['solver']}, {name})"


def _table(ids: list[int], info: dict[int, dict[str, Any]], labels: dict[int, str],
           lds: dict[int, np.ndarray], top: dict[int, list[np.ndarray]],
           recomputed: dict[int, bool], n_runs: int, n_targets: int) -> pa.Table:
    ref = ids[0]
    means = np.array([np.nanmean(lds[f]) if np.isfinite(lds[f]).any() else np.nan for f in ids])
    ranks = _ranks(means)
    rows = []
    for f, mean, rank in zip(ids, means, ranks, strict=True):
        both = np.isfinite(lds[f]) & np.isfinite(lds[ref])
        beats = (float(np.mean(lds[f][both] > lds[ref][both] + BEAT_MARGIN))
                 if f != ref and both.any() else None)
        finite = lds[f][np.isfinite(lds[f])]
        rows.append({
            "fit_id": f, "name": labels[f], "solver": info[f]["solver"],
            "targets": n_targets, "eval_runs": n_runs,
            "mean_lds": None if np.isnan(mean) else round(float(mean), 4),
            "median_lds": round(float(np.median(finite)), 4) if len(finite) else None,
            "beats_first": None if beats is None else round(beats, 4),
            "top10_overlap": None if f == ref else _none_if_nan(_overlap(top[f], top[ref])),
            "rank": rank, "recomputed": recomputed[f],
        })
    return pa.Table.from_pylist(rows)


def _ranks(means: np.ndarray) -> list[int | None]:
    """1 for the highest mean LDS; equal means share a rank; NaN has none."""
    finite = means[np.isfinite(means)]
    return [None if np.isnan(m) else int(1 + np.sum(finite > m + BEAT_MARGIN)) for m in means]


def _none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else round(value, 4)


def comparison_figure(comparison: Comparison) -> Any:
    """Per-target LDS of every other fit (y) against the reference's (x), with y = x."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    # A Figure object, not pyplot: no global state and no GUI backend (savefig uses Agg).
    fig = Figure(figsize=(6.2, 5.4), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ref = comparison.reference
    x = comparison.lds[ref]
    rows = {r["fit_id"]: r for r in comparison.table.to_pylist()}
    cmap = colormaps["tab10"]
    others = [f for f in comparison.lds if f != ref]
    for j, f in enumerate(others):
        y = comparison.lds[f]
        r = rows[f]
        mean = "-" if r["mean_lds"] is None else f"{r['mean_lds']:.3f}"
        beats = "-" if r["beats_first"] is None else f"{r['beats_first']:.0%}"
        ax.scatter(x, y, s=12, alpha=0.65, color=cmap(j % cmap.N),
                   label=f"fit {f} {comparison.labels[f]}: mean {mean}, beats fit {ref} "
                         f"on {beats}")
    values = np.concatenate([v[np.isfinite(v)] for v in comparison.lds.values()])
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    pad = 0.03 * (hi - lo or 1)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="y = x")
    ref_mean = rows[ref]["mean_lds"]
    ax.set(xlabel=f"LDS of fit {ref}, {comparison.labels[ref]}: mean "
                  f"{'-' if ref_mean is None else f'{ref_mean:.3f}'}",
           ylabel="LDS of the other fit",
           title=f"Per-target LDS on fit {ref}'s {comparison.n_eval_runs} test runs "
                 f"({len(comparison.targets)} targets)")
    ax.legend(fontsize=8, loc="upper left")
    return fig
