"""Trainers: what turns (mask, seed) runs into margins, and how to choose one.

Built-in names
--------------
``mlp``
    The batched MLP of :mod:`dmdb.trainers.mlp`, for built-in datasets
    (``digits``). Option ``impl=loop`` selects the one-model-at-a-time
    reference implementation of the same recipe.
``cifar10``, ``fmow``
    The paper's recipes (:mod:`dmdb.trainers.recipes`, imported on demand).
``package.module:function``
    A user plug-in; see :mod:`dmdb.trainers.plugin`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dmdb.datasets import DATASETS, load_dataset
from dmdb.devices import resolve_device
from dmdb.errors import TrainerError, UsageError
from dmdb.trainers.base import PartialTrainError, Trainer, TrainResult
from dmdb.trainers.plugin import PluginTrainer, batched

__all__ = [
    "make_trainer",
    "batched",
    "Trainer",
    "TrainResult",
    "PartialTrainError",
    "DEFAULT_TRAINERS",
    "BUILTIN_TRAINERS",
]

#: The trainer ``dmdb train`` uses for each built-in dataset when none is named.
DEFAULT_TRAINERS: dict[str, str] = {"digits": "mlp"}

#: Names ``make_trainer`` knows besides ``module:function``.
BUILTIN_TRAINERS: tuple[str, ...] = ("mlp", "cifar10", "fmow")


def make_trainer(
    spec: str | None,
    *,
    dataset_name: str | None,
    n_train: int,
    n_targets: int,
    device: str = "cpu",
    options: Mapping[str, Any] | None = None,
) -> Trainer:
    """Build the trainer for an experiment.

    Parameters
    ----------
    spec : str or None
        ``'mlp'``, ``'cifar10'``, ``'fmow'`` or ``'package.module:function'``;
        None picks the default of the experiment's built-in dataset.
    dataset_name : str or None
        The experiment's built-in dataset, or None for user data.
    n_train, n_targets : int
        The experiment's N and M; the trainer must produce exactly these.
    device : str
        'cpu', 'cuda' or 'cuda:K' (plug-ins choose their own device).
    options : mapping, optional
        Trainer options (``--set key=value``); strings are converted.
        ``mlp`` takes the fields of :class:`dmdb.trainers.mlp.MLPOptions` and
        ``impl`` ('batched' or 'loop'); plug-ins take none.

    Returns
    -------
    Trainer

    Raises
    ------
    UsageError
        If ``spec`` is None and the experiment has no built-in dataset, or an
        option is unknown or out of range.
    TrainerError
        On an unknown trainer name, a plug-in that cannot be imported, or a
        trainer whose N or M differs from the experiment's.
    DeviceError
        If the device is not available.
    """
    torch_device = resolve_device(device)
    opts = dict(options or {})
    if spec is None:
        if dataset_name not in DEFAULT_TRAINERS:
            raise UsageError(
                f"experiment dataset {dataset_name!r} is not built in, so there is no default "
                "trainer; pass --trainer package.module:function (see the plug-in contract)"
            )
        spec = DEFAULT_TRAINERS[dataset_name]

    trainer: Trainer
    if ":" in spec:
        if opts:
            raise UsageError(f"plug-in trainer {spec!r} takes no options; got {', '.join(opts)}")
        trainer = PluginTrainer(spec, n_train, n_targets)
    elif spec == "mlp":
        trainer = _make_mlp(dataset_name, torch_device, opts)
    elif spec in ("cifar10", "fmow"):
        try:
            from dmdb.trainers.recipes import make_recipe_trainer
        except ImportError as exc:
            raise TrainerError(f"trainer {spec!r} is not available: {exc}") from exc
        trainer = make_recipe_trainer(spec, n_train, n_targets, torch_device, opts)
    else:
        raise TrainerError(
            f"unknown trainer {spec!r}; known: {', '.join(BUILTIN_TRAINERS)}, "
            "or a plug-in 'package.module:function'"
        )

    if (trainer.n_train, trainer.n_targets) != (n_train, n_targets):
        raise TrainerError(
            f"trainer {trainer.name!r} trains on {trainer.n_train} examples and reports "
            f"{trainer.n_targets} targets, but the experiment has n_train={n_train}, "
            f"n_targets={n_targets}"
        )
    return trainer


def _make_mlp(dataset_name: str | None, device: Any, opts: dict[str, Any]) -> Trainer:
    # Imported here: the MLP pulls in scikit-learn's loader only when used.
    from dmdb.trainers.mlp import BatchedMLPTrainer, MLPOptions, ReferenceMLPTrainer

    if dataset_name not in DATASETS:
        raise TrainerError(
            f"trainer 'mlp' needs a built-in dataset ({', '.join(sorted(DATASETS))}); "
            f"this experiment's dataset is {dataset_name!r}"
        )
    impl = str(opts.pop("impl", "batched"))
    if impl not in ("batched", "loop"):
        raise UsageError(f"option impl={impl!r}; use 'batched' or 'loop'")
    dataset = load_dataset(dataset_name)
    options = MLPOptions.from_dict(opts)
    if impl == "loop":
        return ReferenceMLPTrainer(dataset, device, options)
    return BatchedMLPTrainer(dataset, device, options)
