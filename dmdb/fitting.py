"""`dmdb fit`: read runs from the database, fit every target, write the weights back.

One fit = one row of ``fits``, the runs it used in ``fit_runs`` (so its metrics
never drift as runs are added), one ``datamodels`` row per fitted target and
the non-zero ``weights``, all written in one transaction. 'verify' runs are never
used. The solver itself lives in :mod:`dmdb.lasso`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from dmdb.catalog import FIT_TABLES as FIT_TABLES  # the old import paths keep working
from dmdb.catalog import drop_fit as drop_fit
from dmdb.catalog import evaluate_fit, record_fit
from dmdb.catalog import latest_fit as latest_fit
from dmdb.catalog import list_fits as list_fits
from dmdb.catalog import load_fit as load_fit
from dmdb.catalog import resolve_fit as resolve_fit
from dmdb.db import Database
from dmdb.devices import resolve_device
from dmdb.errors import FitError, UsageError
from dmdb.lasso import DatamodelLasso, GramStats
from dmdb.metrics import correlations as correlations

# The fewest runs per split a fit accepts: enough to pick λ and to rank test runs.
MIN_RUNS = {"fit": 10, "val": 2, "test": 3}
CHUNK_RUNS = 4096


@dataclass
class FitReport:
    """What one `dmdb fit` did."""

    fit_id: int
    n_fit: int
    n_val: int
    n_test: int
    n_targets: int
    mean_lds: float
    mean_nnz: float
    seconds: float
    timings: dict[str, float]


def parse_target_range(text: str | None, n_targets: int) -> tuple[int, int]:
    """'lo:hi' (either side optional) into a checked half-open range."""
    if text is None:
        return 0, n_targets
    lo_s, sep, hi_s = text.partition(":")
    try:
        lo = int(lo_s) if lo_s.strip() else 0
        hi = int(hi_s) if sep and hi_s.strip() else (n_targets if sep else lo + 1)
    except ValueError:
        raise UsageError(f"--target-range takes LO:HI, got {text!r}") from None
    if not 0 <= lo < hi <= n_targets:
        raise UsageError(
            f"--target-range {text} is outside the experiment's targets 0:{n_targets}"
        )
    return lo, hi


def select_runs(
    db: Database, alpha: float | None, max_fit_runs: int | None
) -> dict[str, np.ndarray]:
    """The run ids of each split the fit will use (run_id order; 'verify' excluded)."""
    if max_fit_runs is not None and max_fit_runs < 1:
        raise UsageError(f"--max-fit-runs must be positive, got {max_fit_runs}")
    chosen = {s: db.run_ids(split=s, alpha=alpha) for s in ("fit", "val", "test")}
    if max_fit_runs is not None:
        chosen["fit"] = chosen["fit"][:max_fit_runs]
    total = sum(len(v) for v in chosen.values())
    where = f" at alpha={alpha}" if alpha is not None else ""
    if total == 0:
        raise FitError(f"no runs{where} to fit; train or ingest runs first")
    for split, least in MIN_RUNS.items():
        if len(chosen[split]) < least:
            raise FitError(
                f"only {len(chosen[split])} {split} run(s){where}; a fit needs at least {least} "
                f"(splits are about 80/10/10, so train more runs)"
            )
    return chosen


def fit(
    db: Database,
    *,
    alpha: float | None = None,
    max_fit_runs: int | None = None,
    target_range: str | tuple[int, int] | None = None,
    solver: str = "fast",
    n_lambdas: int = 40,
    lambda_ratio: float = 1e-2,
    tol: float = 1e-4,
    max_iter: int = 2000,
    device: str = "cpu",
    dtype: str = "float32",
    n_threads: int | None = None,
    early_stopping: bool = True,
    gram: bool = True,
    learning_curve_of: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> FitReport:
    """Fit a datamodel for every target (or a range of them) and store it as a new fit.

    ``learning_curve_of`` marks a refit on fewer runs made for another fit's
    learning curve: it is recorded in the parameters, and :func:`latest_fit` skips it.
    Nothing is written unless the whole fit succeeds.
    """
    started = time.perf_counter()
    exp = db.experiment
    lo, hi = (target_range if isinstance(target_range, tuple)
              else parse_target_range(target_range, exp.n_targets))
    if not 0 <= lo < hi <= exp.n_targets:
        raise UsageError(f"--target-range {lo}:{hi} is outside the targets 0:{exp.n_targets}")
    estimator = DatamodelLasso(
        solver=solver, n_lambdas=n_lambdas, lambda_ratio=lambda_ratio, tol=tol,
        max_iter=max_iter, device=device, dtype=dtype, n_threads=n_threads,
        early_stopping=early_stopping, gram=gram, copy_gram=False, progress=progress,
    )
    estimator._check_params()
    torch_device = resolve_device(device)
    runs = select_runs(db, alpha, max_fit_runs)
    echo(f"fitting targets {lo}:{hi} on {len(runs['fit'])} fit / {len(runs['val'])} val / "
         f"{len(runs['test'])} test runs with the {solver} solver on {device}")

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for _, masks, margins in db.iter_runs(run_ids=runs["fit"], chunk_runs=CHUNK_RUNS):
            yield masks, margins[:, lo:hi]

    t0 = time.perf_counter()
    stats = GramStats(exp.n_train, hi - lo, gram=gram, device=torch_device)
    total = np.zeros(hi - lo)
    total_sq = np.zeros(hi - lo)
    first: np.ndarray | None = None
    for masks, margins in chunks():
        stats.add(masks, margins)
        first = margins[0].astype(np.float64) if first is None else first
        centred = margins - first
        total += centred.sum(axis=0)
        total_sq += (centred.astype(np.float64) ** 2).sum(axis=0)
    n = len(runs["fit"])
    var = total_sq / n - (total / n) ** 2
    constant = np.flatnonzero(var <= 1e-12 * (1 + np.abs(first if first is not None else 0)) ** 2)
    if len(constant):
        raise FitError(
            f"target {lo + int(constant[0])} has the same margin in all {n} fit runs; "
            "a datamodel cannot be fitted to a constant (exclude it with --target-range)"
        )
    stats_seconds = time.perf_counter() - t0
    _, x_val, y_val = db.load_runs(run_ids=runs["val"])
    estimator.fit_stats(stats, x_val, y_val[:, lo:hi], chunks if not gram else None)
    del stats
    coef = estimator.coef_
    test_mse, pearson, spearman = evaluate_fit(db, estimator.intercept_, coef, runs["test"], lo)
    timings = dict(estimator.timings_) | {"stats": stats_seconds}
    params = {
        "solver": solver, "n_lambdas": n_lambdas, "lambda_ratio": lambda_ratio, "tol": tol,
        # What tol bounds (fits recorded without this key stopped at gap / primal <= tol).
        "stopping": "duality gap <= tol * mean(centred margin^2)",
        "max_iter": max_iter, "dtype": dtype, "n_threads": n_threads,
        "early_stopping": early_stopping, "gram": gram, "max_fit_runs": max_fit_runs,
        "timings": timings,
    }
    if learning_curve_of is not None:
        params["learning_curve_of"] = int(learning_curve_of)
    wall = time.perf_counter() - started
    fit_id = _write_fit(db, runs, lo, hi, estimator, coef, test_mse, pearson, spearman,
                        alpha=alpha, solver=solver, device=device, params=params, wall=wall)
    return FitReport(
        fit_id=fit_id, n_fit=len(runs["fit"]), n_val=len(runs["val"]), n_test=len(runs["test"]),
        n_targets=hi - lo, mean_lds=float(np.nanmean(spearman)) if np.isfinite(spearman).any()
        else float("nan"), mean_nnz=float(estimator.nnz_.mean()), seconds=wall, timings=timings,
    )


def _write_fit(
    db: Database, runs: dict[str, np.ndarray], lo: int, hi: int, est: Any,
    coef: sp.csr_matrix, test_mse: np.ndarray, pearson: np.ndarray, spearman: np.ndarray,
    *, alpha: float | None, solver: str, device: str, params: dict[str, Any], wall: float,
) -> int:
    """Record a fitted estimator's result with its test metrics (see :func:`record_fit`)."""
    return record_fit(
        db, runs=runs, target_range=(lo, hi), bias=est.intercept_, weights=coef,
        penalty=est.penalty_, val_mse=est.val_mse_, solver=solver, device=device, alpha=alpha,
        parameters=params, wall_seconds=wall, test_metrics=(test_mse, pearson, spearman),
    )
