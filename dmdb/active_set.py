"""Newton points on active sets: Cholesky factors kept per row and extended, not refactored.

An active-set Newton step (:func:`dmdb.lasso_solvers._newton_step`) solves
``C_AA w_A = rhs_A`` for every row (target) of the batch, with ``A`` the row's
active set. Along a λ path, and between the steps at one λ, ``A`` mostly stays
the same or grows by a few features. So each row keeps the lower Cholesky factor
``L`` of ``C_FF`` for the set ``F`` it factored last (:class:`Factors`), and:

* if ``A = F``, the factor is reused as it is (no work on C at all);
* if ``A ⊃ F`` (only additions ``D``), the factor is extended by a block row:
  ``L_DF = (L⁻¹ C_FD)ᵀ`` by one triangular solve, and
  ``L_DD = chol(C_DD - L_DF L_DFᵀ)``, which is ``O(|F|² |D|)`` instead of
  ``O(|A|³)``, and gathers ``|F| |D|`` entries of C instead of ``|A|²``;
* if a feature left ``A``, the factor is cut before the first position that
  left (a leading block of a Cholesky factor is the factor of the leading block,
  and features are appended in the order they entered, so the newest, least
  settled ones are last), and the rest of ``A`` is appended to it; a row
  with no factor is the same extension from an empty one.

The solution gets one step of iterative refinement against the true C (its
residual comes from the product ``w C`` that the step needs anyway). A row whose
correction exceeds :data:`F32_ERROR` of the solution (ill-conditioned, or a factor
that drifted over many extensions), or whose factorisation fails, is solved afresh
in float64 with a small ridge (:func:`support_solve`) and drops its factor.

Factors are stored padded: position ``p < size`` of a row holds feature
``idx[p]``, the rest of the row's ``(W, W)`` block is the identity (``idx = -1``),
which leaves every padded system decoupled and exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: Largest estimated relative error of a float32 support solve (else float64).
F32_ERROR = 1e-4

#: Ridge added to C_AA for the float64 fallback; iterative refinement removes its bias.
RIDGE = 1e-9
REFINE = 2

#: Most entries (rows x (|F| |D| + |D|²), or rows x |A|²) in one group of solves.
SOLVE_BUDGET = 1 << 22

#: Width growth when the batch's factors need more room (fewer reallocations).
_GROW = 1.25


@dataclass
class Factors:
    """Per-row Cholesky factors of ``C_FF``: ``fac`` (B, W, W), ``idx`` (B, W), -1 = padding."""

    fac: torch.Tensor
    idx: torch.Tensor

    @classmethod
    def empty(cls, rows: int, dtype: torch.dtype, device: torch.device) -> Factors:
        return cls(torch.zeros(rows, 0, 0, dtype=dtype, device=device),
                   torch.zeros(rows, 0, dtype=torch.int64, device=device))

    @property
    def width(self) -> int:
        return int(self.idx.shape[1])

    def widen(self, width: int) -> Factors:
        """The same factors padded (identity, -1) to ``width`` columns."""
        w0 = self.width
        if width <= w0:
            return self
        b = self.idx.shape[0]
        fac = torch.zeros(b, width, width, dtype=self.fac.dtype, device=self.fac.device)
        fac[:, :w0, :w0] = self.fac
        pad = torch.arange(w0, width, device=fac.device)
        fac[:, pad, pad] = 1.0
        idx = torch.full((b, width), -1, dtype=torch.int64, device=fac.device)
        idx[:, :w0] = self.idx
        return Factors(fac, idx)

    def select(self, keep: torch.Tensor) -> Factors:
        return Factors(self.fac[keep], self.idx[keep])

    @staticmethod
    def cat(a: Factors, b: Factors) -> Factors:
        w = max(a.width, b.width)
        a, b = a.widen(w), b.widen(w)
        return Factors(torch.cat([a.fac, b.fac]), torch.cat([a.idx, b.idx]))

    def reset(self, rows: torch.Tensor) -> None:
        """Drop the factors of ``rows`` (they factor afresh at their next step)."""
        self.truncate(rows, torch.zeros_like(rows))

    def truncate(self, rows: torch.Tensor, sizes: torch.Tensor) -> None:
        """Keep the first ``sizes`` positions of the factors of ``rows`` (a leading
        block of a Cholesky factor is the factor of the leading block).

        The dropped positions become identity rows again; their columns in the kept
        rows are already 0 (the factor is lower triangular).
        """
        if not rows.numel() or not self.width:
            return
        pos = torch.arange(self.width, device=self.idx.device)
        drop = (pos[None, :] >= sizes[:, None]) & (self.idx[rows] >= 0)
        r_i, p_i = torch.nonzero(drop, as_tuple=True)
        rr = rows[r_i]
        self.fac[rr, p_i, :] = 0.0
        self.fac[rr, p_i, p_i] = 1.0
        self.idx[rr, p_i] = -1

    def block(self, rows: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The leading ``size`` positions of the factors of ``rows`` and their features."""
        return self.fac[rows, :size, :size], self.idx[rows, :size]

    def nbytes(self) -> int:
        return self.fac.numel() * self.fac.element_size() + self.idx.numel() * 8


@dataclass
class SolveCounts:
    """What the factor updates did, for the benchmark (summed over a fit)."""

    reused: int = 0  # the factor as it was
    extended: int = 0  # the whole factor, extended
    truncated: int = 0  # a leading block of it, extended
    fresh: int = 0  # factored afresh
    fallback: int = 0  # redone in float64 (ill-conditioned, or the factorisation failed)


def newton_points(
    gram: torch.Tensor, op: Callable[[torch.Tensor], torch.Tensor], factors: Factors,
    rows: torch.Tensor, act: torch.Tensor, rhs: torch.Tensor, dtype: torch.dtype,
    counts: SolveCounts | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``C_AA w_A = rhs_A`` for each of ``rows``; update their factors in place.

    Parameters
    ----------
    gram : tensor of shape (N, N)
        The standardised Gram C (float32 or float64); factors are in its dtype.
    op : callable
        ``W -> W C`` in the working dtype (for the refinement residual).
    factors : Factors
        The batch's factors (all rows); ``rows`` index into it.
    rows : int64 tensor of shape (R,)
    act : bool tensor of shape (R, N)
        Each row's active set (at most ``n_runs - 1`` features).
    rhs : float64 tensor of shape (R, N)
    dtype : torch.dtype
        The working dtype of the returned points.

    Returns
    -------
    w, cw : tensors of shape (R, N) in ``dtype``
        The Newton points (zero outside A) and their products ``w C``.
    """
    n_rows, n_feat = act.shape
    dev = act.device
    width0 = factors.width
    fidx = factors.idx[rows]
    # Each row keeps the longest prefix of its factor whose features are all still
    # active; the rest of its active set is appended to that prefix.
    still = (fidx >= 0) & torch.gather(act, 1, fidx.clamp_min(0))
    fsize = still.to(torch.int64).cumprod(dim=1).sum(dim=1)
    old_size = (fidx >= 0).sum(dim=1)
    kept = torch.arange(width0, device=dev)[None, :] < fsize[:, None]
    member = torch.zeros(n_rows, n_feat, dtype=torch.int8, device=dev)
    member.scatter_add_(1, fidx.clamp_min(0), kept.to(torch.int8))
    added = act & (member == 0)
    k = added.sum(dim=1)
    if counts is not None:
        whole = fsize == old_size
        counts.reused += int((whole & (k == 0) & (fsize > 0)).sum())
        counts.extended += int((whole & (k > 0) & (fsize > 0)).sum())
        counts.truncated += int((~whole & (fsize > 0)).sum())
        counts.fresh += int(((fsize == 0) & (k > 0)).sum())
    cut = torch.nonzero(fsize < old_size).squeeze(1)
    if cut.numel():
        factors.truncate(rows[cut], fsize[cut])
    width = int((fsize + k).max()) if n_rows else 0
    if width > factors.width:
        grown = factors.widen(min(n_feat, max(width, int(factors.width * _GROW))))
        factors.fac, factors.idx = grown.fac, grown.idx
    bad = torch.zeros(n_rows, dtype=torch.bool, device=dev)
    # Added features, in increasing order, first in each row (stable sort of a 0/1 key).
    aidx_all = torch.argsort((~added).to(torch.int8), dim=1, stable=True)
    groups = _groups(fsize, k)
    w = torch.zeros(n_rows, n_feat, dtype=dtype, device=dev)
    for r in groups:
        ok = _extend(gram, factors, rows[r], fsize[r], aidx_all[r, : int(k[r].max())], k[r])
        bad[r] = ~ok
        w[r] = _solve(factors, rows[r], rhs[r], dtype)
    # One step of iterative refinement against the true C, whose product the line
    # search needs anyway: its size estimates the solve's error.
    cw = op(w)
    resid = torch.where(act, rhs - cw.double(), torch.zeros((), dtype=rhs.dtype))
    step = torch.zeros_like(w)
    for r in groups:
        step[r] = _solve(factors, rows[r], resid[r], dtype)
    bad |= ~(torch.isfinite(step).all(dim=1) & torch.isfinite(w).all(dim=1))
    bad |= step.abs().amax(dim=1) > F32_ERROR * w.abs().amax(dim=1)
    step[bad] = 0.0
    if bool(step.any()):
        w += step
        cw += op(step)
    if bool(bad.any()):
        b = torch.nonzero(bad).squeeze(1)
        factors.reset(rows[b])
        if counts is not None:
            counts.fallback += int(b.numel())
        w64 = support_solve(gram.double() if gram.dtype != torch.float64 else gram, act[b],
                            rhs[b])
        w[b] = w64.to(dtype)
        cw[b] = op(w[b])
    return w, cw


def _groups(fsize: torch.Tensor, k: torch.Tensor) -> list[torch.Tensor]:
    """Rows in groups of similar |D| (at most twice the group's first, + 8), so that few
    rows pay for the padding of a large one, each within :data:`SOLVE_BUDGET`; rows
    with nothing to solve are left out."""
    order = torch.argsort(k, stable=True)
    k_l, f_l = k[order].tolist(), fsize[order].tolist()
    out = []
    lo, n_rows = 0, len(k_l)
    while lo < n_rows:
        hi, f_max = lo + 1, f_l[lo]
        while hi < n_rows and k_l[hi] <= 2 * k_l[lo] + 8:
            f_next = max(f_max, f_l[hi])
            if (hi + 1 - lo) * (f_next * k_l[hi] + k_l[hi] ** 2 + f_next) > SOLVE_BUDGET:
                break
            f_max, hi = f_next, hi + 1
        if f_max + k_l[hi - 1] > 0:
            out.append(order[lo:hi])
        lo = hi
    return out


def _extend(
    gram: torch.Tensor, factors: Factors, rows: torch.Tensor, fsize: torch.Tensor,
    aidx: torch.Tensor, k: torch.Tensor,
) -> torch.Tensor:
    """Append each row's added features ``aidx[:, :k]`` to its factor; False where it failed."""
    n_rows, k_max = aidx.shape
    dev = gram.device
    ok = torch.ones(n_rows, dtype=torch.bool, device=dev)
    if k_max == 0:
        return ok
    f_max = int(fsize.max())
    kv = torch.arange(k_max, device=dev)[None, :] < k[:, None]  # (R, k) valid additions
    a_safe = torch.where(kv, aidx, torch.zeros_like(aidx))
    c_dd = gram[a_safe[:, :, None], a_safe[:, None, :]]
    kk = kv[:, :, None] & kv[:, None, :]
    eye = torch.eye(k_max, dtype=gram.dtype, device=dev)
    c_dd = torch.where(kk, c_dd, eye.expand_as(c_dd))
    l_df = None
    if f_max:
        fac, fidx = factors.block(rows, f_max)
        fv = fidx >= 0
        c_fd = gram[fidx.clamp_min(0)[:, :, None], a_safe[:, None, :]]
        c_fd = torch.where(fv[:, :, None] & kv[:, None, :], c_fd, torch.zeros((), dtype=gram.dtype))
        y = torch.linalg.solve_triangular(fac, c_fd, upper=False)  # (R, f, k) = L_DFᵀ
        c_dd = c_dd - y.mT @ y
        l_df = y.mT  # (R, k, f)
    l_dd, info = torch.linalg.cholesky_ex(c_dd)
    # A non-finite entry anywhere shows in the solution, which _solve_refined checks.
    ok = info == 0
    # Write the new block rows at positions fsize + i of each row's factor.
    pos = fsize[:, None] + torch.arange(k_max, device=dev)[None, :]  # (R, k)
    width = factors.width
    block = torch.zeros(n_rows, k_max, width + k_max, dtype=gram.dtype, device=dev)
    if l_df is not None:
        block[:, :, :f_max] = l_df
    block.scatter_(2, pos[:, None, :].expand(n_rows, k_max, k_max), l_dd)
    write = kv & ok[:, None]
    r_i, i_i = torch.nonzero(write, as_tuple=True)
    p_i = pos[r_i, i_i]
    factors.fac[rows[r_i], p_i, :] = block[r_i, i_i, :width]
    factors.idx[rows[r_i], p_i] = aidx[r_i, i_i]
    return ok


def _solve(factors: Factors, rows: torch.Tensor, rhs: torch.Tensor,
           dtype: torch.dtype) -> torch.Tensor:
    """``C_FF⁻¹ rhs_F`` for each of ``rows`` by its factor, as a full (R, N) row, 0 off F."""
    n_rows, n_feat = rhs.shape
    size = int((factors.idx[rows] >= 0).sum(dim=1).max())
    out = torch.zeros(n_rows, n_feat + 1, dtype=dtype, device=rhs.device)
    if size == 0:
        return out[:, :n_feat]
    fac, fidx = factors.block(rows, size)
    fv = fidx >= 0
    b = torch.where(fv, torch.gather(rhs, 1, fidx.clamp_min(0)), torch.zeros((), dtype=rhs.dtype))
    z = torch.linalg.solve_triangular(fac, b.to(fac.dtype)[:, :, None], upper=False)
    x = torch.linalg.solve_triangular(fac.mT, z, upper=True).squeeze(2)
    # Padding scatters into a spare column.
    return out.scatter_(1, torch.where(fv, fidx, n_feat), x.to(dtype))[:, :n_feat]


def support_solve(gram: torch.Tensor, act: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``C_AA w_A = rhs_A`` per row afresh (A = the row's True entries of ``act``).

    Rows are sorted by |A| and solved in padded batches (padding is identity) of at
    most :data:`SOLVE_BUDGET` matrix entries, factored in the Gram's dtype. A row
    whose float32 factorisation fails is retried in float64 with a :data:`RIDGE`
    ridge and :data:`REFINE` steps of iterative refinement (the float64 path for a
    float64 Gram). A row whose Cholesky still fails (C_AA singular: more active
    features than fit runs) gets w = 0, which its line search rejects.

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
        while hi < n_rows and (hi + 1 - lo) * sizes_l[hi] ** 2 <= SOLVE_BUDGET:
            hi += 1
        a_max = int(sizes_l[hi - 1])
        if a_max == 0:
            lo = hi
            continue
        r = order[lo:hi]
        idx = idx_all[r, :a_max]  # (b, a)
        valid = torch.arange(a_max, device=act.device)[None, :] < sizes[r][:, None]
        g = gram[idx[:, :, None], idx[:, None, :]]
        vv = valid[:, :, None] & valid[:, None, :]
        g = torch.where(vv, g, torch.eye(a_max, dtype=g.dtype, device=act.device).expand_as(g))
        b = torch.where(valid, torch.gather(rhs[r], 1, idx), torch.zeros((), dtype=rhs.dtype))
        w, info = cholesky_solve_padded(g, b)
        w = torch.where(valid & (info == 0)[:, None] & torch.isfinite(w), w, 0.0)
        out[r[:, None], idx] = torch.where(valid, w, out[r[:, None], idx])
        lo = hi
    return out


def cholesky_solve_padded(g: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        # step (the line search and the certified gap judge it). Rows whose float32
        # solve fails or is ill-conditioned are redone below.
        chol, info = torch.linalg.cholesky_ex(g)
        b32 = b.to(g.dtype)[:, :, None]
        w32 = torch.cholesky_solve(b32, chol)
        # One float32 refinement step. Its size is of the order of the solve's
        # forward error (cond(C_AA)·eps): rows where it exceeds F32_ERROR of the
        # solution are ill-conditioned and are redone in float64.
        step = torch.cholesky_solve(b32 - g @ w32, chol)
        w32 = w32 + step
        big = step.abs().amax(dim=(1, 2)) > F32_ERROR * w32.abs().amax(dim=(1, 2))
        info = torch.where(big, torch.ones_like(info), info)
        w = w32.squeeze(2).double()
    retry = info != 0
    if bool(retry.any()):
        # Every row of a float64 Gram comes here: take the batch as it is, uncopied.
        every = bool(retry.all())
        g64 = (g if every else g[retry]).double()
        b64 = (b if every else b[retry])[:, :, None]
        eye = torch.diag_embed(torch.ones(g64.shape[:2], dtype=torch.float64, device=device))
        chol, info_r = torch.linalg.cholesky_ex(g64 + RIDGE * eye)
        w_r = torch.cholesky_solve(b64, chol)
        for _ in range(REFINE):
            w_r = w_r + torch.cholesky_solve(b64 - g64 @ w_r, chol)
        w[retry], info[retry] = w_r.squeeze(2), info_r
    return w, info
