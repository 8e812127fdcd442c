"""The co-occurrence counts ``XᵀX`` of 0/1 masks, by the kernel that is fastest here.

Masks are 0/1, so ``XᵀX`` is an exact integer count matrix, and any matmul that
sums 0/1 products exactly gives the same counts. Which one is fastest depends on
the CPU (measured, DESIGN.md): ``torch._int_mm`` on int8 built a 10,000 x 2,000
Gram 3-4x faster than float32 on a Zen 4 core with AVX-512 VNNI, but on a 2-core
EPYC with AVX2 only one 4,096 x 2,000 chunk took 22 s in int8, 5.9 s in bfloat16
and 0.32 s in float32. So the kernel is chosen by a short measurement on the
device at hand (:func:`choose_kernel`), once per process and shape class.

Every kernel is exact by construction, not by luck:

* int8: ``torch._int_mm`` accumulates in int32 (exact below 2**31 runs);
* float32: integers up to 2**24 are exact in float32, so chunks are cut to at
  most 2**24 runs;
* bfloat16 / float16: integers up to 2**8 / 2**11 are exact there, so chunks
  are cut to 256 / 2,048 runs. Every partial sum of 0/1 products is then an
  integer no larger than that, exact whatever the order or precision of the
  accumulation; the block results are summed in int32.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dmdb.errors import UsageError
from dmdb.lasso_params import GRAM_KERNELS

__all__ = ["KERNELS", "KernelChoice", "add_gram", "choose_kernel", "count_gram"]

#: The kernels, the default (float32) first.
KERNELS = tuple(k for k in GRAM_KERNELS if k != "auto")

#: Most runs per product for which each kernel's counts are exact (module docstring).
EXACT_RUNS = {"int8": 2**31 - 1, "float32": 2**24, "bfloat16": 2**8, "float16": 2**11}

_FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}

#: The measurement's probe: at most this many runs x training examples. float32
#: takes about 20 ms for it on one Zen 4 core; a kernel 70x slower would take 1.4 s,
#: so candidates are first screened on a probe 64x smaller in work.
_PROBE_RUNS, _PROBE_COLS = 1024, 1024
_SCREEN_RUNS, _SCREEN_COLS = 128, 256
#: A candidate slower than this multiple of float32 on the screen is not timed further.
_SCREEN_RATIO = 4.0
#: Another kernel replaces float32 only when at least this much faster on the probe
#: (so timing noise never picks a kernel that is not really faster).
_MARGIN = 0.9
#: Below this many multiply-adds a chunk costs well under a millisecond in any
#: kernel: measuring would cost more than it could save.
_TOO_SMALL = 1 << 24

#: Choices already measured in this process, by device, probe shape and threads.
_CACHE: dict[tuple[str, int, int, int], KernelChoice] = {}


@dataclass(frozen=True)
class KernelChoice:
    """Which kernel builds the counts, and why.

    Attributes
    ----------
    kernel : str
        One of :data:`KERNELS`.
    reason : str
        "asked for", "measured", "measured earlier in this process", or
        "too small to measure".
    probe : tuple of int, optional
        (runs, training examples) of the measured probe.
    seconds : dict
        Best seconds per timed kernel on the probe.
    screened_out : dict
        Seconds on the small screen of kernels too slow to time on the probe.
    screen : dict
        Seconds of every kernel on that screen (float32's is the yardstick there;
        the screen is 32x smaller than the probe, so its times are not the probe's).
    """

    kernel: str
    reason: str
    probe: tuple[int, int] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    screened_out: dict[str, float] = field(default_factory=dict)
    screen: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready record (what ``fits.parameters`` stores)."""
        return {"kernel": self.kernel, "reason": self.reason,
                "probe": None if self.probe is None else list(self.probe),
                "seconds": dict(self.seconds), "screened_out": dict(self.screened_out),
                "screen": dict(self.screen)}


def count_gram(a: torch.Tensor, kernel: str = "int8") -> torch.Tensor:
    """Return the exact co-occurrence counts ``aᵀa`` of a 0/1 chunk.

    Parameters
    ----------
    a : bool or uint8 tensor of shape (k, N)
        0/1 masks.
    kernel : str
        One of :data:`KERNELS`.

    Returns
    -------
    int32 tensor of shape (N, N), on ``a``'s device
    """
    out = torch.zeros(a.shape[1], a.shape[1], dtype=torch.int32, device=a.device)
    return add_gram(out, a, kernel)


#: Widest column block of one product on the CPU / on CUDA. A product's float32
#: result and its int32 copy are the only scratch (2 x 4 x width² bytes: 32 MB on
#: the CPU, 512 MB on CUDA), so no second N x N matrix ever exists; on the CPU the
#: blocks below the diagonal are the upper ones transposed (measured for int8 at
#: 4,096 x 5,000 on 2 threads: 0.20 s against 0.28 s in one product).
BLOCK_WIDTH = {"cpu": 2048, "cuda": 8192}


def add_gram(out: torch.Tensor, a: torch.Tensor, kernel: str = "int8") -> torch.Tensor:
    """Add the exact counts ``aᵀa`` of a 0/1 chunk to ``out`` in place; return ``out``.

    Parameters
    ----------
    out : int32 tensor of shape (N, N)
        The running counts, on ``a``'s device.
    a : bool or uint8 tensor of shape (k, N)
    kernel : str
        One of :data:`KERNELS`.

    The product is taken in column blocks of at most :data:`BLOCK_WIDTH`, each
    added into ``out`` where it belongs, in row steps of at most
    ``EXACT_RUNS[kernel]`` runs.
    """
    step = EXACT_RUNS[kernel]
    for lo in range(0, a.shape[0], step):
        part = a[lo : lo + step]
        if kernel == "int8":
            x = part.to(torch.int8)
            product = _cuda_int_mm if a.device.type == "cuda" else _cpu_int_mm
        else:
            x = part.to(_FLOAT_DTYPES[kernel])
            product = _float_mm
        _add_blocks(out, x, product, symmetric=a.device.type != "cuda")
    return out


def _float_mm(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u.T @ v).to(torch.int32)


def _cpu_int_mm(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch._int_mm(u.T, v)


def _cuda_int_mm(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``uᵀv`` by ``torch._int_mm`` on CUDA, which needs dimensions in multiples of 8, > 16.

    The blocks are zero-padded (zero rows and columns change no count); blocks too
    small even padded are multiplied in float32, which is exact there.
    """
    k, cu = u.shape
    cv = v.shape[1]
    pad_k, pad_u, pad_v = (-k) % 8, (-cu) % 8, (-cv) % 8
    if min(cu + pad_u, cv + pad_v) <= 16:
        return _float_mm(u.to(torch.float32), v.to(torch.float32))
    up = torch.nn.functional.pad(u, (0, pad_u, 0, pad_k))
    vp = torch.nn.functional.pad(v, (0, pad_v, 0, pad_k))
    return torch._int_mm(up.T.contiguous(), vp)[:cu, :cv]


def _add_blocks(
    out: torch.Tensor, x: torch.Tensor,
    product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, symmetric: bool,
) -> None:
    """``out += xᵀx``, one column block pair at a time (upper blocks only if ``symmetric``)."""
    n_feat = x.shape[1]
    width = BLOCK_WIDTH["cuda" if x.device.type == "cuda" else "cpu"]
    n_blocks = max(1, -(-n_feat // width))
    if symmetric and n_feat >= 2048 and n_blocks < 4:
        n_blocks = 4  # the symmetric saving is worth the smaller products from here
    edges = [n_feat * i // n_blocks for i in range(n_blocks + 1)]
    for i in range(n_blocks):
        lo, hi = edges[i], edges[i + 1]
        for j in range(i if symmetric else 0, n_blocks):
            lo2, hi2 = edges[j], edges[j + 1]
            block = product(x[:, lo:hi], x[:, lo2:hi2])
            out[lo:hi, lo2:hi2] += block
            if symmetric and j > i:
                out[lo2:hi2, lo:hi] += block.T


def choose_kernel(
    requested: str, device: torch.device, n_features: int, chunk_runs: int
) -> KernelChoice:
    """The kernel for chunks of ``chunk_runs`` x ``n_features`` on ``device``.

    Parameters
    ----------
    requested : str
        "auto" (measure), or one of :data:`KERNELS` (checked to run here).
    device : torch.device
    n_features : int
        N, the mask length.
    chunk_runs : int
        Runs in a typical chunk (the first one).

    Returns
    -------
    KernelChoice

    Raises
    ------
    UsageError
        A requested kernel that does not run on this device.
    """
    if requested != "auto":
        _check_runs(requested, device)
        return KernelChoice(requested, "asked for")
    rows, cols = min(chunk_runs, _PROBE_RUNS), min(n_features, _PROBE_COLS)
    if chunk_runs * n_features * n_features < _TOO_SMALL:
        return KernelChoice("float32", "too small to measure")
    key = (str(device), rows, cols, torch.get_num_threads())
    if key in _CACHE:
        found = _CACHE[key]
        return KernelChoice(found.kernel, "measured earlier in this process", found.probe,
                            found.seconds, found.screened_out, found.screen)
    choice = _measure(device, rows, cols)
    _CACHE[key] = choice
    return choice


def _check_runs(kernel: str, device: torch.device) -> None:
    """Raise a one-line UsageError unless ``kernel`` counts a small probe right here."""
    if kernel not in KERNELS:
        raise UsageError(f"unknown Gram kernel {kernel!r}; use auto or one of {KERNELS}")
    probe = _probe(device, 64, 64)
    try:
        ok = torch.equal(count_gram(probe, kernel), _exact(probe))
    except RuntimeError as e:
        raise UsageError(f"--gram-kernel {kernel} does not run on {device}: "
                         f"{str(e).splitlines()[0]}") from e
    if not ok:
        raise UsageError(f"--gram-kernel {kernel} miscounts on {device}; use another kernel")


def _measure(device: torch.device, rows: int, cols: int) -> KernelChoice:
    """Time every kernel that counts right on a probe; float32 unless another is faster."""
    screen = _probe(device, min(rows, _SCREEN_RUNS), min(cols, _SCREEN_COLS))
    screen_s = _times(screen, KERNELS, device)
    base = screen_s["float32"]  # float32 runs everywhere torch does
    screened_out = {k: s for k, s in screen_s.items() if s > _SCREEN_RATIO * base}
    seconds = _times(_probe(device, rows, cols),
                     [k for k in screen_s if k not in screened_out], device)
    best = min(seconds, key=seconds.__getitem__)
    if seconds[best] > _MARGIN * seconds["float32"]:
        best = "float32"
    return KernelChoice(best, "measured", (rows, cols), seconds, screened_out, screen_s)


def _times(a: torch.Tensor, kernels: Any, device: torch.device) -> dict[str, float]:
    """Best of two timings per kernel of ``count_gram(a, kernel)``.

    A kernel that fails here, or miscounts, is left out.
    """
    exact = _exact(a)
    out = {}
    for kernel in kernels:
        best = float("inf")
        try:
            for _ in range(2):  # the first call also pays for any one-off set-up
                _sync(device)
                t0 = time.perf_counter()
                counts = count_gram(a, kernel)
                _sync(device)
                best = min(best, time.perf_counter() - t0)
        except RuntimeError:
            continue
        if torch.equal(counts, exact):
            out[kernel] = best
    return out


def _probe(device: torch.device, rows: int, cols: int) -> torch.Tensor:
    """Bernoulli(0.5) masks, the same in every process."""
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(rows, cols, generator=gen) < 0.5).to(device=device, dtype=torch.uint8)


def _exact(a: torch.Tensor) -> torch.Tensor:
    """The counts in float64 (exact below 2**53), as int32: what every kernel must equal."""
    a64 = a.to(torch.float64)
    return (a64.T @ a64).to(torch.int32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
