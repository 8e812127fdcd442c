"""Quality metrics shared by the fit, its checks and its report (numpy and scipy only)."""

from __future__ import annotations

import numpy as np


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-column Pearson correlation of two (n, k) arrays; NaN where a column is constant."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denom = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=0) / denom, np.nan)


def correlations(pred: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column Pearson and Spearman correlations; NaN where a column is constant.

    Parameters
    ----------
    pred, actual : float arrays of shape (n_runs, n_targets)

    Returns
    -------
    pearson, spearman : float64 arrays of shape (n_targets,)
    """
    from scipy.stats import rankdata

    pred = pred.astype(np.float64)
    actual = actual.astype(np.float64)
    return pearson_columns(pred, actual), pearson_columns(
        rankdata(pred, axis=0), rankdata(actual, axis=0)
    )
