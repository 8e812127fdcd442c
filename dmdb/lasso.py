"""The datamodel Lasso: per-target L1 regression path with validation choice of λ.

For every target j, on the fit runs, dmdb solves the Lasso on standardised
masks (centred by the fit-run means μ, scaled by the population sd σ;
constant columns get weight 0) and centred margins::

    minimise (1/(2n)) ||y_c - X_s w||² + λ ||w||₁

(scikit-learn's ``Lasso(alpha=λ, fit_intercept=False)`` on the same data) for
``n_lambdas`` values of λ log-spaced from ``λ_max = max|X_sᵀ y_c| / n`` down to
``λ_max * lambda_ratio``, keeps the λ with the lowest MSE on the validation runs
(predicted with the fit runs' μ, σ, ȳ), and maps the weights back to mask space:
``coef = w / σ``, ``intercept = ȳ - μ · coef``, so that::

    prediction(S) = intercept + Σ_{i ∈ S} coef_i        exactly.

``solver="reference"`` is per-target coordinate descent in numpy float64 (the
test oracle); ``solver="fast"`` is batched FISTA in torch on CPU or CUDA. The
statistics are built in chunks (:class:`GramStats`), so a database can stream
its fit runs; ``gram=False`` streams the runs at every iteration instead of
holding the ``N x N`` Gram (slow, for N too large for ``4 N²`` bytes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from dmdb.devices import resolve_device, torch_threads
from dmdb.errors import FitError, InputError, UsageError
from dmdb.lasso_solvers import (
    ChunkSource,
    GramOperator,
    PathResult,
    StreamOperator,
    fista_path,
    lambda_grid,
    reference_path,
)
from dmdb.lasso_stats import GramStats, StandardProblem

__all__ = ["DatamodelLasso", "GramStats", "StandardProblem", "array_chunks"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_SOLVERS = ("fast", "reference")


def array_chunks(
    masks: Any, margins: Any, chunk_size: int = 4096
) -> Callable[[], Iterator[tuple[Any, Any]]]:
    """Return a re-iterable chunk source over in-memory arrays.

    Parameters
    ----------
    masks : bool or uint8 array of shape (n, N)
    margins : float array of shape (n, M)
    chunk_size : int
        Runs per chunk.

    Returns
    -------
    callable
        Each call yields ``(masks[i:i+k], margins[i:i+k])`` chunks anew.
    """

    def chunks() -> Iterator[tuple[Any, Any]]:
        for lo in range(0, len(masks), chunk_size):
            yield masks[lo : lo + chunk_size], margins[lo : lo + chunk_size]

    return chunks


class DatamodelLasso:
    """Per-target Lasso path with λ chosen on validation runs, in mask space.

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
    max_iter : int, default 2000
        Most FISTA steps per λ (the reference solver: CD sweeps per λ).
    device : str, default "cpu"
        "cpu" or "cuda[:k]" for the fast solver.
    dtype : {"float32", "float64"}, default "float32"
        Working precision of the fast solver (statistics are always float64).
    n_threads : int, optional
        torch CPU threads during ``fit`` (restored afterwards).
    early_stopping : bool, default True
        Stop a target's path once validation MSE has not improved for
        ``patience`` consecutive λ (fast solver only).
    patience : int, default 5
    gram : bool, default True
        Hold the N x N Gram (``4 N²`` bytes). False streams the fit runs at
        every FISTA step: correct but 10-20x slower.
    target_batch : int, optional
        Most targets in the FISTA batch at once (bounds working memory).
    chunk_size : int, default 4096
        Runs per chunk when building statistics from arrays.
    copy_gram : bool, default True
        False lets ``fit_stats`` overwrite the stats' int32 counts with the
        float32 Gram, halving peak memory; the stats are then consumed.
    progress : bool, default False
        Show a tqdm bar over the (target, λ) steps.

    Attributes
    ----------
    coef_ : scipy.sparse.csr_matrix of shape (M, N)
        Mask-space weights (float32 or float64, as ``dtype``).
    intercept_ : float64 array of shape (M,)
        ``ȳ - μ · coef``, computed from the stored (rounded) ``coef_``.
    penalty_ : float64 array of shape (M,)
        Chosen λ per target.
    val_mse_ : float64 array of shape (M,)
        Validation MSE at the chosen λ.
    nnz_ : int64 array of shape (M,)
        Non-zero weights per target.
    n_iter_ : int64 array of shape (M,)
        Solver iterations per target over its path.
    gap_ : float64 array of shape (M,)
        Duality gap at the chosen λ over ``||y_c||²/n``.
    lambdas_ : float64 array of shape (M, n_lambdas)
        Each target's λ grid.
    n_fit_runs_, n_val_runs_ : int
    timings_ : dict
        Seconds spent on "stats", "gram" (standardising), "solve".
    """

    def __init__(
        self,
        solver: str = "fast",
        n_lambdas: int = 40,
        lambda_ratio: float = 1e-2,
        tol: float = 1e-4,
        max_iter: int = 2000,
        device: str = "cpu",
        dtype: str = "float32",
        n_threads: int | None = None,
        early_stopping: bool = True,
        patience: int = 5,
        gram: bool = True,
        target_batch: int | None = None,
        chunk_size: int = 4096,
        copy_gram: bool = True,
        progress: bool = False,
    ) -> None:
        self.solver = solver
        self.n_lambdas = n_lambdas
        self.lambda_ratio = lambda_ratio
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.dtype = dtype
        self.n_threads = n_threads
        self.early_stopping = early_stopping
        self.patience = patience
        self.gram = gram
        self.target_batch = target_batch
        self.chunk_size = chunk_size
        self.copy_gram = copy_gram
        self.progress = progress

    # ------------------------------------------------------------------ fit entries

    def fit(self, X: Any, Y: Any, X_val: Any, Y_val: Any) -> DatamodelLasso:
        """Fit from in-memory arrays.

        Parameters
        ----------
        X : bool or uint8 array of shape (n_fit, N)
            Fit-run masks.
        Y : float array of shape (n_fit, M)
            Fit-run margins.
        X_val : bool or uint8 array of shape (n_val, N)
        Y_val : float array of shape (n_val, M)

        Returns
        -------
        self
        """
        self._check_params()
        x_shape, y_shape = np.shape(X), np.shape(Y)
        if len(x_shape) != 2 or len(y_shape) != 2 or x_shape[0] != y_shape[0]:
            raise FitError(
                f"X of shape {x_shape} and Y of shape {y_shape} must be (runs, N) and "
                "(runs, M) with the same number of runs"
            )
        return self.fit_chunks(array_chunks(X, Y, self.chunk_size), X_val, Y_val)

    def fit_chunks(self, chunks: ChunkSource, X_val: Any, Y_val: Any) -> DatamodelLasso:
        """Fit from a source of fit-run chunks (one pass, or one per step if ``gram=False``).

        Parameters
        ----------
        chunks : callable returning an iterable of (masks (k, N), margins (k, M))
            Each call must yield the same fit runs.
        X_val : bool or uint8 array of shape (n_val, N)
        Y_val : float array of shape (n_val, M)

        Returns
        -------
        self
        """
        self._check_params()
        device = resolve_device(self.device)
        with torch_threads(self.n_threads):
            t0 = time.perf_counter()
            stats: GramStats | None = None
            for masks, margins in chunks():
                if stats is None:
                    stats = GramStats(
                        np.shape(masks)[1], np.shape(margins)[1],
                        gram=self.gram, device=device,
                    )
                stats.add(masks, margins)
            if stats is None:
                raise FitError("need at least 2 fit runs, got 0")
            stats_s = time.perf_counter() - t0
        self._fit_stats(stats, X_val, Y_val, chunks, copy=False)
        self.timings_["stats"] = stats_s
        return self

    def fit_stats(
        self, stats: GramStats, X_val: Any, Y_val: Any, chunks: ChunkSource | None = None
    ) -> DatamodelLasso:
        """Fit from prebuilt statistics of the fit runs.

        Parameters
        ----------
        stats : GramStats
            Built chunk by chunk by the caller (e.g. streamed from the database).
        X_val : bool or uint8 array of shape (n_val, N)
        Y_val : float array of shape (n_val, M)
        chunks : callable, optional
            Source of the fit runs; required when ``stats`` has no Gram.

        Returns
        -------
        self
        """
        self._check_params()
        self._fit_stats(stats, X_val, Y_val, chunks, copy=self.copy_gram)
        self.timings_["stats"] = 0.0
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predict margins of subsets.

        Parameters
        ----------
        X : bool or uint8 array of shape (n, N)

        Returns
        -------
        float64 array of shape (n, M)
            ``intercept_ + X @ coef_.T``.
        """
        x = np.asarray(X, dtype=np.float64)
        return np.asarray(self.intercept_[None, :] + (self.coef_ @ x.T).T)

    # ------------------------------------------------------------------ internals

    def _check_params(self) -> None:
        if self.solver not in _SOLVERS:
            raise UsageError(f"solver must be one of {_SOLVERS}, got {self.solver!r}")
        if self.dtype not in _DTYPES:
            raise UsageError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if isinstance(self.n_lambdas, bool) or not isinstance(self.n_lambdas, int) \
                or self.n_lambdas < 2:
            raise UsageError(f"n_lambdas must be an integer >= 2, got {self.n_lambdas!r}")
        if not 0.0 < float(self.lambda_ratio) < 1.0:
            raise UsageError(f"lambda_ratio must be in (0, 1), got {self.lambda_ratio!r}")
        if not float(self.tol) > 0.0:
            raise UsageError(f"tol must be > 0, got {self.tol!r}")
        if int(self.max_iter) < 1:
            raise UsageError(f"max_iter must be >= 1, got {self.max_iter!r}")
        if int(self.patience) < 1:
            raise UsageError(f"patience must be >= 1, got {self.patience!r}")
        if self.n_threads is not None and int(self.n_threads) < 1:
            raise UsageError(f"n_threads must be >= 1, got {self.n_threads!r}")
        if self.target_batch is not None and int(self.target_batch) < 1:
            raise UsageError(f"target_batch must be >= 1, got {self.target_batch!r}")
        if int(self.chunk_size) < 1:
            raise UsageError(f"chunk_size must be >= 1, got {self.chunk_size!r}")
        if self.solver == "reference" and not self.gram:
            raise UsageError("solver='reference' needs the Gram; use gram=True")

    def _fit_stats(
        self, stats: GramStats, X_val: Any, Y_val: Any, chunks: ChunkSource | None,
        copy: bool,
    ) -> None:
        device = resolve_device(self.device)
        dtype = _DTYPES[self.dtype]
        x_val, y_val = _check_val(X_val, Y_val, stats.n_features, stats.n_targets)
        if not stats.has_gram and chunks is None:
            raise UsageError("stats were built with gram=False: pass the chunk source too")
        with torch_threads(self.n_threads):
            t0 = time.perf_counter()
            prob = stats.standardize(dtype, copy=copy)
            prob = _to_device(prob, device)
            t1 = time.perf_counter()
            lam_max = prob.corr.abs().amax(dim=0).double().cpu().numpy()
            lambdas = lambda_grid(lam_max, self.n_lambdas, float(self.lambda_ratio))
            res = self._solve(prob, lambdas, x_val.to(device), y_val.to(device), chunks, dtype)
            t2 = time.perf_counter()
        self._store(res, prob, lambdas, x_val.shape[0])
        self.timings_ = {"gram": t1 - t0, "solve": t2 - t1}

    def _solve(
        self, prob: StandardProblem, lambdas: np.ndarray, x_val: torch.Tensor,
        y_val: torch.Tensor, chunks: ChunkSource | None, dtype: torch.dtype,
    ) -> PathResult:
        if self.solver == "reference":
            return reference_path(prob, lambdas, x_val, y_val)
        if prob.gram is not None:
            op: Callable[[torch.Tensor], torch.Tensor] = GramOperator(prob.gram)
        else:
            assert chunks is not None  # checked in _fit_stats
            op = StreamOperator(chunks, prob, dtype)
        bar = _progress_bar(self.progress, lambdas.size)
        try:
            return fista_path(
                op, prob, lambdas, x_val, y_val, dtype=dtype, tol=float(self.tol),
                max_iter=int(self.max_iter), early_stopping=bool(self.early_stopping),
                patience=int(self.patience), target_batch=self.target_batch,
                progress=None if bar is None else bar.update,
            )
        finally:
            if bar is not None:
                bar.close()

    def _store(
        self, res: PathResult, prob: StandardProblem, lambdas: np.ndarray, n_val: int
    ) -> None:
        """Map the chosen standardised weights to mask space and set the attributes."""
        n_feat, n_tgt = prob.corr.shape
        np_dtype = np.float32 if self.dtype == "float32" else np.float64
        sd = prob.sd.double().cpu().numpy()
        mu = prob.mu.double().cpu().numpy()
        vals = (res.vals / sd[res.rows]).astype(np_dtype)
        # coef_ is rounded to its dtype first and the intercept computed from the
        # rounded values, so intercept_ + X @ coef_ is exactly the fitted predictor.
        coef = sp.csr_matrix((vals, (res.cols, res.rows)), shape=(n_tgt, n_feat), dtype=np_dtype)
        coef.sum_duplicates()
        coef.eliminate_zeros()
        self.coef_ = coef
        self.intercept_ = prob.y_mean.double().cpu().numpy() - coef.astype(np.float64) @ mu
        self.penalty_ = res.penalty
        self.val_mse_ = res.val_mse
        self.nnz_ = np.diff(coef.indptr).astype(np.int64)
        self.n_iter_ = res.n_iter
        self.gap_ = res.gap
        self.lambdas_ = lambdas
        self.n_fit_runs_ = prob.n_runs
        self.n_val_runs_ = n_val
        self.n_capped_ = res.n_capped


# ---------------------------------------------------------------------- helpers


def _check_val(
    X_val: Any, Y_val: Any, n_feat: int, n_tgt: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the validation runs; return (uint8 (n_val, N), float64 (n_val, M))."""
    try:
        xv = np.asarray(X_val)
        yv = np.asarray(Y_val, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise FitError(f"validation arrays are not numeric: {e}") from e
    if xv.ndim != 2 or yv.ndim != 2:
        raise FitError(
            f"X_val and Y_val must be 2-D, got shapes {xv.shape} and {yv.shape}"
        )
    if xv.shape[1] != n_feat or yv.shape[1] != n_tgt or xv.shape[0] != yv.shape[0]:
        raise FitError(
            f"X_val {xv.shape} and Y_val {yv.shape} do not match N={n_feat} train "
            f"examples and M={n_tgt} targets with one row per validation run"
        )
    if xv.shape[0] < 2:
        raise FitError(f"need at least 2 validation runs, got {xv.shape[0]}")
    if not np.isfinite(yv).all():
        run, tgt = np.argwhere(~np.isfinite(yv))[0]
        raise FitError(f"Y_val has a non-finite value at validation run {run}, target {tgt}")
    if xv.dtype != np.bool_ and not (np.issubdtype(xv.dtype, np.integer)
                                     and ((xv == 0) | (xv == 1)).all()):
        raise InputError("X_val must be a bool or 0/1 integer mask array")
    return torch.from_numpy(xv.astype(np.uint8)), torch.from_numpy(yv)


def _to_device(prob: StandardProblem, device: torch.device) -> StandardProblem:
    if prob.corr.device == device:
        return prob
    return StandardProblem(
        gram=None if prob.gram is None else prob.gram.to(device),
        corr=prob.corr.to(device), y_var=prob.y_var.to(device), mu=prob.mu.to(device),
        sd=prob.sd.to(device), keep=prob.keep.to(device), y_mean=prob.y_mean.to(device),
        n_runs=prob.n_runs,
    )




def _progress_bar(show: bool, total: int) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm  # optional dependency, imported only when asked for

    return tqdm(total=total, desc="lasso path", unit="λ-step")

