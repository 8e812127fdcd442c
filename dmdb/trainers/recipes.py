"""The paper's GPU training recipes (CIFAR-10 and FMoW) as dmdb trainers.

Each recipe trains one network per run on the run's subset of a training set
stored as an FFCV ``.beton`` file, and reports the model's correct-class
margin on every example of a targets beton (see :mod:`dmdb.trainers.betons` to
write them). The hyperparameters follow the datamodels paper (Ilyas et al., ICML
2022, Table A.2):

``cifar10``
    ResNet-9, SGD lr 0.5, batch 512, 24 epochs, a triangular learning rate
    peaking at epoch 5, momentum 0.9, weight decay 5e-4, label smoothing 0.1,
    random flip + translate (pad 2) + 8x8 cutout, flip test-time
    augmentation.
``fmow``
    ResNet-18, SGD lr 0.4, batch 512, 15 epochs, peaking at epoch 6,
    momentum 0.9, weight decay 1e-3, random resized crop + flip, 224x224
    inputs, 62 classes.

Every hyperparameter is a field of :class:`Cifar10Hyperparameters` or
:class:`FmowHyperparameters` (in :mod:`dmdb.trainers.recipe_options`) and can be
overridden through ``options``.

FFCV facts this module works around:

* Building a ``Loader`` recompiles its pipeline (about 1 s) and leaks about
  8.5 MB, so a trainer builds exactly two, once: a training loader that is
  re-aimed at each run's subset and seed (:func:`_retarget`), and a
  sequential targets loader.
* Batches are reused buffers: nothing from a batch is kept without a copy.
* ``Loader`` sets ``torch.set_num_threads`` globally (from its iterator
  thread too); the caller's thread count is restored after each epoch starts.
* FFCV's augmentations draw from Numba's unseeded thread-local generator. A
  wrapped decoder reseeds it at every batch from a hash of the batch's
  indices, which are a function of (mask, seed, epoch); with
  ``num_workers=1`` the augmentations, and on the CPU the whole model, are
  therefore a deterministic function of (mask, seed).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dmdb.errors import InputError, TrainerError, UsageError
from dmdb.trainers.base import TrainResult, check_runs, margins_from_logits
from dmdb.trainers.betons import BetonInfo, read_beton_info, require_ffcv
from dmdb.trainers.options import TrainerOptions, TrainerRequest
from dmdb.trainers.options import load_config as load_config
from dmdb.trainers.recipe_options import (
    HYPERPARAMETERS,
    Cifar10Hyperparameters,
    FmowHyperparameters,
    RecipeHyperparameters,
)
from dmdb.trainers.recipe_options import recipe_hyperparameters as recipe_hyperparameters
from dmdb.trainers.resnet import resnet9, resnet18

__all__ = [
    "RECIPES",
    "Cifar10Hyperparameters",
    "FmowHyperparameters",
    "RecipeTrainer",
    "load_config",
    "make_recipe_trainer",
    "recipe_hyperparameters",
    "recipe_trainer",
]

# ----------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class _Recipe:
    hyperparameters: type[Cifar10Hyperparameters] | type[FmowHyperparameters]
    model: Callable[[Any], nn.Module]
    mean: tuple[float, float, float]  # of the 0..255 pixel values, per RGB channel
    std: tuple[float, float, float]
    preferred_batch: int


RECIPES: dict[str, _Recipe] = {
    "cifar10": _Recipe(
        HYPERPARAMETERS["cifar10"],
        lambda hp: resnet9(hp.num_classes, hp.width),
        (125.307, 122.961, 113.8575),
        (51.5865, 50.847, 51.255),
        preferred_batch=8,
    ),
    "fmow": _Recipe(
        HYPERPARAMETERS["fmow"],
        lambda hp: resnet18(hp.num_classes, hp.width),
        # ImageNet statistics, as WILDS uses for FMoW.
        (123.675, 116.28, 103.53),
        (58.395, 57.12, 57.375),
        preferred_batch=2,
    ),
}
"""The recipes by name: hyperparameter class, model, normalisation."""


# ----------------------------------------------------------------------------- FFCV glue


@functools.cache
def _seed_function() -> Callable[[np.ndarray], None]:
    from numba import njit

    @njit(nogil=True)  # type: ignore[untyped-decorator,unused-ignore]
    def seed_from_indices(indices: np.ndarray) -> None:
        # FNV-1a over the batch's sample indices seeds this thread's Numba RNG.
        h = np.uint64(14695981039346656037)
        for k in range(indices.shape[0]):
            h = (h ^ np.uint64(indices[k])) * np.uint64(1099511628211)
        np.random.seed(np.uint32(h >> np.uint64(33)))

    return seed_from_indices  # type: ignore[no-any-return]


@functools.cache
def _seeded(decoder_cls: type) -> type:
    """Subclass an FFCV image decoder so that each batch reseeds Numba's RNG."""
    from ffcv.pipeline.compiler import Compiler

    seed = _seed_function()

    class Seeded(decoder_cls):  # type: ignore[valid-type,misc]
        def generate_code(self) -> Callable[..., Any]:
            inner = Compiler.compile(super().generate_code())

            def decode(batch_indices: Any, destination: Any, metadata: Any,
                       storage_state: Any) -> Any:
                seed(batch_indices)
                return inner(batch_indices, destination, metadata, storage_state)

            return decode

    Seeded.__name__ = f"Seeded{decoder_cls.__name__}"
    return Seeded


def _pipelines(recipe: str, hp: RecipeHyperparameters, device: torch.device, train: bool
               ) -> dict[str, Any]:
    """FFCV pipelines: uint8 NCHW images (+ int64 labels for training) on ``device``."""
    from ffcv.fields.decoders import (
        CenterCropRGBImageDecoder,
        IntDecoder,
        RandomResizedCropRGBImageDecoder,
        SimpleRGBImageDecoder,
    )
    from ffcv.transforms import (
        Cutout,
        RandomHorizontalFlip,
        RandomTranslate,
        ToDevice,
        ToTensor,
        ToTorchImage,
    )

    fill = tuple(int(round(m)) for m in RECIPES[recipe].mean)
    image: list[Any]
    if isinstance(hp, FmowHyperparameters):
        size = (hp.resolution, hp.resolution)
        if train:
            image = [_seeded(RandomResizedCropRGBImageDecoder)(
                size, scale=(hp.crop_scale_min, 1.0), ratio=(3 / 4, 4 / 3))]
        else:
            image = [CenterCropRGBImageDecoder(size, ratio=hp.eval_crop_ratio)]
    else:
        image = [_seeded(SimpleRGBImageDecoder)() if train else SimpleRGBImageDecoder()]
    if train and hp.flip:
        image.append(RandomHorizontalFlip())
    if train and isinstance(hp, Cifar10Hyperparameters):
        if hp.translate_pad > 0:
            image.append(RandomTranslate(padding=hp.translate_pad, fill=fill))
        if hp.cutout > 0:
            image.append(Cutout(hp.cutout, fill))
    image.append(ToTensor())
    label: list[Any] | None = [IntDecoder(), ToTensor()] if train else None
    if device.type == "cuda":
        image.append(ToDevice(device, non_blocking=True))
        if label is not None:
            label.append(ToDevice(device, non_blocking=True))
    image.append(ToTorchImage(channels_last=True))
    return {"image": image, "label": label}


def _retarget(loader: Any, indices: np.ndarray, seed: int, drop_last: bool) -> None:
    """Aim a built FFCV Loader at a new subset and seed without recompiling it.

    In ffcv 1.0.2 ``Loader`` copies ``indices`` and ``seed`` into its
    ``TraversalOrder`` at construction and caches the first epoch's order for
    ``__len__``; the compiled pipeline (``loader.code``) and the memory
    manager do not depend on them. So the order object is rebuilt (cheap),
    the epoch counter reset, and the cached order recomputed.
    """
    loader.indices = indices
    loader.seed = seed
    loader.drop_last = drop_last
    loader._args.update(indices=indices, seed=seed, drop_last=drop_last)
    loader.traversal_order = type(loader.traversal_order)(loader)
    loader.next_epoch = 0
    loader.first_traversal_order = loader.next_traversal_order()


def _derive_seeds(seed: int) -> tuple[int, int]:
    """Split a run's seed into a torch seed and an FFCV order seed (< 2**20)."""
    state = np.random.SeedSequence([int(seed) % 2**64, 0xD7DB]).generate_state(2, np.uint64)
    # QuasiRandom multiplies its seed by 912300; keep that within int64.
    return int(state[0] % 2**63), int(state[1] % 2**20)


# ----------------------------------------------------------------------------- trainer


class RecipeTrainer:
    """One of the paper's recipes, training one network per run (a dmdb Trainer).

    Build it with :func:`make_recipe_trainer`. It holds two FFCV loaders for
    its whole life (see :attr:`train_loader`); models are trained one after
    another on ``device``.

    Attributes
    ----------
    name : str
        The recipe name, 'cifar10' or 'fmow'.
    n_train, n_targets : int
        Lengths of the training and targets betons.
    preferred_batch : int
        Runs per :meth:`train` call that keep results streaming (8 / 2).
    hparams : Cifar10Hyperparameters or FmowHyperparameters
    device : torch.device
    loaders_built : int
        FFCV Loaders this trainer has constructed; stays 2.
    """

    def __init__(self, recipe: str, train_info: BetonInfo, targets_info: BetonInfo,
                 device: torch.device, hparams: RecipeHyperparameters,
                 preferred_batch: int | None = None) -> None:
        self.name = recipe
        self.n_train = train_info.n_examples
        self.n_targets = targets_info.n_examples
        self.preferred_batch = preferred_batch or RECIPES[recipe].preferred_batch
        self.hparams = hparams
        self.device = device
        self.loaders_built = 0
        self._recipe = RECIPES[recipe]
        self._cuda = device.type == "cuda"
        self._amp = self._cuda and hparams.mixed_precision
        self._format = torch.channels_last if self._cuda else torch.contiguous_format
        self._mean = torch.tensor(self._recipe.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(self._recipe.std, device=device).view(1, 3, 1, 1)
        self._target_labels = torch.from_numpy(targets_info.labels).to(device)
        threads = torch.get_num_threads()
        try:
            self._train_loader = self._build_loader(train_info, train=True)
            self._targets_loader = self._build_loader(targets_info, train=False)
        finally:
            torch.set_num_threads(threads)
        if self._cuda:
            # Fixed input shapes: let cuDNN pick the fastest kernels (as FFCV's example).
            torch.backends.cudnn.benchmark = True

    @property
    def train_loader(self) -> Any:
        """The one FFCV Loader over the training beton, re-aimed at each run."""
        return self._train_loader

    @property
    def targets_loader(self) -> Any:
        """The one sequential FFCV Loader over the targets beton."""
        return self._targets_loader

    def _build_loader(self, info: BetonInfo, train: bool) -> Any:
        from ffcv.loader import Loader, OrderOption

        hp = self.hparams
        order = OrderOption.SEQUENTIAL
        if train:
            order = OrderOption.RANDOM if hp.order == "random" else OrderOption.QUASI_RANDOM
        try:
            loader = Loader(
                str(info.path),
                batch_size=hp.batch_size if train else hp.eval_batch_size,
                num_workers=hp.num_workers,
                os_cache=hp.os_cache,
                order=order,
                seed=0,
                drop_last=hp.drop_last if train else False,
                pipelines=_pipelines(self.name, hp, self.device, train),
            )
        except (TypeError, ValueError, MemoryError) as e:
            # e.g. SimpleRGBImageDecoder refuses images of varying size.
            raise InputError(f"cannot read {str(info.path)!r} with the {self.name} recipe: "
                             f"{' '.join(str(e).split())}") from e
        self.loaders_built += 1
        return loader

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, dtype=torch.float32, memory_format=self._format)
        return (x - self._mean) / self._std

    def _autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device.type, dtype=torch.float16,
                              enabled=self._amp)

    def train(self, masks: np.ndarray, seeds: np.ndarray) -> TrainResult:
        """Train one network per run and return its margins on the targets.

        Parameters
        ----------
        masks : bool array of shape (B, n_train)
        seeds : int64 array of shape (B,)

        Returns
        -------
        TrainResult
            ``margins`` float32 (B, n_targets); ``train_acc`` float64 (B,):
            each model's accuracy on its (augmented) training batches during
            the last epoch.

        Raises
        ------
        TrainerError
            On malformed masks or seeds, or a mask that selects no example.
        """
        masks, seeds = check_runs(masks, seeds, self.n_train)
        margins = np.empty((len(seeds), self.n_targets), dtype=np.float32)
        train_acc = np.empty(len(seeds), dtype=np.float64)
        threads = torch.get_num_threads()
        try:
            for b, (mask, seed) in enumerate(zip(masks, seeds, strict=True)):
                indices = np.flatnonzero(mask)
                if indices.size == 0:
                    raise TrainerError(f"run {b}: the mask selects no training example")
                model, train_acc[b] = self._fit(indices, int(seed), threads)
                margins[b] = self._margins(model, threads)
        finally:
            torch.set_num_threads(threads)
        return TrainResult(margins=margins, train_acc=train_acc)

    def _fit(self, indices: np.ndarray, seed: int, threads: int) -> tuple[nn.Module, float]:
        hp = self.hparams
        torch_seed, order_seed = _derive_seeds(seed)
        loader = self._train_loader
        _retarget(loader, indices, order_seed, hp.drop_last and indices.size >= hp.batch_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed)
            model = self._recipe.model(hp)
        model = model.to(self.device)
        if self._cuda:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=hp.momentum,
                                    weight_decay=hp.weight_decay)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self._amp)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
        steps = len(loader)
        schedule = np.interp(np.arange(hp.epochs * steps + 1),
                             [0, hp.peak_epoch * steps, hp.epochs * steps], [0, hp.lr, 0])
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        step = 0
        model.train()
        for epoch in range(hp.epochs):
            last = epoch == hp.epochs - 1
            for i, (images, labels) in enumerate(loader):
                if i == 0:
                    torch.set_num_threads(threads)  # the loader's thread reset it
                x = self._images(images)
                y = labels.to(self.device).view(-1)
                for group in optimizer.param_groups:
                    group["lr"] = float(schedule[step])
                with self._autocast():
                    out = model(x)
                    loss = loss_fn(out, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                if last:
                    correct += (out.argmax(dim=1) == y).sum()
                    seen += y.numel()
        return model, float(correct.item()) / seen if seen else float("nan")

    @torch.no_grad()
    def _margins(self, model: nn.Module, threads: int) -> np.ndarray:
        model.eval()
        logits = []
        for i, (images,) in enumerate(self._targets_loader):
            if i == 0:
                torch.set_num_threads(threads)
            x = self._images(images)
            with self._autocast():
                out = model(x).float()
                if self.hparams.test_flip:
                    out = (out + model(x.flip(3)).float()) / 2
            logits.append(out)
        margins = margins_from_logits(torch.cat(logits), self._target_labels)
        return margins.float().cpu().numpy()


# ----------------------------------------------------------------------------- entry point


def _beton_path(values: Mapping[str, Any], key: str, recipe: str) -> str:
    value = values.get(key)
    if value is None or str(value).strip() == "":
        raise UsageError(
            f"the {recipe} recipe needs option {key}=PATH (an FFCV .beton with "
            "'image' and 'label' fields; write one with dmdb.betons.write_beton)"
        )
    return str(value)


def _check_labels(info: BetonInfo, what: str, num_classes: int) -> None:
    if info.labels.size and (info.labels.min() < 0 or info.labels.max() >= num_classes):
        raise InputError(
            f"{what} {str(info.path)!r} has labels in [{info.labels.min()}, "
            f"{info.labels.max()}], but the recipe has num_classes={num_classes}; "
            "set num_classes to match the data"
        )


def make_recipe_trainer(name: str, n_train: int, n_targets: int, device: torch.device,
                        options: Mapping[str, Any] | None = None, *,
                        config: str | os.PathLike[str] | None = None,
                        batch_models: int | None = None) -> RecipeTrainer:
    """Build the trainer of one of the paper's recipes.

    Parameters
    ----------
    name : {'cifar10', 'fmow'}
    n_train, n_targets : int
        The experiment's N and M; the betons must have exactly these lengths.
    device : torch.device
        'cpu' works (slowly); 'cuda' adds mixed precision and channels_last.
    options : mapping of str to str or value, optional
        ``train_beton`` and ``targets_beton`` (required paths) and any
        hyperparameter of the recipe's dataclass (see
        :func:`recipe_hyperparameters`). ``config`` here is the same as the
        ``config`` argument.
    config : path, optional
        A JSON or TOML file of further options, which ``options`` override.
    batch_models : int, optional
        Runs per :meth:`RecipeTrainer.train` call (default 8 for cifar10, 2
        for fmow); the networks are trained one after another either way.

    Returns
    -------
    RecipeTrainer

    Raises
    ------
    UsageError
        On an unknown recipe or option, a bad value, a missing beton or one
        whose length differs from n_train / n_targets, or missing FFCV.
    InputError
        If a beton's labels exceed ``num_classes`` or its images do not
        suit the recipe.
    """
    opts = TrainerOptions.of(options, config=config, batch_models=batch_models)
    values = opts.values()
    hp = recipe_hyperparameters(name, values)
    require_ffcv()
    infos = []
    for key, expected, what in (("train_beton", n_train, "n_train"),
                                ("targets_beton", n_targets, "n_targets")):
        info = read_beton_info(_beton_path(values, key, name))
        if info.n_examples != expected:
            raise UsageError(
                f"{key} {str(info.path)!r} holds {info.n_examples} examples, but the "
                f"experiment has {what}={expected}"
            )
        _check_labels(info, key, hp.num_classes)
        infos.append(info)
    return RecipeTrainer(name, infos[0], infos[1], device, hp, opts.batch_models)


def recipe_trainer(request: TrainerRequest) -> RecipeTrainer:
    """The factory of ``cifar10`` and ``fmow`` (see :func:`dmdb.trainers.register_trainer`).

    Takes the betons and hyperparameters as settings or from the config file;
    ``batch_models`` is the number of runs per call.
    """
    opts = request.options
    return make_recipe_trainer(request.name, request.n_train, request.n_targets,
                               request.device, opts.settings, config=opts.config,
                               batch_models=opts.batch_models)
