"""Built-in datasets: a training set and a fixed set of target examples.

Only data that ships with installed packages is used; dmdb never downloads.

``digits``
    scikit-learn's ``load_digits`` (1,797 greyscale 8x8 images of the digits
    0-9), pixel values divided by 16 so that they lie in [0, 1]. The images
    are split once, stratified by class, with
    ``train_test_split(x, y, test_size=500, stratify=y, random_state=0)``
    into N = 1,297 training examples and M = 500 targets. The split is part
    of an experiment's identity, so it must never change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dmdb.errors import UsageError

__all__ = ["Dataset", "DATASETS", "load_dataset"]


# eq=False: comparing arrays field by field would raise, so identity is the only equality.
@dataclass(frozen=True, eq=False)
class Dataset:
    """A training set and the targets whose margins the datamodels predict.

    Attributes
    ----------
    name : str
        The name ``load_dataset`` knows it by.
    x_train : float32 array of shape (n_train, n_features)
    y_train : int64 array of shape (n_train,)
        Class labels in ``0 .. n_classes - 1``.
    x_targets : float32 array of shape (n_targets, n_features)
    y_targets : int64 array of shape (n_targets,)
    n_classes : int
    image_shape : tuple of int or None
        Shape of one example as an image (e.g. ``(8, 8)``), so that a report
        can draw it; None for tabular data.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_targets: np.ndarray
    y_targets: np.ndarray
    n_classes: int
    image_shape: tuple[int, ...] | None

    @property
    def n_train(self) -> int:
        """Number of training examples N."""
        return int(self.x_train.shape[0])

    @property
    def n_targets(self) -> int:
        """Number of targets M."""
        return int(self.x_targets.shape[0])

    @property
    def n_features(self) -> int:
        """Number of input features D."""
        return int(self.x_train.shape[1])


DIGITS_N_TARGETS = 500
DIGITS_SPLIT_SEED = 0


def _load_digits() -> Dataset:
    # Imported here so that `import dmdb` does not pay for scikit-learn.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_targets, y_train, y_targets = train_test_split(
        x, y, test_size=DIGITS_N_TARGETS, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return Dataset(
        name="digits",
        x_train=np.ascontiguousarray(x_train),
        y_train=np.ascontiguousarray(y_train),
        x_targets=np.ascontiguousarray(x_targets),
        y_targets=np.ascontiguousarray(y_targets),
        n_classes=10,
        image_shape=(8, 8),
    )


#: Loader of every built-in dataset, by name.
DATASETS: dict[str, Callable[[], Dataset]] = {"digits": _load_digits}


def load_dataset(name: str) -> Dataset:
    """Load a built-in dataset.

    Parameters
    ----------
    name : str
        One of the keys of :data:`DATASETS` (currently only ``'digits'``).

    Returns
    -------
    Dataset

    Raises
    ------
    UsageError
        If ``name`` is not a built-in dataset.
    """
    try:
        loader = DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise UsageError(f"unknown dataset {name!r}; built-in datasets: {known}") from None
    return loader()


def experiment_kwargs(name: str) -> dict[str, Any]:
    """The arguments of :func:`dmdb.init` that set up an experiment on a built-in dataset."""
    data = load_dataset(name)
    return {
        "dataset": data.name,
        "n_train": data.n_train,
        "n_targets": data.n_targets,
        "train_labels": data.y_train,
        "target_labels": data.y_targets,
        "train_pixels": data.x_train,
        "target_pixels": data.x_targets,
        "config": {"image_shape": list(data.image_shape) if data.image_shape else None},
    }
