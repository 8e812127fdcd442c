"""Choosing the torch device that trainers and solvers run on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from dmdb.errors import DeviceError


def resolve_device(name: str) -> torch.device:
    """Return the torch device for ``name`` ('cpu', 'cuda' or 'cuda:K').

    Raises
    ------
    DeviceError
        If the name is unknown or the device is not available here.
    """
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {name} was asked for, but torch sees no CUDA GPU here; "
                "use --device cpu"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
        return device
    raise DeviceError(f"unknown device {name!r}; use 'cpu' or 'cuda'")


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's CPU thread count for a block (None: leave it), restoring it afterwards."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(old)
