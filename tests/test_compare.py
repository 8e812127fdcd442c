"""`dmdb compare`: fits and imported methods judged on the same runs, and its figure."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

import dmdb
from dmdb.catalog import drop_fit
from dmdb.compare import compare
from dmdb.errors import UsageError
from dmdb.imported import import_fit
from dmdb.report import report
from tests.test_import_fit import M, fitted_300, mask_space_fit, run

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def three(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> dmdb.Database:
    """Fit 1 (dmdb's), fit 2 an imported exact copy, fit 3 the copy plus noise."""
    path = tmp_path / "db.duckdb"
    shutil.copy(fitted_300(tmp_path_factory), path)
    db = dmdb.connect(path)
    bias, theta = mask_space_fit(db, 1)
    np.save(tmp_path / "copy.npy", theta)
    np.save(tmp_path / "bias.npy", bias)
    noise = np.random.default_rng(0).normal(0, 2 * theta.std(), theta.shape)
    np.save(tmp_path / "noisy.npy", theta + noise)
    import_fit(db, tmp_path / "copy.npy", bias=tmp_path / "bias.npy")
    import_fit(db, tmp_path / "noisy.npy")
    return db


def test_compare_ranks_an_exact_copy_above_a_noisier_matrix(three: dmdb.Database,
                                                            tmp_path: Path) -> None:
    figure = tmp_path / "cmp.png"
    code, out, err = run("compare", three.path, "--fits", "1,2,3", "--out", figure)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["fit_id", "name", "solver"] and "(3 rows)" in out
    assert "note: reference: fit 1" in out and f"figure: {figure}" in out
    assert figure.read_bytes()[:8] == PNG and figure.stat().st_size > 10_000
    rows = {r["fit_id"]: r for r in compare(three).table.to_pylist()}
    assert rows[2]["name"] == "copy" and rows[3]["name"] == "noisy"
    assert rows[2]["rank"] == rows[1]["rank"] == 1 and rows[3]["rank"] == 3
    assert rows[2]["mean_lds"] == rows[1]["mean_lds"] > rows[3]["mean_lds"]
    assert rows[2]["beats_first"] == 0 and rows[2]["top10_overlap"] == 1
    assert rows[3]["beats_first"] < 0.5 and rows[3]["top10_overlap"] < 1
    assert rows[1]["beats_first"] is None and not any(r["recomputed"] for r in rows.values())


def test_compare_against_independent_numbers(three: dmdb.Database) -> None:
    result = compare(three)
    lds = {f: three.sql("SELECT spearman FROM lds WHERE fit_id = ? ORDER BY target_idx", [f])
           .column(0).to_numpy() for f in (1, 2, 3)}
    top = {}
    for f in (1, 3):
        rows = three.sql("SELECT target_idx, list(train_idx ORDER BY rank) AS top "
                         "FROM top_influencers_k(?, 10) WHERE sign = '+' GROUP BY 1", [f])
        top[f] = dict(zip(*rows.to_pydict().values(), strict=True))
    overlap = np.mean([len(set(top[1].get(t, [])) & set(top[3].get(t, [])))
                       / max(len(top[1].get(t, [])), len(top[3].get(t, [])))
                       for t in range(M) if top[1].get(t) or top[3].get(t)])
    row = result.table.to_pylist()[2]
    assert row["mean_lds"] == pytest.approx(lds[3].mean(), abs=1e-4)
    assert row["median_lds"] == pytest.approx(np.median(lds[3]), abs=1e-4)
    assert row["beats_first"] == pytest.approx(np.mean(lds[3] > lds[1]), abs=1e-4)
    assert row["top10_overlap"] == pytest.approx(overlap, abs=1e-4)
    np.testing.assert_allclose(result.lds[3], lds[3])


def test_fits_evaluated_on_other_runs_are_recomputed(three: dmdb.Database,
                                                     tmp_path: Path) -> None:
    _, theta = mask_space_fit(three, 1)
    scores = theta + np.random.default_rng(1).normal(0, theta.std(), theta.shape)
    np.save(tmp_path / "all.npy", scores)
    fid = import_fit(three, tmp_path / "all.npy", eval_set="all").fit_id
    result = compare(three, [1, fid])
    _, x, y = three.load_runs(run_ids=three.run_ids(split="test"))
    want = [spearmanr(x @ scores[:, t], y[:, t])[0] for t in range(M)]
    np.testing.assert_allclose(result.lds[fid], want, atol=1e-9)
    stored = three.sql("SELECT spearman FROM lds WHERE fit_id = ? ORDER BY target_idx", [fid])
    assert not np.allclose(stored.column(0).to_numpy(), want)  # it was on every run
    assert result.table.to_pylist()[1]["recomputed"] is True
    assert any(f"fit {fid} was evaluated on other runs" in n for n in result.notes)


def test_compare_refuses_bad_fit_lists(three: dmdb.Database) -> None:
    for args, message in ((["--fits", "1"], "compare needs at least two fits"),
                          (["--fits", "1,99"], "no fit 99"),
                          (["--fits", "1,x"], "--fits takes fit ids separated by commas"),
                          (["--fits", "1,2,1"], "names a fit twice")):
        code, _, err = run("compare", three.path, *args, "--out", "never.png")
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert not Path("never.png").exists()
    with pytest.raises(UsageError, match="at least two fits"):
        compare(dmdb.connect(three.path, read_only=True), [3])


def test_report_draws_the_comparison_when_there_are_other_fits(three: dmdb.Database,
                                                               tmp_path: Path) -> None:
    index = report(three, tmp_path / "r", fit_id=1, learning_curve=False, progress=False,
                   echo=lambda s: None)
    assert (tmp_path / "r" / "compare.png").read_bytes()[:8] == PNG
    assert "fit 3 noisy: mean LDS" in index.read_text()
    single = dmdb.connect(shutil.copy(three.path, tmp_path / "one.duckdb"))
    for fid in (3, 2):
        drop_fit(single, fid)
    index = report(single, tmp_path / "r1", learning_curve=False, progress=False,
                   echo=lambda s: None)
    assert not (tmp_path / "r1" / "compare.png").exists()
    assert "skipped: the database holds one fit" in index.read_text()
