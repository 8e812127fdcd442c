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
    pred = pred.astype(np.float64)
    actual = actual.astype(np.float64)
    return pearson_columns(pred, actual), pearson_columns(rank_columns(pred),
                                                          rank_columns(actual))


def rank_columns(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n within each column of a 2-D array, ties given their average rank.

    The same as ``scipy.stats.rankdata(a, axis=0)`` (the tests check it), without
    importing scipy.stats, which costs about a second of every ``dmdb fit``.
    """
    n = a.shape[0]
    order = np.argsort(a, axis=0, kind="stable")
    s = np.take_along_axis(a, order, axis=0)
    pos = np.arange(n, dtype=np.float64)[:, None] * np.ones((1, a.shape[1]))
    starts = np.ones(s.shape, dtype=bool)
    starts[1:] = s[1:] != s[:-1]
    ends = np.ones(s.shape, dtype=bool)
    ends[:-1] = starts[1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0.0), axis=0)
    last = np.minimum.accumulate(np.where(ends, pos, n)[::-1], axis=0)[::-1]
    out = np.empty_like(pos)
    np.put_along_axis(out, order, 0.5 * (first + last) + 1.0, axis=0)
    return out
