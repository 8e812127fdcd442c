"""What a fit needs in memory, worked out before it allocates, and a plan that fits a budget.

The fit's peak memory, in bytes, with ``n_v`` validation runs, ``N`` training
examples, ``M`` fitted targets, ``M_all`` targets in the experiment, ``k`` runs
per chunk, ``B`` targets solved at once and ``d`` bytes per working value
(4 for float32, 8 for float64), is the largest of its three phases, on top of
the process's own :data:`BASE_BYTES`:

* **statistics** (one pass over the fit runs): the int32 counts ``4 N²``, Xᵀy
  ``8 N M``, a chunk ``k N (1 + 4)`` (its uint8 masks and their kernel copy,
  float32 at most) and the next chunk as it is decoded, ``5 k N`` more
  (:data:`CHUNK_BYTES` in all), the block product and its int32 copy ``8 w²`` (``w`` the
  block width of :mod:`dmdb.gram`), the float64 Xᵀy scratch ``8 · 512 · N``, and
  the chunk's margins ``4 k M_all + 16 k M``;
* **standardising**: the counts become the float32 Gram in place (a float64
  Gram needs ``8 N²`` beside them), Xᵀy becomes the correlations in place, and
  their working copy adds ``d N M``;
* **solve**: the Gram ``d' N²`` (``d' = 4`` in place, or 8), the correlations
  twice ``2 d N M`` (the problem's and the solver's transposed copy), the
  validation runs ``n_v N (1 + d)`` (uint8, and standardised straight into the
  solver's transposed layout), their margins ``16 n_v M``, and per target in the batch
  ``SOLVER_ROW_VALUES · d · N`` (the FISTA state: iterate, products, momentum,
  warm start, best weights and a step's temporaries), plus ``NEWTON_ROW_BYTES · N``
  per row when ``n < N`` takes active-set Newton steps.

Without the Gram (``gram=False``) the ``N²`` terms drop out and the solve streams
a chunk per step, ``k N (1 + d)`` more. The test runs are scored after the solve,
a chunk at a time, inside the solve's peak. ``benchmarks/scale.py`` checks the
formula against the peak RSS it measures (docs/scaling.md).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from dmdb.errors import FitError

#: What the process holds before the fit's arrays: Python, torch, DuckDB, Arrow
#: (about 0.4 GB resident, measured on the scale ladder's smallest rung).
BASE_BYTES = 400 * 2**20
#: Working values per target row of the FISTA batch (8 kept, up to 8 in a step or
#: while the batch is compacted).
SOLVER_ROW_VALUES = 16
#: Extra bytes per row and training example of an active-set Newton step (float64
#: right-hand side and solution, int64 sort keys, masks).
NEWTON_ROW_BYTES = 40
#: Bytes per run and training example while the statistics read a chunk: its uint8
#: masks and their kernel copy (float32 at most), 1 + 4, and the next chunk as it is
#: decoded beside it (packed bits, bool and uint8 copies), about 5 more. Measured: peak
#: RSS over the fit's estimate 0.99-1.00 at N = 2,000 / 5,000 / 10,000 (k = 4,096).
CHUNK_BYTES = 10
#: Column width of a Gram block product (dmdb.gram.BLOCK_WIDTH).
GRAM_BLOCK = {"cpu": 2048, "cuda": 8192}
#: Rows of the float64 scratch of Xᵀy and of the standardised validation runs.
SCRATCH_RUNS = 512
#: The default budget: this fraction of the memory free at the start.
FREE_FRACTION = 0.85

GB = 1e9


@dataclass(frozen=True)
class FitShape:
    """The sizes that decide a fit's memory."""

    n_train: int
    n_targets: int  # fitted targets (the target range)
    n_val: int
    chunk: int  # fit runs per chunk
    all_targets: int | None = None  # margins per run in the database (default n_targets)
    dtype_bytes: int = 4
    device: str = "cpu"
    newton: bool = False


@dataclass
class MemoryEstimate:
    """Bytes per phase and the peak, for one choice of Gram and target batch."""

    gram: bool
    target_batch: int
    phases: dict[str, int]
    parts: dict[str, int] = field(default_factory=dict)
    gram_bytes: int = 0  # the N x N Gram's own size, held or not

    @property
    def peak(self) -> int:
        """The largest phase, plus the process's own :data:`BASE_BYTES`."""
        return BASE_BYTES + max(self.phases.values())

    def peak_at(self, target_batch: int) -> int:
        """The peak with another target batch (only the solve's batch rows change)."""
        per_row = self.parts.get("batch", 0) / max(self.target_batch, 1)
        solve = self.phases["solve"] - self.parts.get("batch", 0) + per_row * target_batch
        return BASE_BYTES + int(max(*(v for k, v in self.phases.items() if k != "solve"),
                                    solve))

    def as_dict(self) -> dict[str, Any]:
        """For ``fits.parameters``: the phases and the parts in bytes, and the peak."""
        return asdict(self) | {"peak": self.peak}


def estimate(shape: FitShape, *, gram: bool, target_batch: int) -> MemoryEstimate:
    """The fit's memory by phase (the module docstring's formula).

    Parameters
    ----------
    shape : FitShape
    gram : bool
        Hold the N x N Gram, or stream the fit runs at each step.
    target_batch : int
        Targets in the solver's batch at once.

    Returns
    -------
    MemoryEstimate
    """
    n, m, nv, k, d = (shape.n_train, shape.n_targets, shape.n_val, shape.chunk,
                      shape.dtype_bytes)
    m_all = shape.all_targets or m
    w = min(n, GRAM_BLOCK["cuda" if shape.device.startswith("cuda") else "cpu"])
    b = max(1, min(int(target_batch), m))
    counts = 4 * n * n if gram else 0
    parts = {
        "counts": counts,
        "xty": 8 * n * m,
        "chunk": k * n * CHUNK_BYTES + (8 * w * w if gram else 0) + 8 * SCRATCH_RUNS * n
        + 4 * k * m_all + 16 * k * m,
        "corr": d * n * m,
        "gram": (8 * n * n if d == 8 else 4 * n * n) if gram else 0,
        "val": nv * n * (1 + d) + 16 * nv * m,
        "stream": 0 if gram else k * n * (1 + d),
        "batch": b * n * (SOLVER_ROW_VALUES * d + (NEWTON_ROW_BYTES if shape.newton else 0)),
    }
    phases = {
        "statistics": parts["counts"] + parts["xty"] + parts["chunk"],
        "standardise": counts + (8 * n * n if gram and d == 8 else 0) + parts["xty"]
        + parts["corr"] + 8 * SCRATCH_RUNS * n,
        "solve": parts["gram"] + 2 * parts["corr"] + parts["val"] + parts["stream"]
        + parts["batch"],
    }
    return MemoryEstimate(gram=gram, target_batch=b, phases=phases, parts=parts,
                          gram_bytes=(8 if d == 8 else 4) * n * n)


def plan(
    shape: FitShape, budget: float, *, gram: bool = True, target_batch: int | None = None,
    fallback: bool = True,
) -> MemoryEstimate:
    """The fit that runs inside ``budget`` bytes: the largest target batch, the Gram if it fits.

    Parameters
    ----------
    shape : FitShape
    budget : float
        Bytes the fit may use, :data:`BASE_BYTES` included.
    gram : bool
        Whether the caller wants the Gram; without it, the Gram-free path is
        the only one considered. With it, a Gram that does not fit falls back to
        the Gram-free path (the caller says so).
    target_batch : int, optional
        The most targets at once the caller allows (default: all).

    Returns
    -------
    MemoryEstimate

    Raises
    ------
    FitError
        One line: the least the fit needs, the budget, and what to change.
    """
    most = shape.n_targets if target_batch is None else max(1, min(target_batch, shape.n_targets))
    least: MemoryEstimate | None = None
    for with_gram in ((True, False) if gram and fallback else (gram,)):
        one = estimate(shape, gram=with_gram, target_batch=1)
        least = one if least is None or one.peak < least.peak else least
        if one.peak > budget:
            continue
        # Only the solve grows with the batch, by the same bytes per target row.
        per_row = max(1, one.parts["batch"])
        room = budget - BASE_BYTES - one.phases["solve"]
        return estimate(shape, gram=with_gram, target_batch=min(most, 1 + int(room // per_row)))
    assert least is not None
    kind = "Gram-free" if not least.gram else "with the Gram"
    raise FitError(
        f"the fit needs at least {least.peak / GB:.2f} GB ({kind}, one target at a time; "
        f"N={shape.n_train:,}, {shape.n_targets:,} targets, {shape.n_val:,} validation runs) "
        f"but --memory is {budget / GB:.2f} GB; raise --memory or fit fewer targets "
        "with --target-range"
    )


def free_bytes(device: str = "cpu") -> int:
    """Memory free now: MemAvailable on the host, or the free memory of a CUDA device."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else 8 * 2**30


def default_budget(device: str = "cpu") -> float:
    """The default ``--memory``: :data:`FREE_FRACTION` of what is free now (on the device)."""
    return FREE_FRACTION * free_bytes(device)
