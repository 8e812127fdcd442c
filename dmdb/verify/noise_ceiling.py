"""`dmdb verify --ceiling`: the noise ceiling, from several seeds on each of many masks.

How much of a margin the mask determines at all, hence the best LDS any datamodel
could reach.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from dmdb.catalog import fit_label, sibling_fits
from dmdb.db import Database
from dmdb.errors import UsageError
from dmdb.metrics import correlations
from dmdb.verify.counterfactuals import pct
from dmdb.verify.fit import FitUnderTest, load_fit_under_test
from dmdb.verify.plan import (
    STREAM_CEILING,
    Echo,
    Plan,
    build_trainer,
    done_keys,
    run_plan,
    stream_rng,
)


@dataclass
class CeilingReport:
    """Means over targets of the noise ceiling (`dmdb verify --ceiling`)."""

    fit_id: int
    alpha: float
    n_masks: int
    n_seeds: int
    trained: int
    reused: int
    seconds: float
    interrupted: bool
    # NaN until measured (an interrupted run measures nothing)
    seed_spearman: float = float("nan")
    mask_r2: float = float("nan")
    attainable_lds: float = float("nan")
    lds_1: float = float("nan")
    lds_2: float = float("nan")
    lds_5: float = float("nan")
    lds_all: float = float("nan")  # against margins averaged over all n_seeds seeds
    fit_lds: float = float("nan")  # the fit's own LDS on its test runs (its test_spearman)
    # The fit and its siblings (the same runs, e.g. its second-order refit) on these
    # masks: (fit_id, label, mean single-seed LDS, mean attainable LDS on its targets)
    models: list[tuple[int, str, float, float]] = field(default_factory=list)

    def summary(self) -> str:
        """The lines `dmdb verify --ceiling` prints."""
        head = (f"noise ceiling for fit {self.fit_id} (alpha={self.alpha:g}): {self.n_masks} "
                f"masks x {self.n_seeds} seeds; trained {self.trained} model(s) in "
                f"{self.seconds:.1f}s, reused {self.reused}")
        if self.interrupted:
            return head + "\ninterrupted: noise_ceiling not written; run again to continue"
        frac = self.lds_1 / self.attainable_lds if self.attainable_lds > 0 else float("nan")
        return "\n".join([
            head,
            f"  seed-to-seed Spearman (same mask, two seeds): {self.seed_spearman:.3f}",
            f"  variance explained by the mask (mask_r2):     {self.mask_r2:.3f}",
            f"  attainable single-seed LDS, sqrt(mask_r2):    {self.attainable_lds:.3f}",
            f"  the fit's LDS on these masks: {self.lds_1:.3f} single seed, {self.lds_2:.3f} "
            f"vs 2-seed means, {_fmt(self.lds_5)} vs 5-seed means"
            + (f", {self.lds_all:.3f} vs {self.n_seeds}-seed means"
               if self.n_seeds not in (1, 2, 5) else "")
            + f" (its test LDS: {self.fit_lds:.3f})",
            f"  the datamodel reaches {pct(frac)} of the attainable single-seed LDS",
            *self._side_by_side(),
        ])

    def _side_by_side(self) -> list[str]:
        if len(self.models) < 2:
            return []
        lines = ["  side by side, fits of the same runs on these masks (single-seed LDS, "
                 "share of the attainable):"]
        for fit_id, label, lds, attainable in self.models:
            share = lds / attainable if attainable > 0 else float("nan")
            lines.append(f"    fit {fit_id:>3} {label:<24} {_fmt(lds)}  {pct(share)}")
        return lines


def _fmt(x: float) -> str:
    return f"{x:.3f}" if np.isfinite(x) else "n/a"


def ceiling_metrics(margins: np.ndarray, predictions: np.ndarray) -> dict[str, np.ndarray]:
    """Per-target noise-ceiling metrics.

    Parameters
    ----------
    margins : float array of shape (J, S, M)
        Margins of S seeds on each of J masks.
    predictions : float array of shape (J, M)
        The datamodel's prediction for each mask.

    Returns
    -------
    dict of float64 arrays of shape (M,)
        seed_spearman: Spearman across masks between two seeds, averaged over seed pairs;
        mask_r2: the between-mask variance component over the total (one-way ANOVA,
        unbiased: var(mask means) - within / S); attainable_lds: sqrt(mask_r2) (NaN
        below 0); lds_1, lds_2, lds_5: Spearman between predictions and margins averaged
        over disjoint groups of 1, 2, 5 seeds, averaged over groups (NaN if S < 5 for
        lds_5); lds_all: against the mean over all S seeds.
    """
    y = np.asarray(margins, dtype=np.float64)
    n_masks, n_seeds, _ = y.shape
    pairs = [(a, b) for a in range(n_seeds) for b in range(a + 1, n_seeds)]
    seed_rho = _nanmean(np.array([correlations(y[:, a], y[:, b])[1] for a, b in pairs]), axis=0)
    means = y.mean(axis=1)
    within = ((y - means[:, None, :]) ** 2).sum(axis=(0, 1)) / (n_masks * (n_seeds - 1))
    between = means.var(axis=0, ddof=1) - within / n_seeds
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = between / (between + within)
    out = {"seed_spearman": seed_rho, "mask_r2": r2,
           "attainable_lds": np.sqrt(np.where(r2 >= 0, r2, np.nan))}
    for size, name in ((1, "lds_1"), (2, "lds_2"), (5, "lds_5"), (n_seeds, "lds_all")):
        groups = n_seeds // size
        if groups == 0:
            out[name] = np.full(y.shape[2], np.nan)
            continue
        rhos = [correlations(predictions, y[:, g * size:(g + 1) * size].mean(axis=1))[1]
                for g in range(groups)]
        out[name] = _nanmean(np.array(rhos), axis=0)
    return out


def _nanmean(values: np.ndarray, axis: int | None = None) -> Any:
    """np.nanmean without the warning for all-NaN slices (they stay NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _plan_ceiling(plan: Plan, exp_seed: int, seed: int, alpha: float, masks: int, seeds: int,
                  n_train: int, device: str, opts: dict[str, Any]) -> None:
    alpha_key = int(round(alpha * 1_000_000))
    for j in range(masks):
        mask = stream_rng(exp_seed, STREAM_CEILING, seed, alpha_key, j).random(n_train) < alpha
        for s in range(seeds):
            model_seed = int(stream_rng(exp_seed, STREAM_CEILING, seed, alpha_key, j, s + 1)
                             .integers(0, 2**31))
            plan.add(mask, model_seed, {
                "verify": {"key": f"ceiling/{seed}/{alpha_key}/{j}/{s}", "kind": "ceiling",
                           "fit_id": None, "target_idx": None, "condition": None, "k": None,
                           "removed": []},
                "ceiling_mask": j, "ceiling_seed": s, "device": device,
            } | ({"options": dict(opts)} if opts else {}))


def _ceiling_runs(db: Database, keys: list[str]) -> np.ndarray:
    """The run ids of trained ceiling runs, aligned with ``keys``."""
    rows = db.sql("SELECT run_id, info->>'$.verify.key' AS key FROM runs "
                  "WHERE split = 'verify' AND list_contains(?, info->>'$.verify.key')", [keys])
    where = dict(zip(rows.column("key").to_pylist(), rows.column("run_id").to_pylist(),
                     strict=True))
    return np.array([where[k] for k in keys], dtype=np.int64)


def ceiling(
    db: Database,
    *,
    fit_id: int | None = None,
    masks: int = 100,
    seeds: int = 10,
    seed: int = 0,
    trainer: str | None = None,
    device: str = "cpu",
    options: Mapping[str, Any] | None = None,
    batch_models: int | None = None,
    progress: bool = True,
    echo: Echo = print,
) -> CeilingReport:
    """Measure the noise ceiling of a fit and write its ``noise_ceiling`` rows.

    Trains ``seeds`` models on each of ``masks`` fresh Bernoulli(alpha) masks (split
    'verify', kind 'ceiling'; runs of an earlier call with the same seed and alpha are
    reused), then computes :func:`ceiling_metrics` for every fitted target and replaces
    the fit's rows of ``noise_ceiling`` in one transaction.
    """
    started = time.perf_counter()
    exp = db.experiment
    fit = load_fit_under_test(db, fit_id)
    if masks < 3:
        raise UsageError(f"--masks must be at least 3 (Spearman across masks), got {masks}")
    if seeds < 2:
        raise UsageError(f"--seeds must be at least 2 (seed-to-seed agreement), got {seeds}")
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be a non-negative integer, got {seed}")
    db.check_can_write()  # it records what it trains and the ceiling's rows
    model, opts = build_trainer(db, fit, trainer, device, options, batch_models=batch_models)
    plan = Plan()
    _plan_ceiling(plan, exp.seed, seed, fit.alpha, masks, seeds, exp.n_train, device, opts)
    done = done_keys(db, f"ceiling/{seed}/{int(round(fit.alpha * 1_000_000))}/")
    todo = plan.without(done)
    echo(f"noise ceiling for fit {fit.fit_id}: {masks} masks x {seeds} seeds at "
         f"alpha={fit.alpha:g}; training {len(todo)} model(s) with {model.name} "
         f"({len(plan) - len(todo)} already there)")
    interrupted = run_plan(db, model, todo, alpha=fit.alpha, progress=progress, echo=echo)
    trained = len(todo) - len(todo.without(done_keys(db, "ceiling/")))
    report = CeilingReport(fit.fit_id, fit.alpha, masks, seeds, trained, len(plan) - len(todo),
                           0.0, interrupted)
    if not interrupted:
        fits = [fit, *(load_fit_under_test(db, f) for f in sibling_fits(db, fit.fit_id))]
        margins, mask_x = _ceiling_margins(db, plan.keys(), masks, seeds)
        metrics = [ceiling_metrics(margins, f.predict(mask_x)) for f in fits]
        _write_ceiling(db, fits, metrics, masks, seeds)
        fitted = fit.fitted
        for name in ("seed_spearman", "mask_r2", "attainable_lds", "lds_1", "lds_2", "lds_5",
                     "lds_all"):
            vals = metrics[0][name][fitted]
            setattr(report, name, float(_nanmean(vals)))
        report.models = [
            (f.fit_id, fit_label(db, f.fit_id), float(_nanmean(m["lds_1"][f.fitted])),
             float(_nanmean(m["attainable_lds"][f.fitted]))) for f, m in zip(fits, metrics,
                                                                              strict=True)]
        report.fit_lds = float(db.sql("SELECT avg(test_spearman) FROM datamodels "
                                      "WHERE fit_id = ?", [fit.fit_id]).column(0)[0].as_py()
                               or float("nan"))
    report.seconds = time.perf_counter() - started
    return report


def _ceiling_margins(db: Database, keys: list[str], masks: int, seeds: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The ceiling runs' margins (masks, seeds, M) and their masks (masks, N), one per mask."""
    run_ids = _ceiling_runs(db, keys)
    ids, x, y = db.load_runs(split="verify", run_ids=run_ids)
    pos = {int(r): i for i, r in enumerate(ids)}
    order = np.array([pos[int(r)] for r in run_ids])
    x, y = x[order], y[order]
    return y.reshape(masks, seeds, -1), x[::seeds]  # run j * seeds + s is seed s on mask j


def _write_ceiling(db: Database, fits: list[FitUnderTest],
                   metrics: list[dict[str, np.ndarray]], masks: int, seeds: int) -> None:
    """Replace the ``noise_ceiling`` rows of every fit in ``fits``, in one transaction."""
    tables = []
    for fit, m in zip(fits, metrics, strict=True):
        t = fit.fitted
        cols = {"fit_id": pa.array(np.full(len(t), fit.fit_id, np.int32)),
                "target_idx": pa.array(t.astype(np.int32))}
        for name in ("seed_spearman", "mask_r2", "attainable_lds", "lds_1", "lds_2", "lds_5"):
            v = m[name][t]
            cols[name] = pa.array(v, mask=~np.isfinite(v))
        tables.append(pa.table(cols))
    rows = pa.concat_tables(tables)  # noqa: F841 (read by the SQL below)
    with db.transaction() as con:
        con.execute("DELETE FROM noise_ceiling WHERE list_contains(?, fit_id)",
                    [[f.fit_id for f in fits]])
        con.execute(
            "INSERT INTO noise_ceiling SELECT fit_id, target_idx, ?, ?, seed_spearman, mask_r2, "
            "attainable_lds, lds_1, lds_2, lds_5 FROM rows", [masks, seeds])
