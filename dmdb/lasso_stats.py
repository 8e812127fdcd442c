"""Sufficient statistics of (mask, margins) runs for the datamodel Lasso.

The fit runs are read once, in chunks, into exact integer co-occurrence counts
(the Gram ``XᵀX`` of the 0/1 masks), column counts and float64 sums of the
margins. Standardising (centring by the column means, scaling by the population
sd) is then done on these statistics, never on a copy of ``X``.

The module also holds what both path solvers share (:mod:`dmdb.lasso_reference`,
the plain oracle, and :mod:`dmdb.lasso_solvers`, the fast one): the problem they
solve (:class:`StandardProblem`), their one signature (:class:`PathSolver`), their
result (:class:`PathResult`), the λ grid and the standardised validation runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from dmdb.errors import FitError, InputError
from dmdb.gram import KernelChoice, add_gram, choose_kernel
from dmdb.gram import count_gram as _count_gram  # noqa: F401  (the old private path, for tests)

#: Rows of the Gram centred at once; bounds the float64 scratch to ``8 * block * N`` bytes.
_CENTRE_BLOCK = 256
#: Runs per float64 product in ``Xᵀy`` (and per block of standardised validation runs).
_XTY_RUNS = 512


def _as_tensor(a: object) -> torch.Tensor:
    """``torch.as_tensor``, copying read-only arrays (e.g. Arrow buffers) instead of warning."""
    if isinstance(a, np.ndarray) and not a.flags.writeable:
        a = np.array(a)
    return torch.as_tensor(a)


def _as_mask_tensor(masks: object, device: torch.device) -> torch.Tensor:
    """Return ``masks`` as a uint8 0/1 tensor of shape (k, N) on ``device``."""
    t = _as_tensor(masks)
    if t.dim() != 2:
        raise InputError(f"masks must be 2-D (runs, train examples), got shape {tuple(t.shape)}")
    if t.dtype == torch.bool:
        return t.to(device=device, dtype=torch.uint8)
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise InputError(f"masks must be bool or integer 0/1, got dtype {t.dtype}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > 1):
        raise InputError("masks must contain only 0 and 1")
    return t.to(device=device, dtype=torch.uint8)


def _as_margin_tensor(margins: object, device: torch.device) -> torch.Tensor:
    """Return ``margins`` as a float64 tensor of shape (k, M), checking finiteness."""
    t = _as_tensor(margins)
    if t.dim() != 2:
        raise InputError(f"margins must be 2-D (runs, targets), got shape {tuple(t.shape)}")
    if not t.dtype.is_floating_point:
        t = t.to(torch.float64)
    t = t.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        bad = torch.nonzero(~torch.isfinite(t))[0].tolist()
        raise FitError(
            f"margins contain a non-finite value (run {bad[0]} of the chunk, target {bad[1]})"
        )
    return t


class GramStats:
    """Sufficient statistics of the fit runs, accumulated chunk by chunk.

    Parameters
    ----------
    n_features : int
        N, the number of training examples (mask length).
    n_targets : int
        M, the number of targets (margins per run).
    gram : bool, default True
        Accumulate the N x N co-occurrence counts. Set False for the Gram-free
        solver when ``4 * N**2`` bytes do not fit in memory.
    device : str or torch.device, default "cpu"
        Where the statistics live and the chunk products run.
    gram_kernel : str, default "auto"
        How the co-occurrence counts are multiplied (:mod:`dmdb.gram`): "auto"
        measures the kernels on the first chunk's shape, once per process;
        "int8", "float32", "bfloat16" or "float16" forces one. Every kernel
        gives the same, exact counts.

    Attributes
    ----------
    n_runs : int
        Number of fit runs added so far.
    col_counts : int64 tensor of shape (N,)
        How many fit runs contain each training example.
    gram_counts : int32 tensor of shape (N, N) or None
        ``XᵀX``, exact co-occurrence counts (None when ``gram=False``).
    xty : float64 tensor of shape (N, M), or None once consumed
        ``Xᵀ(Y - shift)``.
    y_sum, y_sq : float64 tensors of shape (M,)
        ``Σ (y - shift)`` and ``Σ (y - shift)²``.
    shift : float64 tensor of shape (M,)
        The first chunk's margin means; subtracting it before summing keeps the
        float64 sums free of cancellation when margins have a large mean.
    kernel_choice : KernelChoice or None
        The kernel that counted, and why (None until a chunk is added, and without the Gram).
    """

    def __init__(
        self,
        n_features: int,
        n_targets: int,
        *,
        gram: bool = True,
        device: str | torch.device = "cpu",
        gram_kernel: str = "auto",
    ) -> None:
        self.n_features = int(n_features)
        self.gram_kernel = gram_kernel
        self.kernel_choice: KernelChoice | None = None
        self.n_targets = int(n_targets)
        self.device = torch.device(device)
        self.n_runs = 0
        self.col_counts = torch.zeros(self.n_features, dtype=torch.int64, device=self.device)
        self.gram_counts: torch.Tensor | None = (
            torch.zeros(self.n_features, self.n_features, dtype=torch.int32, device=self.device)
            if gram
            else None
        )
        self.xty: torch.Tensor | None = torch.zeros(
            self.n_features, self.n_targets, dtype=torch.float64, device=self.device
        )
        self.y_sum = torch.zeros(self.n_targets, dtype=torch.float64, device=self.device)
        self.y_sq = torch.zeros(self.n_targets, dtype=torch.float64, device=self.device)
        self.shift: torch.Tensor | None = None
        self.consumed = False
        #: Seconds spent reading the fit runs into these statistics (set by
        #: :meth:`dmdb.lasso.DatamodelLasso.read_stats`; 0 for stats built by hand).
        self.seconds = 0.0

    def constant_targets(self) -> np.ndarray:
        """Indices of the targets with the same margin in every fit run added so far.

        A target counts as constant when its variance over the fit runs is at most
        ``1e-12 (1 + |ȳ|)²``: what is left there is float32 rounding of the stored
        margins, not a signal a datamodel could fit.

        Returns
        -------
        int64 array of shape (n_constant,)
        """
        if self.shift is None or self.n_runs == 0:
            return np.zeros(0, dtype=np.int64)
        mean_c = self.y_sum / self.n_runs
        var = self.y_sq / self.n_runs - mean_c * mean_c
        level = (1.0 + (self.shift + mean_c).abs()) ** 2
        return torch.nonzero(var <= 1e-12 * level).squeeze(1).cpu().numpy()

    def state(self) -> dict[str, Any]:
        """The statistics as tensors and plain values, for a stats file.

        Returns
        -------
        dict
            ``n_features``, ``n_targets``, ``n_runs``, the kernel's name, and the
            tensors ``col_counts``, ``gram_counts`` (or None), ``xty``, ``y_sum``,
            ``y_sq`` and ``shift``, on the CPU.
        """
        if self.consumed or self.xty is None or self.shift is None:
            raise FitError("these GramStats are consumed or empty; nothing to save")
        cpu = torch.device("cpu")
        return {
            "n_features": self.n_features, "n_targets": self.n_targets, "n_runs": self.n_runs,
            "kernel": None if self.kernel_choice is None else self.kernel_choice.kernel,
            "col_counts": self.col_counts.to(cpu),
            "gram_counts": None if self.gram_counts is None else self.gram_counts.to(cpu),
            "xty": self.xty.to(cpu), "y_sum": self.y_sum.to(cpu), "y_sq": self.y_sq.to(cpu),
            "shift": self.shift.to(cpu),
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], *, targets: tuple[int, int] | None = None,
        device: str | torch.device = "cpu",
    ) -> GramStats:
        """Statistics from :meth:`state`, for the targets ``lo:hi`` only if given.

        The tensors are used as they are where they already live on ``device`` (a
        memory-mapped file stays mapped until the Gram is standardised over it).
        """
        lo, hi = targets if targets is not None else (0, int(state["n_targets"]))
        dev = torch.device(device)
        out = cls(int(state["n_features"]), hi - lo, gram=False, device="meta")
        out.device = dev
        out.n_runs = int(state["n_runs"])
        out.col_counts = state["col_counts"].to(dev)
        gram = state["gram_counts"]
        out.gram_counts = None if gram is None else gram.to(dev)
        out.xty = state["xty"][:, lo:hi].to(dev).contiguous()
        out.y_sum, out.y_sq, out.shift = (state[k][lo:hi].to(dev).clone()
                                          for k in ("y_sum", "y_sq", "shift"))
        if state.get("kernel"):
            out.kernel_choice = KernelChoice(state["kernel"], "computed with the saved stats")
        return out

    @property
    def has_gram(self) -> bool:
        """Whether the N x N co-occurrence counts are accumulated."""
        return self.gram_counts is not None

    def add(self, masks: object, margins: object) -> GramStats:
        """Add a chunk of fit runs.

        Parameters
        ----------
        masks : bool or uint8 array of shape (k, N)
            0/1 subset indicators of the chunk's runs.
        margins : float array of shape (k, M)
            The runs' margins on every target.

        Returns
        -------
        self
        """
        if self.consumed:
            raise FitError("these GramStats were consumed by a fit with copy_gram=False")
        a = _as_mask_tensor(masks, self.device)
        y = _as_margin_tensor(margins, self.device)
        if a.shape[1] != self.n_features or y.shape[1] != self.n_targets:
            raise InputError(
                f"chunk shapes {tuple(a.shape)} and {tuple(y.shape)} do not match "
                f"N={self.n_features} train examples and M={self.n_targets} targets"
            )
        if a.shape[0] != y.shape[0]:
            raise InputError(
                f"chunk has {a.shape[0]} masks but {y.shape[0]} rows of margins"
            )
        if a.shape[0] == 0:
            return self
        if self.shift is None:
            self.shift = y.mean(dim=0)
        yc = y - self.shift
        self.n_runs += a.shape[0]
        if self.n_runs >= 2**31:
            raise FitError("more than 2**31 fit runs overflow the int32 co-occurrence counts")
        if self.gram_counts is not None:
            if self.kernel_choice is None:
                self.kernel_choice = choose_kernel(
                    self.gram_kernel, self.device, self.n_features, a.shape[0])
            add_gram(self.gram_counts, a, self.kernel_choice.kernel)
        # Xᵀy and the column counts in float64 (exact), _XTY_RUNS runs at a time: the
        # float64 copy of the masks is the scratch, 8 * _XTY_RUNS * N bytes, not 8 * k * N
        # (a.sum(dtype=int64) would make an int64 copy of the whole chunk).
        assert self.xty is not None  # only consumed stats lack it, refused above
        for lo in range(0, a.shape[0], _XTY_RUNS):
            part = a[lo : lo + _XTY_RUNS].to(torch.float64)
            self.xty += part.T @ yc[lo : lo + _XTY_RUNS]
            self.col_counts += part.sum(dim=0).to(torch.int64)
            del part
        self.y_sum += yc.sum(dim=0)
        self.y_sq += (yc * yc).sum(dim=0)
        return self

    def standardize(
        self, dtype: torch.dtype = torch.float32, *, copy: bool = True
    ) -> StandardProblem:
        """Centre and scale the statistics into the standardised Lasso problem.

        Parameters
        ----------
        dtype : torch.float32 or torch.float64
            dtype of the returned Gram and correlations; centring is in float64.
        copy : bool, default True
            With ``copy=False`` and float32, the standardised Gram is written
            over the int32 counts (same size), so peak memory is ``4 N²`` bytes
            instead of ``8 N²``; these stats are then consumed.

        Returns
        -------
        StandardProblem

        Raises
        ------
        FitError
            Fewer than 2 fit runs, or a target constant over the fit runs.
        """
        n = self.n_runs
        if n < 2:
            raise FitError(f"need at least 2 fit runs, got {n}")
        if self.consumed:
            raise FitError("these GramStats were consumed by a fit with copy_gram=False")
        assert self.shift is not None  # n >= 2 implies a chunk was added
        mu = self.col_counts.to(torch.float64) / n
        # Binary columns: E[x²] = E[x], so the population variance is μ(1 - μ).
        var = (mu * (1.0 - mu)).clamp_min(0.0)
        keep = self.col_counts.gt(0) & self.col_counts.lt(n)
        sd = torch.where(keep, var.sqrt(), torch.ones_like(var))
        y_mean_c = self.y_sum / n
        y_var = self.y_sq / n - y_mean_c * y_mean_c
        const = self.constant_targets()
        if len(const):
            j = int(const[0])
            raise FitError(
                f"target {j} is constant over the {n} fit runs; a datamodel cannot be fitted "
                "to it (drop the target or add runs)"
            )
        # c = (Xᵀy/n - μ ȳᵀ) / σ, in place on Xᵀy when the stats are consumed: no
        # float64 N x M temporaries beside it.
        assert self.xty is not None
        c = self.xty if not copy else self.xty.clone()
        c.div_(n).addr_(mu, y_mean_c, alpha=-1.0).div_(sd[:, None])
        c[~keep] = 0.0
        corr = c.to(dtype)
        del c
        gram = None
        if self.gram_counts is not None:
            gram = self._centred_gram(mu, sd, keep, dtype, copy)
        if not copy:
            self.xty = None
            self.consumed = True
        return StandardProblem(
            gram=gram,
            corr=corr,
            y_var=y_var,
            mu=mu,
            sd=sd,
            keep=keep,
            y_mean=self.shift + y_mean_c,
            n_runs=n,
        )

    def _centred_gram(
        self,
        mu: torch.Tensor,
        sd: torch.Tensor,
        keep: torch.Tensor,
        dtype: torch.dtype,
        copy: bool,
    ) -> torch.Tensor:
        """Return ``(K/n - μμᵀ) / (σσᵀ)`` with dropped columns zeroed, row block by row block."""
        counts = self.gram_counts
        assert counts is not None
        n = self.n_runs
        n_feat = self.n_features
        inplace = (not copy) and dtype == torch.float32
        out = counts.view(torch.float32) if inplace else torch.empty(
            n_feat, n_feat, dtype=dtype, device=self.device
        )
        inv_sd = torch.where(keep, 1.0 / sd, torch.zeros_like(sd))
        for lo in range(0, n_feat, _CENTRE_BLOCK):
            hi = min(lo + _CENTRE_BLOCK, n_feat)
            # Read the block of counts before overwriting it (same storage when inplace).
            block = counts[lo:hi].to(torch.float64) / n
            block -= mu[lo:hi, None] * mu[None, :]
            block *= inv_sd[lo:hi, None] * inv_sd[None, :]
            out[lo:hi] = block.to(dtype)
        if inplace:
            self.gram_counts = None
            self.consumed = True
        return out


@dataclass
class StandardProblem:
    """The standardised multi-target Lasso problem built from :class:`GramStats`.

    With ``X_s = (X - μ) / σ`` and ``y_c = y - ȳ`` over the n fit runs, target j
    minimises ``½ wᵀ C w - c_jᵀ w + ½ v_j + λ ||w||₁``, which equals
    ``(1/(2n)) ||y_c - X_s w||² + λ ||w||₁``.

    Attributes
    ----------
    gram : tensor of shape (N, N) or None
        ``C = X_sᵀ X_s / n``; rows and columns of dropped (constant) examples are 0.
    corr : tensor of shape (N, M)
        ``c = X_sᵀ y_c / n``.
    y_var : float64 tensor of shape (M,)
        ``v = ||y_c||² / n``.
    mu, sd : float64 tensors of shape (N,)
        Fit-run column means and population sds (sd is 1 for dropped columns).
    keep : bool tensor of shape (N,)
        Columns that vary over the fit runs.
    y_mean : float64 tensor of shape (M,)
        Fit-run margin means ȳ.
    n_runs : int
        Number of fit runs n.
    """

    gram: torch.Tensor | None
    corr: torch.Tensor
    y_var: torch.Tensor
    mu: torch.Tensor
    sd: torch.Tensor
    keep: torch.Tensor
    y_mean: torch.Tensor
    n_runs: int


# ----------------------------------------------------------------------------
# What every path solver shares: its input, its one signature, its result
# ----------------------------------------------------------------------------

#: A re-iterable source of fit-run chunks: each call yields the same runs as
#: ``(masks (k, N), margins (k, M))`` pairs, in any chunking.
ChunkSource = Callable[[], Iterable[tuple[Any, Any]]]


@dataclass
class PathResult:
    """Per-target outcome of a λ path in standardised space.

    Attributes
    ----------
    rows, cols, vals : arrays of the chosen weights' non-zeros
        Feature index, target index and standardised weight.
    penalty : float64 array of shape (M,)
        Chosen λ per target.
    val_mse : float64 array of shape (M,)
        Validation MSE at the chosen λ.
    gap : float64 array of shape (M,)
        Duality gap at the chosen λ over ||y_c||²/n.
    n_iter : int64 array of shape (M,)
        Iterations (FISTA steps or CD sweeps) over the whole path.
    n_capped : int
        (target, λ) steps that ended at ``max_iter`` above the gap tolerance.
    path : list of arrays of shape (N, M), or None
        Every λ's weights, only when asked for (tests).
    """

    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    penalty: np.ndarray
    val_mse: np.ndarray
    gap: np.ndarray
    n_iter: np.ndarray
    n_capped: int = 0
    path: list[np.ndarray] | None = field(default=None)

    @classmethod
    def empty(cls, n_tgt: int) -> PathResult:
        """A result for ``n_tgt`` targets with nothing chosen yet (validation MSE inf)."""
        return cls(
            rows=np.zeros(0, np.int64),
            cols=np.zeros(0, np.int64),
            vals=np.zeros(0),
            penalty=np.zeros(n_tgt),
            val_mse=np.full(n_tgt, np.inf),
            gap=np.zeros(n_tgt),
            n_iter=np.zeros(n_tgt, np.int64),
        )


class PathSolver(Protocol):
    """The one signature of a path solver, as scikit-learn's ``enet_path``/``lasso_path``.

    The estimator calls whichever solver it holds with the same knobs
    (``tol=self.tol, max_iter=self.max_iter, ...``), and every solver honours them:

    Parameters
    ----------
    prob : StandardProblem
    lambdas : float64 array of shape (M, K)
        Decreasing λ grid per target.
    x_val : uint8 tensor of shape (n_val, N)
    y_val : float64 tensor of shape (n_val, M)
    tol : float
        A λ counts as solved at duality gap ``<= tol · ||y_c||²/n`` (scikit-learn's
        rule, which bounds ``P - P*`` by as much).
    max_iter : int
        Most iterations per λ (FISTA steps or CD sweeps) before moving on regardless;
        such steps are counted in ``PathResult.n_capped``.
    early_stopping : bool
        End a target's path once its validation MSE has not improved for
        ``patience`` consecutive λ.
    patience : int
    progress : callable(int), optional
        Called with the number of (target, λ) steps completed.
    keep_path : bool
        Also return every λ's weights (tests only: K·N·M values).
    """

    def __call__(
        self, prob: StandardProblem, lambdas: np.ndarray, x_val: torch.Tensor,
        y_val: torch.Tensor, *, tol: float, max_iter: int, early_stopping: bool,
        patience: int, progress: Callable[[int], None] | None = None, keep_path: bool = False,
    ) -> PathResult: ...


def lambda_grid(lam_max: np.ndarray, n_lambdas: int, lambda_ratio: float) -> np.ndarray:
    """Return the per-target λ grids, log-spaced from λ_max down to λ_max·ratio.

    Parameters
    ----------
    lam_max : array of shape (M,)
    n_lambdas : int
    lambda_ratio : float

    Returns
    -------
    float64 array of shape (M, n_lambdas)
    """
    steps = lambda_ratio ** (np.arange(n_lambdas) / (n_lambdas - 1))
    return np.asarray(lam_max, dtype=np.float64)[:, None] * steps[None, :]


def standardize_val(
    prob: StandardProblem, x_val: torch.Tensor, y_val: torch.Tensor, dtype: torch.dtype,
    *, transposed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardise validation runs with the *fit* statistics.

    Parameters
    ----------
    x_val : uint8 tensor of shape (n_val, N)
    y_val : float64 tensor of shape (n_val, M)
    transposed : bool
        Return ``xs`` as (N, n_val), written so in blocks: the solver's layout, with
        no second n_val x N copy.

    Returns
    -------
    xs : tensor of shape (n_val, N), or (N, n_val) if transposed
        ``(x - μ) / σ``, 0 in dropped columns.
    yc : tensor of shape (n_val, M)
        ``y - ȳ``.
    """
    dev = prob.corr.device
    inv_sd = torch.where(prob.keep, 1.0 / prob.sd, torch.zeros_like(prob.sd))
    n_val, n_feat = x_val.shape
    xs = torch.empty((n_feat, n_val) if transposed else (n_val, n_feat), dtype=dtype, device=dev)
    for lo in range(0, n_val, _XTY_RUNS):  # float64 scratch: 8 * _XTY_RUNS * N bytes
        block = x_val[lo : lo + _XTY_RUNS].to(dev, torch.float64)
        part = ((block - prob.mu) * inv_sd).to(dtype)
        if transposed:
            xs[:, lo : lo + _XTY_RUNS] = part.T
        else:
            xs[lo : lo + _XTY_RUNS] = part
    yc = (y_val.to(dev, torch.float64) - prob.y_mean).to(dtype)
    return xs, yc
