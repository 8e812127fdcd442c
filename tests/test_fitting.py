"""`dmdb fit`: real fits on small databases, stored results, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from scipy.stats import spearmanr

import dmdb
from dmdb.cli import cli
from dmdb.errors import DeviceError, FitError, UsageError
from dmdb.fitting import drop_fit, fit, parse_target_range
from tests.conftest import N_TARGETS, N_TRAIN, counts, make_runs, run_table

QUIET = {"progress": False, "echo": lambda s: None}


@pytest.fixture
def runs_db(db: dmdb.Database) -> dmdb.Database:
    masks, margins = make_runs(600, seed=11)
    db.ingest(run_table(masks, margins))
    return db


def test_fit_stores_a_consistent_datamodel(runs_db: dmdb.Database) -> None:
    report = fit(runs_db, **QUIET)
    assert report.fit_id == 1 and report.n_targets == N_TARGETS
    assert report.n_fit + report.n_val + report.n_test == 600
    dm = runs_db.sql("SELECT * FROM datamodels WHERE fit_id = 1 ORDER BY target_idx").to_pylist()
    assert [d["target_idx"] for d in dm] == list(range(N_TARGETS))
    bias, weights = runs_db.load_fit(1)
    assert isinstance(weights, sp.csr_matrix) and weights.shape == (N_TARGETS, N_TRAIN)
    assert np.array_equal(np.diff(weights.indptr), [d["nnz"] for d in dm])
    assert runs_db.sql("SELECT count(*) FROM weights WHERE weight = 0").column(0)[0].as_py() == 0
    # test metrics equal an independent recomputation on the fit's recorded test runs
    test_ids = runs_db.sql("SELECT run_id FROM fit_runs WHERE fit_id = 1 AND split = 'test'"
                           ).column(0).to_numpy()
    _, x, y = runs_db.load_runs(run_ids=test_ids)
    pred = bias + x.astype(np.float64) @ weights.T.toarray()
    for j, d in enumerate(dm):
        assert d["test_spearman"] == pytest.approx(spearmanr(pred[:, j], y[:, j])[0], abs=1e-6)
        assert d["test_mse"] == pytest.approx(((pred[:, j] - y[:, j]) ** 2).mean(), rel=1e-4)
    assert np.mean([d["test_spearman"] for d in dm]) > 0.8  # the planted signal is recovered


def test_prediction_identity_in_sql(runs_db: dmdb.Database) -> None:
    fit(runs_db, **QUIET)
    bias, weights = runs_db.load_fit(1)
    subset = [0, 3, 5, 17, 36]
    sql = ("SELECT d.target_idx, d.bias + coalesce(sum(w.weight), 0) AS p FROM datamodels d "
           "LEFT JOIN weights w ON w.fit_id = d.fit_id AND w.target_idx = d.target_idx "
           "AND list_contains(?, w.train_idx) WHERE d.fit_id = 1 "
           "GROUP BY d.target_idx, d.bias ORDER BY 1")
    got = runs_db.sql(sql, [subset]).column("p").to_numpy()
    expected = bias + np.asarray(weights[:, subset].sum(axis=1)).ravel()
    assert np.allclose(got, expected, atol=1e-5)


def test_fit_records_its_runs_and_ignores_later_ones(runs_db: dmdb.Database) -> None:
    fit(runs_db, **QUIET)
    before = runs_db.sql("SELECT * FROM datamodels WHERE fit_id = 1 ORDER BY target_idx")
    runs_db.ingest(run_table(*make_runs(50, seed=99)))
    runs_db.ingest(run_table(*make_runs(20, seed=98), split=pa.array(["verify"] * 20)))
    assert runs_db.sql("SELECT * FROM datamodels WHERE fit_id = 1 ORDER BY target_idx") == before
    assert runs_db.sql("SELECT count(*) FROM fit_runs WHERE fit_id = 1").column(0)[0].as_py() == 600
    report = fit(runs_db, **QUIET)
    assert report.fit_id == 2 and report.n_fit + report.n_val + report.n_test == 650


def test_target_range_and_max_fit_runs(runs_db: dmdb.Database) -> None:
    report = fit(runs_db, target_range="2:5", max_fit_runs=100, **QUIET)
    assert report.n_fit == 100 and report.n_targets == 3
    idx = runs_db.sql("SELECT target_idx FROM datamodels ORDER BY 1").column(0).to_pylist()
    assert idx == [2, 3, 4]
    bias, _ = runs_db.load_fit(report.fit_id)
    assert np.isnan(bias[0]) and np.isfinite(bias[2])


def test_fit_is_deterministic(runs_db: dmdb.Database) -> None:
    fit(runs_db, **QUIET)
    fit(runs_db, **QUIET)
    a = runs_db.load_fit(1)
    b = runs_db.load_fit(2)
    assert np.array_equal(a[0], b[0]) and (a[1] != b[1]).nnz == 0


def test_reference_solver_agrees(runs_db: dmdb.Database) -> None:
    fit(runs_db, **QUIET)
    fit(runs_db, solver="reference", **QUIET)
    q = "SELECT test_spearman FROM datamodels WHERE fit_id = ? ORDER BY target_idx"
    fast = runs_db.sql(q, [1]).column(0).to_numpy()
    ref = runs_db.sql(q, [2]).column(0).to_numpy()
    assert np.allclose(fast, ref, atol=0.01)


def test_drop_and_export(runs_db: dmdb.Database, tmp_path: Path) -> None:
    fit(runs_db, **QUIET)
    fit(runs_db, **QUIET)
    drop_fit(runs_db, 1)
    assert runs_db.sql("SELECT DISTINCT fit_id FROM weights").column(0).to_pylist() == [2]
    assert fit(runs_db, **QUIET).fit_id == 3
    with pytest.raises(UsageError, match="no fit 1"):
        drop_fit(runs_db, 1)
    from dmdb.export import export_fit
    bias, weights = runs_db.load_fit(2)
    paths = export_fit(runs_db, 2, tmp_path / "npy", "npy")
    assert np.array_equal(np.load(paths[0]), bias)
    assert (sp.load_npz(paths[1]) != weights).nnz == 0
    import pyarrow.parquet as pq
    paths = export_fit(runs_db, 2, tmp_path / "pq", "parquet")
    assert pq.read_table(paths[1]).num_rows == weights.nnz


def test_parse_target_range() -> None:
    assert parse_target_range(None, 10) == (0, 10)
    assert parse_target_range("2:5", 10) == (2, 5)
    assert parse_target_range(":4", 10) == (0, 4)
    assert parse_target_range("7:", 10) == (7, 10)
    for bad in ("5:3", "0:11", "a:b", "-1:2"):
        with pytest.raises(UsageError):
            parse_target_range(bad, 10)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"n_lambdas": 1}, UsageError, "n_lambdas"),
    ({"lambda_ratio": 1.5}, UsageError, "lambda_ratio"),
    ({"lambda_ratio": 0.0}, UsageError, "lambda_ratio"),
    ({"tol": -1.0}, UsageError, "tol"),
    ({"device": "cuda"}, DeviceError, "no CUDA"),
    ({"target_range": "0:99"}, UsageError, "outside"),
    ({"max_fit_runs": 0}, UsageError, "--max-fit-runs"),
    ({"alpha": 0.3}, FitError, "no runs at alpha=0.3"),
])
def test_bad_parameters_write_nothing(runs_db: dmdb.Database, kwargs: dict, error: type,
                                      message: str) -> None:
    before = counts(runs_db)
    with pytest.raises(error, match=message):
        fit(runs_db, **kwargs, **QUIET)
    assert counts(runs_db) == before


def test_empty_database(db: dmdb.Database) -> None:
    with pytest.raises(FitError, match="no runs to fit"):
        fit(db, **QUIET)
    assert counts(db)["fits"] == 0


def test_too_few_runs_in_a_split(db: dmdb.Database) -> None:
    db.ingest(run_table(*make_runs(12)))
    with pytest.raises(FitError, match="a fit needs at least"):
        fit(db, **QUIET)
    assert counts(db)["fits"] == 0


def test_constant_target(db: dmdb.Database) -> None:
    masks, margins = make_runs(300)
    margins[:, 4] = 1.5
    db.ingest(run_table(masks, margins))
    with pytest.raises(FitError, match="target 4 has the same margin"):
        fit(db, **QUIET)
    assert counts(db)["fits"] == 0
    assert fit(db, target_range="0:4", **QUIET).n_targets == 4


def test_cli_fit_fits_export(tmp_path: Path) -> None:
    db = dmdb.init(tmp_path / "c.duckdb", n_train=N_TRAIN, n_targets=N_TARGETS)
    db.ingest(run_table(*make_runs(400)))
    runner = CliRunner()
    r = runner.invoke(cli, ["fit", db.path, "-q"])
    assert r.exit_code == 0 and "fit 1:" in r.stdout and "mean LDS" in r.stdout
    r = runner.invoke(cli, ["fits", db.path])
    assert r.exit_code == 0 and "mean_lds" in r.stdout
    r = runner.invoke(cli, ["export", db.path, "--fit", "1", "--out", str(tmp_path / "e")])
    assert r.exit_code == 0 and (tmp_path / "e" / "bias.npy").exists()
    r = runner.invoke(cli, ["fit", db.path, "--n-lambdas", "1", "-q"])
    assert r.exit_code == 1 and r.stderr.startswith("Error:") and "n_lambdas" in r.stderr
    r = runner.invoke(cli, ["fits", db.path, "--drop", "7"])
    assert r.exit_code == 1 and "no fit 7" in r.stderr


def recorded_parameters(db: dmdb.Database, fit_id: int) -> dict:
    import json

    return json.loads(db.sql("SELECT parameters FROM fits WHERE fit_id = ?", [fit_id]
                             ).column(0)[0].as_py())


def test_fits_parameters_record_get_params(runs_db: dmdb.Database) -> None:
    from dmdb.lasso import DatamodelLasso

    est = DatamodelLasso(tol=1e-5, patience=3, target_batch=4)
    report = fit(runs_db, est, max_fit_runs=200, **QUIET)
    params = recorded_parameters(runs_db, report.fit_id)
    used = est.get_params() | {"copy_gram": False, "progress": False}  # the fit's own stats
    assert {k: params[k] for k in used} == used
    for key in ("solver", "n_lambdas", "lambda_ratio", "tol", "stopping", "max_iter", "dtype",
                "n_threads", "early_stopping", "gram", "max_fit_runs", "timings"):
        assert key in params
    assert params["max_fit_runs"] == 200 and set(params["timings"]) == {"stats", "gram", "solve"}
    # options as keywords are the same as the estimator's parameters
    again = fit(runs_db, tol=1e-5, patience=3, target_batch=4, max_fit_runs=200, **QUIET)
    # (the budget is a share of the memory free at the time)
    ignore = {"timings": 0, "memory_plan": 0}
    assert recorded_parameters(runs_db, again.fit_id) | ignore == params | ignore
    assert (runs_db.load_fit(report.fit_id)[1] != runs_db.load_fit(again.fit_id)[1]).nnz == 0


def test_cli_tol_and_max_iter_reach_the_reference_solver(tmp_path: Path) -> None:
    db = dmdb.init(tmp_path / "r.duckdb", n_train=N_TRAIN, n_targets=N_TARGETS)
    db.ingest(run_table(*make_runs(400)))
    runner = CliRunner()
    for args in (["--tol", "1e-12", "--max-iter", "1"], ["--tol", "1e-6"]):
        r = runner.invoke(cli, ["fit", db.path, "-q", "--solver", "reference", *args])
        assert r.exit_code == 0, r.output
    capped, solved = recorded_parameters(db, 1), recorded_parameters(db, 2)
    assert (capped["solver"], capped["tol"], capped["max_iter"]) == ("reference", 1e-12, 1)
    assert (solved["tol"], solved["max_iter"]) == (1e-6, 2000)
    q = "SELECT val_mse FROM datamodels WHERE fit_id = ? ORDER BY target_idx"
    # one sweep per λ leaves the reference short of the solution: its fit differs
    assert not np.allclose(db.sql(q, [1]).column(0).to_numpy(), db.sql(q, [2]).column(0).to_numpy(),
                           rtol=1e-6)


def test_fits_parameters_record_the_gram_kernel_and_why(tmp_path: Path) -> None:
    db = dmdb.init(tmp_path / "k.duckdb", n_train=N_TRAIN, n_targets=N_TARGETS)
    db.ingest(run_table(*make_runs(400)))
    runner = CliRunner()
    for kernel in ("bfloat16", "auto"):
        r = runner.invoke(cli, ["fit", db.path, "-q", "--gram-kernel", kernel])
        assert r.exit_code == 0, r.output
    forced, auto = recorded_parameters(db, 1), recorded_parameters(db, 2)
    assert forced["gram_kernel"] == "bfloat16"
    assert forced["gram_kernel_choice"]["kernel"] == "bfloat16"
    assert forced["gram_kernel_choice"]["reason"] == "asked for"
    assert auto["gram_kernel"] == "auto" and auto["gram_kernel_choice"]["kernel"] in (
        "float32", "int8", "bfloat16", "float16")
    # every kernel counts exactly, so the fits are the same
    assert (db.load_fit(1)[1] != db.load_fit(2)[1]).nnz == 0
    r = runner.invoke(cli, ["fit", db.path, "-q", "--gram-kernel", "int4"])
    assert r.exit_code == 2 and "int4" in r.stderr and counts(db)["fits"] == 2
    r = runner.invoke(cli, ["fit", db.path, "-q", "--gram-free"])
    assert r.exit_code == 0 and recorded_parameters(db, 3)["gram_kernel_choice"] is None
