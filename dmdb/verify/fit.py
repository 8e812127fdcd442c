"""The fit under test: its datamodels, alpha and trainer, and its brittleness estimates."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from dmdb.catalog import resolve_fit
from dmdb.db import Database
from dmdb.errors import UsageError


@dataclass
class FitUnderTest:
    """What a check needs to know about a fit."""

    fit_id: int
    alpha: float
    bias: np.ndarray                 # float64 (M,), NaN outside the fit's target range
    weights: sp.csr_matrix           # float32 (M, N), mask space
    trainer: str | None              # runs.trainer of the fit's runs (view fit_trainer)
    options: dict[str, Any]          # trainer options recorded in runs.info

    @property
    def fitted(self) -> np.ndarray:
        """int array: the targets this fit has a datamodel for."""
        return np.flatnonzero(np.isfinite(self.bias))

    def margin_before(self) -> np.ndarray:
        """float64 (M,): the expected margin with nothing removed."""
        return self.bias + self.alpha * np.asarray(self.weights.sum(axis=1)).ravel()

    def ranked(self, target: int) -> tuple[np.ndarray, np.ndarray]:
        """The target's non-zero weights, largest first (ties: lower train_idx first)."""
        row = self.weights.getrow(target)
        idx, w = row.indices.astype(np.int64), row.data.astype(np.float64)
        order = np.lexsort((idx, -w))
        return idx[order], w[order]


def fit_alpha(db: Database, fit_id: int) -> float:
    """fits.alpha, or the mean alpha of the fit's 'fit' runs when NULL (view fit_alpha)."""
    rows = db.sql("SELECT alpha FROM fit_alpha WHERE fit_id = ?", [fit_id]).column(0)
    value = rows[0].as_py() if len(rows) else None
    if value is None:
        raise UsageError(f"fit {fit_id} records no runs, so its alpha is unknown")
    return float(value)


def load_fit_under_test(db: Database, fit_id: int | None) -> FitUnderTest:
    """Resolve and load a fit, with its alpha and the trainer its runs were made with."""
    fid = resolve_fit(db, fit_id)
    bias, weights = db.load_fit(fid)
    row = db.sql("SELECT trainer, options FROM fit_trainer WHERE fit_id = ?", [fid]).to_pylist()
    trainer = row[0]["trainer"] if row else None
    options = json.loads(row[0]["options"]) if row and row[0]["options"] else {}
    return FitUnderTest(fid, fit_alpha(db, fid), bias, weights, trainer,
                        options if isinstance(options, dict) else {})


# --------------------------------------------------------------------------- #
# Brittleness estimates (the `brittleness` view, or the same in numpy)


def support_sizes(fit: FitUnderTest) -> tuple[np.ndarray, np.ndarray]:
    """Each target's expected margin and the size of its estimated support set.

    The support set is the smallest set of training examples whose removal makes
    the predicted margin ``margin_before - alpha * sum(weights of removed)`` <= 0:
    the largest positive weights, taken in order.

    Returns
    -------
    margin_before : float64 array of shape (M,), NaN for targets outside the fit
    support_size : float64 array of shape (M,); NaN where the target is predicted
        wrong already (margin_before <= 0), cannot be flipped, or was not fitted
    """
    before = fit.margin_before()
    size = np.full(len(before), np.nan)
    for t in fit.fitted:
        if not before[t] > 0:
            continue
        _, w = fit.ranked(int(t))
        w = w[w > 0]
        after = before[t] - fit.alpha * np.cumsum(w)
        hit = np.flatnonzero(after <= 0)
        if len(hit):
            size[t] = hit[0] + 1
    return before, size


def brittleness_estimates(db: Database, fit: FitUnderTest) -> tuple[np.ndarray, np.ndarray]:
    """(margin_before, support_size) as in :func:`support_sizes`, from the view when present."""
    before, size = support_sizes(fit)
    if not db.has_view("brittleness"):
        return before, size
    rows = db.sql("SELECT target_idx, support_size FROM brittleness WHERE fit_id = ?",
                  [fit.fit_id])
    size = np.full(len(before), np.nan)
    values = rows.column("support_size").to_numpy(zero_copy_only=False)
    size[rows.column("target_idx").to_numpy()] = np.asarray(values, dtype=np.float64)
    size[~(before > 0)] = np.nan
    return before, size
