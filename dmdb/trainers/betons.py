"""Writing and inspecting the FFCV ``.beton`` files the GPU recipes read.

The ``cifar10`` and ``fmow`` recipes (:mod:`dmdb.trainers.recipes`) read one
beton for the training set and one for the targets. Each holds two fields:
``image`` (an FFCV ``RGBImageField``) and ``label`` (an ``IntField``), and
example ``i`` of the beton is training example (or target) ``i`` of the
experiment, so the beton order is part of the experiment's identity.

:func:`write_beton` turns any torchvision-style dataset (an object with
``__len__`` and ``__getitem__(i) -> (image, label, ...)``) into such a file;
:func:`synthetic_images` makes a tiny CIFAR-shaped dataset for tests and for
smoke-testing a GPU install. FFCV is imported only when a beton is written
or read, so this module imports without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmdb.errors import InputError, UsageError

__all__ = [
    "BetonInfo",
    "SyntheticImages",
    "read_beton_info",
    "require_ffcv",
    "synthetic_images",
    "write_beton",
]


def require_ffcv() -> Any:
    """Import FFCV, keeping the caller's torch thread count.

    Importing ``ffcv.pipeline.compiler`` calls ``torch.set_num_threads(1)``.
    """
    threads = torch.get_num_threads()
    try:
        import ffcv  # noqa: F401
        import ffcv.fields
        import ffcv.loader
        import ffcv.reader
        import ffcv.writer
    except ImportError as e:
        raise UsageError(
            "FFCV is not installed; the GPU recipes need it. Install it with "
            "`pip install ffcv==1.0.2 torch==<your torch version> pillow` "
            "(FFCV builds from source: first `apt-get install pkg-config "
            "libturbojpeg0-dev libopencv-dev`)"
        ) from e
    finally:
        torch.set_num_threads(threads)
    return ffcv


def _to_rgb_array(image: Any) -> np.ndarray:
    """Convert a PIL image or an array to a C-contiguous (H, W, 3) uint8 array."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        image = image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) or (H, W), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"image array must be uint8, got {arr.dtype}")
    return np.ascontiguousarray(arr)


def _to_label(label: Any) -> int:
    value = np.asarray(label)
    if value.size != 1 or not np.issubdtype(value.dtype, np.integer):
        raise ValueError(f"label must be one integer, got {label!r}")
    out = int(value.reshape(()))
    if out < 0:
        raise ValueError(f"label must be >= 0, got {out}")
    return out


def _convert_item(item: Any) -> tuple[np.ndarray, int]:
    if not isinstance(item, tuple | list) or len(item) < 2:
        raise ValueError(f"dataset items must be (image, label, ...), got {type(item).__name__}")
    return _to_rgb_array(item[0]), _to_label(item[1])


class _CheckedItems:
    """Wraps the user's dataset for FFCV's writer processes.

    FFCV's writer waits forever when a worker process raises, so a bad item
    must not raise there: it is recorded in ``error_path`` and replaced by a
    placeholder of the first item's shape; :func:`write_beton` then deletes
    the file and reports the error.
    """

    def __init__(self, dataset: Any, placeholder: tuple[np.ndarray, int], error_path: str):
        self.dataset = dataset
        self.placeholder = placeholder
        self.error_path = error_path

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        try:
            return _convert_item(self.dataset[int(i)])
        except Exception as e:  # noqa: BLE001 - any failure must be reported, not hang
            with open(self.error_path, "a", encoding="utf-8") as f:
                message = f"item {int(i)}: {type(e).__name__}: {e}".replace("\n", " ")
                f.write(message.strip() + "\n")
            return self.placeholder


def write_beton(
    dataset: Any,
    path: str | os.PathLike[str],
    *,
    max_resolution: int | None = None,
    jpeg: bool = False,
    jpeg_quality: int = 90,
    num_workers: int | None = None,
) -> Path:
    """Write a torchvision-style dataset to an FFCV ``.beton`` file.

    The file is written to ``path + '.tmp'`` and renamed into place only when
    complete, so a reader never sees a half-written beton.

    Parameters
    ----------
    dataset : object with ``__len__`` and ``__getitem__``
        Item ``i`` is ``(image, label)`` or ``(image, label, extra...)``
        (WILDS datasets add metadata; extras are ignored). ``image`` is a PIL
        image (converted to RGB) or a uint8 array of shape (H, W, 3) or
        (H, W); ``label`` is a non-negative integer (Python, NumPy or a
        one-element tensor). With ``jpeg=False`` (raw pixels) and the
        ``cifar10`` recipe, all images must have the same size.
    path : str or path-like
        Where to write, conventionally ending in ``.beton``. Replaced if it
        exists.
    max_resolution : int, optional
        Downscale images so that their longer side is at most this (e.g.
        256 for FMoW at 224).
    jpeg : bool
        Store JPEG-compressed images (smaller files, decoding costs CPU)
        instead of raw pixels. Raw is best for CIFAR-sized images.
    jpeg_quality : int
        JPEG quality when ``jpeg`` is true.
    num_workers : int, optional
        Writer processes; defaults to the number of CPU cores. With more than
        one, ``dataset`` must survive being forked (or pickled on macOS).

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    InputError
        If the dataset is empty or an item is malformed (naming the first
        bad items); no file is left behind.
    UsageError
        If FFCV is not installed or an argument is out of range.
    """
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    n = len(dataset)
    if n == 0:
        raise InputError("cannot write a beton from an empty dataset")
    if max_resolution is not None and max_resolution < 1:
        raise UsageError(f"max_resolution must be >= 1, got {max_resolution}")
    workers = (os.cpu_count() or 1) if num_workers is None else int(num_workers)
    if workers < 1:
        raise UsageError(f"num_workers must be >= 1, got {num_workers}")
    try:
        first = _convert_item(dataset[0])
    except ValueError as e:
        raise InputError(f"dataset item 0: {e}") from e

    final = Path(path)
    tmp = Path(str(final) + ".tmp")
    errors = Path(str(final) + ".tmp.errors")
    errors.unlink(missing_ok=True)
    fields = {
        "image": RGBImageField(
            write_mode="jpg" if jpeg else "raw",
            max_resolution=max_resolution,
            jpeg_quality=jpeg_quality,
        ),
        "label": IntField(),
    }
    items = _CheckedItems(dataset, first, str(errors))
    try:
        writer = DatasetWriter(str(tmp), fields, num_workers=min(workers, n))
        writer.from_indexed_dataset(items, chunksize=max(1, min(100, n // workers)))
        if errors.exists():
            lines = errors.read_text(encoding="utf-8").splitlines()
            raise InputError(
                f"{len(lines)} malformed dataset item(s), e.g. {'; '.join(sorted(lines)[:3])}; "
                "items must be (PIL image or uint8 (H, W, 3) array, non-negative int label)"
            )
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        errors.unlink(missing_ok=True)
    return final


@dataclass(frozen=True)
class BetonInfo:
    """What :func:`read_beton_info` finds in a beton.

    Attributes
    ----------
    path : Path
    n_examples : int
    labels : int64 array of shape (n_examples,)
    image_shapes : int array of shape (n_examples, 2)
        (height, width) of each stored image.
    """

    path: Path
    n_examples: int
    labels: np.ndarray
    image_shapes: np.ndarray


def read_beton_info(path: str | os.PathLike[str]) -> BetonInfo:
    """Check that ``path`` is a beton with ``image`` and ``label`` fields.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    BetonInfo

    Raises
    ------
    UsageError
        If the file is missing or unreadable, is not a beton, or lacks an
        ``image`` RGBImageField or a ``label`` IntField.
    """
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"beton file {str(p)!r} does not exist")
    try:
        reader = Reader(str(p))
    except Exception as e:  # FFCV raises AssertionError/ValueError/numpy errors here
        raise UsageError(f"{str(p)!r} is not a readable FFCV beton ({e})") from e
    kinds = {name: type(h) for name, h in reader.handlers.items()}
    if kinds.get("image") is not RGBImageField or kinds.get("label") is not IntField:
        found = ", ".join(f"{k} ({v.__name__})" for k, v in kinds.items())
        raise UsageError(
            f"beton {str(p)!r} must have fields 'image' (RGBImageField) and 'label' "
            f"(IntField); it has {found}. Write it with dmdb.betons.write_beton"
        )
    names = list(reader.handlers)
    meta = reader.metadata
    labels = np.array(meta[meta.dtype.names[names.index("label")]], dtype=np.int64)
    image_meta = meta[meta.dtype.names[names.index("image")]]
    shapes = np.stack([image_meta["height"], image_meta["width"]], axis=1).astype(np.int64)
    return BetonInfo(path=p, n_examples=int(reader.num_samples), labels=labels,
                     image_shapes=shapes)


class SyntheticImages:
    """A tiny CIFAR-shaped dataset whose classes a small network can learn.

    Each class has its own colour tint and its own stripe orientation and
    frequency; every image adds a random phase, a random brightness and
    pixel noise. Items are ``(uint8 array of shape (resolution, resolution,
    3), int label)``, and labels cycle through the classes.

    Parameters
    ----------
    n : int
        Number of images.
    resolution : int
        Height and width (32 like CIFAR-10).
    num_classes : int
        Number of classes (10 like CIFAR-10).
    seed : int
        Images are a deterministic function of (seed, index); the class
        patterns are the same for every seed, so use one seed for a
        training set and another for its targets.
    """

    def __init__(self, n: int, *, resolution: int = 32, num_classes: int = 10,
                 seed: int = 0) -> None:
        if n < 1 or resolution < 4 or num_classes < 2:
            raise UsageError("SyntheticImages needs n >= 1, resolution >= 4, num_classes >= 2")
        self.n, self.resolution, self.num_classes, self.seed = n, resolution, num_classes, seed
        # The class patterns depend on num_classes only, so that sets drawn with
        # different seeds (a training set and its targets) share them.
        rng = np.random.default_rng(num_classes)
        self._tints = rng.uniform(0.3, 1.0, size=(num_classes, 3))
        self._angles = np.linspace(0.0, np.pi, num_classes, endpoint=False)
        self._freqs = 2.0 + (np.arange(num_classes) % 3)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        i = int(i)
        if not 0 <= i < self.n:
            raise IndexError(i)
        label = i % self.num_classes
        rng = np.random.default_rng([self.seed, i])
        r = self.resolution
        yy, xx = np.mgrid[0:r, 0:r] / r
        angle = self._angles[label]
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * self._freqs[label] * (np.cos(angle) * xx + np.sin(angle) * yy)
                      + phase)
        brightness = rng.uniform(0.6, 1.0)
        img = (0.5 + 0.4 * wave)[:, :, None] * self._tints[label][None, None, :] * brightness
        img = img + rng.normal(0.0, 0.08, size=img.shape)
        return (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8), label


def synthetic_images(n: int, *, resolution: int = 32, num_classes: int = 10,
                     seed: int = 0) -> SyntheticImages:
    """Return :class:`SyntheticImages` (a CIFAR-shaped smoke-test dataset).

    Examples
    --------
    >>> from dmdb.betons import synthetic_images, write_beton
    >>> write_beton(synthetic_images(1000), "train.beton")            # doctest: +SKIP
    >>> write_beton(synthetic_images(200, seed=1), "targets.beton")   # doctest: +SKIP
    """
    return SyntheticImages(n, resolution=resolution, num_classes=num_classes, seed=seed)
