"""A complete dmdb plug-in: logistic regression on scikit-learn's breast-cancer data.

The experiment's training set and targets are a fixed split of
``load_breast_cancer`` (569 tumours, 30 features, 2 classes): 369 training
examples and 200 targets. Each run fits a ``LogisticRegression`` on the
run's subset and returns its margin on every target.

Use it from the directory that contains ``examples/``::

    dmdb init bc.duckdb --train-size 369 --targets 200
    dmdb train bc.duckdb --trainer examples.logreg_plugin:train --alpha 0.5 --runs 2000

or from Python::

    from dmdb.trainers import make_trainer
    trainer = make_trainer("examples.logreg_plugin:train", dataset_name=None,
                           n_train=369, n_targets=200)
    result = trainer.train(masks, seeds)   # masks bool (B, 369), seeds int64 (B,)
"""

from __future__ import annotations

import functools

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

N_TRAIN = 369
N_TARGETS = 200


@functools.cache
def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed split: x_train (369, 30), x_targets (200, 30), y_train, y_targets.

    Features are standardised with statistics of the training split only.
    """
    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_targets, y_train, y_targets = train_test_split(
        x, y, test_size=N_TARGETS, stratify=y, random_state=0
    )
    scaler = StandardScaler().fit(x_train)
    return scaler.transform(x_train), scaler.transform(x_targets), y_train, y_targets


def train(mask: np.ndarray, seed: int) -> np.ndarray:
    """Train on the subset ``mask`` and return the margins on the targets.

    Parameters
    ----------
    mask : bool array of shape (369,)
        Which training examples this run may use.
    seed : int
        Seeds the solver (lbfgs is deterministic, so it barely matters here).

    Returns
    -------
    float32 array of shape (200,)
        Correct-class logit minus the other class's logit, per target.
    """
    x_train, x_targets, y_train, y_targets = split()
    x, y = x_train[mask], y_train[mask]
    if len(np.unique(y)) < 2:
        # A subset with one class: the model predicts that class with a fixed margin.
        only = y[0] if len(y) else 0
        return np.where(y_targets == only, 1.0, -1.0).astype(np.float32)
    model = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(x, y)
    score = model.decision_function(x_targets)  # logit(class 1) - logit(class 0)
    return np.where(y_targets == 1, score, -score).astype(np.float32)


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    masks = rng.random((5, N_TRAIN)) < 0.5
    margins = np.stack([train(m, s) for s, m in enumerate(masks)])
    print("per-model target accuracy:", (margins > 0).mean(axis=1).round(3))
