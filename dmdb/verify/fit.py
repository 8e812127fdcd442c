"""The fit under test: its datamodels, alpha and trainer, and its brittleness estimates."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from dmdb.catalog import predict_masks, resolve_fit
from dmdb.db import Database
from dmdb.errors import UsageError

_NO_PAIRS = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
             np.zeros(0, np.float32))


@dataclass
class FitUnderTest:
    """What a check needs to know about a fit.

    A second-order fit (migration 0005) adds ``pairs``: the non-zero interaction
    weights phi_ab, so that under the removal protocol the expected margin is
    ``bias + alpha * sum(weights outside R) + alpha**2 * sum(phi of pairs outside R)``.
    A linear fit has no pairs and every method gives exactly the linear results.
    """

    fit_id: int
    alpha: float
    bias: np.ndarray                 # float64 (M,), NaN outside the fit's target range
    weights: sp.csr_matrix           # float32 (M, N), mask space (a pair fit's linear part)
    trainer: str | None              # runs.trainer of the fit's runs (view fit_trainer)
    options: dict[str, Any]          # trainer options recorded in runs.info
    # (target_idx, train_a, train_b, weight): int64 x 3 and float32 arrays of one length,
    # sorted by target_idx (Database.load_interactions); empty for a linear fit
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] = field(
        default=_NO_PAIRS, repr=False)
    _pair_weights: sp.csr_matrix | None = field(default=None, init=False, repr=False)

    @property
    def fitted(self) -> np.ndarray:
        """int array: the targets this fit has a datamodel for."""
        return np.flatnonzero(np.isfinite(self.bias))

    @property
    def has_pairs(self) -> bool:
        return len(self.pairs[3]) > 0

    def _pairs_of(self, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The target's pairs: train_a, train_b (int64) and phi (float64)."""
        t, a, b, phi = self.pairs
        lo, hi = np.searchsorted(t, [target, target + 1])
        return a[lo:hi], b[lo:hi], phi[lo:hi].astype(np.float64)

    def pair_totals(self) -> np.ndarray:
        """float64 (M,): each target's sum of interaction weights (0 for a linear fit)."""
        t, _, _, phi = self.pairs
        return np.bincount(t, weights=phi.astype(np.float64), minlength=len(self.bias))

    def predict(self, masks: np.ndarray) -> np.ndarray:
        """float64 (n, M): the predicted margins for 0/1 masks, pairs included (NaN unfitted)."""
        return predict_masks(self.bias, self.weights, masks,
                             self.pairs if self.has_pairs else None)

    def margin_before(self) -> np.ndarray:
        """float64 (M,): the expected margin with nothing removed."""
        a = self.alpha
        return (self.bias + a * np.asarray(self.weights.sum(axis=1)).ravel()
                + a * a * self.pair_totals())

    def _pair_weight(self) -> sp.csr_matrix:
        """float64 CSR (M, N): per target and example, the sum of phi over its pairs."""
        if self._pair_weights is None:
            t, a, b, phi = self.pairs
            # an example in several pairs: the constructor sums the duplicates
            self._pair_weights = sp.csr_matrix(
                (np.tile(phi.astype(np.float64), 2), (np.tile(t, 2), np.r_[a, b])),
                shape=self.weights.shape)
        return self._pair_weights

    def influence(self, target: int) -> tuple[np.ndarray, np.ndarray]:
        """The target's examples of non-zero influence: train_idx (int64), influence (float64).

        influence = weight + alpha * (sum of phi over the example's pairs), in no
        particular order; alpha times it is the expected margin lost by removing the
        example alone (view ``example_influence``). For a linear fit: the weights.
        """
        row = self.weights.getrow(target)
        if self.has_pairs:
            lo, hi = np.searchsorted(self.pairs[0], [target, target + 1])
            if hi > lo:
                row = (row.astype(np.float64) + self.alpha * self._pair_weight().getrow(target))
                row = sp.csr_matrix(row)
                row.eliminate_zeros()  # influence 0 ranks nowhere (view top_influencers_k)
        return row.indices.astype(np.int64), row.data.astype(np.float64)

    def n_positive(self) -> np.ndarray:
        """int (M,): each target's number of examples with influence > 0."""
        count = np.diff((self.weights > 0).tocsr().indptr)
        for t in np.unique(self.pairs[0]):
            count[t] = int((self.influence(int(t))[1] > 0).sum())
        return count

    def ranked(self, target: int) -> tuple[np.ndarray, np.ndarray]:
        """The target's examples of non-zero influence, largest first (ties: lower train_idx).

        Returns (train_idx int64, influence float64), see :meth:`influence`; for a
        linear fit the influence is the weight, so this is the non-zero weights ranked.
        """
        idx, w = self.influence(target)
        order = np.lexsort((idx, -w))
        return idx[order], w[order]

    def predict_removal(self, target: int, removed: Any) -> float:
        """The target's expected margin with ``removed`` (train_idx, any order) excluded.

        ``bias + alpha * sum(weights outside R) + alpha**2 * sum(phi, pairs outside R)``,
        the protocol expectation of view ``predict_removal``.
        """
        gone = np.zeros(self.weights.shape[1], bool)
        gone[np.asarray(removed, dtype=np.int64)] = True
        row = self.weights.getrow(target)
        kept = row.data.astype(np.float64)[~gone[row.indices]].sum()
        a, b, phi = self._pairs_of(target)
        kept_pairs = phi[~(gone[a] | gone[b])].sum()
        alpha = self.alpha
        return float(self.bias[target] + alpha * kept + alpha * alpha * kept_pairs)


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
                        options if isinstance(options, dict) else {},
                        pairs=db.load_interactions(fid))


# --------------------------------------------------------------------------- #
# Brittleness estimates (the `brittleness` view, or the same in numpy)


def support_sizes(fit: FitUnderTest) -> tuple[np.ndarray, np.ndarray]:
    """Each target's expected margin and the size of its estimated support set.

    The rule of view ``brittleness``: the target's examples of positive influence
    (:meth:`FitUnderTest.ranked`) are removed in order, and the support set is the
    shortest prefix R_k after which the expected margin
    ``margin_before - alpha * sum(weights of R_k)
    - alpha**2 * sum(phi of the pairs with a member in R_k)`` is <= 0; a pair leaves
    at the step of its earlier-ranked member. For a linear fit: the largest positive
    weights, until ``margin_before - alpha * sum(their weights)`` <= 0.

    Returns
    -------
    margin_before : float64 array of shape (M,), NaN for targets outside the fit
    support_size : float64 array of shape (M,); NaN where the target is predicted
        wrong already (margin_before <= 0), cannot be flipped, or was not fitted
    """
    before = fit.margin_before()
    size = np.full(len(before), np.nan)
    alpha = fit.alpha
    for t in fit.fitted:
        if not before[t] > 0:
            continue
        idx, infl = fit.ranked(int(t))
        idx, infl = idx[infl > 0], infl[infl > 0]
        if not fit.has_pairs:  # influence = weight: the linear rule, bit for bit
            after = before[t] - alpha * np.cumsum(infl)
        else:
            after = (before[t] - alpha * np.cumsum(_row_values(fit.weights, int(t), idx))
                     - alpha * alpha * np.cumsum(_pair_steps(fit, int(t), idx)))
        hit = np.flatnonzero(after <= 0)
        if len(hit):
            size[t] = hit[0] + 1
    return before, size


def _row_values(matrix: sp.csr_matrix, row: int, idx: np.ndarray) -> np.ndarray:
    """float64 values of ``matrix[row, idx]`` (0 where not stored)."""
    r = matrix.getrow(row)
    r.sum_duplicates()  # sorted, unique indices
    if not len(r.indices):
        return np.zeros(len(idx))
    pos = np.minimum(np.searchsorted(r.indices, idx), len(r.indices) - 1)
    return np.where(r.indices[pos] == idx, r.data[pos].astype(np.float64), 0.0)


def _pair_steps(fit: FitUnderTest, target: int, order: np.ndarray) -> np.ndarray:
    """float64 (len(order),): the phi leaving at each step of removing ``order`` in turn.

    A pair leaves at the step of its earlier-ranked member; a pair with neither
    member in ``order`` never leaves.
    """
    a, b, phi = fit._pairs_of(target)
    n = len(order)
    if n == 0:
        return np.zeros(0)
    sorted_idx = np.argsort(order)
    keys = order[sorted_idx]

    def step(members: np.ndarray) -> np.ndarray:
        """Each member's position in ``order``; n where it is not there."""
        pos = np.minimum(np.searchsorted(keys, members), n - 1)
        return np.where(keys[pos] == members, sorted_idx[pos], n)

    first = np.minimum(step(a), step(b))
    leaves = first < n
    return np.bincount(first[leaves], weights=phi[leaves], minlength=n)


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
