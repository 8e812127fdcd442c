"""The contract between dmdb and anything that trains models on subsets.

A trainer receives a batch of runs, each a 0/1 mask over the training set and
a seed, trains one model per run and returns each model's **margin** on every
target: the correct-class logit minus the largest other logit. Target
accuracy is derived by the caller as ``mean(margins > 0)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from dmdb.errors import TrainerError

__all__ = [
    "TrainResult",
    "Trainer",
    "PartialTrainError",
    "margins_from_logits",
    "check_result",
    "check_runs",
]


@dataclass
class TrainResult:
    """What a trainer returns for a batch of B runs.

    Attributes
    ----------
    margins : float32 array of shape (B, n_targets)
        Correct-class margin of each run's model on each target.
    train_acc : float64 array of shape (B,)
        Accuracy of each model on its own training subset; NaN where the
        trainer does not know it.
    """

    margins: np.ndarray
    train_acc: np.ndarray

    def __len__(self) -> int:
        return int(self.margins.shape[0])

    def head(self, n: int) -> TrainResult:
        """The first ``n`` runs (copies)."""
        return TrainResult(margins=self.margins[:n].copy(), train_acc=self.train_acc[:n].copy())


class PartialTrainError(TrainerError):
    """A run failed partway through a batch; the runs before it succeeded.

    Attributes
    ----------
    result : TrainResult
        Validated results of runs ``0 .. failed_index - 1`` of the batch, so
        that the caller can keep them.
    failed_index : int
        Position of the failing run within the batch passed to ``train``.
    reason : str
        What went wrong, without the position (callers add their own).
    """

    def __init__(
        self, message: str, result: TrainResult, failed_index: int, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.result = result
        self.failed_index = failed_index
        self.reason = reason or message


@runtime_checkable
class Trainer(Protocol):
    """Anything that trains one model per (mask, seed) and reports margins.

    Attributes
    ----------
    name : str
        Recorded as the runs' provenance, e.g. ``'mlp'`` or ``'pkg.mod:fn'``.
    n_train : int
        N, the length of every mask.
    n_targets : int
        M, the number of margins per run.
    preferred_batch : int
        How many runs the caller should pass to one :meth:`train` call for
        best throughput (1 for trainers that handle one run at a time).
    """

    name: str
    n_train: int
    n_targets: int
    preferred_batch: int

    def train(self, masks: np.ndarray, seeds: np.ndarray) -> TrainResult:
        """Train one model per run.

        Parameters
        ----------
        masks : bool array of shape (B, n_train)
            ``masks[b, i]`` is True when training example i is in run b's subset.
        seeds : int64 array of shape (B,)
            Run b's model is a deterministic function of ``(masks[b], seeds[b])``.

        Returns
        -------
        TrainResult
            With B rows, in the order of the runs.
        """
        ...


def margins_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Correct-class logit minus the largest other logit.

    Parameters
    ----------
    logits : float tensor of shape (..., n_examples, n_classes)
        Leading dimensions (e.g. one per model) are batched over.
    labels : int64 tensor of shape (n_examples,) or broadcastable to
        ``logits.shape[:-1]``

    Returns
    -------
    float tensor of shape (..., n_examples)
        Positive exactly where the model classifies the example correctly
        (ties count as wrong).
    """
    labels = labels.expand(logits.shape[:-1]).unsqueeze(-1)
    correct = logits.gather(-1, labels)
    # Mask the correct class with -inf so that max() finds the best *other* class.
    others = logits.scatter(-1, labels, float("-inf"))
    return (correct - others.amax(dim=-1, keepdim=True)).squeeze(-1)


def check_runs(masks: np.ndarray, seeds: np.ndarray, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate the input of :meth:`Trainer.train` and normalise its dtypes.

    Parameters
    ----------
    masks : array-like of shape (B, n_train), bool or 0/1
    seeds : array-like of integers, shape (B,)
    n_train : int

    Returns
    -------
    masks : bool array of shape (B, n_train)
    seeds : int64 array of shape (B,)

    Raises
    ------
    TrainerError
        On a wrong shape, a non-0/1 mask or non-integer seeds.
    """
    masks_arr = np.asarray(masks)
    seeds_arr = np.asarray(seeds)
    if masks_arr.ndim != 2 or masks_arr.shape[1] != n_train:
        raise TrainerError(f"masks must have shape (B, {n_train}), got {masks_arr.shape}")
    if seeds_arr.shape != (masks_arr.shape[0],):
        raise TrainerError(f"seeds must have shape ({masks_arr.shape[0]},), got {seeds_arr.shape}")
    if masks_arr.dtype != np.bool_:
        if not np.isin(masks_arr, (0, 1)).all():
            raise TrainerError("masks must contain only 0 and 1")
        masks_arr = masks_arr.astype(np.bool_)
    if not np.issubdtype(seeds_arr.dtype, np.integer):
        raise TrainerError(f"seeds must be integers, got dtype {seeds_arr.dtype}")
    return masks_arr, seeds_arr.astype(np.int64)


def check_result(
    result: TrainResult, n_runs: int, n_targets: int, run_labels: Sequence[object] | None = None
) -> TrainResult:
    """Validate a trainer's output and convert it to the documented dtypes.

    Parameters
    ----------
    result : TrainResult
        As returned by :meth:`Trainer.train`.
    n_runs : int
        B, the number of runs that were asked for.
    n_targets : int
        M, the number of margins each run must have.
    run_labels : sequence of length B, optional
        How to name run b in an error (e.g. its run_id); defaults to the
        index within the batch.

    Returns
    -------
    TrainResult
        With ``margins`` as float32 (B, M) and ``train_acc`` as float64 (B,).

    Raises
    ------
    TrainerError
        Naming the first failing run: wrong shape, non-float dtype, NaN or inf.
    """
    labels = list(run_labels) if run_labels is not None else list(range(n_runs))
    margins = np.asarray(result.margins)
    train_acc = np.asarray(result.train_acc)
    if margins.ndim != 2 or margins.shape != (n_runs, n_targets):
        raise TrainerError(
            f"trainer returned margins of shape {margins.shape}, expected ({n_runs}, {n_targets})"
        )
    if not np.issubdtype(margins.dtype, np.floating):
        raise TrainerError(
            f"trainer returned margins of dtype {margins.dtype}; margins must be floats"
        )
    if train_acc.shape != (n_runs,):
        raise TrainerError(
            f"trainer returned train_acc of shape {train_acc.shape}, expected ({n_runs},)"
        )
    # Check after the conversion: a float64 beyond float32's range becomes inf.
    with np.errstate(over="ignore"):
        margins32 = np.ascontiguousarray(margins, dtype=np.float32)
    finite = np.isfinite(margins32).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise TrainerError(f"run {labels[bad]}: trainer returned NaN or infinite margins")
    return TrainResult(margins=margins32, train_acc=train_acc.astype(np.float64))
