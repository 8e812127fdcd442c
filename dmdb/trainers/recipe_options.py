"""The options of the paper's recipes (``cifar10``, ``fmow``): hyperparameters and betons.

Every hyperparameter of Table A.2 of the datamodels paper (Ilyas et al., ICML
2022) is a field of :class:`Cifar10Hyperparameters` or
:class:`FmowHyperparameters`; ``--set key=value`` and the ``--config`` file
override them through the trainers' shared converter
(:func:`dmdb.trainers.options.options_from_dict`). The two beton paths are the
recipe trainer's own options (:data:`BETON_OPTIONS`).

This module needs neither torch nor FFCV, so options are checked before
anything heavy is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dmdb.errors import UsageError
from dmdb.trainers.options import options_from_dict

__all__ = [
    "BETON_OPTIONS",
    "HYPERPARAMETERS",
    "Cifar10Hyperparameters",
    "FmowHyperparameters",
    "RecipeHyperparameters",
    "recipe_hyperparameters",
]

#: The recipe trainer's own options besides the hyperparameters: the two FFCV betons.
BETON_OPTIONS = ("train_beton", "targets_beton")

_ORDERS = ("random", "quasi_random")


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


@dataclass(kw_only=True)
class RecipeHyperparameters:
    """Fields shared by the recipes; see :class:`Cifar10Hyperparameters` for their meaning."""

    epochs: int
    lr: float
    batch_size: int
    peak_epoch: float
    momentum: float
    weight_decay: float
    label_smoothing: float
    width: int
    num_classes: int
    flip: bool = True
    test_flip: bool = True
    mixed_precision: bool = True
    eval_batch_size: int = 512
    num_workers: int = field(default_factory=_default_workers)
    order: str = "random"
    os_cache: bool = True
    drop_last: bool = True

    def validate(self) -> None:
        """Raise :class:`UsageError` naming the first out-of-range value."""
        positive_ints = ("epochs", "batch_size", "width", "eval_batch_size", "num_workers")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 2:
            raise UsageError(f"num_classes must be >= 2, got {self.num_classes}")
        if not self.lr > 0:
            raise UsageError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.peak_epoch <= self.epochs:
            raise UsageError(f"peak_epoch={self.peak_epoch} must lie in [0, epochs={self.epochs}]; "
                             "when lowering epochs, set peak_epoch too")
        if not 0 <= self.momentum < 1:
            raise UsageError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise UsageError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.order not in _ORDERS:
            raise UsageError(f"order must be one of {', '.join(_ORDERS)}, got {self.order!r}")


@dataclass(kw_only=True)
class Cifar10Hyperparameters(RecipeHyperparameters):
    """The ``cifar10`` recipe (paper Table A.2; FFCV's CIFAR-10 example).

    Attributes
    ----------
    epochs, lr, batch_size : int, float, int
        24, 0.5, 512.
    peak_epoch : float
        The learning rate rises linearly from 0 to ``lr`` until this epoch,
        then falls linearly to 0 at the end (updated every step): 5.
    momentum, weight_decay, label_smoothing : float
        0.9, 5e-4, 0.1 (SGD without Nesterov; decay on every parameter).
    width : int
        Channels of ResNet-9's first block: 64.
    num_classes : int
        10; every label in the betons must be below it.
    flip, translate_pad, cutout : bool, int, int
        Training augmentation: random horizontal flip, random translation by
        up to ``translate_pad`` pixels (filled with the mean colour), and an
        ``cutout`` x ``cutout`` square of mean colour; 0 disables either.
    test_flip : bool
        Average the logits of each target and its mirror image.
    mixed_precision : bool
        float16 autocast with a gradient scaler; applies on CUDA only.
    eval_batch_size : int
        Batch size for computing target margins.
    num_workers : int
        FFCV decoding threads (default min(8, cores)). Set 1 for
        reproducible augmentations.
    order : str
        'random' or 'quasi_random' (FFCV's order for datasets larger than
        RAM; use with ``os_cache=False``).
    os_cache : bool
        Let the OS page cache hold the beton (FFCV's default).
    drop_last : bool
        Drop each epoch's last partial batch (ignored when the subset is
        smaller than one batch).
    """

    epochs: int = 24
    lr: float = 0.5
    batch_size: int = 512
    peak_epoch: float = 5
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    width: int = 64
    num_classes: int = 10
    translate_pad: int = 2
    cutout: int = 8

    def validate(self) -> None:
        super().validate()
        for name in ("translate_pad", "cutout"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(kw_only=True)
class FmowHyperparameters(RecipeHyperparameters):
    """The ``fmow`` recipe (paper Table A.2: lr 0.4, batch 512, 15 epochs, peak 6).

    Attributes
    ----------
    epochs, lr, batch_size, peak_epoch : int, float, int, float
        15, 0.4, 512, 6.
    momentum, weight_decay : float
        0.9, 1e-3.
    label_smoothing : float
        0 (the paper gives none for FMoW).
    width : int
        Channels of ResNet-18's first stage: 64.
    num_classes : int
        62 (FMoW's land-use categories).
    resolution : int
        Side of the square network input: 224. Images of any size are
        cropped and resized to it.
    crop_scale_min : float
        Random resized crop keeps between this fraction and all of the image
        area (0.08, as torchvision and FFCV's ImageNet example); 1.0 turns
        the crop off (aspect ratios still vary in [3/4, 4/3]).
    eval_crop_ratio : float
        Targets are centre-cropped to this fraction of their shorter side,
        then resized: 1.0 (FMoW images are already square crops).
    flip, test_flip, mixed_precision, eval_batch_size, num_workers, order,
    os_cache, drop_last
        As in :class:`Cifar10Hyperparameters`; ``eval_batch_size`` is 256.
    """

    epochs: int = 15
    lr: float = 0.4
    batch_size: int = 512
    peak_epoch: float = 6
    momentum: float = 0.9
    weight_decay: float = 1e-3
    label_smoothing: float = 0.0
    width: int = 64
    num_classes: int = 62
    eval_batch_size: int = 256
    resolution: int = 224
    crop_scale_min: float = 0.08
    eval_crop_ratio: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.resolution < 8:
            raise UsageError(f"resolution must be >= 8, got {self.resolution}")
        if not 0 < self.crop_scale_min <= 1:
            raise UsageError(f"crop_scale_min must lie in (0, 1], got {self.crop_scale_min}")
        if not 0 < self.eval_crop_ratio <= 1:
            raise UsageError(f"eval_crop_ratio must lie in (0, 1], got {self.eval_crop_ratio}")


#: Each recipe's hyperparameter class, by recipe name.
HYPERPARAMETERS: dict[str, type[Cifar10Hyperparameters] | type[FmowHyperparameters]] = {
    "cifar10": Cifar10Hyperparameters,
    "fmow": FmowHyperparameters,
}


def recipe_hyperparameters(recipe: str, options: Mapping[str, Any] | None = None
                           ) -> RecipeHyperparameters:
    """Return a recipe's hyperparameters with ``options`` applied and checked.

    Parameters
    ----------
    recipe : {'cifar10', 'fmow'}
    options : mapping, optional
        Hyperparameter overrides; values may be strings (as from
        ``--set key=value``) or typed values (from JSON/TOML). The beton
        paths (:data:`BETON_OPTIONS`) are skipped here.

    Returns
    -------
    Cifar10Hyperparameters or FmowHyperparameters

    Raises
    ------
    UsageError
        On an unknown recipe or key, an unconvertible value or one out of range.
    """
    try:
        cls = HYPERPARAMETERS[recipe]
    except KeyError:
        raise UsageError(f"unknown recipe {recipe!r}; choose one of "
                         f"{', '.join(HYPERPARAMETERS)}") from None
    return options_from_dict(cls, options, trainer=recipe, own=BETON_OPTIONS)
