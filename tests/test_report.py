"""`dmdb report`: figures and index.html, with and without the data each figure needs."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dmdb
from dmdb.catalog import predict_masks
from dmdb.errors import UsageError
from dmdb.fitting import fit, latest_fit
from dmdb.report import report
from dmdb.verify import ceiling, verify
from tests.conftest import make_runs, run_table
from tests.test_pairs import planted_db
from tests.test_verify import QUIET, TARGETS, digits_copy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def images(index: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index.read_text())


def section(index: Path, title: str) -> str:
    """The html of the report's section with this title."""
    found = re.findall(rf"<section><h2>{re.escape(title)}</h2>(.*?)</section>",
                       index.read_text(), re.S)
    assert len(found) == 1, title
    return str(found[0])


def numbers(index: Path, title: str) -> list[str]:
    return [html.unescape(n) for n in re.findall(r"<li>(.*?)</li>", section(index, title))]


def shared_mean_lds(db: dmdb.Database, linear: int, second: int) -> tuple[float, float]:
    """Mean test_spearman of both fits over the targets both have one for."""
    row = db.sql("SELECT avg(a.test_spearman), avg(b.test_spearman) FROM datamodels a "
                 "JOIN datamodels b USING (target_idx) WHERE a.fit_id = ? AND b.fit_id = ? "
                 "AND a.test_spearman IS NOT NULL AND b.test_spearman IS NOT NULL",
                 [linear, second]).to_pylist()[0]
    a, b = row.values()
    return float(a), float(b)


PAIRS = "Linear and second-order datamodels"
INTERACTIONS = "Strongest interactions"


def test_report_on_a_verified_digits_database(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    db = digits_copy(tmp_path_factory)
    verify(db, targets=3, ks=(3, 6), models=2, brittleness_targets=2, **QUIET)
    ceiling(db, masks=4, seeds=2, **QUIET)
    with db.connection(write=True) as con:  # embeddings as `dmdb embed` would store them
        con.execute("INSERT INTO embeddings SELECT 1, t, [sin(t), cos(t), 0.5]::FLOAT[], t % 3 "
                    "FROM range(30) r(t)")
    index = report(db, tmp_path / "out", learning_curve=False, **QUIET)
    assert index == tmp_path / "out" / "index.html"
    shown = images(index)
    assert set(shown) == {"predictions.png", "lds_histogram.png", "influencers.png",
                          "counterfactuals.png", "brittleness.png", "embedding.png"}
    for name in shown:
        data = (index.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    text = index.read_text()
    assert "slope" in text and "noise ceiling" in text.lower()
    assert "learning curve not requested" in text
    # A linear fit alone: the second-order sections say how to make them.
    for title in (PAIRS, INTERACTIONS):
        assert "`dmdb fit DB --pairs 60`" in section(index, title)


def test_report_learning_curve_and_missing_data(tmp_path: Path) -> None:
    # generated runs: no pixels, no image shape, no verify runs, no embeddings
    db = dmdb.init(tmp_path / "gen.duckdb", n_train=37, n_targets=6, seed=7)
    db.ingest(run_table(*make_runs(600, seed=11)))
    first = fit(db, **QUIET).fit_id
    index = report(db, tmp_path / "out", **QUIET)
    shown = images(index)
    assert set(shown) == {"predictions.png", "lds_histogram.png", "brittleness.png",
                          "learning_curve.png"}
    text = index.read_text()
    for missing in ("no image_shape", "run `dmdb verify`", "run `dmdb embed`"):
        assert missing in text
    assert "`dmdb fit DB --pairs 60`" in section(index, PAIRS)
    assert "no image_shape" in section(index, INTERACTIONS)
    fits = db.sql("SELECT fit_id, n_fit, json_extract_string(parameters, "
                  "'$.learning_curve_of') AS of FROM fits ORDER BY fit_id").to_pylist()
    n_fit = fits[0]["n_fit"]
    assert [f["n_fit"] for f in fits[1:]] == [round(p * n_fit) for p in (0.1, 0.25, 0.5)]
    assert [f["of"] for f in fits] == [None, "1", "1", "1"]
    assert latest_fit(db) == first  # learning-curve refits never become "the latest fit"
    report(db, tmp_path / "again", **QUIET)  # the refits are reused
    assert db.sql("SELECT count(*) FROM fits").column(0)[0].as_py() == 4


def test_report_second_order_fit_next_to_its_linear_fit(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    db = digits_copy(tmp_path_factory)  # fit 1: linear, targets 0..29
    second = fit(db, pairs=10, alpha=0.5, target_range=TARGETS, **QUIET).fit_id
    assert second == 2 and db.sql("SELECT count(*) FROM interactions").column(0)[0].as_py()
    checked = verify(db, fit_id=1, targets=3, ks=(3, 6), models=2, brittleness_targets=0,
                     **QUIET)
    # The report of the second-order fit: counterfactuals from its verified linear sibling.
    index = report(db, tmp_path / "out", fit_id=second, learning_curve=False, **QUIET)
    assert {"pairs.png", "interactions.png"} <= set(images(index))
    for name in ("pairs.png", "interactions.png"):
        data = (index.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    assert 'src="interactions.png"' in section(index, INTERACTIONS)
    shown = numbers(index, PAIRS)
    linear_lds, second_lds = shared_mean_lds(db, 1, second)
    assert f"linear (fit 1) {linear_lds:.3f}, second-order (fit 2) {second_lds:.3f}" in shown[0]
    scores = {m.fit_id: m for m in checked.models_compared}
    assert set(scores) == {1, 2}
    for m in (1, 2):
        line = next(n for n in shown if n.startswith(f"fit {m}, "))
        assert f"Pearson {scores[m].pearson:.3f}" in line
        assert f"slope {scores[m].slope:.2f}" in line
        assert "retrained conditions of fit 1" in line
    assert "second-order (K = 10)" in section(index, PAIRS)
    top = numbers(index, INTERACTIONS)[0]
    total = db.sql("SELECT count(*) FROM interactions WHERE fit_id = 2").column(0)[0].as_py()
    assert top.startswith(f"fit 2: {total} non-zero interactions")


def test_report_predictions_of_a_second_order_fit_include_its_pairs(tmp_path: Path) -> None:
    db = planted_db(str(tmp_path / "p.duckdb"), 1000, 7)  # N = 30, M = 3, planted pairs
    linear = fit(db, **QUIET).fit_id
    second = fit(db, pairs=10, **QUIET).fit_id
    index = report(db, tmp_path / "second", fit_id=second, learning_curve=False, **QUIET)
    ids = db.sql("SELECT run_id FROM fit_runs WHERE fit_id = ? AND split = 'test' "
                 "ORDER BY run_id", [second]).column(0).to_numpy()
    _, x, y = db.load_runs(run_ids=ids)
    bias, weights = db.load_fit(second)
    printed = {}
    for name, pairs in (("with pairs", db.load_interactions(second)), ("linear part", None)):
        pred = predict_masks(bias, weights, x, pairs)  # M = 3: the figure shows every target
        actual = y.astype(np.float64)
        pooled = np.corrcoef(pred.ravel(), actual.ravel())[0, 1]
        per_target = np.mean([np.corrcoef(pred[:, j], actual[:, j])[0, 1] for j in range(3)])
        printed[name] = [f"pooled Pearson r = {pooled:.3f}",
                         f"per-target r: {per_target:.3f} on average"]
    # The check can tell the two apart: the pairs matter to these margins.
    assert all(a != b for a, b in zip(*printed.values(), strict=True))
    shown = numbers(index, "Predicted vs actual margins on test runs")
    assert shown == printed["with pairs"]
    # Unverified and not images: the LDS panel alone, and no interaction images.
    for out, fid in ((index.parent, second),
                     (report(db, tmp_path / "linear", fit_id=linear, learning_curve=False,
                             **QUIET).parent, linear)):
        assert "pairs.png" in images(out / "index.html")
        shown = numbers(out / "index.html", PAIRS)
        lds = shared_mean_lds(db, linear, second)
        assert f"linear (fit {linear}) {lds[0]:.3f}, second-order (fit {second}) " \
            f"{lds[1]:.3f}" in shown[0]
        assert shown[1].endswith("higher LDS on 100% of them")  # the planted pairs
        assert f"run `dmdb verify --fit {fid}`" in shown[-1]
        assert "no image_shape" in section(out / "index.html", INTERACTIONS)


@pytest.mark.parametrize("case", ["no fits", "unknown fit", "out is a file"])
def test_report_bad_input(tmp_path: Path, case: str) -> None:
    db = dmdb.init(tmp_path / "gen.duckdb", n_train=37, n_targets=6, seed=7)
    kwargs: dict[str, Any] = dict(QUIET)
    out = tmp_path / "out"
    if case == "unknown fit":
        kwargs["fit_id"] = 9
    if case == "out is a file":
        out.write_text("x")
    with pytest.raises(UsageError):
        report(db, out, **kwargs)
    assert not (out / "index.html").exists()


def test_learning_curve_of_a_second_order_fit_refits_with_pairs(tmp_path: Path) -> None:
    db = planted_db(str(tmp_path / "p.duckdb"), 1000, 7)
    linear = fit(db, **QUIET).fit_id
    second = fit(db, pairs=10, **QUIET).fit_id
    curve = "SELECT n_fit, parameters->>'pairs' AS pairs FROM fits " \
            "WHERE parameters->>'learning_curve_of' = ? ORDER BY n_fit"
    report(db, tmp_path / "second", fit_id=second, **QUIET)
    refits = db.sql(curve, [str(second)]).to_pylist()
    assert len(refits) == 3 and {r["pairs"] for r in refits} == {"10"}
    # The linear fit's curve does not reuse the second-order refits of the same sizes.
    report(db, tmp_path / "linear", fit_id=linear, **QUIET)
    mine = db.sql(curve, [str(linear)]).to_pylist()
    assert [r["n_fit"] for r in mine] == [r["n_fit"] for r in refits]
    assert {r["pairs"] for r in mine} == {None}
