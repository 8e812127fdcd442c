"""Second-order datamodels do no harm on a nearly linear learner (issue 13).

The learner is the plug-in ``benchmarks.tabular_logreg:train_many`` (L2 logistic
regression on breast-cancer data, N = 369, M = 200); ``benchmarks/pairs_tabular.py``
is the full-size version of the last test. Everything is real: the commands train
1,000 models and fit them as a user would.

How much the LDS test can see (measured at 1,000 runs, K = 30, seeds 0-2): the pair
stage raises the mean test LDS by +0.008 to +0.012 over the linear fit's 0.93-0.94.
A pair stage that overfits noise fails it: pairs among K random examples instead of
the top K, solved at the path's smallest λ instead of the validation runs' choice,
lower the mean LDS by 0.008-0.009.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks import tabular_logreg as T
from dmdb.cli import cli
from dmdb.db import connect

ROOT = Path(__file__).resolve().parents[1]
RUNS, K, TOLERANCE = 1000, 30, 0.005


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_the_plugin_is_scikit_learns_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    x_train, x_targets, y_train, y_targets = T.split()
    masks = np.random.default_rng(3).random((4, T.N_TRAIN)) < 0.5
    margins = T.train_many(masks, np.arange(4))
    for mask, got in zip(masks, margins, strict=True):
        model = LogisticRegression(C=T.C, tol=1e-12, max_iter=10_000).fit(
            x_train[mask], y_train[mask])
        score = model.decision_function(x_targets)
        np.testing.assert_allclose(got, np.where(y_targets == 1, score, -score), atol=1e-4)
    assert (margins > 0).mean() > 0.9


def test_a_run_does_not_depend_on_its_batch() -> None:
    masks = np.random.default_rng(4).random((40, T.N_TRAIN)) < 0.5
    together = T.train_many(masks, np.arange(40))
    np.testing.assert_array_equal(T.train_many(masks[7:9], np.arange(2)), together[7:9])
    one_class = np.zeros((1, T.N_TRAIN), dtype=bool)
    one_class[0, np.flatnonzero(T.split()[2] == 1)[:5]] = True
    assert set(np.abs(T.train_many(one_class, np.zeros(1, np.int64))[0])) == {1.0}


def test_pairs_keep_the_linear_lds_of_logistic_regression(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the plug-in is imported as `python -m` would, from here
    path = str(tmp_path / "bc.duckdb")
    invoke("init", path, "--train-size", str(T.N_TRAIN), "--targets", str(T.N_TARGETS))
    invoke("train", path, "--trainer", "benchmarks.tabular_logreg:train_many",
           "--alpha", "0.5", "--runs", str(RUNS), "-q")
    invoke("fit", path, "-q")
    out = invoke("fit", path, "-q", "--pairs", str(K))
    assert "second-order" in out
    db = connect(path, read_only=True)
    fits = db.sql("SELECT fit_id, parameters FROM fits ORDER BY fit_id").to_pylist()
    assert len(fits) == 2
    (linear, _), (second, params) = ((f["fit_id"], json.loads(f["parameters"])) for f in fits)
    assert params["pairs"] == K and params["pair_fit"]["k"] == K

    def lds(fit_id: int) -> np.ndarray:
        return db.sql("SELECT test_spearman FROM datamodels WHERE fit_id = ? "
                      "ORDER BY target_idx", [fit_id]).column(0).to_numpy().astype(float)

    lin, sec = lds(linear), lds(second)
    assert len(lin) == len(sec) == T.N_TARGETS
    assert lin.mean() > 0.85  # a datamodel worth keeping: else "no harm" says nothing
    assert sec.mean() >= lin.mean() - TOLERANCE, (lin.mean(), sec.mean())
    n_pairs = db.sql("SELECT count(*) FROM interactions WHERE fit_id = ?",
                     [second]).column(0)[0].as_py()
    assert n_pairs > 0
