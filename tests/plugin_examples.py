"""Plug-in trainers used by tests/test_trainers.py, named 'tests.plugin_examples:<fn>'.

Each trains a real (if tiny) model on the digits split: a nearest-class-mean
classifier, whose logits are minus the squared distances to the class means
of the run's subset. Seeds perturb the means slightly so that they matter.
The ``bad_*`` functions break the contract for one seed.
"""

from __future__ import annotations

import functools

import numpy as np

from dmdb.datasets import Dataset, load_dataset
from dmdb.trainers import batched


@functools.cache
def digits() -> Dataset:
    return load_dataset("digits")


def _logits(mask: np.ndarray, seed: int) -> np.ndarray:
    data = digits()
    rng = np.random.default_rng(seed)
    x, y = data.x_train[mask], data.y_train[mask]
    means = np.zeros((data.n_classes, x.shape[1]))
    for k in range(data.n_classes):
        if (y == k).any():
            means[k] = x[y == k].mean(axis=0)
    means += 0.01 * rng.standard_normal(means.shape)
    dist = ((data.x_targets[:, None, :] - means[None]) ** 2).sum(axis=2)
    return -dist  # (n_targets, n_classes), float64


def _margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rows = np.arange(len(labels))
    correct = logits[rows, labels]
    others = logits.copy()
    others[rows, labels] = -np.inf
    return correct - others.max(axis=1)


def centroid(mask: np.ndarray, seed: int) -> np.ndarray:
    """Per-run form; returns float64 margins, which dmdb stores as float32."""
    return _margins(_logits(mask, seed), digits().y_targets)


@batched(size=3)
def centroid_batched(masks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Batched form: (B, N) masks and (B,) seeds -> (B, M) float32 margins."""
    return np.stack([centroid(m, int(s)) for m, s in zip(masks, seeds, strict=True)]).astype(
        np.float32
    )


def centroid_as_list(mask: np.ndarray, seed: int) -> list[float]:
    """Any array-like of floats is accepted."""
    return [float(v) for v in centroid(mask, seed)]


def bad_nan_for_seed_2(mask: np.ndarray, seed: int) -> np.ndarray:
    out = centroid(mask, seed)
    if seed == 2:
        out[7] = np.nan
    return out


def bad_shape_for_seed_2(mask: np.ndarray, seed: int) -> np.ndarray:
    out = centroid(mask, seed)
    return out[:-1] if seed == 2 else out


def bad_int_dtype(mask: np.ndarray, seed: int) -> np.ndarray:
    return (centroid(mask, seed) > 0).astype(np.int64)


def bad_overflow_for_seed_2(mask: np.ndarray, seed: int) -> np.ndarray:
    out = centroid(mask, seed)
    if seed == 2:
        out[0] = 1e300  # finite in float64, inf in float32
    return out


def bad_raises_for_seed_2(mask: np.ndarray, seed: int) -> np.ndarray:
    if seed == 2:
        raise RuntimeError("out of memory\n(pretend)")
    return centroid(mask, seed)


@batched
def bad_batched_nan_row_1(masks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    out = np.stack([centroid(m, int(s)) for m, s in zip(masks, seeds, strict=True)])
    out[1, 0] = np.inf
    return out


@batched
def bad_batched_shape(masks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    return np.zeros((len(seeds), 3))


def mutates_mask(mask: np.ndarray, seed: int) -> np.ndarray:
    mask[:] = False
    return centroid(~mask, seed)


NOT_CALLABLE = 3
