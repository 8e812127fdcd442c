"""Moved to :mod:`dmdb.trainers.betons`; this path keeps ``from dmdb.betons import ...`` working."""

from dmdb.trainers.betons import BetonInfo as BetonInfo
from dmdb.trainers.betons import SyntheticImages as SyntheticImages
from dmdb.trainers.betons import read_beton_info as read_beton_info
from dmdb.trainers.betons import require_ffcv as require_ffcv
from dmdb.trainers.betons import synthetic_images as synthetic_images
from dmdb.trainers.betons import write_beton as write_beton

__all__ = [
    "BetonInfo",
    "SyntheticImages",
    "read_beton_info",
    "require_ffcv",
    "synthetic_images",
    "write_beton",
]
