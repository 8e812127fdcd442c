"""`dmdb import-fit`: the authors' .pt, score matrices and dmdb exports become fits.

A real dmdb fit (N = 300, M = 20, planted sparse weights) is built once per session
(:func:`fitted_300`); each test works on its own copy. The oracles are the original
fit itself, numpy's mask statistics and scipy's Spearman.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import pearsonr, spearmanr

import dmdb
from dmdb.applications import embed
from dmdb.cli import cli
from dmdb.errors import UsageError
from dmdb.export import export_fit
from dmdb.fitting import fit
from dmdb.imported import import_fit
from tests.conftest import counts, make_runs, run_table

N, M, ALPHA = 300, 20, 0.5
SIGMA = np.sqrt(ALPHA * (1 - ALPHA))
_BUILT: dict[str, Path] = {}


def planted_runs(k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k Bernoulli(ALPHA) masks and margins of a sparse heavy-tailed linear truth."""
    rng = np.random.default_rng(seed)
    masks = rng.random((k, N)) < ALPHA
    truth = np.where(rng.random((N, M)) < 0.06, rng.standard_t(3, (N, M)) * 0.3, 0.0)
    offsets = rng.normal(0, 1, M) - (ALPHA * truth.sum(axis=0))
    margins = offsets + masks @ truth + rng.normal(0, 0.4, (k, M))
    return masks, margins.astype(np.float32)


def fitted_300(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file with 900 planted runs at alpha 0.5 and fit 1, a real `dmdb fit` of them."""
    if "path" not in _BUILT:
        path = tmp_path_factory.mktemp("fitted300") / "base.duckdb"
        db = dmdb.init(path, n_train=N, n_targets=M, seed=11)
        db.ingest(run_table(*planted_runs(900, seed=4), alpha=ALPHA))
        assert fit(db, progress=False, echo=lambda s: None).fit_id == 1
        _BUILT["path"] = path
    return _BUILT["path"]


@pytest.fixture
def base(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> dmdb.Database:
    """A private copy of the fitted database."""
    path = tmp_path / "db.duckdb"
    shutil.copy(fitted_300(tmp_path_factory), path)
    return dmdb.connect(path)


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def mask_space_fit(db: dmdb.Database, fit_id: int) -> tuple[np.ndarray, np.ndarray]:
    """bias (M,) and dense theta (N, M)."""
    bias, weights = db.load_fit(fit_id)
    return bias, weights.toarray().T.astype(np.float64)


def save_authors_pt(path: Path, bias: np.ndarray, theta: np.ndarray, mu: np.ndarray | float,
                    sigma: np.ndarray | float, lam: np.ndarray | None = None) -> Path:
    """A mask-space fit in the authors' layout: prediction = b + sum_i w_i (x_i - mu_i)/sigma_i."""
    mu = np.broadcast_to(np.asarray(mu, np.float64), (N,))
    sigma = np.broadcast_to(np.asarray(sigma, np.float64), (N,))
    weight = theta * sigma[:, None]
    b = bias + (weight * (mu / sigma)[:, None]).sum(axis=0)
    content = {"weight": torch.tensor(weight, dtype=torch.float32),
               "bias": torch.tensor(b, dtype=torch.float32)}
    if lam is not None:
        content["lam"] = torch.tensor(lam, dtype=torch.float32)
    torch.save(content, path)
    return path


def lds_rows(db: dmdb.Database, fit_id: int) -> list[dict]:
    return db.sql("SELECT target_idx, spearman, pearson, n_test_runs FROM lds WHERE fit_id = ? "
                  "ORDER BY target_idx", [fit_id]).to_pylist()


def parameters(db: dmdb.Database, fit_id: int) -> dict:
    return json.loads(db.sql("SELECT parameters FROM fits WHERE fit_id = ?", [fit_id])
                      .column(0)[0].as_py())


# --------------------------------------------------------------------------- #
# The authors' .pt layout


def test_authors_pt_imported_with_alpha_gives_back_the_fit(base: dmdb.Database,
                                                           tmp_path: Path) -> None:
    bias, theta = mask_space_fit(base, 1)
    lam = np.linspace(0.01, 0.2, M)
    pt = save_authors_pt(tmp_path / "datamodels.pt", bias, theta, ALPHA, SIGMA, lam)
    code, out, err = run("import-fit", base.path, pt, "--alpha", "0.5", "--name", "authors")
    assert code == 0, err
    assert "fit 2: imported 'authors'" in out and "mu = 0.5" in out and "mean LDS" in out
    original, imported = lds_rows(base, 1), lds_rows(base, 2)
    assert [r["target_idx"] for r in imported] == list(range(M))
    for a, b in zip(original, imported, strict=True):
        assert a["n_test_runs"] == b["n_test_runs"]
        assert b["spearman"] == pytest.approx(a["spearman"], abs=1e-6)
        assert b["pearson"] == pytest.approx(a["pearson"], abs=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(5):
        subset = [int(i) for i in np.flatnonzero(rng.random(N) < ALPHA)]
        want = base.sql("SELECT predicted FROM predict_subset(1, ?)", [subset]).column(0)
        got = base.sql("SELECT predicted FROM predict_subset(2, ?)", [subset]).column(0)
        np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-5, atol=1e-5)
    # the same test runs, the penalty from lam, the standardisation recorded
    runs = "SELECT list(run_id ORDER BY run_id) FROM fit_runs WHERE fit_id = ? AND split = 'test'"
    assert base.sql(runs, [1]).column(0)[0] == base.sql(runs, [2]).column(0)[0]
    penalty = base.sql("SELECT penalty FROM datamodels WHERE fit_id = 2 ORDER BY target_idx")
    np.testing.assert_allclose(penalty.column(0).to_numpy(), lam, rtol=1e-6)
    p = parameters(base, 2)
    assert p["name"] == "authors" and p["format"] == "authors-pt"
    assert p["source"] == "datamodels.pt" and len(p["source_sha256"]) == 64
    assert (p["standardisation"], p["standardisation_alpha"], p["eval"]) == ("alpha", 0.5, "test")
    row = base.sql("SELECT solver, alpha, n_fit, n_val FROM fits WHERE fit_id = 2").to_pylist()
    assert row == [{"solver": "imported", "alpha": 0.5, "n_fit": 0, "n_val": 0}]


def test_authors_pt_by_default_uses_the_runs_mask_statistics(base: dmdb.Database,
                                                             tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    weight = np.where(rng.random((N, M)) < 0.1, rng.normal(0, 1, (N, M)), 0.0).astype(np.float32)
    raw_bias = rng.normal(0, 1, M).astype(np.float32)
    torch.save({"weight": torch.tensor(weight), "bias": torch.tensor(raw_bias)},
               tmp_path / "w.pt")
    report = import_fit(base, tmp_path / "w.pt")
    # oracle: the mask columns' mean and population deviation over every non-verify run
    _, masks, _ = base.load_runs()
    mu = masks.mean(axis=0)
    sigma = masks.std(axis=0)
    bias, theta = mask_space_fit(base, report.fit_id)
    np.testing.assert_allclose(theta, weight / sigma[:, None], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bias, raw_bias - (weight * (mu / sigma)[:, None]).sum(axis=0),
                               rtol=1e-6, atol=1e-6)
    p = parameters(base, report.fit_id)
    assert (p["standardisation"], p["standardisation_runs"]) == ("runs", len(masks))
    assert p["name"] == "w" and report.n_eval_runs == len(base.run_ids(split="test"))
    assert base.sql("SELECT count(*) FROM datamodels WHERE fit_id = ? AND penalty IS NULL",
                    [report.fit_id]).column(0)[0].as_py() == M


def test_a_zero_sigma_column_is_refused_only_where_it_has_weight(tmp_path: Path) -> None:
    db = dmdb.init(tmp_path / "s.duckdb", n_train=N, n_targets=M)
    masks, margins = planted_runs(60, seed=2)
    masks[:, 7] = True  # example 7 is in every run: sigma 0
    db.ingest(run_table(masks, margins, alpha=ALPHA))
    weight = np.zeros((N, M), np.float32)
    weight[3, 0] = 1.0
    torch.save({"weight": torch.tensor(weight), "bias": torch.zeros(M)}, tmp_path / "ok.pt")
    assert import_fit(db, tmp_path / "ok.pt").fit_id == 1
    weight[7, 2] = 0.5
    torch.save({"weight": torch.tensor(weight), "bias": torch.zeros(M)}, tmp_path / "bad.pt")
    before = counts(db)
    code, _, err = run("import-fit", db.path, tmp_path / "bad.pt")
    assert code == 1 and "training example 7 is in every run or in none" in err
    assert "--alpha 0.5" in err and len(err.strip().splitlines()) == 1
    assert counts(db) == before


def test_several_alphas_need_alpha_for_a_pt(tmp_path: Path) -> None:
    db = dmdb.init(tmp_path / "a.duckdb", n_train=N, n_targets=M)
    db.ingest(run_table(*planted_runs(60, seed=2), alpha=0.5))
    db.ingest(run_table(*planted_runs(60, seed=3), alpha=0.3))
    torch.save({"weight": torch.zeros(N, M), "bias": torch.zeros(M)}, tmp_path / "w.pt")
    with pytest.raises(UsageError, match=r"several alphas \(0.3, 0.5\); give --alpha A"):
        import_fit(db, tmp_path / "w.pt")
    report = import_fit(db, tmp_path / "w.pt", alpha=0.3)
    # evaluated on the test runs at its alpha only
    assert report.n_eval_runs == len(db.run_ids(split="test", alpha=0.3))


# --------------------------------------------------------------------------- #
# Score matrices of other methods


def test_score_matrix_lds_matches_scipy(base: dmdb.Database, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    _, theta = mask_space_fit(base, 1)
    scores = (theta + rng.normal(0, 0.05, theta.shape)).astype(np.float32)
    np.save(tmp_path / "trak.npy", scores)
    code, out, err = run("import-fit", base.path, tmp_path / "trak.npy")
    assert code == 0, err
    assert "uncalibrated" in out
    _, x, y = base.load_runs(run_ids=base.run_ids(split="test"))
    pred = x.astype(np.float64) @ scores.astype(np.float64)
    for r in lds_rows(base, 2):
        t = r["target_idx"]
        assert r["spearman"] == pytest.approx(spearmanr(pred[:, t], y[:, t])[0], abs=1e-9)
        assert r["pearson"] == pytest.approx(pearsonr(pred[:, t], y[:, t])[0], abs=1e-6)
    # every score is a weight; no bias means no squared error
    assert base.sql("SELECT count(*) FROM weights WHERE fit_id = 2").column(0)[0].as_py() == (
        np.count_nonzero(scores))
    assert base.sql("SELECT count(*) FROM datamodels WHERE fit_id = 2 AND test_mse IS NULL "
                    "AND penalty IS NULL").column(0)[0].as_py() == M
    # the same matrix stored (M, N) and --transpose give the same fit
    np.save(tmp_path / "trak_t.npy", scores.T.copy())
    code, _, err = run("import-fit", base.path, tmp_path / "trak_t.npy", "--transpose")
    assert code == 0, err
    assert lds_rows(base, 3) == lds_rows(base, 2)


def test_uncalibrated_scores_refuse_predictions_in_plain_sql(base: dmdb.Database,
                                                             tmp_path: Path) -> None:
    _, theta = mask_space_fit(base, 1)
    np.save(tmp_path / "scores.npy", theta)
    import_fit(base, tmp_path / "scores.npy")
    np.save(tmp_path / "bias.npy", np.full(M, 0.25))
    calibrated = import_fit(base, tmp_path / "scores.npy", bias=tmp_path / "bias.npy",
                            name="with-bias", force=True)
    con = duckdb.connect(base.path, read_only=True)  # as a user would, without dmdb
    for macro in ("predict_subset(2, [1, 2, 3])", "predict_removal(2, [1])"):
        with pytest.raises(duckdb.InvalidInputException, match="fit 2 is an uncalibrated"):
            con.sql(f"SELECT * FROM {macro}").fetchall()
    got = con.sql("SELECT predicted FROM predict_subset(?, [1, 2, 3]) ORDER BY target_idx",
                  params=[calibrated.fit_id]).fetchnumpy()["predicted"]
    np.testing.assert_allclose(got, 0.25 + theta[[1, 2, 3]].sum(axis=0), rtol=1e-5)
    # rank-based views keep working; brittleness leaves the uncalibrated fit out
    assert con.sql("SELECT count(*) FROM top_influencers WHERE fit_id = 2").fetchall()[0][0] > 0
    by_fit = dict(con.sql("SELECT fit_id, count(*) FROM brittleness GROUP BY 1").fetchall())
    assert 2 not in by_fit and by_fit[calibrated.fit_id] == M and by_fit[1] == M
    assert parameters(base, 2)["calibrated"] is False
    assert parameters(base, calibrated.fit_id)["bias_source"] == "bias.npy"


def test_eval_all_uses_every_run_but_verify(base: dmdb.Database, tmp_path: Path) -> None:
    _, theta = mask_space_fit(base, 1)
    np.save(tmp_path / "scores.npy", theta)
    report = import_fit(base, tmp_path / "scores.npy", eval_set="all")
    assert report.n_eval_runs == len(base.run_ids())
    row = base.sql("SELECT n_fit, n_val, n_test FROM fits WHERE fit_id = ?", [report.fit_id])
    assert row.to_pylist() == [{"n_fit": 0, "n_val": 0, "n_test": len(base.run_ids())}]
    assert parameters(base, report.fit_id)["eval"] == "all"


def test_import_in_memory() -> None:
    db = dmdb.init(":memory:", n_train=37, n_targets=6)
    masks, margins = make_runs(120, seed=3)
    db.ingest(run_table(masks, margins))
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        scores = np.random.default_rng(0).normal(0, 1, (37, 6))
        np.save(Path(folder) / "s.npy", scores)
        report = import_fit(db, Path(folder) / "s.npy", name="random")
    _, x, y = db.load_runs(run_ids=db.run_ids(split="test"))
    want = [spearmanr(x @ scores[:, t], y[:, t])[0] for t in range(6)]
    got = db.sql("SELECT spearman FROM lds WHERE fit_id = ? ORDER BY target_idx",
                 [report.fit_id]).column(0).to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-9)


# --------------------------------------------------------------------------- #
# dmdb's own export, and the views on imported fits


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_an_export_moves_a_fit_between_databases(base: dmdb.Database, tmp_path: Path,
                                                 fmt: str) -> None:
    folder = tmp_path / f"fit-1-{fmt}"
    export_fit(base, 1, folder, fmt)
    other = dmdb.init(tmp_path / "other.duckdb", n_train=N, n_targets=M, seed=11)
    other.ingest(run_table(*planted_runs(900, seed=4), alpha=ALPHA))  # the same runs
    code, out, err = run("import-fit", other.path, folder)
    assert code == 0, err
    assert f"imported 'fit-1-{fmt}'" in out
    b0, w0 = base.load_fit(1)
    b1, w1 = other.load_fit(1)
    np.testing.assert_array_equal(b1, b0)
    assert (w1 != w0).nnz == 0 and w1.nnz == w0.nnz
    assert lds_rows(other, 1) == lds_rows(base, 1)
    penalty = "SELECT penalty FROM datamodels WHERE fit_id = 1 ORDER BY target_idx"
    if fmt == "parquet":
        assert other.sql(penalty).column(0).to_pylist() == base.sql(penalty).column(0).to_pylist()
        assert parameters(other, 1)["source_fit_id"] == 1
    assert parameters(other, 1)["format"] == f"dmdb-{fmt}"


def test_views_work_unchanged_on_an_imported_copy(base: dmdb.Database, tmp_path: Path) -> None:
    bias, theta = mask_space_fit(base, 1)
    # dyadic alpha and sigma (0.5, 0.5) make the mapping exact in float32
    import_fit(base, save_authors_pt(tmp_path / "a.pt", bias, theta, ALPHA, SIGMA),
               alpha=ALPHA)
    for view, columns in (("top_influencers", "target_idx, sign, rank, train_idx, weight"),
                          ("brittleness", "target_idx, support_size"),
                          ("leakage_candidates", "target_idx, train_idx, rank"),
                          ("brittleness_curve", "k, fraction_flippable")):
        query = f"SELECT {columns} FROM {view} WHERE fit_id = ? ORDER BY ALL"
        want, got = base.sql(query, [1]).to_pylist(), base.sql(query, [2]).to_pylist()
        assert got == want and (got or view == "leakage_candidates"), view
    margin = "SELECT margin_before FROM brittleness WHERE fit_id = ? ORDER BY target_idx"
    np.testing.assert_allclose(base.sql(margin, [2]).column(0).to_numpy(),
                               base.sql(margin, [1]).column(0).to_numpy(), atol=1e-5)
    base.sql("SELECT * FROM counterfactuals WHERE fit_id = 2")  # no verify runs: no rows
    for fid in (1, 2):
        embed(base, fit_id=fid, components=3, clusters=2, neighbours=3)
    similar = ("SELECT target_a, target_b, rank FROM target_similarity WHERE fit_id = ? "
               "ORDER BY ALL")
    assert base.sql(similar, [2]).to_pylist() == base.sql(similar, [1]).to_pylist()


def test_fits_lists_imported_fits_with_name_and_mean_lds(base: dmdb.Database,
                                                         tmp_path: Path) -> None:
    _, theta = mask_space_fit(base, 1)
    np.save(tmp_path / "scores.npy", theta)
    import_fit(base, tmp_path / "scores.npy", name="my-method")
    code, out, _ = run("fits", base.path)
    assert code == 0
    header, _, fitted, imported, *_ = out.splitlines()
    assert header.split()[-3:] == ["mean_lds", "mean_nnz", "name"]
    lds = base.sql("SELECT round(avg(spearman), 4) FROM lds WHERE fit_id = 2").column(0)[0]
    assert "imported" in imported and imported.split()[-1] == "my-method"
    assert str(lds.as_py()) in imported and fitted.split()[-1] == "NULL"


def test_force_imports_the_same_file_again(base: dmdb.Database, tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", mask_space_fit(base, 1)[1])
    import_fit(base, tmp_path / "s.npy")
    with pytest.raises(UsageError, match="name 's' is already taken by fit 2"):
        import_fit(base, tmp_path / "s.npy", force=True)
    assert import_fit(base, tmp_path / "s.npy", force=True, name="again").fit_id == 3


@pytest.mark.parametrize("command", ["import-fit", "compare"])
def test_help(command: str) -> None:
    code, out, _ = run(command, "--help")
    assert code == 0 and "Usage:" in out and len(out.splitlines()) > 8


# --------------------------------------------------------------------------- #
# Bad input: one line, exit status 1, nothing written


class Evil:
    """Unpickling this would create a folder: what a hostile .pt could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.makedirs, (str(self.marker),))


def _bad_inputs(tmp_path: Path, db: dmdb.Database) -> dict[str, tuple[list, str]]:
    """name -> (import-fit arguments after DB, @ marking a file in tmp_path; message)."""
    rng = np.random.default_rng(3)
    np.save(tmp_path / "wrong_shape.npy", rng.normal(0, 1, (N + 1, M)))
    nan = rng.normal(0, 1, (N, M))
    nan[17, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    inf = torch.zeros(N, M)
    inf[5, 6] = float("inf")
    torch.save({"weight": inf, "bias": torch.zeros(M)}, tmp_path / "inf.pt")
    torch.save({"bias": torch.zeros(M), "lam": torch.zeros(M)}, tmp_path / "no_weight.pt")
    torch.save({"weight": torch.zeros(N, M), "bias": torch.zeros(M),
                "x": Evil(tmp_path / "pwned")}, tmp_path / "evil.pt")
    (tmp_path / "weights.csv").write_text("1,2,3\n")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    np.save(tmp_path / "ok.npy", rng.normal(0, 1, (N, M)))
    import_fit(db, tmp_path / "ok.npy", name="taken")
    np.save(tmp_path / "other.npy", rng.normal(0, 1, (N, M)))
    np.save(tmp_path / "short_bias.npy", np.zeros(M - 1))
    return {
        "shape": (["@wrong_shape.npy"], "the score matrix has shape (301, 20), but this experiment "
                  "has N=300 training examples and M=20 targets, so it must be (N, M) = (300, 20)"),
        "transposed": (["@other.npy", "--transpose"], "must be (M, N)"),
        "nan": (["@nan.npy"], "is nan at training example 17, target 3; every weight must be "
                "finite"),
        "inf": (["@inf.pt", "--alpha", "0.5"], "weight is inf at training example 5, target 6"),
        "no weight": (["@no_weight.pt"], "no 'weight' in it (found ['bias', 'lam'])"),
        "code objects": (["@evil.pt"], "refused it: it holds a Python object (os.makedirs)"),
        "unknown format": (["@weights.csv"], "unknown format"),
        "object npy": (["@objects.npy"], "must be a numeric array"),
        "few eval runs": (["@other.npy", "--alpha", "0.3"], "only 0 test run(s) at alpha 0.3 to "
                          "evaluate on; an imported fit needs at least 3"),
        "name taken": (["@other.npy", "--name", "taken"], "name 'taken' is already taken by fit 2"),
        "imported twice": (["@ok.npy", "--name", "new"], "already imported as fit 2 ('taken'); "
                           "pass --force"),
        "bias shape": (["@other.npy", "--bias", "@short_bias.npy"], "bias has shape (19,)"),
        "bias on a pt": (["@inf.pt", "--bias", "@short_bias.npy"], "applies to a score matrix"),
        "bad alpha": (["@other.npy", "--alpha", "1.5"], "--alpha is a subset fraction in (0, 1)"),
        "missing": (["@nothing.npy"], "no such file or folder"),
    }


def test_bad_input_is_one_line_exit_1_and_writes_nothing(base: dmdb.Database,
                                                          tmp_path: Path) -> None:
    cases = _bad_inputs(tmp_path, base)
    before = counts(base)
    for case, (args, message) in cases.items():
        argv = [tmp_path / a[1:] if a.startswith("@") else a for a in args]
        code, out, err = run("import-fit", base.path, *argv)
        assert code == 1, (case, out, err)
        assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1, (case, err)
        assert message in err, (case, err)
        assert counts(base) == before, case
    assert not (tmp_path / "pwned").exists()  # weights_only never ran the pickle's code
