"""The fast path solver: batched FISTA (or active-set Newton) over all targets in torch.

:class:`FastPath` is the fast one of the two path solvers; the other, the plain
oracle, is :func:`~dmdb.lasso_reference.reference_path`. Both take the one
signature of :class:`~dmdb.lasso_stats.PathSolver` (the same ``tol``,
``max_iter``, ``early_stopping`` and ``patience``) and return a
:class:`~dmdb.lasso_stats.PathResult`.

:func:`fista_path` is accelerated proximal gradient (FISTA) batched over all
targets; when there are fewer fit runs than features (rank-deficient Gram) it
takes active-set Newton steps instead, with FISTA as the fallback. Each target
walks its own λ path; a target that reaches the gap tolerance moves to its next
λ at once, so the batch stays full and one matmul ``C @ W`` per iteration serves
every target. Converged-for-good targets leave the batch and queued targets
(``target_batch``) take their place.

The stopping rule is the reference solver's and scikit-learn's: duality gap
``G ≤ tol · v`` with ``v = ||y_c||²/n``, which certifies ``P - P* ≤ tol · v``
(the gap is defined in :mod:`dmdb.lasso_reference`). Reported gaps are ``G / v``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# The shared types and the reference solver keep their old import path here.
from dmdb.lasso_reference import lasso_cd as lasso_cd
from dmdb.lasso_reference import reference_path as reference_path
from dmdb.lasso_stats import ChunkSource as ChunkSource
from dmdb.lasso_stats import PathResult as PathResult
from dmdb.lasso_stats import StandardProblem
from dmdb.lasso_stats import lambda_grid as lambda_grid
from dmdb.lasso_stats import standardize_val as standardize_val

#: float32 gap estimates differed from float64 recomputations by at most 1% here,
#: so float32 aims at 0.9 tol to certify tol (0.5 cost 15% more steps for nothing).
_F32_TOL_FACTOR = 0.9

#: Warm start x_k + e (x_k - x_{k-1}) at λ_{k+1}. Measured (n=10k, N=2k, M=200,
#: steps over the path): e=0 72.5k, 0.5 68.2k, 1 56.4k, 1.5 65.6k.
_EXTRAPOLATE = 1.0

#: Per-target step: the curvature q = dᵀCd/|d|² of each step comes free from
#: x C and y C. A step with q·step > 1 is rejected (row reverted, momentum
#: reset) and the step set to _SHRINK/q; accepted steps grow by _GROW, up to
#: _MAXSTEP/L. On sparse supports the local curvature is well below the global
#: L, so this cut total steps from 56.4k to 37.3k (measured as above).
_SHRINK = 0.9
_GROW = 1.02
_MAXSTEP = 3.0

#: FISTA steps before a row whose Newton step failed tries Newton again.
_NEWTON_RETRY = 10

#: Largest estimated relative error of a float32 support solve (else float64).
_F32_ERROR = 1e-4

#: Ridge added to C_AA for the factorisation; iterative refinement removes its bias.
_RIDGE = 1e-9
_REFINE = 2

#: Step lengths tried along the Newton direction (the objective is convex along it).
_THETAS = (1.0, 0.5, 0.25, 0.125, 1.0 / 16, 1.0 / 64)

#: Most float64 entries (rows x |A|²) in one batch of support solves (32 MB).
_SOLVE_BUDGET = 1 << 22


# ----------------------------------------------------------------------------
# Operators C @ W: with the Gram, or streaming the fit runs (Gram-free)
# ----------------------------------------------------------------------------


#: Below this fraction of non-zeros, a CPU product W @ A takes W as a CSR matrix.
#: Measured (2 threads, B = 100, N = 5,000, A = the N x N Gram): dense 34 ms at any
#: density; CSR 1 ms at 0.1%, 11 ms at 1-2%, 39 ms at 5%. Early in the path,
#: weights are that sparse for about 40% of the steps.
_SPARSE_DENSITY = 0.03


def sparse_aware_mm(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``w @ a``, with ``w`` as a CSR matrix when it is sparse enough and on the CPU."""
    if w.device.type == "cpu" and w.shape[0] > 1:
        if int(torch.count_nonzero(w)) < _SPARSE_DENSITY * w.numel():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
                return torch.sparse.mm(w.to_sparse_csr(), a)
    return w @ a


class GramOperator:
    """``W -> W C`` with the standardised Gram in memory (W is (B, N), C symmetric)."""

    def __init__(self, gram: torch.Tensor) -> None:
        self.gram = gram

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return sparse_aware_mm(w, self.gram)


class StreamOperator:
    """``W -> W C`` without the Gram: two matmuls per chunk of fit runs.

    ``W C = (W X_sᵀ) X_s / n`` with ``X_s = (X - μ)/σ``. Each chunk is centred
    on the fly in the k x B product (``X Z - μᵀZ``), never as a copy of X; this
    also avoids the cancellation an uncentred product would suffer (its top
    eigenvalue is about N/4).

    Parameters
    ----------
    chunks : callable returning an iterable of (masks (k, N), margins (k, M))
        Must yield the same fit runs, in any chunking, every time it is called.
    prob : StandardProblem
    dtype : torch dtype of the products
    """

    def __init__(self, chunks: ChunkSource, prob: StandardProblem, dtype: torch.dtype) -> None:
        self.chunks = chunks
        self.n = prob.n_runs
        self.device = prob.corr.device
        self.dtype = dtype
        self.mu = prob.mu.to(dtype)
        self.inv_sd = torch.where(prob.keep, 1.0 / prob.sd, torch.zeros_like(prob.sd)).to(dtype)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        z = w * self.inv_sd  # (B, N)
        zmu = z @ self.mu  # (B,)
        acc = torch.zeros_like(z)
        seen = 0
        for masks, _ in self.chunks():
            x = torch.as_tensor(masks).to(self.device, self.dtype)
            u = x @ z.T - zmu  # (k, B): the chunk's centred predictions
            acc += u.T @ x - u.sum(dim=0)[:, None] * self.mu
            seen += x.shape[0]
        if seen != self.n:
            raise ValueError(f"chunk source yielded {seen} runs, the statistics have {self.n}")
        return acc * (self.inv_sd / self.n)


def lipschitz(
    op: Callable[[torch.Tensor], torch.Tensor], n_feat: int, dtype: torch.dtype,
    device: torch.device, n_iter: int = 10,
) -> float:
    """Estimate the largest eigenvalue of C by block power iteration.

    The largest Ritz value of an 8-vector block can only undershoot, so it is
    inflated by 2%. An undershoot cannot spoil the result (stopping is on the
    certified gap), only slow FISTA, and the monotone restart keeps it stable;
    besides, each row's step adapts to the curvature it meets. Ten iterations
    land within 5% of thirty (N = 5,000: 2.24 vs 2.34) at a third of the cost
    (0.14 s vs 0.45 s, a memory-bound N x N product each).
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(n_feat, 8, generator=gen, dtype=torch.float64)
    for _ in range(n_iter):
        q, _ = torch.linalg.qr(op(q.T.to(device, dtype)).T.double().cpu())
    cq = op(q.T.to(device, dtype)).double().cpu()  # (8, N)
    ritz = torch.linalg.eigvalsh(cq @ q)
    return float(ritz.max()) * 1.02


# ----------------------------------------------------------------------------
# Fast batched FISTA path
# ----------------------------------------------------------------------------


@dataclass
class _Batch:
    """State of the targets in the FISTA batch; 2-D fields are (B, N), one row a target."""

    tgt: torch.Tensor  # (B,) target indices
    alive: torch.Tensor  # (B,) False once the target's path is finished
    k: torch.Tensor  # (B,) current λ index
    x: torch.Tensor  # iterate
    cx: torch.Tensor  # x C
    x_old: torch.Tensor
    cx_old: torch.Tensor
    sol: torch.Tensor  # previous λ's solution, for extrapolated warm starts
    csol: torch.Tensor
    c: torch.Tensor  # the targets' correlations c_j
    t: torch.Tensor  # (B,) FISTA momentum parameter
    p_old: torch.Tensor  # (B,) primal at the previous iterate, for the monotone restart
    step: torch.Tensor  # (B,) per-target step size
    it_lam: torch.Tensor  # (B,) steps at the current λ
    best_w: torch.Tensor
    best_mse: torch.Tensor
    best_k: torch.Tensor
    best_gap: torch.Tensor
    n_iter: torch.Tensor
    newton_at: torch.Tensor  # (B,) step at this λ of the row's next Newton attempt

    def select(self, keep: torch.Tensor) -> _Batch:
        return _Batch(**{name: val[keep] for name, val in self.__dict__.items()})

    @staticmethod
    def cat(a: _Batch, b: _Batch) -> _Batch:
        return _Batch(**{name: torch.cat([va, getattr(b, name)])
                         for name, va in a.__dict__.items()})


def _new_batch(tgt: torch.Tensor, corr_t: torch.Tensor, step: float) -> _Batch:
    b, n_feat = tgt.numel(), corr_t.shape[1]
    dtype, dev = corr_t.dtype, corr_t.device

    def zeros() -> torch.Tensor:
        return torch.zeros(b, n_feat, dtype=dtype, device=dev)

    long0 = torch.zeros(b, dtype=torch.int64, device=dev)
    return _Batch(
        tgt=tgt, alive=torch.ones(b, dtype=torch.bool, device=dev), k=long0.clone(),
        x=zeros(), cx=zeros(), x_old=zeros(), cx_old=zeros(), sol=zeros(), csol=zeros(),
        c=corr_t[tgt], t=torch.ones(b, dtype=dtype, device=dev),
        p_old=torch.full((b,), math.inf, dtype=dtype, device=dev),
        step=torch.full((b,), step, dtype=dtype, device=dev),
        it_lam=long0.clone(), best_w=zeros(),
        best_mse=torch.full((b,), math.inf, dtype=torch.float64, device=dev),
        best_k=long0.clone(), best_gap=torch.zeros(b, dtype=torch.float64, device=dev),
        n_iter=long0.clone(), newton_at=long0.clone(),
    )


def _gap(st: _Batch, v: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Primal value and duality gap over ``v = ||y_c||²/n`` of every row of the batch."""
    g = st.c - st.cx
    xg = torch.linalg.vecdot(st.x, g)
    rho = v - torch.linalg.vecdot(st.x, st.c) - xg
    l1 = torch.linalg.vector_norm(st.x, ord=1, dim=1)
    primal = 0.5 * rho + lam * l1
    ginf = torch.linalg.vector_norm(g, ord=math.inf, dim=1)
    s = torch.clamp(lam / ginf.clamp_min(torch.finfo(g.dtype).tiny), max=1.0)
    gap = 0.5 * (1.0 - s) ** 2 * rho + lam * l1 - s * xg
    rel = torch.where(v > 0, gap / v, torch.zeros_like(gap))
    return primal, rel


def fista_path(
    op: Callable[[torch.Tensor], torch.Tensor],
    prob: StandardProblem,
    lambdas: np.ndarray,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    tol: float = 1e-4,
    max_iter: int = 2000,
    early_stopping: bool = True,
    patience: int = 5,
    target_batch: int | None = None,
    progress: Callable[[int], None] | None = None,
    keep_path: bool = False,
    newton: bool | None = None,
) -> PathResult:
    """Batched FISTA (or active-set Newton) over all targets, each along its own λ path.

    With ``newton`` on, each row takes primal-dual active-set Newton steps
    (:func:`_newton_step`: a float64 Cholesky solve on the active set, then a line
    search), falling back to FISTA for ``_NEWTON_RETRY`` steps whenever a Newton
    step does not lower the objective. Stopping is the same certified gap either way.

    Parameters
    ----------
    op : callable (B, N) tensor -> (B, N) tensor
        ``W -> W C``; a :class:`GramOperator` or :class:`StreamOperator`.
    prob : StandardProblem
    lambdas : float64 array of shape (M, K)
        Decreasing λ grid per target.
    x_val : uint8 tensor of shape (n_val, N)
    y_val : float64 tensor of shape (n_val, M)
    dtype : torch.float32 or torch.float64
    tol : float
        Duality gap per λ over ``||y_c||²/n``, scikit-learn's rule (float32 aims
        at 0.9 of it, since its gap estimate is itself inexact).
    max_iter : int
        FISTA steps per λ before moving on regardless (counted in ``n_capped``).
    early_stopping : bool
        End a target's path once its validation MSE has not improved for
        ``patience`` consecutive λ.
    patience : int
    target_batch : int, optional
        Most targets solved at once (bounds working memory to ~10·B·N values).
    progress : callable(int), optional
        Called with the number of (target, λ) steps completed.
    keep_path : bool
        Also return every λ's weights (tests only: K·N·M values).
    newton : bool, optional
        Use Newton steps (needs a :class:`GramOperator`). Default: when
        ``n_runs < N``, where the Gram is rank-deficient and FISTA crawls.

    Returns
    -------
    PathResult
    """
    run = _PathSetup.build(op, prob, lambdas, x_val, y_val, dtype, tol, newton)
    n_feat, n_tgt = prob.corr.shape
    n_lam = lambdas.shape[1]
    b_max = n_tgt if target_batch is None else max(1, int(target_batch))
    queue = torch.arange(n_tgt, device=prob.corr.device)
    out = PathResult.empty(n_tgt)
    path = [np.zeros((n_feat, n_tgt)) for _ in range(n_lam)] if keep_path else None
    sparse: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    st = _new_batch(queue[:b_max], run.corr_t, run.inv_l)
    queue = queue[b_max:]
    while st.tgt.numel():
        primal, rel = _gap(st, run.y_var[st.tgt], run.lam_all[st.tgt, st.k])
        # Monotone restart: if the objective went up, drop the momentum.
        st.t = torch.where(primal > st.p_old, torch.ones_like(st.t), st.t)
        st.p_old = primal
        done = ((rel <= run.eff_tol) | (st.it_lam >= max_iter)) & st.alive
        if bool(done.any()):
            out.n_capped += int((done & (rel > run.eff_tol)).sum())
            _advance(st, done, rel, run.xs_val_t, run.yc_val_t, n_lam, early_stopping, patience,
                     path, progress)
            n_dead = int((~st.alive).sum())
            # Compact lazily: copying the batch costs ~10 passes over B x N.
            if n_dead and (n_dead * 8 >= st.tgt.numel() or queue.numel()
                           or n_dead == st.tgt.numel()):
                _harvest(st, ~st.alive, out, sparse, lambdas)
                st = st.select(st.alive)
                n_new = min(b_max - st.tgt.numel(), queue.numel())
                if n_new > 0:
                    st = _Batch.cat(st, _new_batch(queue[:n_new], run.corr_t, run.inv_l))
                    queue = queue[n_new:]
                continue  # recompute the gap: the batch changed
        # Advanced rows moved to their next λ, so λ is read again.
        _step(st, run, run.lam_all[st.tgt, st.k])
    if sparse:
        out.rows, out.cols, out.vals = (np.concatenate(a) for a in zip(*sparse, strict=True))
    out.path = path
    return out


@dataclass
class _PathSetup:
    """What every step of one :func:`fista_path` reads, in the working dtype."""

    op: Callable[[torch.Tensor], torch.Tensor]
    gram: torch.Tensor | None  # the Gram for Newton steps; None: FISTA only
    max_active: int  # the largest active set a Newton step may solve on
    corr_t: torch.Tensor  # (M, N) correlations, one row a target
    y_var: torch.Tensor  # (M,) ||y_c||²/n
    lam_all: torch.Tensor  # (M, K) λ grids
    xs_val_t: torch.Tensor  # (N, n_val) standardised validation masks, transposed
    yc_val_t: torch.Tensor  # (M, n_val) centred validation margins, transposed
    inv_l: float  # 1 / the Lipschitz constant of the gradient
    eff_tol: float  # the gap each λ aims at (tol, or 0.9 tol in float32)

    @classmethod
    def build(
        cls, op: Callable[[torch.Tensor], torch.Tensor], prob: StandardProblem,
        lambdas: np.ndarray, x_val: torch.Tensor, y_val: torch.Tensor, dtype: torch.dtype,
        tol: float, newton: bool | None,
    ) -> _PathSetup:
        dev = prob.corr.device
        n_feat = prob.corr.shape[0]
        if newton is None:
            # Measured: with n < N (rank-deficient C) FISTA crawls and Newton steps win
            # (n=628, N=1297: >7x); with n > N FISTA needs a few cheap steps per λ and
            # Newton's Cholesky costs 5-6x more (n=2,700 and 9,000, N=2,000).
            newton = prob.n_runs < n_feat
        # (N, n_val): the right operand of the CSR product, built transposed (one copy).
        xs_val_t, yc_val = standardize_val(prob, x_val, y_val, dtype, transposed=True)
        return cls(
            op=op,
            gram=op.gram if newton and isinstance(op, GramOperator) else None,
            # C has rank <= n - 1 (centred runs), so a larger active set is singular.
            max_active=max(1, prob.n_runs - 1),
            corr_t=prob.corr.to(dtype).T.contiguous(),
            y_var=prob.y_var.to(dev, dtype),
            lam_all=torch.as_tensor(lambdas, dtype=dtype, device=dev),
            xs_val_t=xs_val_t,
            yc_val_t=yc_val.T.contiguous(),
            inv_l=1.0 / max(lipschitz(op, n_feat, dtype, dev), 1e-12),
            eff_tol=tol * (_F32_TOL_FACTOR if dtype == torch.float32 else 1.0),
        )


def _step(st: _Batch, run: _PathSetup, lam: torch.Tensor) -> None:
    """One step for every row: Newton where a row is due one, FISTA for the others."""
    gram = run.gram
    use_newton = None if gram is None else st.alive & (st.it_lam >= st.newton_at)
    if gram is not None and use_newton is not None and bool(use_newton.any()):
        _newton_step(st, torch.nonzero(use_newton).squeeze(1), run.op, gram, lam,
                     run.max_active)
        if bool(use_newton.all()):
            return
        _fista_step(st, run.op, lam, run.inv_l,
                    torch.nonzero(st.alive & ~use_newton).squeeze(1))
    else:
        _fista_step(st, run.op, lam, run.inv_l)


def _fista_step(
    st: _Batch, op: Callable[[torch.Tensor], torch.Tensor], lam: torch.Tensor, inv_l: float,
    rows: torch.Tensor | None = None,
) -> None:
    """One FISTA step for every row (or only ``rows``); ``y C`` comes free from ``x C``."""
    if rows is None:
        x, x_old, cx, cx_old, c = st.x, st.x_old, st.cx, st.cx_old, st.c
        t, step_r, lam_r = st.t, st.step, lam
    else:
        x, x_old, cx, cx_old, c = st.x[rows], st.x_old[rows], st.cx[rows], st.cx_old[rows], \
            st.c[rows]
        t, step_r, lam_r = st.t[rows], st.step[rows], lam[rows]
    t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
    beta = ((t - 1.0) / t_new)[:, None]
    y = torch.lerp(x, x_old, -beta)  # y = x + β(x - x_old)
    cy = torch.lerp(cx, cx_old, -beta)  # y C
    step = step_r[:, None]
    z = y - step * (cy - c)
    thr = lam_r[:, None] * step
    # Soft-thresholding as z - clip(z, -thr, thr): two passes instead of five.
    x_new = z - torch.clamp(z, min=-thr, max=thr)
    cx_new = op(x_new)
    d = x_new - y
    dd = torch.linalg.vecdot(d, d)
    q = torch.linalg.vecdot(d, cx_new - cy) / dd.clamp_min(torch.finfo(d.dtype).tiny)
    bad = q * step_r > 1.0
    step_r = torch.where(bad, _SHRINK / q, torch.clamp(step_r * _GROW, max=_MAXSTEP * inv_l))
    if bool(bad.any()):
        b = bad[:, None]
        x_new = torch.where(b, x, x_new)
        cx_new = torch.where(b, cx, cx_new)
        t_new = torch.where(bad, torch.ones_like(t_new), t_new)
    if rows is None:
        st.x_old, st.cx_old = st.x, st.cx
        st.x, st.cx = x_new, cx_new
        st.t, st.step = t_new, step_r
        st.it_lam += 1
        st.n_iter += st.alive
    else:
        st.x_old[rows], st.cx_old[rows] = x, cx
        st.x[rows], st.cx[rows] = x_new, cx_new
        st.t[rows], st.step[rows] = t_new, step_r
        st.it_lam[rows] += 1
        st.n_iter[rows] += 1


def _newton_step(
    st: _Batch, rows: torch.Tensor, op: Callable[[torch.Tensor], torch.Tensor],
    gram: torch.Tensor, lam: torch.Tensor, max_active: int,
) -> None:
    """One active-set Newton step (primal-dual active set) for ``rows``, with line search.

    With ``g = c - C x`` and ``u = x + g`` (the coordinate-descent point: C has a unit
    diagonal), the active set is ``A = {|u| > λ}`` with signs ``s = sign(u)``; the
    Newton point solves ``C_AA w_A = c_A - λ s_A`` exactly (float64 Cholesky) and is 0
    elsewhere. The Lasso objective is convex along ``x + θ(w - x)``, so the best of a
    few θ in (0, 1] is taken if it lowers the objective; otherwise the row goes back
    to FISTA for the rest of this λ. Momentum restarts at the new point.
    """
    x, cx, c = st.x[rows], st.cx[rows], st.c[rows]
    lam_r = lam[rows]
    u = x + (c - cx)
    excess = u.abs() - lam_r[:, None]
    act = excess > 0
    n_act = act.sum(dim=1)
    if int(n_act.max()) > max_active:
        # Keep the max_active largest violations (C_AA would be singular otherwise).
        kth = torch.topk(excess, max_active, dim=1).values[:, -1:]
        act &= (excess >= kth) | (n_act <= max_active)[:, None]
    rhs = c.double() - lam_r.double()[:, None] * torch.sign(u).double()
    w_new = _support_solve(gram, act, rhs).to(x.dtype)
    cw_new = op(w_new)
    d, cd = w_new - x, cw_new - cx
    d64, cd64 = d.double(), cd.double()
    lin = torch.linalg.vecdot(d64, (cx - c).double())
    quad = torch.linalg.vecdot(d64, cd64)
    l1_0 = torch.linalg.vector_norm(x.double(), ord=1, dim=1)
    lam64 = lam_r.double()
    best_f = torch.zeros_like(lin)
    best_th = torch.zeros_like(lin)
    x64 = x.double()
    for th in _THETAS:
        f = th * lin + 0.5 * th * th * quad + lam64 * (
            torch.linalg.vector_norm(x64 + th * d64, ord=1, dim=1) - l1_0)
        better = f < best_f
        best_f = torch.where(better, f, best_f)
        best_th = torch.where(better, torch.full_like(best_th, th), best_th)
    ok = best_th > 0
    th_x = best_th.to(x.dtype)[:, None]
    full = (best_th == 1.0)[:, None]
    x_new = torch.where(full, w_new, x + th_x * d)
    cx_new = torch.where(full, cw_new, cx + th_x * cd)
    st.x[rows], st.cx[rows] = x_new, cx_new
    st.x_old[rows], st.cx_old[rows] = x_new, cx_new
    st.t[rows] = 1.0
    it = st.it_lam[rows] + 1
    st.newton_at[rows] = torch.where(ok, it, it + _NEWTON_RETRY)
    st.it_lam[rows] += 1
    st.n_iter[rows] += 1


def _support_solve(gram: torch.Tensor, act: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``C_AA w_A = rhs_A`` per row (A = the row's True entries of ``act``).

    Rows are sorted by |A| and solved in padded batches (padding is identity) of at
    most ``_SOLVE_BUDGET`` matrix entries, factored in the Gram's dtype. A row whose
    float32 factorisation fails is retried in float64 with a ``_RIDGE`` ridge and
    ``_REFINE`` steps of iterative refinement (the float64 path for a float64 Gram).
    A row whose Cholesky still fails (C_AA singular: more active features than fit
    runs) gets w = 0, which its line search rejects.

    Returns float64 (R, N), zero outside A.
    """
    n_rows, n_feat = act.shape
    out = torch.zeros(n_rows, n_feat, dtype=torch.float64, device=act.device)
    sizes = act.sum(dim=1)
    order = torch.argsort(sizes, stable=True)
    # Active indices first, in increasing feature order (stable sort of the 0/1 key).
    idx_all = torch.argsort((~act).to(torch.int8), dim=1, stable=True)
    sizes_l = sizes[order].tolist()
    lo = 0
    while lo < n_rows:
        hi = lo + 1
        while hi < n_rows and (hi + 1 - lo) * sizes_l[hi] ** 2 <= _SOLVE_BUDGET:
            hi += 1
        a_max = int(sizes_l[hi - 1])
        if a_max == 0:
            lo = hi
            continue
        r = order[lo:hi]
        idx = idx_all[r, :a_max]  # (b, a)
        valid = torch.arange(a_max, device=act.device)[None, :] < sizes[r][:, None]
        g = gram[idx[:, :, None], idx[:, None, :]]
        # Padding becomes the identity in place: two passes, no (b, a, a) mask.
        m = valid.to(g.dtype)
        g.mul_(m[:, :, None]).mul_(m[:, None, :])
        g.diagonal(dim1=-2, dim2=-1).add_(1.0 - m)
        b = torch.where(valid, torch.gather(rhs[r], 1, idx), torch.zeros((), dtype=rhs.dtype))
        w, info = _cholesky_solve_padded(g, b)
        w = torch.where(valid & (info == 0)[:, None] & torch.isfinite(w), w, 0.0)
        out[r[:, None], idx] = torch.where(valid, w, out[r[:, None], idx])
        lo = hi
    return out


def _cholesky_solve_padded(g: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve a batch of padded systems ``g w = b``, float32 first where ``g`` is float32.

    Parameters
    ----------
    g : tensor of shape (B, a, a)
        Symmetric positive (semi-)definite systems, identity in their padding.
    b : float64 tensor of shape (B, a)

    Returns
    -------
    w : float64 tensor of shape (B, a)
    info : int32 tensor of shape (B,)
        0 where the final (float64) Cholesky factorisation succeeded.
    """
    device = g.device
    info = torch.ones(g.shape[0], dtype=torch.int32, device=device)
    w = torch.zeros_like(b)
    if g.dtype != torch.float64:
        # A float32 Gram is factored in float32: the Newton point only steers the
        # step (the line search and the certified gap judge it), and on digits
        # (n = 233-800) this left every step count unchanged at 1.4-1.8x the speed.
        # Rows whose float32 solve fails or is ill-conditioned are redone below.
        chol, info = torch.linalg.cholesky_ex(g)
        b32 = b.to(g.dtype)[:, :, None]
        w32 = _chol_solve(chol, b32)
        # One float32 refinement step. Its size is of the order of the solve's
        # forward error (cond(C_AA)·eps): rows where it exceeds _F32_ERROR of the
        # solution are ill-conditioned and are redone in float64.
        step = _chol_solve(chol, b32 - g @ w32)
        w32 = w32 + step
        big = step.abs().amax(dim=(1, 2)) > _F32_ERROR * w32.abs().amax(dim=(1, 2))
        info = torch.where(big, torch.ones_like(info), info)
        w = w32.squeeze(2).double()
    retry = info != 0
    if bool(retry.any()):
        # Every row of a float64 Gram comes here: take the batch as it is, uncopied.
        every = bool(retry.all())
        g64 = (g if every else g[retry]).double()
        b64 = (b if every else b[retry])[:, :, None]
        eye = torch.diag_embed(torch.ones(g64.shape[:2], dtype=torch.float64, device=device))
        chol, info_r = torch.linalg.cholesky_ex(g64 + _RIDGE * eye)
        w_r = _chol_solve(chol, b64)
        for _ in range(_REFINE):
            w_r = w_r + _chol_solve(chol, b64 - g64 @ w_r)
        w[retry], info[retry] = w_r.squeeze(2), info_r
    return w, info


def _chol_solve(chol: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(L Lᵀ)⁻¹ b`` by two batched triangular solves.

    Measured on the CPU (100 systems of 430, one right-hand side each): 0.03 s,
    against 0.08-0.19 s for ``torch.cholesky_solve``, which solves them one by one.
    """
    z = torch.linalg.solve_triangular(chol, b, upper=False)
    return torch.linalg.solve_triangular(chol.mT, z, upper=True)


def _advance(
    st: _Batch, done: torch.Tensor, rel: torch.Tensor, xs_val_t: torch.Tensor,
    yc_val_t: torch.Tensor, n_lam: int, early_stopping: bool, patience: int,
    path: list[np.ndarray] | None, progress: Callable[[int], None] | None,
) -> None:
    """Score the converged rows on validation, keep the best, warm-start the next λ.

    Rows whose path is finished get ``alive = False``.
    """
    idx = torch.nonzero(done).squeeze(1)
    xd = st.x[idx]
    resid = yc_val_t[st.tgt[idx]] - sparse_aware_mm(xd, xs_val_t)
    mse = (resid.double() ** 2).mean(dim=1)
    better = mse < st.best_mse[idx]
    bi = idx[better]
    st.best_mse[bi] = mse[better]
    st.best_k[bi] = st.k[bi]
    st.best_gap[bi] = rel[bi].double()
    st.best_w[bi] = st.x[bi]
    if path is not None:
        for row, col in zip(xd.double().cpu().numpy(), idx.tolist(), strict=True):
            path[int(st.k[col])][:, int(st.tgt[col])] = row
    k = st.k[idx]
    end = k >= n_lam - 1
    if early_stopping:
        end |= (k - st.best_k[idx]) >= patience
    st.alive[idx[end]] = False
    if progress is not None:
        progress(int(torch.where(end, n_lam - k, torch.ones_like(k)).sum()))
    # Warm start at the next λ: extrapolate linearly along the log-spaced path,
    # x_{k+1} ≈ 2 x_k - x_{k-1}, with its product by C free by linearity. At k=0
    # the solution is 0 and sol is still 0, so this starts from 0.
    go = idx[~end]
    if go.numel():
        x, cx = st.x[go], st.cx[go]
        x_ext = x + _EXTRAPOLATE * (x - st.sol[go])
        cx_ext = cx + _EXTRAPOLATE * (cx - st.csol[go])
        st.sol[go], st.csol[go] = x, cx
        st.x[go], st.cx[go] = x_ext, cx_ext
        st.x_old[go], st.cx_old[go] = x_ext, cx_ext
        st.t[go] = 1.0
        st.p_old[go] = math.inf
        st.it_lam[go] = 0
        st.newton_at[go] = 0
        st.k[go] += 1


def _harvest(
    st: _Batch, rows_done: torch.Tensor, out: PathResult,
    sparse: list[tuple[np.ndarray, np.ndarray, np.ndarray]], lambdas: np.ndarray,
) -> None:
    """Move the finished rows' best weights (sparse) and scores to ``out``."""
    idx = torch.nonzero(rows_done).squeeze(1)
    tgt = st.tgt[idx].cpu().numpy()
    bw = st.best_w[idx]
    j, r = torch.nonzero(bw, as_tuple=True)
    sparse.append((r.cpu().numpy(), tgt[j.cpu().numpy()], bw[j, r].double().cpu().numpy()))
    out.val_mse[tgt] = st.best_mse[idx].cpu().numpy()
    out.gap[tgt] = st.best_gap[idx].cpu().numpy()
    out.n_iter[tgt] = st.n_iter[idx].cpu().numpy()
    out.penalty[tgt] = lambdas[tgt, st.best_k[idx].cpu().numpy()]


@dataclass
class FastPath:
    """The fast solver behind the one :class:`~dmdb.lasso_stats.PathSolver` signature.

    What only the fast solver has is set here, once; the knobs every solver
    takes (``tol``, ``max_iter``, ``early_stopping``, ``patience``) come with the call.

    Parameters
    ----------
    dtype : torch.float32 or torch.float64
        Working precision.
    target_batch : int, optional
        Most targets solved at once (bounds working memory to ~10·B·N values).
    chunks : callable, optional
        The fit runs (a :data:`~dmdb.lasso_stats.ChunkSource`), streamed at every
        step when the problem has no Gram.
    newton : bool, optional
        Active-set Newton steps (see :func:`fista_path`); default when ``n_runs < N``.
    """

    dtype: torch.dtype = torch.float32
    target_batch: int | None = None
    chunks: ChunkSource | None = None
    newton: bool | None = None

    def __call__(
        self, prob: StandardProblem, lambdas: np.ndarray, x_val: torch.Tensor,
        y_val: torch.Tensor, *, tol: float = 1e-4, max_iter: int = 2000,
        early_stopping: bool = True, patience: int = 5,
        progress: Callable[[int], None] | None = None, keep_path: bool = False,
    ) -> PathResult:
        return fista_path(
            self.operator(prob), prob, lambdas, x_val, y_val, dtype=self.dtype, tol=tol,
            max_iter=max_iter, early_stopping=early_stopping, patience=patience,
            target_batch=self.target_batch, progress=progress, keep_path=keep_path,
            newton=self.newton,
        )

    def operator(self, prob: StandardProblem) -> Callable[[torch.Tensor], torch.Tensor]:
        """``W -> W C``: on the Gram when the problem has one, else streaming the runs."""
        if prob.gram is not None:
            return GramOperator(prob.gram)
        if self.chunks is None:
            raise ValueError("a problem without the Gram needs the chunk source of its fit runs")
        return StreamOperator(self.chunks, prob, self.dtype)
