"""Trainers: what turns (mask, seed) runs into margins, and how to choose one.

Every trainer is built by a factory found by name in one table
(:mod:`dmdb.trainers.registry`); the built-ins register there the way any
other library can, with :func:`register_trainer`.

Built-in names
--------------
``mlp``
    The batched MLP of :mod:`dmdb.trainers.mlp`, for built-in datasets
    (``digits``). Option ``impl=loop`` selects the one-model-at-a-time
    reference implementation of the same recipe.
``cifar10``, ``fmow``
    The paper's recipes (:mod:`dmdb.trainers.recipes`; their options in
    :mod:`dmdb.trainers.recipe_options`, their data in
    :mod:`dmdb.trainers.betons`).
``package.module:function``
    A user plug-in; see :mod:`dmdb.trainers.plugin`.

Every trainer takes the same three kinds of option
(:class:`~dmdb.trainers.options.TrainerOptions`): settings (``--set``), a
config file (``--config``) and ``batch_models`` (``--batch-models``).
"""

from __future__ import annotations

from dmdb.trainers.base import PartialTrainError, Trainer, TrainResult
from dmdb.trainers.options import TrainerOptions, TrainerRequest
from dmdb.trainers.plugin import batched
from dmdb.trainers.registry import (
    BUILTIN_TRAINERS,
    DEFAULT_TRAINERS,
    TRAINERS,
    TrainerFactory,
    make_trainer,
    register_trainer,
)

__all__ = [
    "make_trainer",
    "register_trainer",
    "batched",
    "Trainer",
    "TrainerFactory",
    "TrainerOptions",
    "TrainerRequest",
    "TrainResult",
    "PartialTrainError",
    "DEFAULT_TRAINERS",
    "BUILTIN_TRAINERS",
    "TRAINERS",
]
