"""A dmdb file opens in the DuckDB shell users have (PyPI's duckdb-cli 1.5.x)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import dmdb
from dmdb.resources import sql_files
from tests.conftest import make_runs, run_table

SHELL = shutil.which("duckdb")
pytestmark = pytest.mark.skipif(SHELL is None, reason="duckdb-cli is not installed")


def shell(path: str, query: str) -> list[dict]:
    out = subprocess.run([SHELL, "-readonly", "-json", path, "-c", query],  # type: ignore[list-item]
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout or "[]")


def test_shell_opens_a_dmdb_file(tmp_path: Path) -> None:
    db = dmdb.init(tmp_path / "e.duckdb", n_train=37, n_targets=6)
    masks, margins = make_runs(20)
    db.ingest(run_table(masks, margins))
    version = subprocess.run([SHELL, "-version"], capture_output=True, text=True).stdout  # type: ignore[list-item]
    assert version.startswith("v1.5")
    rows = shell(db.path,
                 "SELECT count(*) AS n, sum(bit_count(bits))::BIGINT AS ones FROM mask_bits")
    assert rows == [{"n": 20, "ones": int(masks.sum())}]
    rows = shell(db.path, "SELECT array_cosine_similarity(a.margins, a.margins) AS c "
                          "FROM margins a LIMIT 1")
    assert abs(rows[0]["c"] - 1) < 1e-6
    # get_bit on the view agrees with numpy's masks
    runs, m2, _ = db.load_runs()
    rows = shell(db.path, f"SELECT get_bit(bits, 36) AS b FROM mask_bits WHERE run_id = {runs[0]}")
    assert rows == [{"b": int(m2[0, 36])}]


def test_every_shipped_view_works_in_the_shell(tmp_path: Path) -> None:
    db = dmdb.init(tmp_path / "e.duckdb", n_train=37, n_targets=6)
    db.ingest(run_table(*make_runs(20)))
    views = {r["name"] for r in db.sql(
        "SELECT view_name AS name FROM duckdb_views() WHERE NOT internal").to_pylist()}
    shipped = {p.stem for p in sql_files("queries")}
    for name in sorted(views & shipped):
        shell(db.path, f"SELECT * FROM {name} LIMIT 3")


# Every application view and macro, called as a user would in the shell. Each query
# orders its rows completely, so that the shell and Python can be compared row by row.
APPLICATION_QUERIES = {
    "fit_alpha": "SELECT * FROM fit_alpha ORDER BY fit_id",
    "lds": "SELECT * FROM lds ORDER BY fit_id, target_idx",
    "predict_subset": "SELECT * FROM predict_subset(1, [0, 3, 5, 17, 36])",
    "predict_removal": "SELECT * FROM predict_removal(1, [2, 4, 8]) "
                       "UNION ALL SELECT * FROM predict_removal(2, [])",
    "top_influencers": "SELECT * FROM top_influencers ORDER BY fit_id, target_idx, sign, rank",
    "top_influencers_k": "SELECT * FROM top_influencers_k(3, 2)",
    "brittleness": "SELECT * FROM brittleness ORDER BY fit_id, target_idx",
    "brittleness_curve": "SELECT * FROM brittleness_curve ORDER BY fit_id, k",
    "leakage_candidates": "SELECT * FROM leakage_candidates ORDER BY fit_id, rank",
}


def same_rows(a: list[dict], b: list[dict]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.keys() != y.keys():
            return False
        for k in x:
            if isinstance(x[k], float) or isinstance(y[k], float):
                if x[k] is None or y[k] is None or abs(x[k] - y[k]) > 1e-9 * (1 + abs(y[k])):
                    return False
            elif x[k] != y[k]:
                return False
    return True


def test_application_views_in_the_shell(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.test_views import fitted_path

    path = str(fitted_path(tmp_path_factory))
    db = dmdb.connect(path, read_only=True)
    shipped = {p.stem for p in sql_files("queries")}
    macros = {r["name"] for r in db.sql(
        "SELECT DISTINCT function_name AS name FROM duckdb_functions() "
        "WHERE function_type = 'table_macro' AND NOT internal").to_pylist()}
    views = {r["name"] for r in db.sql(
        "SELECT view_name AS name FROM duckdb_views() WHERE NOT internal").to_pylist()}
    assert set(APPLICATION_QUERIES) <= (macros | views) & shipped
    for name, query in APPLICATION_QUERIES.items():
        python = db.sql(query).to_pylist()
        assert python, name  # the fitted database gives every query rows
        assert same_rows(shell(path, query), python), name
