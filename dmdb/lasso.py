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

from dmdb import fit_memory
from dmdb.devices import resolve_device, torch_threads
from dmdb.errors import FitError, InputError, UsageError
from dmdb.lasso_params import LassoParams
from dmdb.lasso_reference import reference_path
from dmdb.lasso_solvers import FastPath
from dmdb.lasso_stats import (
    ChunkSource,
    GramStats,
    PathResult,
    PathSolver,
    StandardProblem,
    lambda_grid,
)

__all__ = ["DatamodelLasso", "GramStats", "LassoParams", "StandardProblem", "array_chunks"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


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


class DatamodelLasso(LassoParams):
    """Per-target Lasso path with λ chosen on validation runs, in mask space.

    The parameters are those of :class:`~dmdb.lasso_params.LassoParams` (solver,
    n_lambdas, lambda_ratio, tol, max_iter, device, dtype, n_threads,
    early_stopping, patience, gram, target_batch, chunk_size, copy_gram,
    progress, gram_kernel), declared there once. As in scikit-learn, ``__init__`` only stores
    them; every ``fit*`` validates them, and :meth:`get_params` returns them.

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
    n_capped_ : int
        (target, λ) steps that stopped at ``max_iter`` above ``tol``.
    gap_ : float64 array of shape (M,)
        Duality gap at the chosen λ over ``||y_c||²/n``.
    lambdas_ : float64 array of shape (M, n_lambdas)
        Each target's λ grid.
    device_ : torch.device
        The device ``device`` named, resolved once per fit.
    memory_ : dmdb.fit_memory.MemoryEstimate
        The plan the fit ran by: Gram or Gram-free, the target batch, and the
        estimated bytes per phase (see :meth:`plan_memory`).
    memory_budget_ : float
        The budget in bytes it was planned for.
    gram_kernel_ : dmdb.gram.KernelChoice or None
        The kernel that counted ``XᵀX`` and why (with the measured times); None
        without the Gram.
    mean_ : float64 array of shape (N,)
        The fit runs' column means μ (the second-order stage centres by them).
    n_fit_runs_, n_val_runs_ : int
    timings_ : dict
        Seconds spent on "gram" (standardising), "solve" and "stats" (reading
        the fit runs into statistics; 0 for :meth:`fit_stats` on stats built by hand).
    """

    #: (N, M, validation runs) that ``memory_`` was planned for.
    _plan_key: tuple[int, ...] = ()

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
        self._start()
        x_shape, y_shape = np.shape(X), np.shape(Y)
        if len(x_shape) != 2 or len(y_shape) != 2 or x_shape[0] != y_shape[0]:
            raise FitError(
                f"X of shape {x_shape} and Y of shape {y_shape} must be (runs, N) and "
                "(runs, M) with the same number of runs"
            )
        chunks = array_chunks(X, Y, self.chunk_size)
        self.plan_memory(x_shape[1], y_shape[1], len(X_val), n_fit=x_shape[0])
        self._fit_stats(self._read(chunks), X_val, Y_val, chunks, copy=False)
        return self

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
        self._start()
        self._plan_key = ()  # plan anew for these chunks
        self._fit_stats(self._read(chunks, len(X_val)), X_val, Y_val, chunks, copy=False)
        return self

    def plan_memory(
        self, n_feat: int, n_tgt: int, n_val: int, *, n_fit: int | None = None,
        all_targets: int | None = None, gram: bool | None = None,
    ) -> fit_memory.MemoryEstimate:
        """Plan the fit inside the memory budget, before anything is allocated.

        Parameters
        ----------
        n_feat, n_tgt, n_val : int
            N, the fitted targets M, and the validation runs.
        n_fit : int, optional
            Fit runs, when known (the chunk size and the Newton steps depend on it).
        all_targets : int, optional
            Margins per run as read (a database's M, when a range is fitted).
        gram : bool, optional
            Plan with (True) or without (False) the Gram, no fallback; default:
            the ``gram`` parameter, falling back to Gram-free if the Gram does not fit.

        Returns
        -------
        dmdb.fit_memory.MemoryEstimate
            Also kept as ``memory_``; the fit uses its ``gram`` and ``target_batch``.

        Raises
        ------
        FitError
            The fit cannot run inside ``memory`` GB even one target at a time and
            Gram-free: one line with the estimate, the budget and what to change.
        """
        self._start()
        budget = (float(self.memory) * fit_memory.GB if self.memory is not None
                  else fit_memory.default_budget(str(self.device_)))
        chunk = self.chunk_size if n_fit is None else max(1, min(self.chunk_size, n_fit))
        shape = fit_memory.FitShape(
            n_train=n_feat, n_targets=n_tgt, n_val=n_val, chunk=chunk, all_targets=all_targets,
            dtype_bytes=8 if self.dtype == "float64" else 4, device=str(self.device_),
            newton=n_fit is not None and n_fit < n_feat)
        # The reference solver cannot go Gram-free, so its plan keeps the Gram or fails.
        plan = fit_memory.plan(shape, budget, gram=self.gram if gram is None else gram,
                               target_batch=self.target_batch, fallback=gram is None)
        if self.solver == "reference" and not plan.gram:
            raise FitError(
                f"the reference solver needs the Gram ({plan.parts['counts'] or 4 * n_feat**2:,}"
                f" bytes), which does not fit in --memory {budget / fit_memory.GB:.2f} GB; "
                "use the fast solver or raise --memory")
        self.memory_, self.memory_budget_ = plan, budget
        self._plan_key = (n_feat, n_tgt, n_val)
        return plan

    def read_stats(self, chunks: ChunkSource, n_val: int = 0) -> GramStats:
        """Read the fit runs into statistics: the first half of :meth:`fit_chunks`.

        A caller that checks the statistics before the solve (as ``dmdb fit`` does
        for constant targets) reads them here and passes them to :meth:`fit_stats`.

        Parameters
        ----------
        chunks : callable returning an iterable of (masks (k, N), margins (k, M))
        n_val : int
            Validation runs the solve will take (for the memory plan, unless
            :meth:`plan_memory` was called first).

        Returns
        -------
        GramStats
            On ``device``, with the Gram unless ``gram=False`` or the memory plan
            went Gram-free; ``seconds`` is the time the pass took.
        """
        self._start()
        return self._read(chunks, n_val)

    def fit_stats(
        self, stats: GramStats, X_val: Any, Y_val: Any, chunks: ChunkSource | None = None
    ) -> DatamodelLasso:
        """Fit from prebuilt statistics of the fit runs.

        Parameters
        ----------
        stats : GramStats
            From :meth:`read_stats`, or built chunk by chunk by the caller.
        X_val : bool or uint8 array of shape (n_val, N)
        Y_val : float array of shape (n_val, M)
        chunks : callable, optional
            Source of the fit runs; required when ``stats`` has no Gram.

        Returns
        -------
        self
        """
        self._start()
        self._fit_stats(stats, X_val, Y_val, chunks, copy=self.copy_gram)
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

    def _start(self) -> None:
        """What every fit entry does first: check the parameters, resolve the device."""
        self._validate_params()
        self.device_ = resolve_device(self.device)

    def _read(self, chunks: ChunkSource, n_val: int = 0) -> GramStats:
        """The one pass over the fit runs that builds the statistics."""
        with torch_threads(self.n_threads):
            t0 = time.perf_counter()
            stats: GramStats | None = None
            for masks, margins in chunks():
                if stats is None:
                    n_feat, n_tgt = np.shape(masks)[1], np.shape(margins)[1]
                    plan = getattr(self, "memory_", None)
                    if plan is None or self._plan_key[:2] != (n_feat, n_tgt):
                        plan = self.plan_memory(n_feat, n_tgt, n_val)
                    stats = GramStats(
                        n_feat, n_tgt,
                        gram=plan.gram, device=self.device_, gram_kernel=self.gram_kernel,
                    )
                stats.add(masks, margins)
            if stats is None:
                raise FitError("need at least 2 fit runs, got 0")
            stats.seconds = time.perf_counter() - t0
        return stats

    def _fit_stats(
        self, stats: GramStats, X_val: Any, Y_val: Any, chunks: ChunkSource | None,
        copy: bool,
    ) -> None:
        dtype = _DTYPES[self.dtype]
        x_val, y_val = _check_val(X_val, Y_val, stats.n_features, stats.n_targets)
        if not stats.has_gram and chunks is None:
            raise UsageError("stats were built with gram=False: pass the chunk source too")
        if self._plan_key != (stats.n_features, stats.n_targets, len(x_val)):
            # The solve's share depends on the validation runs: plan its batch for them.
            self.plan_memory(stats.n_features, stats.n_targets, len(x_val),
                             n_fit=stats.n_runs, gram=stats.has_gram)
        with torch_threads(self.n_threads):
            t0 = time.perf_counter()
            prob = _to_device(stats.standardize(dtype, copy=copy), self.device_)
            t1 = time.perf_counter()
            lam_max = prob.corr.abs().amax(dim=0).double().cpu().numpy()
            lambdas = lambda_grid(lam_max, self.n_lambdas, float(self.lambda_ratio))
            res = self._solve(prob, lambdas, x_val.to(self.device_), y_val.to(self.device_),
                              self._path_solver(dtype, chunks))
            t2 = time.perf_counter()
        self._store(res, prob, lambdas, x_val.shape[0])
        self.gram_kernel_ = stats.kernel_choice
        self.timings_ = {"gram": t1 - t0, "solve": t2 - t1, "stats": stats.seconds}

    def _path_solver(self, dtype: torch.dtype, chunks: ChunkSource | None) -> PathSolver:
        """The solver ``solver`` names; both take the same knobs (see :meth:`_solve`)."""
        if self.solver == "reference":
            return reference_path
        return FastPath(dtype=dtype, target_batch=self.memory_.target_batch, chunks=chunks)

    def _solve(
        self, prob: StandardProblem, lambdas: np.ndarray, x_val: torch.Tensor,
        y_val: torch.Tensor, path: PathSolver,
    ) -> PathResult:
        bar = _progress_bar(self.progress, lambdas.size)
        try:
            return path(
                prob, lambdas, x_val, y_val, tol=float(self.tol), max_iter=int(self.max_iter),
                early_stopping=bool(self.early_stopping), patience=int(self.patience),
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
        self.mean_ = mu
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

