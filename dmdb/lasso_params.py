"""The datamodel Lasso's parameters, declared once.

:class:`~dmdb.lasso.DatamodelLasso` is a :class:`LassoParams` (its ``__init__``
only stores them, as scikit-learn's estimators do), :func:`dmdb.fitting.fit`
takes them as keywords or as an estimator, and ``dmdb fit`` takes its defaults
and choices from here. This module imports no torch, so the CLI can read it at
start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from dmdb.errors import UsageError

__all__ = ["DTYPES", "GRAM_KERNELS", "SOLVERS", "LassoParams"]

#: ``solver``: batched torch FISTA, or per-target numpy coordinate descent (the oracle).
SOLVERS = ("fast", "reference")
#: ``dtype``: the fast solver's working precision.
DTYPES = ("float32", "float64")
#: ``gram_kernel``: measure on the device at hand (auto), or one kernel (:mod:`dmdb.gram`).
GRAM_KERNELS = ("auto", "float32", "int8", "bfloat16", "float16")


@dataclass(eq=False)
class LassoParams:
    """Parameters of the per-target Lasso path with λ chosen on validation runs.

    Parameters
    ----------
    solver : {"fast", "reference"}, default "fast"
        Batched torch FISTA, or per-target numpy coordinate descent (oracle).
    n_lambdas : int, default 40
        Length K of each target's λ path (at least 2).
    lambda_ratio : float, default 1e-2
        Smallest λ as a fraction of λ_max, in (0, 1).
    tol : float, default 1e-4
        Duality gap ``P - D`` at which a λ counts as solved, as a fraction of
        ``||y_c||²/n`` (scikit-learn's rule: it bounds ``P - P*`` by that much).
        Both solvers stop by it.
    max_iter : int, default 2000
        Most iterations per λ: FISTA steps (fast) or coordinate-descent sweeps
        (reference). A λ that reaches it above ``tol`` is counted in ``n_capped_``.
    device : str, default "cpu"
        "cpu" or "cuda[:k]": where the statistics are built and the fast solver runs.
    dtype : {"float32", "float64"}, default "float32"
        Working precision of the fast solver (statistics are always exact or float64).
    n_threads : int, optional
        torch CPU threads during ``fit`` (restored afterwards).
    early_stopping : bool, default True
        Stop a target's path once validation MSE has not improved for
        ``patience`` consecutive λ.
    patience : int, default 5
    gram : bool, default True
        Hold the N x N Gram (``4 N²`` bytes). False streams the fit runs at
        every FISTA step: correct but 10-20x slower (fast solver only; the
        reference solver needs the Gram).
    target_batch : int, optional
        Most targets in the FISTA batch at once (bounds working memory).
    chunk_size : int, default 4096
        Fit runs per chunk when the statistics are read.
    copy_gram : bool, default True
        False lets ``fit_stats`` overwrite the stats' int32 counts with the
        float32 Gram, halving peak memory; the stats are then consumed.
    progress : bool, default False
        Show a tqdm bar over the (target, λ) steps.
    memory : float, optional
        Budget in GB for the fit's arrays on ``device`` (:mod:`dmdb.fit_memory`);
        default: 85% of the memory free at the start (host RAM, or the GPU's).
        Targets are solved in batches sized to it; if the Gram does not fit, the
        fast solver goes Gram-free; if even that does not fit, the fit is
        refused before it allocates.
    gram_kernel : {"auto", "float32", "int8", "bfloat16", "float16"}, default "auto"
        The matmul that counts ``XᵀX``. "auto" times each on a small probe on
        ``device`` at the start of the fit (once per process and shape class) and
        takes the fastest, float32 unless another is clearly faster. Every kernel
        gives the same exact counts, so the fit does not depend on it.
    """

    solver: str = "fast"
    n_lambdas: int = 40
    lambda_ratio: float = 1e-2
    tol: float = 1e-4
    max_iter: int = 2000
    device: str = "cpu"
    dtype: str = "float32"
    n_threads: int | None = None
    early_stopping: bool = True
    patience: int = 5
    gram: bool = True
    target_batch: int | None = None
    chunk_size: int = 4096
    copy_gram: bool = True
    progress: bool = False
    gram_kernel: str = "auto"
    memory: float | None = None

    @classmethod
    def param_names(cls) -> list[str]:
        """The parameters' names, in declaration order."""
        return [f.name for f in fields(cls)]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Return the parameters as a dict (scikit-learn's ``get_params``).

        Parameters
        ----------
        deep : bool
            Accepted for scikit-learn compatibility; there are no nested estimators.
        """
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self, **params: Any) -> LassoParams:
        """Set parameters by name (scikit-learn's ``set_params``); returns ``self``."""
        unknown = sorted(set(params) - set(self.param_names()))
        if unknown:
            raise UsageError(f"unknown Lasso parameter(s) {unknown}; "
                             f"known: {', '.join(self.param_names())}")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def _validate_params(self) -> None:
        """Check every parameter's value; raises :class:`~dmdb.errors.UsageError`."""
        if self.solver not in SOLVERS:
            raise UsageError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.gram_kernel not in GRAM_KERNELS:
            raise UsageError(f"gram_kernel must be one of {GRAM_KERNELS}, got {self.gram_kernel!r}")
        if self.dtype not in DTYPES:
            raise UsageError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if isinstance(self.n_lambdas, bool) or not isinstance(self.n_lambdas, int) \
                or self.n_lambdas < 2:
            raise UsageError(f"n_lambdas must be an integer >= 2, got {self.n_lambdas!r}")
        if not 0.0 < float(self.lambda_ratio) < 1.0:
            raise UsageError(f"lambda_ratio must be in (0, 1), got {self.lambda_ratio!r}")
        if not float(self.tol) > 0.0:
            raise UsageError(f"tol must be > 0, got {self.tol!r}")
        for name in ("max_iter", "patience", "chunk_size"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("n_threads", "target_batch"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.memory is not None and not float(self.memory) > 0.0:
            raise UsageError(f"memory must be a positive number of GB, got {self.memory!r}")
        if self.solver == "reference" and not self.gram:
            raise UsageError("solver='reference' needs the Gram; use gram=True")
