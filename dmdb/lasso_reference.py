"""The reference path solver: per-target cyclic coordinate descent in numpy float64.

Small and obviously correct, it is the test oracle of the fast solver
(:mod:`dmdb.lasso_solvers`) and takes the same knobs (:class:`~dmdb.lasso_stats.PathSolver`),
honouring each of them the same way:

* ``tol``: a λ is solved once its duality gap is ``<= tol · v`` with
  ``v = ||y_c||²/n`` (scikit-learn's rule), checked after every sweep;
* ``max_iter``: at most that many sweeps per λ (counted in ``n_capped`` when the
  gap is still above tol);
* ``early_stopping`` / ``patience``: a target's path ends once its validation MSE
  has not improved for ``patience`` consecutive λ.

Its defaults are the oracle's (a gap of 1e-10, the whole path); the estimator
always passes its own.

Duality gap (per target, standardised scale). With ``g = c - C w`` (the
correlation of the residual with the features), ``ρ = ||r||²/n = v - cᵀw - wᵀg``,
primal ``P = ½ρ + λ||w||₁`` and the dual point ``s·r`` with
``s = min(1, λ / ||g||∞)``, the gap is ``G = ½(1-s)²ρ + λ||w||₁ - s·wᵀg``, which
certifies ``P - P* ≤ G``. Reported gaps are ``G / v``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from dmdb.lasso_stats import PathResult, StandardProblem, standardize_val

__all__ = ["duality_gap", "lasso_cd", "reference_path"]


def duality_gap(gram: np.ndarray, c: np.ndarray, v: float, lam: float, w: np.ndarray) -> float:
    """Duality gap of one target over ``v = ||y_c||²/n`` (module docstring), in float64.

    Parameters
    ----------
    gram : float64 array of shape (N, N)
        The standardised Gram ``C``.
    c : float64 array of shape (N,)
        The target's correlations.
    v : float
        ``||y_c||² / n``.
    lam : float
    w : float64 array of shape (N,)
        Standardised weights.
    """
    g = c - gram @ w
    rho = v - c @ w - w @ g
    l1 = np.abs(w).sum()
    ginf = np.abs(g).max() if g.size else 0.0
    s = 1.0 if ginf <= lam else lam / ginf
    gap = 0.5 * (1.0 - s) ** 2 * rho + lam * l1 - s * (w @ g)
    return float(gap / v) if v > 0 else 0.0


def lasso_cd(
    gram: np.ndarray,
    c: np.ndarray,
    v: float,
    lam: float,
    w0: np.ndarray | None = None,
    tol: float = 1e-10,
    max_iter: int = 100_000,
) -> tuple[np.ndarray, float, int]:
    """Solve one standardised Lasso by cyclic coordinate descent on the Gram.

    Minimises ``½ wᵀ C w - cᵀw + ½ v + λ||w||₁``.

    Parameters
    ----------
    gram : float64 array of shape (N, N)
    c : float64 array of shape (N,)
    v : float
        ``||y_c||² / n``.
    lam : float
    w0 : array of shape (N,), optional
        Warm start.
    tol : float
        Duality gap to reach, over ``v``.
    max_iter : int
        Most sweeps over the coordinates.

    Returns
    -------
    w : float64 array of shape (N,)
    gap : float
        Final duality gap over ``v``.
    sweeps : int
    """
    w = np.zeros_like(c) if w0 is None else w0.astype(np.float64).copy()
    grad = c - gram @ w  # kept equal to c - C w through every update
    diag = np.diag(gram)
    sweeps = 0
    gap = duality_gap(gram, c, v, lam, w)
    while gap > tol and sweeps < max_iter:
        for j in range(len(w)):
            if diag[j] <= 0.0:
                continue  # a dropped (constant) column
            z = grad[j] + diag[j] * w[j]
            new = math.copysign(max(abs(z) - lam, 0.0), z) / diag[j]
            if new != w[j]:
                grad -= gram[:, j] * (new - w[j])
                w[j] = new
        sweeps += 1
        gap = duality_gap(gram, c, v, lam, w)
    return w, gap, sweeps


def reference_path(
    prob: StandardProblem,
    lambdas: np.ndarray,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    tol: float = 1e-10,
    max_iter: int = 100_000,
    early_stopping: bool = False,
    patience: int = 5,
    progress: Callable[[int], None] | None = None,
    keep_path: bool = False,
) -> PathResult:
    """Each target's λ path by :func:`lasso_cd`, choosing λ by validation MSE.

    Parameters are those of :class:`~dmdb.lasso_stats.PathSolver`; ``prob`` must
    hold the Gram. Every λ starts from the previous λ's solution.

    Returns
    -------
    PathResult
    """
    if prob.gram is None:
        raise ValueError("the reference solver needs the Gram")
    gram = prob.gram.double().cpu().numpy()
    corr = prob.corr.double().cpu().numpy()
    y_var = prob.y_var.double().cpu().numpy()
    xs, yc = standardize_val(prob, x_val, y_val, torch.float64)
    xs_np, yc_np = xs.cpu().numpy(), yc.cpu().numpy()
    n_feat, n_tgt = corr.shape
    n_lam = lambdas.shape[1]
    path = [np.zeros((n_feat, n_tgt)) for _ in range(n_lam)] if keep_path else None
    best_w = np.zeros((n_feat, n_tgt))
    out = PathResult.empty(n_tgt)
    for j in range(n_tgt):
        w = np.zeros(n_feat)
        best_k = 0
        for k in range(n_lam):
            w, gap, sweeps = lasso_cd(gram, corr[:, j], y_var[j], lambdas[j, k], w, tol, max_iter)
            out.n_iter[j] += sweeps
            out.n_capped += int(gap > tol)
            mse = float(np.mean((yc_np[:, j] - xs_np @ w) ** 2))
            if path is not None:
                path[k][:, j] = w
            if mse < out.val_mse[j]:
                out.val_mse[j], out.penalty[j], out.gap[j] = mse, lambdas[j, k], gap
                best_w[:, j] = w
                best_k = k
            # The same end of a path as the fast solver's: the last λ, or no better
            # validation MSE for `patience` λ.
            end = k == n_lam - 1 or (early_stopping and k - best_k >= patience)
            if progress is not None:
                progress(n_lam - k if end else 1)
            if end:
                break
    out.rows, out.cols = np.nonzero(best_w)
    out.vals = best_w[out.rows, out.cols]
    out.path = path
    return out
