"""A nearly linear learner for dmdb: batched L2 logistic regression on breast-cancer data.

Used by ``benchmarks/pairs_tabular.py`` and ``tests/test_pairs_tabular.py`` as the
plug-in ``benchmarks.tabular_logreg:train_many`` (run from the repository root).

The experiment is a fixed split of scikit-learn's ``load_breast_cancer`` (569
tumours, 30 features, 2 classes; shipped with scikit-learn, nothing downloads):
``train_test_split(..., test_size=200, stratify=y, random_state=0)`` into
N = 369 training examples and M = 200 targets, the features standardised with
the training split's statistics. It is the split of ``examples/logreg_plugin.py``.

Each run minimises scikit-learn's ``LogisticRegression(C=1.0)`` objective,
``0.5 ||w||² + C Σ_{i∈S} log(1 + exp(-ỹ_i (x_i·w + b)))`` with the intercept b
unpenalised, by Newton's method, many models at once (stacked 31 x 31 Hessians).
Each model stops on its own step size, so its margins depend on its own mask only,
not on which runs share its batch. The objective is strictly convex and Newton is
deterministic, so the seed does not enter: a run is a function of its mask.
"""

from __future__ import annotations

import functools

import numpy as np

from dmdb.trainers import batched

N_TRAIN = 369
N_TARGETS = 200
#: scikit-learn's C: the weight of the data term against 0.5 ||w||².
C = 1.0
MAX_NEWTON = 50
#: A model stops once its Newton step's largest coordinate is below this.
STEP_TOL = 1e-10


@functools.cache
def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train (369, 30), x_targets (200, 30) as float64, y_train (369,), y_targets (200,)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_targets, y_train, y_targets = train_test_split(
        x, y, test_size=N_TARGETS, stratify=y, random_state=0
    )
    scaler = StandardScaler().fit(x_train)
    return scaler.transform(x_train), scaler.transform(x_targets), y_train, y_targets


def rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` computed row by row: a (B, k), b (k, n) -> (B, n)."""
    return np.matmul(a[:, None, :], b)[:, 0]


def fit_logistic(masks: np.ndarray) -> np.ndarray:
    """Newton's method for every mask's L2 logistic regression.

    Parameters
    ----------
    masks : bool array of shape (B, 369)
        Each model's subset; every subset must hold both classes.

    Returns
    -------
    float64 array of shape (B, 31)
        Per model: the 30 feature weights, then the intercept.
    """
    x_train, _, y_train, _ = split()
    design = np.hstack([x_train, np.ones((len(x_train), 1))])  # (N, d)
    d = design.shape[1]
    ridge = np.eye(d)
    ridge[-1, -1] = 0.0  # the intercept is not penalised
    use = masks.astype(np.float64) * C  # (B, N): each example's weight in the data term
    theta = np.zeros((len(masks), d))
    active = np.ones(len(masks), dtype=bool)
    for _ in range(MAX_NEWTON):
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        t, u = theta[idx], use[idx]
        # Stacked (1 x d) products, one per model, so that no model's arithmetic
        # depends on the others in its batch (a plain (b, d) @ (d, N) may block by b).
        p = 1.0 / (1.0 + np.exp(-rows(t, design.T)))  # (b, N): P(class 1)
        grad = rows(u * (p - y_train), design) + t @ ridge  # (b, d)
        curv = u * p * (1.0 - p)
        hess = np.matmul(design.T[None] * curv[:, None, :], design) + ridge  # (b, d, d)
        step = np.linalg.solve(hess, grad[:, :, None])[:, :, 0]
        theta[idx] = t - step
        active[idx] = np.abs(step).max(axis=1) > STEP_TOL
    return theta


@batched(size=256)
def train_many(masks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Train one logistic regression per mask; return the margins on the targets.

    Parameters
    ----------
    masks : bool array of shape (B, 369)
    seeds : int64 array of shape (B,)
        Unused: the solve is exact and deterministic (see the module docstring).

    Returns
    -------
    float64 array of shape (B, 200)
        The correct-class logit minus the other class's logit, per target: the
        signed decision function, positive exactly when the model is right.
    """
    _, x_targets, y_train, y_targets = split()
    masks = np.asarray(masks, dtype=bool)
    sign = np.where(y_targets == 1, 1.0, -1.0)
    out = np.empty((len(masks), N_TARGETS))
    n_pos = masks.astype(np.int64) @ (y_train == 1)  # (bool @ bool would be a bool)
    both = (n_pos > 0) & (n_pos < masks.sum(axis=1))
    if both.any():
        theta = fit_logistic(masks[both])
        out[both] = (rows(theta[:, :-1], x_targets.T) + theta[:, -1:]) * sign
    for row in np.flatnonzero(~both):
        # One class (or none) in the subset: predict that class with a fixed margin, as
        # examples/logreg_plugin.py does (the intercept would diverge).
        only = y_train[masks[row]][0] if masks[row].any() else 0
        out[row] = np.where(y_targets == only, 1.0, -1.0)
    return out


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    margins = train_many(rng.random((5, N_TRAIN)) < 0.5, np.arange(5))
    print("per-model target accuracy:", (margins > 0).mean(axis=1).round(3))
