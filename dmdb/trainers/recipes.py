"""The paper's GPU training recipes (CIFAR-10 and FMoW) as dmdb trainers.

Each recipe trains one network per run on the run's subset of a training set
stored as an FFCV ``.beton`` file, and reports the model's correct-class
margin on every example of a targets beton (see :mod:`dmdb.betons` to write
them). The hyperparameters follow the datamodels paper (Ilyas et al., ICML
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
:class:`FmowHyperparameters` and can be overridden through ``options``.

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
import json
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmdb.trainers.betons import BetonInfo, read_beton_info, require_ffcv
from dmdb.errors import InputError, TrainerError, UsageError
from dmdb.trainers.base import TrainResult, check_runs, margins_from_logits
from dmdb.trainers.resnet import resnet9, resnet18

__all__ = [
    "RECIPES",
    "Cifar10Hyperparameters",
    "FmowHyperparameters",
    "RecipeTrainer",
    "load_config",
    "make_recipe_trainer",
    "recipe_hyperparameters",
]

_PATH_OPTIONS = ("train_beton", "targets_beton", "config")
_ORDERS = ("random", "quasi_random")


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


@dataclass(kw_only=True)
class _Hyperparameters:
    """Fields shared by the recipes; see the recipe classes for defaults."""

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
class Cifar10Hyperparameters(_Hyperparameters):
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
class FmowHyperparameters(_Hyperparameters):
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


# ----------------------------------------------------------------------------- options


def _toml_module(path: Path) -> Any:
    try:
        import tomllib  # Python 3.11+
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef,unused-ignore]
        except ImportError:
            raise UsageError(f"reading the TOML config {str(path)!r} needs Python 3.11+ or "
                             "`pip install tomli`; or write the config as JSON") from None
    return tomllib


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a recipe config file: a JSON object or a TOML table of options.

    Parameters
    ----------
    path : str or path-like
        ``*.toml`` is parsed as TOML, anything else as JSON.

    Returns
    -------
    dict
        Option name to value, e.g. ``{"epochs": 30, "train_beton": "..."}``.

    Raises
    ------
    UsageError
        If the file is missing, unparsable, or not a table/object.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read config file {str(p)!r}: {e.strerror}") from e
    is_toml = p.suffix.lower() == ".toml"
    try:
        data = _toml_module(p).loads(text) if is_toml else json.loads(text)
    except ValueError as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise UsageError(f"config file {str(p)!r} is not valid "
                         f"{'TOML' if is_toml else 'JSON'}: {e}") from e
    if not isinstance(data, dict):
        raise UsageError(f"config file {str(p)!r} must hold an object/table of options")
    return data


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(key: str, kind: type, value: Any) -> Any:
    """Convert an option value (a CLI string or a JSON/TOML value) to ``kind``."""
    bad = UsageError(f"option {key}={value!r}: expected {kind.__name__}")
    if isinstance(value, str):
        text = value.strip()
        if kind is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise bad
        if kind is str:
            return text
        try:
            return kind(text)
        except ValueError:
            raise bad from None
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if isinstance(value, bool) or kind is str:
        raise bad
    if kind is int and isinstance(value, int | np.integer):
        return int(value)
    if kind is float and isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    raise bad


def recipe_hyperparameters(recipe: str, options: Mapping[str, Any] | None = None
                           ) -> _Hyperparameters:
    """Return a recipe's hyperparameters with ``options`` applied and checked.

    Parameters
    ----------
    recipe : {'cifar10', 'fmow'}
    options : mapping, optional
        Hyperparameter overrides; values may be strings (as from
        ``--set key=value``) or typed values (from JSON/TOML). The keys
        ``train_beton``, ``targets_beton`` and ``config`` are ignored here.

    Returns
    -------
    Cifar10Hyperparameters or FmowHyperparameters

    Raises
    ------
    UsageError
        On an unknown recipe or key, an unconvertible value or one out of range.
    """
    cls = _recipe(recipe).hyperparameters
    kinds = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    overrides: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key in _PATH_OPTIONS:
            continue
        if key not in kinds:
            raise UsageError(
                f"unknown option {key!r} for the {recipe} recipe; valid options: "
                f"{', '.join(_PATH_OPTIONS + tuple(valid))}"
            )
        overrides[key] = _convert(key, kinds[key], value)
    hp = replace(cls(), **overrides)
    hp.validate()
    return hp


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
        Cifar10Hyperparameters,
        lambda hp: resnet9(hp.num_classes, hp.width),
        (125.307, 122.961, 113.8575),
        (51.5865, 50.847, 51.255),
        preferred_batch=8,
    ),
    "fmow": _Recipe(
        FmowHyperparameters,
        lambda hp: resnet18(hp.num_classes, hp.width),
        # ImageNet statistics, as WILDS uses for FMoW.
        (123.675, 116.28, 103.53),
        (58.395, 57.12, 57.375),
        preferred_batch=2,
    ),
}
"""The recipes by name: hyperparameter class, model, normalisation."""


def _recipe(name: str) -> _Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise UsageError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}") from None


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


def _pipelines(recipe: str, hp: _Hyperparameters, device: torch.device, train: bool
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
                 device: torch.device, hparams: _Hyperparameters) -> None:
        self.name = recipe
        self.n_train = train_info.n_examples
        self.n_targets = targets_info.n_examples
        self.preferred_batch = RECIPES[recipe].preferred_batch
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


def _beton_path(options: Mapping[str, Any], key: str, recipe: str) -> str:
    value = options.get(key)
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
                        options: Mapping[str, Any]) -> RecipeTrainer:
    """Build the trainer of one of the paper's recipes.

    Parameters
    ----------
    name : {'cifar10', 'fmow'}
    n_train, n_targets : int
        The experiment's N and M; the betons must have exactly these lengths.
    device : torch.device
        'cpu' works (slowly); 'cuda' adds mixed precision and channels_last.
    options : mapping of str to str or value
        ``train_beton`` and ``targets_beton`` (required paths), ``config``
        (optional path to a JSON or TOML file of further options, which
        explicit options override), and any hyperparameter of the recipe's
        dataclass (see :func:`recipe_hyperparameters`).

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
    _recipe(name)
    require_ffcv()
    merged: dict[str, Any] = {}
    if options.get("config"):
        merged.update(load_config(str(options["config"])))
        if "config" in merged:
            raise UsageError("a config file cannot name another config file")
    merged.update(options)
    hp = recipe_hyperparameters(name, merged)
    infos = []
    for key, expected, what in (("train_beton", n_train, "n_train"),
                                ("targets_beton", n_targets, "n_targets")):
        info = read_beton_info(_beton_path(merged, key, name))
        if info.n_examples != expected:
            raise UsageError(
                f"{key} {str(info.path)!r} holds {info.n_examples} examples, but the "
                f"experiment has {what}={expected}"
            )
        _check_labels(info, key, hp.num_classes)
        infos.append(info)
    return RecipeTrainer(name, infos[0], infos[1], device, hp)
