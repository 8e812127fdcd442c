"""`dmdb report`: figures and index.html, with and without the data each figure needs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import dmdb
from dmdb.errors import UsageError
from dmdb.fitting import fit, latest_fit
from dmdb.report import report
from dmdb.verify import ceiling, verify
from tests.conftest import make_runs, run_table
from tests.test_verify import QUIET, digits_copy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def images(index: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index.read_text())


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
    fits = db.sql("SELECT fit_id, n_fit, json_extract_string(parameters, "
                  "'$.learning_curve_of') AS of FROM fits ORDER BY fit_id").to_pylist()
    n_fit = fits[0]["n_fit"]
    assert [f["n_fit"] for f in fits[1:]] == [round(p * n_fit) for p in (0.1, 0.25, 0.5)]
    assert [f["of"] for f in fits] == [None, "1", "1", "1"]
    assert latest_fit(db) == first  # learning-curve refits never become "the latest fit"
    report(db, tmp_path / "again", **QUIET)  # the refits are reused
    assert db.sql("SELECT count(*) FROM fits").column(0)[0].as_py() == 4


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
