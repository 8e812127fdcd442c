"""Tests of the datamodel Lasso (dmdb.lasso): oracles, identities and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso

from dmdb.errors import DeviceError, FitError, InputError, UsageError
from dmdb.gram import KERNELS, choose_kernel, count_gram
from dmdb.lasso import DatamodelLasso, GramStats, LassoParams, array_chunks
from dmdb.lasso_reference import duality_gap as _gap_np
from dmdb.lasso_solvers import (
    FastPath,
    GramOperator,
    StreamOperator,
    fista_path,
    lambda_grid,
    reference_path,
)

torch.set_num_threads(1)  # the tests are small: threads only add contention on 2 cores


def make_runs(n, n_feat, n_tgt, seed=0, noise=1.0, n_val=200):
    """Bernoulli(0.5) masks, sparse heavy-tailed weights, margins with mean 2."""
    rng = np.random.default_rng(seed)
    x = rng.random((n + n_val, n_feat)) < 0.5
    w = np.zeros((n_feat, n_tgt))
    for j in range(n_tgt):
        idx = rng.choice(n_feat, max(2, n_feat // 10), replace=False)
        w[idx, j] = rng.standard_t(3, len(idx))
    sd = np.sqrt(0.25 * (w**2).sum(0))
    y = x @ w + 2.0 + noise * sd * rng.standard_normal((n + n_val, n_tgt))
    return x[:n], y[:n], x[n:], y[n:], w


@pytest.fixture(scope="module")
def small():
    return make_runs(500, 50, 5, seed=1)


def objective(xs, yc, w, lam):
    """(1/(2n)) ||y_c - X_s w||² + λ ||w||₁ (scikit-learn's Lasso objective)."""
    return 0.5 * np.mean((yc - xs @ w) ** 2) + lam * np.abs(w).sum()


def standardise(x, y):
    mu, sd = x.mean(0), x.std(0)
    return (x - mu) / sd, y - y.mean(0), mu, sd


# The solvers stop at a duality gap of tol · ||y_c||²/n (scikit-learn's rule). The
# smallest objective in these tests is 2.3% of ||y_c||²/n (n < N, smallest λ), so
# tol = 1e-6 certifies the 1e-4 relative objective that they check.
TOL = 1e-6


def paths(x, y, xv, yv, dtype, newton=None):
    """Reference and fast paths (every λ kept) on the same problem."""
    stats = GramStats(x.shape[1], y.shape[1]).add(x, y)
    prob = stats.standardize(dtype)
    lam = lambda_grid(prob.corr.abs().amax(0).double().numpy(), 8, 1e-2)
    xv_t, yv_t = torch.from_numpy(xv.astype(np.uint8)), torch.from_numpy(yv)
    ref = reference_path(stats.standardize(torch.float64), lam, xv_t, yv_t, keep_path=True)
    fast = fista_path(GramOperator(prob.gram), prob, lam, xv_t, yv_t, dtype=dtype, tol=TOL,
                      early_stopping=False, keep_path=True, newton=newton)
    return lam, ref, fast


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_matches_reference_and_sklearn_objective(small, dtype):
    x, y, xv, yv, _ = small
    lam, ref, fast = paths(x, y, xv, yv, dtype)
    xs, yc, _, _ = standardise(x.astype(float), y)
    for j in range(y.shape[1]):
        for k in (1, 3, 5, 7):
            obj_ref = objective(xs, yc[:, j], ref.path[k][:, j], lam[j, k])
            obj_fast = objective(xs, yc[:, j], fast.path[k][:, j], lam[j, k])
            sk = Lasso(alpha=lam[j, k], fit_intercept=False, tol=1e-12, max_iter=100_000)
            obj_sk = objective(xs, yc[:, j], sk.fit(xs, yc[:, j]).coef_, lam[j, k])
            assert abs(obj_ref - obj_sk) <= 1e-8 * obj_sk
            assert abs(obj_fast - obj_sk) <= 1e-4 * obj_sk


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fewer_runs_than_features_match_sklearn_objective(dtype):
    # n < N: the Gram is rank-deficient, and Newton steps are the default.
    # (The reference CD needs minutes here: too ill-conditioned for a 1e-10 gap.)
    x, y, xv, yv, _ = make_runs(40, 70, 3, seed=3, n_val=30)
    prob = GramStats(70, 3).add(x, y).standardize(dtype)
    lam = lambda_grid(prob.corr.abs().amax(0).double().numpy(), 8, 1e-2)
    xv_t, yv_t = torch.from_numpy(xv.astype(np.uint8)), torch.from_numpy(yv)
    fast = fista_path(GramOperator(prob.gram), prob, lam, xv_t, yv_t, dtype=dtype, tol=TOL,
                      early_stopping=False, keep_path=True)
    assert fast.n_capped == 0
    xs, yc, _, _ = standardise(x.astype(float), y)
    for j in range(y.shape[1]):
        for k in (2, 5, 7):
            sk = Lasso(alpha=lam[j, k], fit_intercept=False, tol=1e-12, max_iter=200_000)
            obj_sk = objective(xs, yc[:, j], sk.fit(xs, yc[:, j]).coef_, lam[j, k])
            obj_fast = objective(xs, yc[:, j], fast.path[k][:, j], lam[j, k])
            assert abs(obj_fast - obj_sk) <= 1e-4 * obj_sk


def test_newton_steps_match_reference_when_runs_exceed_features(small):
    x, y, xv, yv, _ = small
    lam, ref, fast = paths(x, y, xv, yv, torch.float64, newton=True)
    xs, yc, _, _ = standardise(x.astype(float), y)
    for j in range(y.shape[1]):
        for k in (1, 4, 7):
            obj_ref = objective(xs, yc[:, j], ref.path[k][:, j], lam[j, k])
            obj_fast = objective(xs, yc[:, j], fast.path[k][:, j], lam[j, k])
            assert abs(obj_fast - obj_ref) <= 1e-4 * obj_ref


def test_read_only_arrays_fit_without_warning(small, recwarn):
    x, y, xv, yv, _ = small
    x, y = x.copy(), y.astype(np.float32)
    x.flags.writeable = False
    y.flags.writeable = False
    DatamodelLasso().fit(x, y, xv, yv)
    assert not [w for w in recwarn if "writable" in str(w.message)]


def test_reference_and_fast_choose_same_penalty(small):
    x, y, xv, yv, _ = small
    ref = DatamodelLasso(solver="reference", early_stopping=False).fit(x, y, xv, yv)
    fast = DatamodelLasso(dtype="float64", early_stopping=False).fit(x, y, xv, yv)
    np.testing.assert_allclose(fast.penalty_, ref.penalty_)
    np.testing.assert_allclose(fast.val_mse_, ref.val_mse_, rtol=1e-4)


def test_planted_sparse_weights_are_recovered():
    x, y, xv, yv, w = make_runs(3000, 60, 4, seed=2, noise=0.3, n_val=500)
    est = DatamodelLasso().fit(x, y, xv, yv)
    coef = est.coef_.toarray()
    for j in range(w.shape[1]):
        assert np.corrcoef(coef[j], w[:, j])[0, 1] > 0.9


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mask_space_identity_is_exact(small, dtype):
    x, y, xv, yv, _ = small
    est = DatamodelLasso(dtype=dtype).fit(x, y, xv, yv)
    assert est.coef_.dtype == np.dtype(dtype)
    coef = est.coef_.toarray().astype(np.float64)  # (M, N)
    mu, sd = x.mean(0), x.std(0)
    w_std = coef * sd  # the standardised weights the solver found
    pred_std = y.mean(0) + ((xv - mu) / sd) @ w_std.T
    pred_mask = est.intercept_ + xv @ coef.T
    np.testing.assert_allclose(pred_mask, pred_std, rtol=0, atol=1e-10)
    np.testing.assert_allclose(est.predict(xv), pred_mask, rtol=0, atol=1e-12)
    np.testing.assert_allclose(est.intercept_, y.mean(0) - coef @ mu, rtol=0, atol=1e-12)
    mse = ((yv - pred_mask) ** 2).mean(0)
    np.testing.assert_allclose(est.val_mse_, mse, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reported_gap_is_certified_in_float64(small, dtype):
    x, y, xv, yv, _ = small
    est = DatamodelLasso(dtype=dtype, tol=1e-4).fit(x, y, xv, yv)
    prob = GramStats(x.shape[1], y.shape[1]).add(x, y).standardize(torch.float64)
    w_std = est.coef_.toarray().astype(np.float64) * prob.sd.numpy()
    for j in range(y.shape[1]):
        gap = _gap_np(prob.gram.numpy(), prob.corr[:, j].numpy(), float(prob.y_var[j]),
                      est.penalty_[j], w_std[j])
        assert gap <= 1e-4
        assert est.gap_[j] <= 1e-4


def test_gram_free_matches_gram(small):
    x, y, xv, yv, _ = small
    kw = {"dtype": "float64", "tol": 1e-7, "early_stopping": False}
    gram = DatamodelLasso(**kw).fit(x, y, xv, yv)
    free = DatamodelLasso(gram=False, chunk_size=128, **kw).fit(x, y, xv, yv)
    np.testing.assert_allclose(free.penalty_, gram.penalty_)
    np.testing.assert_allclose(free.coef_.toarray(), gram.coef_.toarray(), atol=1e-4)
    np.testing.assert_allclose(free.intercept_, gram.intercept_, atol=1e-4)


def test_stream_operator_equals_gram_product(small):
    x, y, _, _, _ = small
    prob = GramStats(50, 5).add(x, y).standardize(torch.float64)
    op = StreamOperator(array_chunks(x, y, 77), prob, torch.float64)
    w = torch.randn(3, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op(w), w @ prob.gram, rtol=1e-10, atol=1e-12)


def test_chunked_stats_equal_one_shot(small):
    x, y, _, _, _ = small
    one = GramStats(50, 5).add(x, y)
    chunked = GramStats(50, 5)
    for lo in range(0, len(x), 64):
        chunked.add(x[lo : lo + 64].astype(np.uint8), y[lo : lo + 64].astype(np.float32))
    assert torch.equal(one.gram_counts, chunked.gram_counts)
    assert torch.equal(one.col_counts, chunked.col_counts)
    xf = torch.from_numpy(x.astype(np.int64))
    assert torch.equal(one.gram_counts.long(), xf.T @ xf)
    p1 = one.standardize(torch.float64)
    p2 = chunked.standardize(torch.float64)
    torch.testing.assert_close(p1.gram, p2.gram, rtol=0, atol=1e-12)
    torch.testing.assert_close(p1.corr, p2.corr, rtol=1e-6, atol=1e-6)  # float32 margins
    xs, _, _, _ = standardise(x.astype(float), y)
    np.testing.assert_allclose(p1.gram.numpy(), xs.T @ xs / len(x), atol=1e-12)


def test_fit_stats_and_inplace_gram(small):
    x, y, xv, yv, _ = small
    by_arrays = DatamodelLasso().fit(x, y, xv, yv)
    stats = GramStats(50, 5)
    for masks, margins in array_chunks(x, y, 100)():
        stats.add(masks, margins)
    by_stats = DatamodelLasso(copy_gram=False).fit_stats(stats, xv, yv)
    np.testing.assert_allclose(by_stats.coef_.toarray(), by_arrays.coef_.toarray(), atol=1e-6)
    with pytest.raises(FitError, match="consumed"):
        stats.add(x, y)


def test_deterministic_and_target_batch_invariant(small):
    x, y, xv, yv, _ = small
    a = DatamodelLasso().fit(x, y, xv, yv)
    b = DatamodelLasso().fit(x, y, xv, yv)
    c = DatamodelLasso(target_batch=2, progress=True).fit(x, y, xv, yv)
    assert (a.coef_ != b.coef_).nnz == 0
    np.testing.assert_array_equal(a.intercept_, b.intercept_)
    # Another batch changes BLAS blocking, so rows stop at other (equally certified) steps.
    np.testing.assert_allclose(c.penalty_, a.penalty_)
    np.testing.assert_allclose(c.val_mse_, a.val_mse_, rtol=1e-4)
    np.testing.assert_allclose(c.coef_.toarray(), a.coef_.toarray(), atol=1e-3)


def test_constant_columns_get_zero_weight(small):
    x, y, xv, yv, _ = small
    x = x.copy()
    x[:, 3] = True
    x[:, 7] = False
    est = DatamodelLasso().fit(x, y, xv, yv)
    assert est.coef_[:, [3, 7]].nnz == 0
    assert np.isfinite(est.intercept_).all()


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n_lambdas": 1}, "n_lambdas"),
        ({"lambda_ratio": 0.0}, "lambda_ratio"),
        ({"lambda_ratio": 1.0}, "lambda_ratio"),
        ({"tol": 0.0}, "tol"),
        ({"solver": "saga"}, "solver"),
        ({"dtype": "float16"}, "dtype"),
        ({"max_iter": 0}, "max_iter"),
    ],
)
def test_bad_parameters_raise_usage_error(small, params, match):
    x, y, xv, yv, _ = small
    with pytest.raises(UsageError, match=match):
        DatamodelLasso(**params).fit(x, y, xv, yv)


def test_bad_data_raises_fit_error(small):
    x, y, xv, yv, _ = small
    est = DatamodelLasso()
    with pytest.raises(FitError, match="at least 2 fit runs"):
        est.fit(x[:1], y[:1], xv, yv)
    with pytest.raises(FitError, match="at least 2 validation runs"):
        est.fit(x, y, xv[:1], yv[:1])
    y_const = y.copy()
    y_const[:, 3] = 1.5
    with pytest.raises(FitError, match="target 3 is constant"):
        est.fit(x, y_const, xv, yv)
    y_nan = y.copy()
    y_nan[10, 2] = np.nan
    with pytest.raises(FitError, match="non-finite"):
        est.fit(x, y_nan, xv, yv)
    yv_inf = yv.copy()
    yv_inf[0, 0] = np.inf
    with pytest.raises(FitError, match="non-finite"):
        est.fit(x, y, xv, yv_inf)
    with pytest.raises(FitError, match="same number of runs"):
        est.fit(x, y[:-1], xv, yv)
    with pytest.raises(FitError, match="do not match"):
        est.fit(x, y, xv[:, :-1], yv)
    with pytest.raises(InputError, match="0 and 1"):
        est.fit(x.astype(np.int8) * 2, y, xv, yv)


def test_cuda_without_gpu_raises_device_error(small):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    x, y, xv, yv, _ = small
    with pytest.raises(DeviceError):
        DatamodelLasso(device="cuda").fit(x, y, xv, yv)


def test_block_gram_counts_are_exact():
    # Wide chunks take the symmetric block product; it must equal the plain count.
    from dmdb.lasso_stats import _count_gram

    a = torch.from_numpy(np.random.default_rng(0).random((300, 2101)) < 0.3)
    expected = (a.double().T @ a.double()).to(torch.int32)
    assert torch.equal(_count_gram(a), expected)


def test_support_solve_float32_and_its_float64_retry():
    # Well-conditioned active sets are solved in float32; ill-conditioned ones (here
    # cond 1e6, where float32 would lose about 1% of the answer) are redone in float64.
    from dmdb.lasso_solvers import _support_solve

    rng = np.random.default_rng(0)
    n = 60
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    for low, rtol in ((-1, 1e-5), (-6, 1e-6)):
        gram = torch.from_numpy(((q * np.logspace(0, low, n)) @ q.T).astype(np.float32))
        act = torch.from_numpy(rng.random((3, n)) < 0.8)
        act[0] = True
        rhs = torch.from_numpy(rng.normal(size=(3, n)))
        got = _support_solve(gram, act, rhs).numpy()
        for i in range(3):
            a = act[i].numpy()
            exact = np.linalg.solve(gram.double().numpy()[np.ix_(a, a)], rhs[i].numpy()[a])
            np.testing.assert_allclose(got[i, a], exact, rtol=0, atol=rtol * np.abs(exact).max())
            assert not got[i, ~a].any()


# ---------------------------------------------------------------- one signature, honoured


def small_problem(small, dtype=torch.float64, n_lambdas=8):
    x, y, xv, yv, _ = small
    prob = GramStats(x.shape[1], y.shape[1]).add(x, y).standardize(dtype)
    lam = lambda_grid(prob.corr.abs().amax(0).double().numpy(), n_lambdas, 1e-2)
    return prob, lam, torch.from_numpy(xv.astype(np.uint8)), torch.from_numpy(yv)


def test_reference_honours_tol(small):
    prob, lam, xv, yv = small_problem(small)
    gram, corr, y_var = prob.gram.numpy(), prob.corr.numpy(), prob.y_var.numpy()
    found = {}
    for tol in (1e-3, 1e-9):
        res = reference_path(prob, lam, xv, yv, tol=tol, keep_path=True)
        assert res.n_capped == 0
        gaps = np.array([[_gap_np(gram, corr[:, j], float(y_var[j]), lam[j, k], res.path[k][:, j])
                          for k in range(lam.shape[1])] for j in range(corr.shape[1])])
        assert (gaps <= tol).all() and (res.gap <= tol).all()  # certified in float64
        found[tol] = (gaps.max(), res.n_iter.sum())
    assert found[1e-3][0] > 1e3 * found[1e-9][0]  # the looser tol really stops earlier
    assert found[1e-3][1] < found[1e-9][1]


def test_reference_honours_max_iter(small):
    prob, lam, xv, yv = small_problem(small)
    res = reference_path(prob, lam, xv, yv, tol=1e-12, max_iter=1)
    assert (res.n_iter <= lam.shape[1]).all()
    assert res.n_capped > 0 and (res.gap > 1e-12).any()
    x, y, xvv, yvv, _ = small
    est = DatamodelLasso(solver="reference", tol=1e-12, max_iter=1).fit(x, y, xvv, yvv)
    assert est.n_capped_ > 0 and (est.n_iter_ <= est.n_lambdas).all()


def test_reference_honours_early_stopping(small):
    x, y, xv, yv, _ = small
    kw = {"dtype": "float64", "early_stopping": True, "patience": 2, "tol": 1e-8}
    ref = DatamodelLasso(solver="reference", **kw).fit(x, y, xv, yv)
    full = DatamodelLasso(solver="reference", **(kw | {"early_stopping": False})).fit(
        x, y, xv, yv)
    fast = DatamodelLasso(**kw).fit(x, y, xv, yv)
    np.testing.assert_allclose(ref.penalty_, fast.penalty_)
    assert ref.n_iter_.sum() < full.n_iter_.sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_solvers_through_one_signature_match_sklearn(small, dtype):
    prob, lam, xv, yv = small_problem(small, dtype)
    knobs = {"tol": 1e-7, "max_iter": 20_000, "early_stopping": False, "patience": 5,
             "keep_path": True}
    x, y, _, _, _ = small
    xs, yc, _, _ = standardise(x.astype(float), y)
    for solver in (reference_path, FastPath(dtype=dtype)):
        res = solver(prob, lam, xv, yv, **knobs)
        assert res.n_capped == 0
        for j in range(y.shape[1]):
            for k in (2, 6):
                sk = Lasso(alpha=lam[j, k], fit_intercept=False, tol=1e-12, max_iter=100_000)
                obj_sk = objective(xs, yc[:, j], sk.fit(xs, yc[:, j]).coef_, lam[j, k])
                obj = objective(xs, yc[:, j], res.path[k][:, j], lam[j, k])
                assert abs(obj - obj_sk) <= 1e-4 * obj_sk


def test_get_params_round_trips():
    est = DatamodelLasso(solver="reference", tol=1e-5, max_iter=7, n_threads=1)
    params = est.get_params()
    assert list(params) == LassoParams.param_names()
    assert params["tol"] == 1e-5 and params["max_iter"] == 7 and params["solver"] == "reference"
    assert DatamodelLasso(**params).get_params() == params
    assert est.set_params(tol=1e-3) is est and est.tol == 1e-3
    with pytest.raises(UsageError, match="unknown"):
        est.set_params(alpha=0.5)
    # __init__ only stores: a bad value is refused by fit, not by the constructor
    assert DatamodelLasso(n_lambdas=1).get_params()["n_lambdas"] == 1


# ---------------------------------------------------------------- the Gram kernels


@pytest.mark.parametrize("shape", [(2100, 45), (300, 2101), (7, 9)])
def test_every_gram_kernel_counts_exactly(shape):
    # (2100, 45): more runs than bfloat16 and float16 hold exactly, so both are cut into
    # blocks; (300, 2101): wide enough for the symmetric block product; N not a multiple of 8.
    x = np.random.default_rng(shape[1]).random(shape) < 0.4
    expected = x.astype(np.int64).T @ x.astype(np.int64)
    kernels = [k for k in KERNELS if _runs_here(k)]
    assert {"float32", "int8", "bfloat16"} <= set(kernels)
    for kernel in kernels:
        got = count_gram(torch.from_numpy(x), kernel)
        assert got.dtype == torch.int32
        np.testing.assert_array_equal(got.numpy().astype(np.int64), expected, err_msg=kernel)


def _runs_here(kernel):
    try:
        count_gram(torch.ones(4, 4, dtype=torch.uint8), kernel)
    except RuntimeError:
        return False
    return True


def test_fit_is_the_same_with_every_gram_kernel(small):
    x, y, xv, yv, _ = small
    fits = {k: DatamodelLasso(gram_kernel=k).fit(x, y, xv, yv) for k in KERNELS}
    first = fits["float32"]
    for kernel, est in fits.items():
        assert est.gram_kernel_.kernel == kernel and est.gram_kernel_.reason == "asked for"
        assert (est.coef_ != first.coef_).nnz == 0, kernel
        np.testing.assert_array_equal(est.intercept_, first.intercept_)
    with pytest.raises(UsageError, match="gram_kernel"):
        DatamodelLasso(gram_kernel="int4").fit(x, y, xv, yv)


def test_auto_gram_kernel_is_measured_once_and_never_slower_than_float32():
    choice = choose_kernel("auto", torch.device("cpu"), 600, 700)
    assert choice.reason == "measured" and choice.kernel in KERNELS
    assert "float32" in choice.seconds and choice.probe == (700, 600)
    assert choice.seconds[choice.kernel] <= choice.seconds["float32"]
    again = choose_kernel("auto", torch.device("cpu"), 600, 700)
    assert again.reason == "measured earlier in this process" and again.kernel == choice.kernel
    assert choose_kernel("auto", torch.device("cpu"), 37, 500).reason == "too small to measure"
    record = choice.as_dict()
    assert set(record) == {"kernel", "reason", "probe", "seconds", "screened_out", "screen"}
    # the screen timed every kernel; those screened out were > 4x float32 there
    assert set(choice.screen) == set(KERNELS)
    assert all(s > 4 * choice.screen["float32"] for s in choice.screened_out.values())
