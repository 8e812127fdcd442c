"""Second-order datamodels (issue 13): the pair stage against scikit-learn, planted pairs
recovered, the mask-space map exact, and `dmdb fit --pairs` end to end with bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.linear_model import Lasso

import dmdb
from dmdb import fit_memory
from dmdb import pairs as P
from dmdb.catalog import pair_predictions
from dmdb.cli import cli
from dmdb.lasso import DatamodelLasso, array_chunks
from dmdb.metrics import correlations
from tests.conftest import counts, run_table

N, M = 30, 3
PLANTED = [(0, 1, -1.2), (2, 5, 0.9), (1, 7, -0.8)]  # (a, b, φ) for every target


def planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bernoulli(0.5) masks; margins linear in the mask plus the planted pairs and noise."""
    truth = np.random.default_rng(99)  # one datamodel for every split
    theta = np.zeros((N, M))
    # Heavy-tailed, and at least 1.5 in size, so the 10 are each target's top 10.
    theta[:10] = (np.sign(truth.standard_normal((10, M)))
                  * (1.5 + np.abs(truth.standard_t(3, (10, M)))))
    rng = np.random.default_rng(seed)
    x = (rng.random((n, N)) < 0.5).astype(np.uint8)
    y = x @ theta
    for a, b, phi in PLANTED:
        y += phi * (x[:, a] * x[:, b])[:, None]
    return x, y + 0.3 * rng.standard_normal(y.shape)


@pytest.fixture(scope="module")
def linear() -> dict[str, object]:
    x, y = planted(3000, 0)
    xv, yv = planted(600, 1)
    xt, yt = planted(600, 2)
    est = DatamodelLasso(n_lambdas=20, tol=1e-7, max_iter=20000).fit(x, y, xv, yv)
    return {"x": x, "y": y, "xv": xv, "yv": yv, "xt": xt, "yt": yt, "est": est}


def fit_pairs(d: dict[str, object], **kw: object) -> P.PairFit:
    est = d["est"]
    assert isinstance(est, DatamodelLasso)
    return P.fit_pairs(array_chunks(d["x"], d["y"], 1024), d["xv"], d["yv"], coef=est.coef_,
                       intercept=est.intercept_, mean=est.mean_, tol=1e-9, max_iter=50000,
                       **kw)  # type: ignore[arg-type]


def predict(f: P.PairFit, x: np.ndarray) -> np.ndarray:
    return (f.intercept + np.asarray((f.coef @ x.T.astype(np.float64)).T)
            + pair_predictions(x, f.target, f.a, f.b, f.weight, len(f.intercept)))


def explicit(d: dict[str, object], t: int, k: int) -> dict[str, np.ndarray]:
    """The target's candidate pair features, standardised in numpy, and its residuals."""
    est = d["est"]
    assert isinstance(est, DatamodelLasso)
    x, xv = np.asarray(d["x"]), np.asarray(d["xv"])
    row = est.coef_.getrow(t)
    order = row.indices[np.lexsort((row.indices, -np.abs(row.data)))]
    top = np.concatenate([order, np.setdiff1d(np.arange(N), order)])[:k]
    iu = np.triu_indices(k, 1)
    mu = est.mean_

    def z(m: np.ndarray) -> np.ndarray:
        c = m[:, top] - mu[top]
        return c[:, iu[0]] * c[:, iu[1]]

    zf = z(x)
    zm, zs = zf.mean(0), zf.std(0)
    r = np.asarray(d["y"])[:, t] - est.predict(x)[:, t]
    return {"Z": (zf - zm) / zs, "r": r - r.mean(), "r_mean": np.array(r.mean()), "zm": zm,
            "zs": zs, "a": top[iu[0]], "b": top[iu[1]], "zv": (z(xv) - zm) / zs,
            "linear_v": est.predict(xv)[:, t]}


def test_the_working_set_lasso_matches_scikit_learn(linear: dict[str, object]) -> None:
    """All 28 candidates in the working set: the weights are scikit-learn's at the chosen λ."""
    f = fit_pairs(linear, k=8, working_set=28)
    for t in range(M):
        e = explicit(linear, t, 8)
        sk = Lasso(alpha=f.penalty[t], fit_intercept=False, tol=1e-12, max_iter=100000)
        sk.fit(e["Z"], e["r"])
        phi = dict(zip(zip(np.minimum(e["a"], e["b"]), np.maximum(e["a"], e["b"]),
                           strict=True), sk.coef_ / e["zs"], strict=True))
        mine = {(int(a), int(b)): float(w) for tt, a, b, w in
                zip(f.target, f.a, f.b, f.weight, strict=True) if tt == t}
        for key, want in phi.items():
            assert mine.get((int(key[0]), int(key[1])), 0.0) == pytest.approx(want, abs=2e-4)


def test_kkt_rounds_reach_the_lasso_over_every_candidate(linear: dict[str, object]) -> None:
    """A working set of 30 of 45 candidates, grown by the KKT check, ends at the full Lasso.

    The path stops at λ_max / 4, where the full Lasso keeps at most 30 pairs.
    """
    f = fit_pairs(linear, k=10, working_set=30, max_rounds=P.MAX_ROUNDS, lambda_ratio=0.25)
    assert f.info["uncertified_targets"] == 0
    assert f.info["kkt_rounds"] >= 1
    for t in range(M):
        e = explicit(linear, t, 10)
        sk = Lasso(alpha=f.penalty[t], fit_intercept=False, tol=1e-12, max_iter=100000)
        sk.fit(e["Z"], e["r"])
        assert np.count_nonzero(sk.coef_) <= 30
        want = np.zeros((N, N))
        want[np.minimum(e["a"], e["b"]), np.maximum(e["a"], e["b"])] = sk.coef_ / e["zs"]
        got = np.zeros((N, N))
        sel = f.target == t
        got[f.a[sel], f.b[sel]] = f.weight[sel]
        np.testing.assert_allclose(got, want, atol=2e-4)


def test_planted_pairs_are_recovered_and_the_test_error_falls(linear: dict[str, object]) -> None:
    f = fit_pairs(linear, k=10)
    est = linear["est"]
    assert isinstance(est, DatamodelLasso)
    xt, yt = np.asarray(linear["xt"]), np.asarray(linear["yt"])
    for t in range(M):
        sel = f.target == t
        strongest = np.argsort(-np.abs(f.weight[sel]))[:3]
        found = {(int(f.a[sel][i]), int(f.b[sel][i])): float(f.weight[sel][i]) for i in strongest}
        assert set(found) == {(a, b) for a, b, _ in PLANTED}
        for a, b, phi in PLANTED:
            assert found[(a, b)] == pytest.approx(phi, abs=0.15)
    # The pairs held about two thirds of the residual variance (0.18 of 0.27).
    before = ((est.predict(xt) - yt) ** 2).mean(axis=0)
    after = ((predict(f, xt) - yt) ** 2).mean(axis=0)
    assert (after < 0.6 * before).all()


def test_mask_space_is_the_standardised_model(linear: dict[str, object]) -> None:
    """bias + Σθ' + Σφ over the pairs in the mask equals the model fitted on centred features."""
    f = fit_pairs(linear, k=8, working_set=28)
    xv = np.asarray(linear["xv"])
    got = predict(f, xv)
    for t in range(M):
        e = explicit(linear, t, 8)
        sk = Lasso(alpha=f.penalty[t], fit_intercept=False, tol=1e-12, max_iter=100000)
        sk.fit(e["Z"], e["r"])
        want = e["linear_v"] + e["r_mean"] + e["zv"] @ sk.coef_
        np.testing.assert_allclose(got[:, t], want, atol=2e-3)


def test_a_linear_problem_keeps_its_linear_model() -> None:
    """No pairs in the truth: the validation runs keep few, and the test LDS holds."""
    rng = np.random.default_rng(5)

    def runs(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = (rng.random((n, N)) < 0.5).astype(np.uint8)
        return x, x @ np.linspace(-1, 1, N * M).reshape(N, M) + 0.5 * rng.standard_normal((n, M))

    (x, y), (xv, yv), (xt, yt) = runs(3000), runs(600), runs(600)
    est = DatamodelLasso(n_lambdas=20).fit(x, y, xv, yv)
    f = P.fit_pairs(array_chunks(x, y, 1024), xv, yv, coef=est.coef_, intercept=est.intercept_,
                    mean=est.mean_, k=10)
    lin = correlations(est.predict(xt), yt)[1]
    sec = correlations(f.intercept + np.asarray((f.coef @ xt.T.astype(float)).T)
                       + pair_predictions(xt, f.target, f.a, f.b, f.weight, M), yt)[1]
    assert (sec > lin - 0.005).all()


# --------------------------------------------------------------------------- the command


def planted_db(path: str, n: int, seed: int) -> dmdb.Database:
    x, y = planted(n, seed)
    db = dmdb.init(path, n_train=N, n_targets=M, seed=0)
    db.ingest(run_table(x.astype(bool), y))
    return db


@pytest.fixture(params=["memory", "file"])
def pair_db(request: pytest.FixtureRequest, tmp_path: Path) -> dmdb.Database:
    return planted_db(":memory:" if request.param == "memory" else str(tmp_path / "p.duckdb"),
                      3000, 7)


def test_fit_pairs_records_interactions_and_raises_the_lds(pair_db: dmdb.Database,
                                                           tmp_path: Path) -> None:
    from dmdb.fitting import fit

    linear = fit(pair_db, progress=False, echo=lambda s: None)
    lines: list[str] = []
    second = fit(pair_db, pairs=10, progress=False, echo=lines.append)
    assert 1 - second.mean_lds < 0.6 * (1 - linear.mean_lds)  # the LDS gap to 1 shrinks
    assert any("second-order" in line and "linear fit's time" in line for line in lines)
    params = json.loads(pair_db.sql("SELECT parameters FROM fits WHERE fit_id = ?",
                                    [second.fit_id]).column(0)[0].as_py())
    assert params["pairs"] == 10 and params["pair_fit"]["cost_ratio"] > 1
    rows = pair_db.sql("SELECT count(*), bool_and(train_a < train_b) FROM interactions "
                       "WHERE fit_id = ?", [second.fit_id]).to_pylist()[0]
    assert list(rows.values())[0] > 0 and list(rows.values())[1]
    # The stored LDS is the second-order model's, recomputed here from the tables.
    t, a, b, w = pair_db.load_interactions(second.fit_id)
    bias, weights = pair_db.load_fit(second.fit_id)
    test_ids = pair_db.sql("SELECT run_id FROM fit_runs WHERE fit_id = ? AND split = 'test'",
                           [second.fit_id]).column(0).to_numpy()
    _, xt, yt = pair_db.load_runs(run_ids=np.sort(test_ids))
    pred = bias + np.asarray((weights @ xt.T.astype(np.float64)).T) + pair_predictions(
        xt, t, a, b, w, M)
    stored = pair_db.sql("SELECT spearman FROM lds WHERE fit_id = ? ORDER BY target_idx",
                         [second.fit_id]).column(0).to_numpy()
    np.testing.assert_allclose(stored, correlations(pred, yt)[1], atol=1e-5)
    check_compare_and_export(pair_db, linear.fit_id, second.fit_id, stored, tmp_path)
    # Dropping the fit drops its interactions too.
    from dmdb.catalog import drop_fit

    drop_fit(pair_db, second.fit_id)
    assert pair_db.sql("SELECT count(*) FROM interactions").column(0)[0].as_py() == 0


def check_compare_and_export(db: dmdb.Database, linear: int, second: int, stored: np.ndarray,
                             tmp_path: Path) -> None:
    """compare re-evaluates a second-order fit with its pairs; export writes them."""
    import pyarrow.parquet as pq

    from dmdb import compare as C
    from dmdb.catalog import evaluate_fit
    from dmdb.export import export_fit

    result = C.compare(db, [linear, second])
    assert [r["name"] for r in result.table.to_pylist()] == [
        "dmdb fit (fast, linear)", "dmdb fit (fast, second-order (K = 10))"]
    np.testing.assert_allclose(result.lds[second], stored, atol=1e-9)
    # on other runs (here the same ones, through the recomputing path) the pairs count
    bias, weights = db.load_fit(second)
    test_ids = np.sort(db.sql("SELECT run_id FROM fit_runs WHERE fit_id = ? AND split = 'test'",
                              [second]).column(0).to_numpy())
    again = evaluate_fit(db, bias, weights, test_ids, 0, C._pairs(db, second, 0, M))[2]
    np.testing.assert_allclose(again, stored, atol=1e-5)
    without = evaluate_fit(db, bias, weights, test_ids, 0, None)[2]
    assert np.mean(without) < np.mean(stored) - 0.01
    t, a, b, w = db.load_interactions(second)
    paths = export_fit(db, second, tmp_path / "npy", "npy")
    assert paths[-1].name == "interactions.npz"
    with np.load(paths[-1]) as z:
        for name, want in (("target_idx", t), ("train_a", a), ("train_b", b), ("weight", w)):
            np.testing.assert_array_equal(z[name], want)
    paths = export_fit(db, second, tmp_path / "pq", "parquet")
    table = pq.read_table(paths[-1]).to_pydict()
    assert paths[-1].name == "interactions.parquet" and table["weight"] == w.tolist()
    assert [p.name for p in export_fit(db, linear, tmp_path / "lin", "npy")] == [
        "bias.npy", "weights.npz"]  # a linear fit has no interactions file


@pytest.mark.parametrize("extra, message", [
    (["--pairs", "1"], "--pairs takes K from 2 to N = 30"),
    (["--pairs", "31"], "--pairs takes K from 2 to N = 30"),
    (["--pairs", "5", "--merge", "{tmp}/block.parquet"], "--pairs cannot be combined with --merge"),
    (["--pairs", "5", "--save-stats", "{tmp}/s.pt"], "--pairs cannot be combined"),
    (["--pairs", "1", "--backend", "ray"], "--pairs takes K from 2 to N = 30"),
    (["--pairs", "30", "--memory", "{tight}"], "for the pair features of 3 targets"),
])
def test_bad_pairs_are_one_line_and_change_nothing(tmp_path: Path, extra: list[str],
                                                   message: str) -> None:
    file_db = planted_db(str(tmp_path / "bad.duckdb"), 600, 3)
    before = counts(file_db)
    # A budget that holds the linear fit but not its pairs.
    n_fit, n_val = (len(file_db.run_ids(split=s)) for s in ("fit", "val"))
    plan = DatamodelLasso().plan_memory(N, M, n_val, n_fit=n_fit)
    chunk = min(4096, n_fit)
    fixed = P.pair_bytes(30, M, n_val, chunk, 0, n_train=N)
    one = P.pair_bytes(30, M, n_val, chunk, 1, n_train=N)  # one target at a time
    tight = str((plan.peak_at(1) + (fixed + one) / 2) / fit_memory.GB)
    args = ["fit", str(file_db.path), "-q",
            *[e.format(tmp=tmp_path, tight=tight) for e in extra]]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert counts(file_db) == before
    assert not file_db.has_table("interactions") or file_db.sql(
        "SELECT count(*) FROM interactions").column(0)[0].as_py() == 0


def test_a_tight_budget_batches_the_pair_stage_and_changes_nothing(tmp_path: Path) -> None:
    """The pair stage picks its own target batch for --memory (after the linear solve has
    freed its batch): one target at a time gives the same model as all at once."""
    from dmdb.fitting import fit

    db = planted_db(str(tmp_path / "b.duckdb"), 3000, 7)
    n_fit, n_val = (len(db.run_ids(split=s)) for s in ("fit", "val"))
    est = DatamodelLasso()
    plan = est.plan_memory(N, M, n_val, n_fit=n_fit)
    chunk = est.chunk_size  # as the fit counts it
    fixed = P.pair_bytes(10, M, n_val, chunk, 0, n_train=N)
    per = P.pair_bytes(10, M, n_val, chunk, 1, n_train=N) - fixed
    tight = (plan.peak_at(1) + fixed + 1.5 * per) / fit_memory.GB
    quiet = {"progress": False, "echo": lambda s: None}
    whole = fit(db, pairs=10, **quiet).fit_id
    batched = fit(db, pairs=10, memory=tight, **quiet).fit_id
    info = {f: json.loads(db.sql("SELECT parameters FROM fits WHERE fit_id = ?", [f])
                          .column(0)[0].as_py())["pair_fit"]["target_batch"]
            for f in (whole, batched)}
    assert info == {whole: M, batched: 1}
    phi = []
    for f in (whole, batched):
        dense = np.zeros((M, N, N))
        t, a, b, w = db.load_interactions(f)
        dense[t, a, b] = w
        phi.append(dense)
    np.testing.assert_allclose(phi[0], phi[1], atol=1e-5)
    np.testing.assert_allclose(db.load_fit(whole)[0], db.load_fit(batched)[0], atol=1e-5)
