"""Second-order datamodels: sparse pairwise interactions on top of the linear fit.

For every target j the linear datamodel (:mod:`dmdb.lasso`) leaves a residual
``r = y - (b + Xθ)`` on the fit runs. Its candidate pairs are the pairs among the
target's K training examples of largest ``|θ_i|`` (``dmdb fit --pairs K``), as
centred products ``z_ab = (x_a - μ_a)(x_b - μ_b)``. Under Bernoulli masks these are
uncorrelated with each other, with every mask bit and with the constant, so the
linear fit stays the best linear part and the pairs fit its residual:

    minimise (1/(2n)) ||r_c - Z_s w||² + λ ||w||₁

over the standardised candidates ``Z_s`` (scikit-learn's ``Lasso`` on the same
data), along a λ path chosen on the validation runs (λ_max, where no pair enters,
is on the path, so a target whose pairs do not help keeps its linear model).

The K(K-1)/2 candidates are not all carried into the solve: their correlations
with the residual are computed in one pass (a K x K product per target), and the
solve runs on a working set of the strongest 2K (sure independence screening,
Fan & Lv 2008: under a near-orthogonal design the Lasso's support lies among the
largest marginal correlations). Each working set is solved to the certified
duality gap ``tol``. With ``max_rounds >= 1`` a further pass checks the Lasso's
optimality condition ``|z_pᵀ(r - Z w)| / n <= λ`` on every candidate at the chosen
λ (strong rules with a KKT check, Tibshirani et al. 2012); violators join the
working set and the target is solved again, so the answer is the Lasso over all
candidates. On digits the validation runs choose a small λ at which the Lasso
over all 1,770 candidates of K = 60 keeps several hundred pairs, so the check
costs a pass per round for little gain (LDS 0.8349 with 256 pairs against 0.8343
with 128, on 40 targets); ``dmdb fit`` solves the working set once.

The model is mapped to mask space exactly: with ``φ = w / sd``,
``φ (x_a - μ_a)(x_b - μ_b) = φ x_a x_b - φ μ_b x_a - φ μ_a x_b + φ μ_a μ_b``, so

    prediction(S) = bias + Σ_{i∈S} θ'_i + Σ_{a<b, both in S} φ_ab

with θ' the linear weights shifted by the pairs and the constants in the bias.
Everything is batched over targets in torch (CPU or CUDA) and streams the fit runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from dmdb.errors import UsageError

ChunkSource = Callable[[], Iterator[tuple[Any, Any]]]

#: Most rounds of (solve on the working set, check every candidate).
MAX_ROUNDS = 4
#: Working-set size per target, as a multiple of K (at least MIN_WORKING pairs).
WORKING_PER_K = 2
MIN_WORKING = 32


@dataclass
class PairFit:
    """The second-order datamodels of targets 0..M-1 (local indices), in mask space.

    Attributes
    ----------
    coef : scipy.sparse.csr_matrix (M, N), float32
        The linear part θ' (the linear fit's weights shifted by the pairs).
    intercept : float64 (M,)
    target, a, b : int64 arrays
        One entry per non-zero pair: local target index, train_a < train_b.
    weight : float32 array
        φ_ab per pair.
    penalty : float64 (M,)
        The pairs' chosen λ (the path's first, λ_max, where no pair helped).
    val_mse : float64 (M,)
        Validation MSE of the whole second-order model at that λ.
    info : dict
        Candidates, working sets, KKT rounds and violations, timings (recorded in
        ``fits.parameters``).
    """

    coef: sp.csr_matrix
    intercept: np.ndarray
    target: np.ndarray
    a: np.ndarray
    b: np.ndarray
    weight: np.ndarray
    penalty: np.ndarray
    val_mse: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def working_size(k: int, working_set: int | None = None) -> int:
    """Candidates per target carried into the solve: ``working_set``, or 2k (at least 32)."""
    return working_set or max(MIN_WORKING, WORKING_PER_K * k)


def check_pairs(k: Any, n_train: int) -> int:
    """``--pairs K`` checked: an integer from 2 to N."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 2 <= int(k) <= n_train:
        raise UsageError(f"--pairs takes K from 2 to N = {n_train} (the candidate pairs are "
                         f"those among each target's top K examples), got {k!r}")
    return int(k)


#: Points on each target's λ path of the pair stage (λ_max, no pairs, first).
N_LAMBDAS = 10


def pair_bytes(k: int, n_targets: int, n_val: int, chunk: int, target_batch: int, *,
               n_train: int) -> int:
    """Bytes the pair stage holds at its peak, beside the linear fit's result.

    Per target: the K x K screening sums (float64, 3 of them) and the working set's
    Gram and correlations (float64); per batch of targets: the chunk's gathered
    rows and pair products and the validation features (float32), the λ path's
    solutions and validation errors (float64); once: the dense linear weights, the
    centred validation masks and a chunk of centred masks.
    """
    w = working_size(k)
    per_target = 8 * (3 * k * k + w * w + 3 * w)
    per_batch = (4 * target_batch * (2 * chunk * max(k, w) + n_val * w)
                 + 8 * target_batch * (N_LAMBDAS * w + 4 * n_val))
    once = 4 * n_train * (n_targets + n_val + chunk)
    return n_targets * per_target + per_batch + once


def fit_pairs(
    chunks: ChunkSource,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    coef: sp.csr_matrix,
    intercept: np.ndarray,
    mean: np.ndarray,
    k: int,
    n_lambdas: int = N_LAMBDAS,
    lambda_ratio: float = 0.003,
    tol: float = 1e-4,
    max_iter: int = 2000,
    patience: int = 5,
    device: torch.device | str = "cpu",
    target_batch: int = 64,
    working_set: int | None = None,
    max_rounds: int = 0,
    progress: Callable[[int], Any] | None = None,
) -> PairFit:
    """Fit each target's pairwise interactions on the residual of its linear datamodel.

    Parameters
    ----------
    chunks : callable returning an iterable of (masks (c, N), margins (c, M))
        The fit runs (the same runs as the linear fit); read three or more times.
    x_val, y_val : (n_val, N) 0/1 masks and (n_val, M) margins of the validation runs.
    coef, intercept : the linear fit in mask space, (M, N) and (M,).
    mean : float64 (N,)
        The fit runs' column means μ.
    k : int
        Candidate pairs are those among each target's top-k examples by |θ|.
    n_lambdas, lambda_ratio : the pairs' λ path (on digits the validation runs pick
        its low end: the residual holds many small interactions).
    working_set : int, optional
        Candidates carried into the solve per target (default 2k, at least 32).
    max_rounds : int
        Rounds of (solve, check every candidate's optimality condition, add the
        violators); 0 solves the working set once, unchecked.
    progress : callable(int), optional
        Called with the number of targets finished.

    Returns
    -------
    PairFit
    """
    dev = torch.device(device)
    n_tgt, n_feat = coef.shape
    k = min(k, n_feat)
    started = time.perf_counter()
    theta = torch.from_numpy(np.asarray(coef.todense(), np.float32).T.copy()).to(dev)  # (N, M)
    bias = torch.from_numpy(np.asarray(intercept, np.float64)).to(dev)
    mu = torch.from_numpy(np.asarray(mean, np.float64)).to(dev)
    top = _top_k(coef, k).to(dev)                                      # (M, k) train_idx
    iu = torch.triu_indices(k, k, offset=1, device=dev)                # candidate (pos, pos)
    pass_ = _Passes(chunks, theta, bias, mu, top, dev, target_batch)

    # Pass 1: every candidate's mean, sd and correlation with the residual.
    screen = pass_.screen()
    n = screen.n
    z_mean = screen.cross[:, iu[0], iu[1]] / n                         # (M, P_all)
    z_sd = (screen.square[:, iu[0], iu[1]] / n - z_mean ** 2).clamp_min(0).sqrt()
    r_mean = screen.r_sum / n
    r_var = (screen.r_sq / n - r_mean ** 2).clamp_min(1e-300)
    live = z_sd > 1e-9 * z_sd.amax(dim=1, keepdim=True).clamp_min(1e-300)
    corr = torch.where(live, (screen.resid[:, iu[0], iu[1]] / n - z_mean * r_mean[:, None])
                       / z_sd.clamp_min(1e-300), torch.zeros_like(z_mean))
    t_screen = time.perf_counter() - started

    n_work = min(iu.shape[1], working_size(k, working_set))
    work = corr.abs().topk(n_work, dim=1).indices                      # (M, W) candidate ids
    xv = torch.from_numpy(np.asarray(x_val, np.uint8)).to(dev)
    xvc = xv.T.to(torch.float32) - mu.to(torch.float32)[:, None]       # (N, n_val)
    rv = (torch.from_numpy(np.asarray(y_val, np.float64)).to(dev) - bias
          - (xv.to(torch.float32) @ theta).double())                   # (n_val, M)
    todo = torch.arange(n_tgt, device=dev)
    weights = torch.zeros(n_tgt, n_work, dtype=torch.float64, device=dev)
    chosen_lam = torch.zeros(n_tgt, dtype=torch.float64, device=dev)
    val_mse = torch.zeros(n_tgt, dtype=torch.float64, device=dev)
    sets = work.clone()
    rounds, violations, n_iter, t_gram, t_solve, t_kkt = 0, [], 0, 0.0, 0.0, 0.0
    while len(todo) and rounds < max(max_rounds, 1):
        rounds += 1
        t0 = time.perf_counter()
        pa_, pb_ = iu[0][sets[todo]], iu[1][sets[todo]]                # (T, W) positions
        gram = pass_.working_gram(todo, pa_, pb_)
        mean_w = torch.gather(z_mean[todo], 1, sets[todo])
        sd_w = torch.gather(z_sd[todo], 1, sets[todo]).clamp_min(1e-300)
        t1 = time.perf_counter()
        lam_t = torch.zeros(len(todo), dtype=torch.float64, device=dev)
        for rows in pass_.batches(torch.arange(len(todo), device=dev)):
            t = todo[rows]
            c = (gram.zr[rows] / n - mean_w[rows] * r_mean[t, None]) / sd_w[rows]
            g = ((gram.zz[rows] / n - mean_w[rows, :, None] * mean_w[rows, None, :])
                 / (sd_w[rows, :, None] * sd_w[rows, None, :]))
            zv = _val_features(xvc, top[t], pa_[rows], pb_[rows], mean_w[rows], sd_w[rows])
            res = _batched_path(g, c, r_var[t], zv, rv[:, t].T - r_mean[t, None],
                                n_lambdas=n_lambdas, lambda_ratio=lambda_ratio, tol=tol,
                                max_iter=max_iter, patience=patience)
            weights[t], chosen_lam[t], val_mse[t], lam_t[rows] = res.w, res.lam, res.val_mse, \
                res.lam
            n_iter += res.n_iter
        del gram
        t2 = time.perf_counter()
        t_solve += t2 - t1
        t_gram += t1 - t0
        if max_rounds == 0:  # the working set's Lasso, unchecked
            if progress is not None:
                progress(len(todo))
            break
        # Pass 2: the optimality condition at the chosen λ on every candidate.
        phi = weights[todo] / sd_w
        fitted = pass_.kkt(todo, pa_, pb_, phi, mean_w)                # (T, k, k)
        score = torch.where(live[todo], (fitted[:, iu[0], iu[1]] / n) / z_sd[todo]
                            .clamp_min(1e-300), torch.zeros_like(z_mean[todo]))
        score = (corr[todo] - score).abs()
        in_set = torch.zeros_like(score, dtype=torch.bool).scatter_(1, sets[todo], True)
        bad = (score > lam_t[:, None] * (1 + 1e-3) + 1e-7 * r_var[todo, None].sqrt()) & ~in_set
        n_bad = bad.sum(dim=1)
        violations.append(int((n_bad > 0).sum()))
        t_kkt += time.perf_counter() - t2
        again = n_bad > 0
        if progress is not None:
            progress(int((~again).sum()))
        if not bool(again.any()) or rounds == max_rounds:
            if progress is not None:
                progress(int(again.sum()))
            break
        # Violators replace the working set's zeros, strongest first.
        for row in torch.nonzero(again).ravel().tolist():
            tgt = int(todo[row])
            keep = sets[tgt][weights[tgt] != 0]
            extra = torch.nonzero(bad[row]).ravel()
            extra = extra[score[row, extra].argsort(descending=True)]
            sets[tgt] = torch.cat([keep, extra, sets[tgt][weights[tgt] == 0]])[:n_work]
            weights[tgt] = 0
        todo = todo[again]
    uncertified = violations[-1] if violations else 0
    return _to_mask_space(
        coef, intercept, mean, top.cpu().numpy(), iu.cpu().numpy(), sets.cpu().numpy(),
        weights.cpu().numpy(), (torch.gather(z_mean, 1, sets)).cpu().numpy(),
        torch.gather(z_sd, 1, sets).clamp_min(1e-300).cpu().numpy(), r_mean.cpu().numpy(),
        chosen_lam.cpu().numpy(), val_mse.cpu().numpy(),
        info={"k": k, "candidates": int(iu.shape[1]), "working_set": n_work,
              "kkt_rounds": rounds, "kkt_violating_targets": violations,
              "uncertified_targets": uncertified, "n_iter": n_iter,
              "timings": {"screen": t_screen, "gram": t_gram, "solve": t_solve,
                          "kkt": t_kkt, "total": time.perf_counter() - started}},
    )


# --------------------------------------------------------------------------- passes


@dataclass
class _Screen:
    n: int
    r_sum: torch.Tensor   # (M,) float64
    r_sq: torch.Tensor    # (M,)
    cross: torch.Tensor   # (M, k, k): Σ x̃_a x̃_b
    square: torch.Tensor  # (M, k, k): Σ x̃_a² x̃_b²
    resid: torch.Tensor   # (M, k, k): Σ r x̃_a x̃_b


@dataclass
class _WorkingGram:
    zz: torch.Tensor      # (T, W, W) Σ z zᵀ
    zr: torch.Tensor      # (T, W)    Σ z r


class _Passes:
    """The passes over the fit runs, each batched over targets."""

    def __init__(self, chunks: ChunkSource, theta: torch.Tensor, bias: torch.Tensor,
                 mu: torch.Tensor, top: torch.Tensor, dev: torch.device, batch: int) -> None:
        self.chunks, self.theta, self.bias, self.mu, self.top = chunks, theta, bias, mu, top
        self.dev, self.batch = dev, max(1, int(batch))
        # Scratch reused across chunks and batches: a fresh buffer of this size per
        # product costs more in page faults than the product itself (measured 5x).
        self._scratch: dict[str, torch.Tensor] = {}

    def _buf(self, name: str, *shape: int) -> torch.Tensor:
        size = int(np.prod(shape))
        held = self._scratch.get(name)
        if held is None or held.numel() < size:
            held = self._scratch[name] = torch.empty(size, dtype=torch.float32, device=self.dev)
        return held[:size].view(*shape)

    def _runs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per chunk: the centred masks transposed, float32 (N, c), and the residual (c, M)."""
        for masks, margins in self.chunks():
            x = torch.as_tensor(np.asarray(masks, np.uint8)).to(self.dev)
            y = torch.as_tensor(np.asarray(margins, np.float64)).to(self.dev)
            xc = self._buf("xc", x.shape[1], x.shape[0])
            torch.sub(x.T.to(torch.float32), self.mu.to(torch.float32)[:, None], out=xc)
            yield xc, y - self.bias - (x.to(torch.float32) @ self.theta).double()

    def _rows(self, xc: torch.Tensor, idx: torch.Tensor, name: str = "rows") -> torch.Tensor:
        """Centred mask rows of examples ``idx`` (T, W): float32 (T, W, c), in scratch."""
        out = self._buf(name, idx.numel(), xc.shape[1])
        torch.index_select(xc, 0, idx.reshape(-1), out=out)
        return out.view(*idx.shape, xc.shape[1])

    def batches(self, targets: torch.Tensor) -> Iterator[torch.Tensor]:
        for lo in range(0, len(targets), self.batch):
            yield targets[lo: lo + self.batch]

    def screen(self) -> _Screen:
        m, k = self.top.shape

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.float64, device=self.dev)

        out = _Screen(0, zeros(m), zeros(m), zeros(m, k, k), zeros(m, k, k), zeros(m, k, k))
        everyone = torch.arange(m, device=self.dev)
        for xc, r in self._runs():
            out.n += xc.shape[1]
            out.r_sum += r.sum(dim=0)
            out.r_sq += (r * r).sum(dim=0)
            rt_all = r.T.to(torch.float32)                                  # (M, c)
            for t in self.batches(everyone):
                rows = self._rows(xc, self.top[t])                          # (T, k, c)
                other = self._buf("other", *rows.shape)
                torch.mul(rows, rows, out=other)
                out.square[t] += torch.bmm(other, other.transpose(1, 2)).double()
                out.cross[t] += torch.bmm(rows, rows.transpose(1, 2)).double()
                torch.mul(rows, rt_all[t][:, None, :], out=other)
                out.resid[t] += torch.bmm(other, rows.transpose(1, 2)).double()
        return out

    def _pairs(self, xc: torch.Tensor, t: torch.Tensor, pa: torch.Tensor,
               pb: torch.Tensor) -> torch.Tensor:
        """Centred pair products of a chunk for targets t: (T, W, c) float32, in scratch."""
        top = self.top[t]
        z = self._rows(xc, torch.gather(top, 1, pa), "za")
        return z.mul_(self._rows(xc, torch.gather(top, 1, pb), "zb"))

    def working_gram(self, targets: torch.Tensor, pa: torch.Tensor,
                     pb: torch.Tensor) -> _WorkingGram:
        n_t, w = pa.shape
        out = _WorkingGram(torch.zeros(n_t, w, w, dtype=torch.float64, device=self.dev),
                           torch.zeros(n_t, w, dtype=torch.float64, device=self.dev))
        rows = torch.arange(n_t, device=self.dev)
        for xc, r in self._runs():
            rt_all = r.T.to(torch.float32)
            for b in self.batches(rows):
                z = self._pairs(xc, targets[b], pa[b], pb[b])               # (T, W, c)
                out.zz[b] += torch.bmm(z, z.transpose(1, 2)).double()
                out.zr[b] += torch.bmm(z, rt_all[targets[b]][:, :, None])[:, :, 0].double()
        return out

    def kkt(self, targets: torch.Tensor, pa: torch.Tensor, pb: torch.Tensor,
            phi: torch.Tensor, mean_w: torch.Tensor) -> torch.Tensor:
        """Σ over runs of the pairs' fitted residual times every candidate: (T, k, k)."""
        k = self.top.shape[1]
        out = torch.zeros(len(targets), k, k, dtype=torch.float64, device=self.dev)
        rows = torch.arange(len(targets), device=self.dev)
        offset = (phi * mean_w).sum(dim=1)                                  # (T,)
        for xc, _ in self._runs():
            for b in self.batches(rows):
                t = targets[b]
                z = self._pairs(xc, t, pa[b], pb[b])                        # (T, W, c)
                fit = (torch.bmm(phi[b].to(torch.float32)[:, None, :], z)[:, 0]
                       - offset[b, None].to(torch.float32))                 # (T, c)
                cand = self._rows(xc, self.top[t])                          # (T, k, c)
                weighted = self._buf("other", *cand.shape)
                torch.mul(cand, fit[:, None, :], out=weighted)
                out[b] += torch.bmm(weighted, cand.transpose(1, 2)).double()
        return out


def _top_k(coef: sp.csr_matrix, k: int) -> torch.Tensor:
    """Each target's k examples of largest |θ| (ties and zeros: lower train_idx first)."""
    n_tgt, n_feat = coef.shape
    out = np.empty((n_tgt, k), np.int64)
    for t in range(n_tgt):
        lo, hi = coef.indptr[t], coef.indptr[t + 1]
        idx, w = coef.indices[lo:hi].astype(np.int64), np.abs(coef.data[lo:hi])
        order = idx[np.lexsort((idx, -w))]
        if len(order) < k:
            rest = np.setdiff1d(np.arange(n_feat), order, assume_unique=False)
            order = np.concatenate([order, rest[: k - len(order)]])
        out[t] = order[:k]
    return torch.from_numpy(out)


def _val_features(xvc: torch.Tensor, top: torch.Tensor, pa: torch.Tensor, pb: torch.Tensor,
                  mean_w: torch.Tensor, sd_w: torch.Tensor) -> torch.Tensor:
    """Standardised pair features of the validation runs: float32 (T, W, n_val).

    ``xvc`` is the validation masks centred by the fit runs' means, transposed (N, n_val).
    """
    a = torch.gather(top, 1, pa).reshape(-1)
    b = torch.gather(top, 1, pb).reshape(-1)
    z = torch.index_select(xvc, 0, a).mul_(torch.index_select(xvc, 0, b))
    z = z.view(*pa.shape, xvc.shape[1])
    return z.sub_(mean_w.to(torch.float32)[:, :, None]).div_(sd_w.to(torch.float32)[:, :, None])


# --------------------------------------------------------------------------- the solve


@dataclass
class _PathResult:
    w: torch.Tensor        # (T, W) standardised weights at the chosen λ
    lam: torch.Tensor      # (T,)
    val_mse: torch.Tensor  # (T,) validation MSE of the residual at the chosen λ
    n_iter: int


def _batched_path(
    g: torch.Tensor, c: torch.Tensor, r_var: torch.Tensor, zv: torch.Tensor, rv: torch.Tensor,
    *, n_lambdas: int, lambda_ratio: float, tol: float, max_iter: int, patience: int,
) -> _PathResult:
    """The Lasso path on per-target Grams (FISTA, warm starts, certified duality gap).

    Target t minimises ``½ wᵀ g_t w - c_tᵀ w + ½ v_t + λ ||w||₁`` for λ from
    ``max|c_t|`` (no pairs) down to ``lambda_ratio`` times that. A λ is solved when
    ``gap <= tol * v_t``.

    The λ kept is chosen on the validation residuals ``rv`` (T, n_val; features
    ``zv``, (T, W, n_val)) by a paired one-standard-error rule: the largest λ whose
    squared errors exceed those of the lowest-MSE λ by at most one standard error
    of their mean difference. With few validation runs the lowest MSE is mostly
    luck, and the rule keeps fewer pairs (none at λ_max); with many it is the
    lowest-MSE λ up to noise.
    """
    n_t, w_dim = c.shape
    lam_max = c.abs().amax(dim=1)
    steps = lambda_ratio ** (torch.arange(n_lambdas, dtype=torch.float64, device=c.device)
                             / max(1, n_lambdas - 1))
    lams = lam_max[:, None] * steps[None, :]                                # (T, L)
    lip = torch.linalg.eigvalsh(g)[:, -1].clamp_min(1e-12)                  # (T,)
    w = torch.zeros_like(c)
    path = [w.clone()]                     # the solution at each λ tried (λ_max: no pairs)
    best = torch.zeros(n_t, dtype=torch.int64, device=c.device)
    best_mse = (rv * rv).mean(dim=1)
    stale = torch.zeros(n_t, dtype=torch.int64, device=c.device)
    going = torch.ones(n_t, dtype=torch.bool, device=c.device)
    total_iter = 0
    for step in range(1, n_lambdas):
        lam = lams[:, step]
        w, iters = _fista(g, c, r_var, lam, lip, w, tol=tol, max_iter=max_iter, active=going)
        total_iter += iters
        mse = (_val_errors(w, zv, rv) ** 2).mean(dim=1)
        better = going & (mse < best_mse)
        best_mse = torch.where(better, mse, best_mse)
        best = torch.where(better, torch.full_like(best, step), best)
        # a target that stopped keeps its last solution for the later steps
        path.append(torch.where(going[:, None], w, path[-1]))
        stale = torch.where(better, torch.zeros_like(stale), stale + 1)
        going &= stale < patience
        if not bool(going.any()):
            break
    rows = torch.arange(n_t, device=c.device)
    stacked = torch.stack(path, dim=1)                                      # (T, steps, W)
    e_best = _val_errors(stacked[rows, best], zv, rv) ** 2
    chosen = best.clone()
    undecided = torch.ones(n_t, dtype=torch.bool, device=c.device)
    n_val = rv.shape[1]
    for step in range(len(path)):  # from λ_max down: the first within one SE of the best
        d = _val_errors(stacked[:, step], zv, rv) ** 2 - e_best
        se = d.std(dim=1) / max(n_val, 1) ** 0.5 if n_val > 1 else torch.zeros_like(best_mse)
        ok = undecided & (step <= best) & (d.mean(dim=1) <= se)
        chosen = torch.where(ok, torch.full_like(chosen, step), chosen)
        undecided &= ~ok
    w_chosen = stacked[rows, chosen]
    val_mse = (_val_errors(w_chosen, zv, rv) ** 2).mean(dim=1)
    return _PathResult(w_chosen, lams[rows, chosen], val_mse, total_iter)


def _val_errors(w: torch.Tensor, zv: torch.Tensor, rv: torch.Tensor) -> torch.Tensor:
    """The validation residuals left by pair weights w (T, W): float64 (T, n_val)."""
    return rv - torch.bmm(w.to(zv.dtype)[:, None, :], zv)[:, 0].double()


def duality_gap(g: torch.Tensor, c: torch.Tensor, r_var: torch.Tensor, lam: torch.Tensor,
                w: torch.Tensor) -> torch.Tensor:
    """The Lasso's duality gap per target, from Gram quantities only.

    With ``q = ||r - Zw||²/n``, gradient ``c - g w`` and the residual scaled into the
    dual feasible set by ``s = min(1, λ / ||c - g w||∞)``: primal ``q/2 + λ||w||₁``,
    dual ``s (v - cᵀw) - s² q / 2``.
    """
    gw = torch.bmm(g, w[:, :, None])[:, :, 0]
    cw = (c * w).sum(dim=1)
    q = (r_var - 2 * cw + (w * gw).sum(dim=1)).clamp_min(0)
    s = torch.clamp(lam / (c - gw).abs().amax(dim=1).clamp_min(1e-300), max=1.0)
    primal = q / 2 + lam * w.abs().sum(dim=1)
    dual = s * (r_var - cw) - s * s * q / 2
    return primal - dual


def _fista(g: torch.Tensor, c: torch.Tensor, r_var: torch.Tensor, lam: torch.Tensor,
           lip: torch.Tensor, w0: torch.Tensor, *, tol: float, max_iter: int,
           active: torch.Tensor, check_every: int = 10) -> tuple[torch.Tensor, int]:
    """FISTA from ``w0`` until every active target's gap is below ``tol * r_var``."""
    w, v, t_k = w0.clone(), w0.clone(), 1.0
    thresh = (lam / lip)[:, None]
    step = (1 / lip)[:, None]
    todo = active.clone()
    it = 0
    while it < max_iter and bool(todo.any()):
        grad = torch.bmm(g, v[:, :, None])[:, :, 0] - c
        u = v - step * grad
        w_new = torch.sign(u) * (u.abs() - thresh).clamp_min(0)
        t_next = (1 + (1 + 4 * t_k * t_k) ** 0.5) / 2
        v = w_new + ((t_k - 1) / t_next) * (w_new - w)
        w, t_k = torch.where(todo[:, None], w_new, w), t_next
        it += 1
        if it % check_every == 0:
            todo &= duality_gap(g, c, r_var, lam, w) > tol * r_var
    return w, it


# --------------------------------------------------------------------------- mask space


def _to_mask_space(
    coef: sp.csr_matrix, intercept: np.ndarray, mean: np.ndarray, top: np.ndarray,
    iu: np.ndarray, sets: np.ndarray, w: np.ndarray, z_mean: np.ndarray, z_sd: np.ndarray,
    r_mean: np.ndarray, lam: np.ndarray, val_mse: np.ndarray, info: dict[str, Any],
) -> PairFit:
    n_tgt = coef.shape[0]
    rows, slot = np.nonzero(w)
    phi = (w[rows, slot] / z_sd[rows, slot]).astype(np.float32)
    cand = sets[rows, slot]
    a = top[rows, iu[0][cand]]
    b = top[rows, iu[1][cand]]
    a, b = np.minimum(a, b), np.maximum(a, b)
    phi64 = phi.astype(np.float64)
    # φ (x_a - μ_a)(x_b - μ_b) - φ z̄ = φ x_a x_b - φ μ_b x_a - φ μ_a x_b + φ (μ_a μ_b - z̄).
    shift = sp.csr_matrix(
        (np.concatenate([-phi64 * mean[b], -phi64 * mean[a]]),
         (np.concatenate([rows, rows]), np.concatenate([a, b]))), shape=coef.shape)
    linear = (coef.astype(np.float64) + shift).astype(np.float32).tocsr()
    linear.sum_duplicates()
    linear.eliminate_zeros()
    const = np.bincount(rows, weights=phi64 * (mean[a] * mean[b] - z_mean[rows, slot]),
                        minlength=n_tgt)
    # The bias absorbs the rounding of θ' to float32, so the mask-space predictor is
    # exactly the fitted one on the fit runs' means.
    drift = (coef.astype(np.float64) + shift - linear.astype(np.float64)) @ mean
    bias = np.asarray(intercept, np.float64) + r_mean + const + drift
    order = np.lexsort((b, a, rows))
    return PairFit(coef=linear, intercept=bias, target=rows[order].astype(np.int64),
                   a=a[order].astype(np.int64), b=b[order].astype(np.int64),
                   weight=phi[order], penalty=lam, val_mse=val_mse, info=info)
