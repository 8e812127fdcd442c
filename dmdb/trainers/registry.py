"""One door for every trainer: a table from trainer name to factory.

A factory is a function ``factory(request: TrainerRequest) -> Trainer``. It
reads its own options from ``request.options`` (settings, config file,
``batch_models``; see :mod:`dmdb.trainers.options`), so the command line
passes every trainer the same things and each trainer says what they mean.

The built-in trainers register at the bottom of this module with
:func:`register_trainer`, the same call another library makes to add its own
(as simonw/llm's built-in models register through the hook its plug-ins
use). A ``package.module:function`` plug-in is entered in the same table,
under its own name, the first time it is named. The default trainer of a
built-in dataset is only a name (:data:`DEFAULT_TRAINERS`) looked up there
like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dmdb.devices import resolve_device
from dmdb.errors import TrainerError, UsageError
from dmdb.trainers.base import Trainer
from dmdb.trainers.mlp import mlp_trainer
from dmdb.trainers.options import TrainerOptions, TrainerRequest
from dmdb.trainers.plugin import plugin_trainer
from dmdb.trainers.recipes import recipe_trainer

__all__ = [
    "BUILTIN_TRAINERS",
    "DEFAULT_TRAINERS",
    "TRAINERS",
    "TrainerFactory",
    "make_trainer",
    "register_trainer",
    "trainer_factory",
]

TrainerFactory = Callable[[TrainerRequest], Trainer]

#: Every trainer dmdb can build, by name (built-ins, registered ones, plug-ins named so far).
TRAINERS: dict[str, TrainerFactory] = {}

#: The trainer ``dmdb train`` uses for each built-in dataset when none is named.
DEFAULT_TRAINERS: dict[str, str] = {"digits": "mlp"}


def register_trainer(name: str, factory: TrainerFactory) -> None:
    """Make ``--trainer NAME`` (and ``make_trainer(NAME, ...)``) build with ``factory``.

    Parameters
    ----------
    name : str
        What users pass to ``--trainer``; recorded as the runs' trainer unless
        the trainer names itself otherwise. A later registration of the same
        name replaces the earlier one.
    factory : callable
        ``factory(request: TrainerRequest) -> Trainer``; it raises
        :class:`~dmdb.errors.UsageError` for options it does not take.
    """
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"a trainer needs a non-empty name, got {name!r}")
    TRAINERS[name] = factory


def trainer_factory(name: str) -> TrainerFactory:
    """The factory registered as ``name``; a ``module:function`` plug-in registers on first use.

    Raises
    ------
    TrainerError
        If no trainer has that name and it is not a plug-in name.
    """
    if name not in TRAINERS and ":" in name:
        register_trainer(name, plugin_trainer)
    try:
        return TRAINERS[name]
    except KeyError:
        known = ", ".join(n for n in TRAINERS if ":" not in n)
        raise TrainerError(
            f"unknown trainer {name!r}; known: {known}, or a plug-in 'package.module:function'"
        ) from None


def _default_trainer(dataset_name: str | None) -> str:
    if dataset_name not in DEFAULT_TRAINERS:
        raise UsageError(
            f"experiment dataset {dataset_name!r} is not built in, so there is no default "
            "trainer; pass --trainer package.module:function (see the plug-in contract)"
        )
    return DEFAULT_TRAINERS[dataset_name]


def make_trainer(
    spec: str | None,
    *,
    dataset_name: str | None,
    n_train: int,
    n_targets: int,
    device: str = "cpu",
    options: Mapping[str, Any] | None = None,
    config: str | None = None,
    batch_models: int | None = None,
) -> Trainer:
    """Build the trainer for an experiment.

    Parameters
    ----------
    spec : str or None
        A registered name (``'mlp'``, ``'cifar10'``, ``'fmow'``, ...) or
        ``'package.module:function'``; None picks the default of the
        experiment's built-in dataset.
    dataset_name : str or None
        The experiment's built-in dataset, or None for user data.
    n_train, n_targets : int
        The experiment's N and M; the trainer must produce exactly these.
    device : str
        'cpu', 'cuda' or 'cuda:K' (plug-ins choose their own device).
    options : mapping, optional
        Trainer settings (``--set key=value``); strings are converted.
        ``mlp`` takes the fields of :class:`dmdb.trainers.mlp.MLPOptions` and
        ``impl`` ('batched' or 'loop'); the recipes take their betons and
        hyperparameters; plug-ins take none.
    config : str, optional
        A JSON or TOML file of further options (``--config``); ``options`` win.
    batch_models : int, optional
        Runs per trainer call (``--batch-models``); for ``mlp`` also the
        number of models trained as one computation.

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
    opts = TrainerOptions.of(options, config=config, batch_models=batch_models)
    name = spec if spec is not None else _default_trainer(dataset_name)
    request = TrainerRequest(name, dataset_name, n_train, n_targets, torch_device, opts)
    trainer = trainer_factory(name)(request)
    if (trainer.n_train, trainer.n_targets) != (n_train, n_targets):
        raise TrainerError(
            f"trainer {trainer.name!r} trains on {trainer.n_train} examples and reports "
            f"{trainer.n_targets} targets, but the experiment has n_train={n_train}, "
            f"n_targets={n_targets}"
        )
    return trainer


# The built-ins, through the same door as anyone else's.
register_trainer("mlp", mlp_trainer)
register_trainer("cifar10", recipe_trainer)
register_trainer("fmow", recipe_trainer)

#: The names registered by dmdb itself.
BUILTIN_TRAINERS: tuple[str, ...] = tuple(TRAINERS)
