"""User plug-in trainers, named ``package.module:function``.

The plug-in contract
--------------------
Per-run form (the default)::

    def train(mask: np.ndarray, seed: int) -> np.ndarray:
        ...  # mask: bool (n_train,); return margins, float, shape (n_targets,)

Batched form, for functions that train many models at once::

    from dmdb.trainers import batched

    @batched
    def train_many(masks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        ...  # masks: bool (B, n_train), seeds: int64 (B,); return float (B, n_targets)

``@batched`` only sets ``train_many.dmdb_batched = True``; ``@batched(size=256)``
also sets how many runs dmdb passes per call (``dmdb_batch_size``; default 64).

The margin of a target is the correct-class logit minus the largest other
logit, so it is positive exactly when the model is right. Any float dtype,
numpy array, list or CPU torch tensor is accepted and stored as float32;
integers, NaN and infinities are rejected. A run must be a deterministic
function of (mask, seed) for repeats and resume to mean anything.

The module is imported the way ``python -m`` would: the current working
directory comes first on ``sys.path``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, overload

import numpy as np

from dmdb.errors import TrainerError, UsageError
from dmdb.trainers.base import PartialTrainError, TrainResult, check_runs
from dmdb.trainers.options import TrainerRequest

__all__ = ["batched", "load_function", "plugin_trainer", "PluginTrainer", "DEFAULT_BATCH_SIZE"]

F = TypeVar("F", bound=Callable[..., Any])

#: Runs per call of a batched plug-in unless it says otherwise.
DEFAULT_BATCH_SIZE = 64


@overload
def batched(fn: F, *, size: int = ...) -> F: ...
@overload
def batched(fn: None = ..., *, size: int = ...) -> Callable[[F], F]: ...
def batched(fn: F | None = None, *, size: int = DEFAULT_BATCH_SIZE) -> F | Callable[[F], F]:
    """Mark a plug-in as taking a batch of runs: ``fn(masks (B, N), seeds (B,)) -> (B, M)``.

    Use as ``@batched`` or ``@batched(size=256)``; ``size`` is how many runs
    dmdb passes per call.
    """

    def mark(f: F) -> F:
        f.dmdb_batched = True  # type: ignore[attr-defined]
        f.dmdb_batch_size = int(size)  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_function(spec: str) -> Callable[..., Any]:
    """Import the function named by ``'package.module:function'``.

    The current working directory is put first on ``sys.path`` (as
    ``python -m`` does), so a plug-in next to the user's data just works.
    ``function`` may be dotted (``module:Class.method``).

    Raises
    ------
    TrainerError
        ``cannot import 'x.y:f': <reason>``, on one line.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise TrainerError(f"cannot import {spec!r}: a plug-in is named 'package.module:function'")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except BaseException as exc:  # noqa: B036 - a plug-in may even call sys.exit on import
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise TrainerError(f"cannot import {spec!r}: {_one_line(exc)}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TrainerError(
                f"cannot import {spec!r}: {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not callable(obj):
        raise TrainerError(f"cannot import {spec!r}: {attr_path!r} is not callable")
    return obj  # type: ignore[no-any-return]


def _to_array(value: Any) -> np.ndarray:
    # Accept CPU torch tensors (even ones that require grad) without importing torch.
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class PluginTrainer:
    """A :class:`~dmdb.trainers.base.Trainer` that calls a user function.

    Parameters
    ----------
    spec : str
        ``'package.module:function'``.
    n_train, n_targets : int
        The experiment's N and M: each mask has N entries and the function
        must return M margins per run.
    batch_size : int, optional
        Runs per :meth:`train` call, overriding the function's own choice.

    Attributes
    ----------
    name : str
        ``spec``.
    batched : bool
        Whether the function takes a batch of runs (see :func:`batched`).
    preferred_batch : int
        ``batch_size`` if given, else 1 for a per-run function and its
        ``dmdb_batch_size`` for a batched one.
    """

    def __init__(self, spec: str, n_train: int, n_targets: int,
                 batch_size: int | None = None) -> None:
        self.name = spec
        self.fn = load_function(spec)
        self.n_train = n_train
        self.n_targets = n_targets
        self.batched = bool(getattr(self.fn, "dmdb_batched", False))
        own = int(getattr(self.fn, "dmdb_batch_size", DEFAULT_BATCH_SIZE)) if self.batched else 1
        self.preferred_batch = batch_size or own

    def train(self, masks: np.ndarray, seeds: np.ndarray) -> TrainResult:
        """Train one model per run by calling the plug-in.

        Parameters
        ----------
        masks : bool array of shape (B, n_train)
        seeds : int64 array of shape (B,)

        Returns
        -------
        TrainResult
            margins float32 (B, n_targets); train_acc all NaN (plug-ins do
            not report it).

        Raises
        ------
        PartialTrainError
            If the plug-in raises or returns an invalid result for some run;
            ``.result`` holds the runs of the batch before it, already
            validated, and ``.failed_index`` the failing run's position.
        """
        masks, seeds = check_runs(masks, seeds, self.n_train)
        out = TrainResult(
            margins=np.empty((len(seeds), self.n_targets), dtype=np.float32),
            train_acc=np.full(len(seeds), np.nan),
        )
        if self.batched:
            self._train_batched(masks, seeds, out)
        else:
            for b in range(len(seeds)):
                try:
                    # A copy, so a plug-in that edits its mask cannot corrupt the caller's.
                    value = self.fn(masks[b].copy(), int(seeds[b]))
                except Exception as exc:
                    self._fail(out, b, seeds, f"raised {_one_line(exc)}", exc)
                out.margins[b] = self._check_row(_to_array(value), b, seeds, out)
        return out

    def _train_batched(self, masks: np.ndarray, seeds: np.ndarray, out: TrainResult) -> None:
        try:
            value = _to_array(self.fn(masks.copy(), seeds.copy()))
        except Exception as exc:
            self._fail(out, 0, seeds, f"raised {_one_line(exc)}", exc)
        expected = (len(seeds), self.n_targets)
        if value.shape != expected:
            self._fail(out, 0, seeds, f"returned shape {value.shape}, expected {expected}")
        for b in range(len(seeds)):
            out.margins[b] = self._check_row(value[b], b, seeds, out)

    def _check_row(
        self, value: np.ndarray, b: int, seeds: np.ndarray, out: TrainResult
    ) -> np.ndarray:
        """Validate run b's margins and return them as float32 (n_targets,)."""
        if value.shape != (self.n_targets,):
            self._fail(out, b, seeds, f"returned shape {value.shape}, expected ({self.n_targets},)")
        if not np.issubdtype(value.dtype, np.floating):
            self._fail(out, b, seeds, f"returned dtype {value.dtype}; margins must be floats")
        # Check after the conversion: a float64 beyond float32's range becomes inf.
        with np.errstate(over="ignore"):
            margins = value.astype(np.float32)
        if not np.isfinite(margins).all():
            n_bad = int((~np.isfinite(margins)).sum())
            self._fail(out, b, seeds, f"returned {n_bad} NaN or infinite margin(s)")
        return margins

    def _fail(
        self,
        out: TrainResult,
        b: int,
        seeds: np.ndarray,
        what: str,
        cause: BaseException | None = None,
    ) -> NoReturn:
        message = (
            f"run {b} of the batch (seed {int(seeds[b])}): plug-in {self.name!r} {what}; "
            f"the {b} run(s) before it succeeded"
        )
        raise PartialTrainError(
            message, out.head(b), b, reason=f"plug-in {self.name!r} {what}"
        ) from cause


def plugin_trainer(request: TrainerRequest) -> PluginTrainer:
    """The factory of every ``package.module:function`` trainer.

    A plug-in takes no settings and no config file: its function is the whole
    recipe. ``batch_models`` is the number of runs per call (a batched
    function receives that many at once).

    Raises
    ------
    UsageError
        If settings or a config file are given.
    TrainerError
        If the function cannot be imported.
    """
    opts = request.options
    given = [*opts.settings, *(["config"] if opts.config else [])]
    if given:
        raise UsageError(
            f"plug-in trainer {request.name!r} takes no options; got {', '.join(given)}"
        )
    return PluginTrainer(request.name, request.n_train, request.n_targets, opts.batch_models)
