"""The default trainer for built-in datasets: a small MLP, many models at once.

The recipe
----------
An MLP ``D -> hidden -> n_classes`` with one ReLU layer, PyTorch's default
``nn.Linear`` initialisation, cross-entropy loss, SGD with momentum 0.9 and
minibatches of 32 examples, and a learning rate that decays linearly from
``lr`` to 0 over the model's own number of steps. On digits the default is
``lr=0.1`` for 20 epochs: datamodel quality (LDS, measured in the README)
depends on how fully training converges (constant lr: 0.55, 10 epochs: 0.80
only with >10k runs, 20 epochs: 0.81 with 4k fit runs).

Every model has its own subset (mask), its own initialisation and its own
minibatch order, both drawn from a ``torch.Generator`` seeded with the run's
seed: first the four parameter tensors (in ``nn.Linear`` order), then one
``randperm`` of the model's subset per epoch. An epoch visits each example of
the subset once; the last minibatch of an epoch is smaller when the subset
size is not a multiple of the batch size, exactly like a ``DataLoader`` with
``drop_last=False``.

Two implementations of the same recipe
--------------------------------------
:class:`BatchedMLPTrainer` trains a chunk of ``batch_models`` models as one
computation over a leading model dimension, with a hand-written forward and
backward pass (``baddbmm``/``bmm``; no autograd). Subsets of different sizes
(Bernoulli masks) are handled by giving every model its own stream of
minibatch indices, padded with zero-weight rows: all epochs of a model are
laid end to end, so padding only happens after a model's last real step,
where its learning rate is 0 and its parameters no longer change.

:func:`train_one_reference` is the plain one-model-at-a-time loop
(``nn.Sequential`` + ``torch.optim.SGD``) with the same initialisation and
minibatch order. It is the oracle for tests and the baseline of
``benchmarks/train.py``. The two agree to float32 rounding, amplified by
training (typically margins within ~1e-3 after a few epochs).

Determinism
-----------
On the CPU a model's result depends only on (mask, seed), the options and
the torch build: not on which other models share its chunk, on its position
in the chunk, on the chunk size, nor on the thread count. Every model's
arithmetic is a separate matrix in each batched matmul, padding steps leave
its parameters untouched, and a chunk of a single model is padded with a
dummy model because torch's threaded ``bmm`` rounds a batch of one matrix
differently (measured with torch 2.13; tests check bit-for-bit equality).
On a GPU, results are repeatable for the same chunk, but cuBLAS may choose
kernels by batch size, so they can differ in the last bits across chunk
compositions, and they differ from the CPU's in rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dmdb.datasets import DATASETS, Dataset, load_dataset
from dmdb.devices import torch_threads
from dmdb.errors import TrainerError, UsageError
from dmdb.trainers.base import Trainer, TrainResult, check_runs, margins_from_logits
from dmdb.trainers.options import TrainerRequest, options_from_dict

__all__ = [
    "mlp_trainer",
    "MLPOptions",
    "BatchedMLPTrainer",
    "ReferenceMLPTrainer",
    "train_one_reference",
    "init_params",
    "minibatch_order",
]


@dataclass(frozen=True)
class MLPOptions:
    """Options of the MLP recipe (``--set key=value`` on the CLI).

    Attributes
    ----------
    epochs : int
        Passes over each model's own subset.
    lr : float
        Peak learning rate; it decays linearly to 0 over training.
    hidden : int
        Width of the hidden layer.
    batch_size : int
        Examples per minibatch.
    momentum : float
        SGD momentum.
    batch_models : int
        Models trained together in one chunk. 50-100 keep a chunk's working
        set in cache; much larger chunks are slower.
    n_threads : int or None
        torch intra-op threads during training; None leaves torch's setting.
    """

    epochs: int = 20
    lr: float = 0.1
    hidden: int = 128
    batch_size: int = 32
    momentum: float = 0.9
    batch_models: int = 64
    n_threads: int | None = None

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> MLPOptions:
        """Build options from a mapping, converting strings from the command line.

        Raises
        ------
        UsageError
            On an unknown key or a value out of range.
        """
        return options_from_dict(cls, options, trainer="mlp")

    def validate(self) -> None:
        """Raise UsageError if a value is out of range."""
        if self.epochs < 1 or self.hidden < 1 or self.batch_size < 1 or self.batch_models < 1:
            raise UsageError("epochs, hidden, batch_size and batch_models must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise UsageError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.n_threads is not None and self.n_threads < 1:
            raise UsageError(f"n_threads must be >= 1, got {self.n_threads}")


# --------------------------------------------------------------------------- #
# What both implementations share: the per-model random draws.


def model_generator(seed: int) -> torch.Generator:
    """The CPU generator all of a model's random draws come from."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def init_params(
    gen: torch.Generator, n_features: int, hidden: int, n_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one model's initial parameters in ``nn.Linear`` layout.

    Uses ``nn.Linear``'s default distribution, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for weights and biases, drawn from ``gen`` so that it depends on the seed only.

    Returns
    -------
    w1 : float32 tensor of shape (hidden, n_features)
    b1 : float32 tensor of shape (hidden,)
    w2 : float32 tensor of shape (n_classes, hidden)
    b2 : float32 tensor of shape (n_classes,)
    """
    b_in = 1.0 / math.sqrt(n_features)
    b_hid = 1.0 / math.sqrt(hidden)
    w1 = torch.empty(hidden, n_features).uniform_(-b_in, b_in, generator=gen)
    b1 = torch.empty(hidden).uniform_(-b_in, b_in, generator=gen)
    w2 = torch.empty(n_classes, hidden).uniform_(-b_hid, b_hid, generator=gen)
    b2 = torch.empty(n_classes).uniform_(-b_hid, b_hid, generator=gen)
    return w1, b1, w2, b2


def minibatch_order(gen: torch.Generator, subset: np.ndarray, epochs: int) -> np.ndarray:
    """The training-set indices one model visits, all epochs end to end.

    Parameters
    ----------
    gen : torch.Generator
        The model's generator, after :func:`init_params`.
    subset : int64 array of shape (n_sub,)
        Training-set indices of the model's subset, ascending.
    epochs : int

    Returns
    -------
    int64 array of shape (epochs * n_sub,)
        Epoch e's order is ``subset[randperm(n_sub)]``.
    """
    n_sub = len(subset)
    if n_sub == 0:
        return np.zeros(0, dtype=np.int64)
    perms = [torch.randperm(n_sub, generator=gen).numpy() for _ in range(epochs)]
    return subset[np.concatenate(perms)]


def steps_per_epoch(n_sub: int, batch_size: int) -> int:
    """Minibatches per epoch for a subset of ``n_sub`` examples (last one partial)."""
    return -(-n_sub // batch_size)


def _linear_decay(lr: float, step: int, total: int) -> float:
    # lr at step t (0-based) of T: lr * (1 - t / T), so the last step uses lr / T.
    return lr * (1.0 - step / total)


# --------------------------------------------------------------------------- #
# The one-at-a-time reference.


def train_one_reference(
    dataset: Dataset,
    mask: np.ndarray,
    seed: int,
    options: MLPOptions | None = None,
    device: torch.device | None = None,
) -> tuple[np.ndarray, float]:
    """Train one model with an ordinary PyTorch loop; the batched trainer's oracle.

    Parameters
    ----------
    dataset : Dataset
    mask : bool array of shape (n_train,)
    seed : int
    options : MLPOptions, optional
        Only epochs, lr, hidden, batch_size and momentum are used.
    device : torch.device, optional
        Defaults to the CPU.

    Returns
    -------
    margins : float32 array of shape (n_targets,)
    train_acc : float
        Accuracy on the model's own subset; NaN for an empty subset.
    """
    opts = options or MLPOptions()
    device = device or torch.device("cpu")
    gen = model_generator(seed)
    w1, b1, w2, b2 = init_params(gen, dataset.n_features, opts.hidden, dataset.n_classes)
    model = nn.Sequential(
        nn.Linear(dataset.n_features, opts.hidden),
        nn.ReLU(),
        nn.Linear(opts.hidden, dataset.n_classes),
    )
    with torch.no_grad():
        for param, value in zip(model.parameters(), (w1, b1, w2, b2), strict=True):
            param.copy_(value)
    model.to(device)
    subset = np.flatnonzero(mask)
    order = torch.from_numpy(minibatch_order(gen, subset, opts.epochs)).to(device)
    x_train = torch.from_numpy(dataset.x_train).to(device)
    y_train = torch.from_numpy(dataset.y_train).to(device)

    n_sub, bs = len(subset), opts.batch_size
    per_epoch = steps_per_epoch(n_sub, bs)
    total = opts.epochs * per_epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=opts.momentum)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: _linear_decay(1.0, t, total) if total else 0.0
    )
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(opts.epochs):
        epoch_idx = order[epoch * n_sub : (epoch + 1) * n_sub]
        for k in range(per_epoch):
            idx = epoch_idx[k * bs : (k + 1) * bs]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            schedule.step()

    with torch.no_grad():
        x_targets = torch.from_numpy(dataset.x_targets).to(device)
        y_targets = torch.from_numpy(dataset.y_targets).to(device)
        margins = margins_from_logits(model(x_targets), y_targets)
        if n_sub:
            sub = torch.from_numpy(subset).to(device)
            pred = model(x_train[sub]).argmax(dim=1)
            train_acc = float((pred == y_train[sub]).double().mean())
        else:
            train_acc = float("nan")
    return margins.cpu().numpy().astype(np.float32), train_acc


class ReferenceMLPTrainer:
    """The MLP recipe trained one model at a time (slow; for checks and benchmarks).

    Parameters
    ----------
    dataset : Dataset
    device : torch.device
    options : MLPOptions, optional
    preferred_batch : int
        Runs per :meth:`train` call; they are trained one after another.
    """

    def __init__(
        self, dataset: Dataset, device: torch.device, options: MLPOptions | None = None,
        preferred_batch: int = 1,
    ) -> None:
        self.name = "mlp-reference"
        self.preferred_batch = preferred_batch
        self.dataset = dataset
        self.device = device
        self.options = options or MLPOptions()
        self.n_train = dataset.n_train
        self.n_targets = dataset.n_targets

    def train(self, masks: np.ndarray, seeds: np.ndarray) -> TrainResult:
        """Train one model per run; see :meth:`dmdb.trainers.base.Trainer.train`."""
        masks, seeds = check_runs(masks, seeds, self.n_train)
        result = TrainResult(
            margins=np.empty((len(seeds), self.n_targets), dtype=np.float32),
            train_acc=np.empty(len(seeds), dtype=np.float64),
        )
        with torch_threads(self.options.n_threads):
            for b, (mask, seed) in enumerate(zip(masks, seeds, strict=True)):
                result.margins[b], result.train_acc[b] = train_one_reference(
                    self.dataset, mask, int(seed), self.options, self.device
                )
        return result


# --------------------------------------------------------------------------- #
# The batched trainer.




@dataclass
class _Chunk:
    """Per-step tables of one chunk of B models; T = longest model's step count.

    idx : int64 (T, B * batch_size): training rows of each step (padding -> row 0).
    row_weight : float32 (T, B, 1, batch_size): 1 / (rows in that minibatch), 0 for padding.
    neg_lr : float32 (T, B, 1, 1): minus each model's learning rate; 0 after its last step.
    """

    idx: torch.Tensor
    row_weight: torch.Tensor
    neg_lr: torch.Tensor


@dataclass
class _Params:
    """Parameters of a chunk of B models.

    w1 : (B, D + 1, hidden): first layer, its bias as the last row (inputs carry a 1).
    w2t : (B, n_classes, hidden): second layer, transposed.
    b2 : (B, n_classes, 1): second layer's bias.
    """

    w1: torch.Tensor
    w2t: torch.Tensor
    b2: torch.Tensor


# The aten kernel behind ReLU's autograd backward, with an out= argument.
_relu_backward = torch.ops.aten.threshold_backward.grad_input


class BatchedMLPTrainer:
    """Train many MLPs at once with a hand-written batched forward/backward pass.

    Parameters
    ----------
    dataset : Dataset
        Training set and targets.
    device : torch.device
        Where the arithmetic runs ('cpu' or a CUDA device).
    options : MLPOptions, optional
        The recipe; defaults to ``MLPOptions()``.

    Attributes
    ----------
    name : str
        ``'mlp'``.
    n_train, n_targets : int
    preferred_batch : int
        ``options.batch_models``.
    """

    def __init__(
        self, dataset: Dataset, device: torch.device, options: MLPOptions | None = None
    ) -> None:
        self.name = "mlp"
        self.dataset = dataset
        self.device = device
        self.options = options or MLPOptions()
        self.n_train = dataset.n_train
        self.n_targets = dataset.n_targets
        self.preferred_batch = self.options.batch_models
        # A column of ones folds the first layer's bias into its weight matrix, so one
        # baddbmm_ updates the weight and bias momenta together.
        x = np.hstack([dataset.x_train, np.ones((dataset.n_train, 1), np.float32)])
        self._x = torch.from_numpy(x).to(device)
        self._onehot = torch.eye(dataset.n_classes, device=device)[
            torch.from_numpy(dataset.y_train).to(device)
        ]
        self._y = torch.from_numpy(dataset.y_train).to(device)
        xt = np.hstack([dataset.x_targets, np.ones((dataset.n_targets, 1), np.float32)])
        self._xt = torch.from_numpy(xt).to(device)
        self._yt = torch.from_numpy(dataset.y_targets).to(device)

    def train(self, masks: np.ndarray, seeds: np.ndarray) -> TrainResult:
        """Train one model per run; see :meth:`dmdb.trainers.base.Trainer.train`.

        Parameters
        ----------
        masks : bool array of shape (B, n_train)
        seeds : int64 array of shape (B,)

        Returns
        -------
        TrainResult
            margins float32 (B, n_targets), train_acc float64 (B,) on each
            model's own subset (NaN for an empty subset).
        """
        masks, seeds = check_runs(masks, seeds, self.n_train)
        n = len(seeds)
        margins = np.empty((n, self.n_targets), dtype=np.float32)
        train_acc = np.empty(n, dtype=np.float64)
        step = self.options.batch_models
        with torch_threads(self.options.n_threads), torch.no_grad():
            for start in range(0, n, step):
                stop = min(start + step, n)
                chunk_masks, chunk_seeds = masks[start:stop], seeds[start:stop]
                if stop - start == 1:
                    # torch's multi-threaded bmm takes another code path for a batch of
                    # one matrix, with other rounding; a dummy second model (empty
                    # subset, never trained) keeps results independent of chunking.
                    chunk_masks = np.vstack([chunk_masks, np.zeros_like(chunk_masks)])
                    chunk_seeds = np.append(chunk_seeds, 0)
                chunk_margins, chunk_acc = self._train_chunk(chunk_masks, chunk_seeds)
                margins[start:stop] = chunk_margins[: stop - start]
                train_acc[start:stop] = chunk_acc[: stop - start]
        return TrainResult(margins=margins, train_acc=train_acc)

    def _init_chunk(self, masks: np.ndarray, seeds: np.ndarray) -> tuple[_Params, _Chunk]:
        """Draw each model's parameters and build the chunk's per-step tables."""
        opts = self.options
        d, h, c = self.dataset.n_features, opts.hidden, self.dataset.n_classes
        n_models, bs = len(seeds), opts.batch_size
        w1 = torch.empty(n_models, d + 1, h)
        w2t = torch.empty(n_models, c, h)
        b2 = torch.empty(n_models, c, 1)
        orders, n_subs = [], []
        for b, (mask, seed) in enumerate(zip(masks, seeds, strict=True)):
            gen = model_generator(int(seed))
            lin1_w, lin1_b, lin2_w, lin2_b = init_params(gen, d, h, c)
            w1[b, :d], w1[b, d], w2t[b], b2[b, :, 0] = lin1_w.T, lin1_b, lin2_w, lin2_b
            subset = np.flatnonzero(mask)
            orders.append(minibatch_order(gen, subset, opts.epochs))
            n_subs.append(len(subset))

        per_epoch = [steps_per_epoch(k, bs) for k in n_subs]
        n_steps = max(1, max(p * opts.epochs for p in per_epoch))
        idx = np.zeros((n_steps, n_models, bs), dtype=np.int64)
        weight = np.zeros((n_steps, n_models, bs), dtype=np.float32)
        neg_lr = np.zeros((n_steps, n_models), dtype=np.float32)
        for b, (order, n_sub, p) in enumerate(zip(orders, n_subs, per_epoch, strict=True)):
            if n_sub == 0:
                continue
            # Pad each epoch to a whole number of minibatches, then lay epochs end to end.
            padded = np.full((opts.epochs, p * bs), -1, dtype=np.int64)
            padded[:, :n_sub] = order.reshape(opts.epochs, n_sub)
            padded = padded.reshape(opts.epochs * p, bs)
            valid = padded >= 0
            total = opts.epochs * p
            idx[:total, b] = np.where(valid, padded, 0)
            weight[:total, b] = valid / valid.sum(axis=1, keepdims=True)
            neg_lr[:total, b] = -opts.lr * (1.0 - np.arange(total) / total)
        dev = self.device
        chunk = _Chunk(
            idx=torch.from_numpy(idx.reshape(n_steps, n_models * bs)).to(dev),
            row_weight=torch.from_numpy(weight[:, :, None, :]).to(dev),
            neg_lr=torch.from_numpy(neg_lr[:, :, None, None]).to(dev),
        )
        return _Params(w1.to(dev), w2t.to(dev), b2.to(dev)), chunk

    def _train_chunk(self, masks: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Train one chunk of models; the hot loop, see the module docstring."""
        opts = self.options
        d1, h, c = self.dataset.n_features + 1, opts.hidden, self.dataset.n_classes
        n_models, bs, mom = len(seeds), opts.batch_size, opts.momentum
        p, chunk = self._init_chunk(masks, seeds)
        w1, w2t, b2 = p.w1, p.w2t, p.b2
        v_w1, v_w2t, v_b2 = torch.zeros_like(w1), torch.zeros_like(w2t), torch.zeros_like(b2)

        # Preallocated buffers, so the loop allocates only a few tiny tensors per step.
        # The output layer works on transposed (classes x rows) matrices: with only 10
        # classes, bmm is 2-4x faster in that orientation (measured).
        def buffer(*shape: int) -> torch.Tensor:
            return torch.empty(shape, device=self.device, dtype=torch.float32)

        xb, target = buffer(n_models, bs, d1), buffer(n_models, bs, c)
        hid, d_hid = buffer(n_models, bs, h), buffer(n_models, bs, h)
        prob_t, row_max = buffer(n_models, c, bs), buffer(n_models, 1, bs)
        xb_flat, target_flat, target_t = xb.view(-1, d1), target.view(-1, c), target.transpose(1, 2)
        x, onehot = self._x, self._onehot

        for t in range(chunk.idx.shape[0]):
            rows, row_weight = chunk.idx[t], chunk.row_weight[t]
            # Forward.
            torch.index_select(x, 0, rows, out=xb_flat)
            torch.index_select(onehot, 0, rows, out=target_flat)
            torch.bmm(xb, w1, out=hid)
            hid.relu_()
            torch.baddbmm(b2, w2t, hid.transpose(1, 2), out=prob_t)
            # d(mean cross-entropy)/d(logits) = (softmax - onehot) * row_weight, where
            # row_weight is 1/rows of the minibatch and 0 on padding. Softmax by hand:
            # torch.softmax over a dimension of 10 took ~3x as long as these ops (measured).
            torch.amax(prob_t, dim=1, keepdim=True, out=row_max)
            prob_t.sub_(row_max).exp_()
            prob_t.div_(prob_t.sum(dim=1, keepdim=True).div_(row_weight))
            grad_t = prob_t.sub_(target_t * row_weight)
            # Backward, with the momentum update v = mom * v + grad fused into the products.
            v_w2t.baddbmm_(grad_t, hid, beta=mom)
            v_b2.mul_(mom).add_(grad_t.sum(dim=2, keepdim=True))
            torch.bmm(grad_t.transpose(1, 2), w2t, out=d_hid)
            # ReLU backward; masked_fill_ and where took ~30x as long as this kernel (measured).
            _relu_backward(d_hid, hid, 0.0, grad_input=d_hid)
            v_w1.baddbmm_(xb.transpose(1, 2), d_hid, beta=mom)
            # p -= lr_b * v; lr_b is 0 once model b has taken all its steps, freezing it.
            neg_lr = chunk.neg_lr[t]
            w1.addcmul_(v_w1, neg_lr)
            w2t.addcmul_(v_w2t, neg_lr)
            b2.addcmul_(v_b2, neg_lr)

        return self._evaluate(p, masks)

    def _logits(self, p: _Params, x: torch.Tensor) -> torch.Tensor:
        """Logits of every model on shared inputs x (n, D + 1): shape (B, n, C)."""
        hid = torch.matmul(x, p.w1).relu_()
        # contiguous(): argmax and gather over the class dimension of a transposed
        # view were ~10x slower than the copy (measured).
        return torch.baddbmm(p.b2, p.w2t, hid.transpose(1, 2)).transpose(1, 2).contiguous()

    def _evaluate(self, p: _Params, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Margins on the targets, and accuracy on each model's own subset."""
        margins = margins_from_logits(self._logits(p, self._xt), self._yt)
        correct = (self._logits(p, self._x).argmax(dim=2) == self._y).cpu().numpy()
        n_sub = masks.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            train_acc = np.where(n_sub > 0, (correct & masks).sum(axis=1) / n_sub, np.nan)
        return margins.cpu().numpy(), train_acc.astype(np.float64)


# --------------------------------------------------------------------------- #
# The factory: how `dmdb train --trainer mlp` builds one.


def mlp_trainer(request: TrainerRequest) -> Trainer:
    """The factory of trainer ``mlp`` (see :func:`dmdb.trainers.register_trainer`).

    Options are the fields of :class:`MLPOptions`, from settings or the config
    file, and ``impl`` ('batched', the default, or 'loop' for
    :class:`ReferenceMLPTrainer`). ``batch_models`` is the chunk of models
    trained as one computation, and so the runs per call; ``--set
    batch_models=K`` says the same and wins over it.

    Raises
    ------
    TrainerError
        If the experiment has no built-in dataset.
    UsageError
        On an unknown option or a bad value.
    """
    if request.dataset_name not in DATASETS:
        raise TrainerError(
            f"trainer 'mlp' needs a built-in dataset ({', '.join(sorted(DATASETS))}); "
            f"this experiment's dataset is {request.dataset_name!r}"
        )
    opts = request.options
    values = opts.values()
    impl = str(values.pop("impl", "batched"))
    if impl not in ("batched", "loop"):
        raise UsageError(f"option impl={impl!r}; use 'batched' or 'loop'")
    if opts.batch_models is not None and "batch_models" not in opts.settings:
        values["batch_models"] = opts.batch_models
    options = MLPOptions.from_dict(values)
    dataset = load_dataset(request.dataset_name)
    if impl == "loop":
        return ReferenceMLPTrainer(dataset, request.device, options, opts.batch_models or 1)
    return BatchedMLPTrainer(dataset, request.device, options)
