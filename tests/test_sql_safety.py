"""`dmdb sql` cannot write: not to the database, not to the disk (issue 12, §2).

Every statement that could write is refused in one line, and afterwards the
database file's bytes are the same and no file has appeared in its folder. The
read-only kinds the README promises (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN,
SUMMARIZE) work.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import dmdb
from dmdb.cli import cli
from dmdb.errors import UsageError
from tests.conftest import make_runs, run_table


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one database with runs and a fit, and a CSV file beside it."""
    tmp = tmp_path_factory.mktemp("sql_safety")
    (tmp / "secret.csv").write_text("a,b\n1,2\n")
    db = dmdb.init(tmp / "exp.duckdb", n_train=37, n_targets=6, seed=7)
    db.ingest(run_table(*make_runs(120)))
    code = CliRunner().invoke(cli, ["fit", str(tmp / "exp.duckdb"), "-q", "--n-lambdas", "6"])
    assert code.exit_code == 0, code.output
    assert db.sql("SELECT count(*) FROM weights").column(0)[0].as_py() > 0
    return tmp


def snapshot(folder: Path) -> dict[str, str]:
    """Every file in the folder (recursively) and the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def sql(folder: Path, query: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(cli, ["sql", str(folder / "exp.duckdb"), query, "--format",
                                      "json"])
    return result.exit_code, result.output, result.exception


REFUSED = [
    ("DETACH dmdb; ATTACH '{db}' AS x; DELETE FROM x.weights", "3 statements given"),
    ("DETACH dmdb", "DETACH statements are not allowed"),
    ("ATTACH '{dir}/other.duckdb'", "ATTACH statements are not allowed"),
    ("ATTACH '{db}' AS x", "ATTACH statements are not allowed"),
    ("COPY runs TO '{dir}/x.csv'", "COPY statements are not allowed"),
    ("COPY (SELECT * FROM weights) TO '{dir}/w.parquet' (FORMAT parquet)",
     "COPY statements are not allowed"),
    ("EXPORT DATABASE '{dir}/dump'", "EXPORT statements are not allowed"),
    ("CHECKPOINT", "not allowed"),
    ("FORCE CHECKPOINT", "not allowed"),
    ("INSTALL httpfs", "not allowed"),
    ("LOAD json", "not allowed"),
    ("SET threads = 1", "SET statements are not allowed"),
    ("SET enable_external_access = true", "SET statements are not allowed"),
    ("RESET lock_configuration", "not allowed"),
    ("USE memory", "not allowed"),
    ("PRAGMA enable_profiling", "PRAGMA statements are not allowed"),
    ("CALL pragma_version()", "CALL statements are not allowed"),
    ("CREATE TABLE t (x INTEGER)", "CREATE statements are not allowed"),
    ("CREATE OR REPLACE VIEW lds AS SELECT 1", "CREATE statements are not allowed"),
    ("CREATE TEMP TABLE t AS SELECT 1", "CREATE statements are not allowed"),
    ("DROP TABLE weights", "DROP statements are not allowed"),
    ("INSERT INTO fits SELECT * FROM fits", "INSERT statements are not allowed"),
    ("UPDATE runs SET alpha = 1", "UPDATE statements are not allowed"),
    ("DELETE FROM weights", "DELETE statements are not allowed"),
    ("ALTER TABLE runs ADD COLUMN x INTEGER", "ALTER statements are not allowed"),
    ("VACUUM", "VACUUM statements are not allowed"),
    ("BEGIN TRANSACTION", "not allowed"),
    ("SELECT 1; SELECT 2", "2 statements given"),
    ("SELECT 1; DELETE FROM weights", "2 statements given"),
    ("", "empty query"),
    ("   ", "empty query"),
    (";", "empty query"),
    # Reads of other files are refused by DuckDB itself (external access is off).
    ("SELECT * FROM read_csv('{dir}/secret.csv')", "disabled by configuration"),
    ("SELECT * FROM read_text('/etc/hostname')", "disabled by configuration"),
    ("SELECT * FROM glob('{dir}/*')", "disabled by configuration"),
    ("SELECT * FROM '{dir}/x.parquet'", "disabled by configuration"),
    ("SELECT * FROM query('DELETE FROM weights')", "SELECT"),
]


@pytest.mark.parametrize("query, message", REFUSED, ids=[f"{i:02d}" for i in range(len(REFUSED))])
def test_writes_are_refused_and_nothing_changes(folder: Path, query: str, message: str) -> None:
    before = snapshot(folder)
    code, out, exc = sql(folder, query.format(db=folder / "exp.duckdb", dir=folder))
    lines = out.strip().splitlines()
    assert isinstance(exc, SystemExit) and code == 1, (out, exc)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], out
    assert snapshot(folder) == before  # the file's bytes, and no new file


INERT = ["SELECT * FROM checkpoint()", "SELECT * FROM checkpoint('dmdb')",
         "SELECT * FROM force_checkpoint()"]


@pytest.mark.parametrize("query", INERT)
def test_select_of_a_writing_function_changes_nothing(folder: Path, query: str) -> None:
    """A SELECT may name a function that writes; the read-only attachment stops it."""
    before = snapshot(folder)
    code, out, exc = sql(folder, query)
    assert code in (0, 1) and (code == 0 or len(out.strip().splitlines()) == 1), (out, exc)
    assert snapshot(folder) == before


ALLOWED = [
    ("SELECT count(*) AS n FROM weights WHERE fit_id = 1", lambda rows: rows[0]["n"] > 0),
    ("WITH w AS (SELECT * FROM weights) SELECT count(DISTINCT target_idx) AS t FROM w",
     lambda rows: rows == [{"t": 6}]),
    ("DESCRIBE runs", lambda rows: "run_id" in {r["column_name"] for r in rows}),
    ("SHOW TABLES", lambda rows: {"runs", "weights", "lds"} <= {r["name"] for r in rows}),
    ("EXPLAIN SELECT * FROM lds", lambda rows: len(rows) >= 1),
    ("SUMMARIZE datamodels", lambda rows: "bias" in {r["column_name"] for r in rows}),
    ("FROM runs SELECT count(*) AS n", lambda rows: rows == [{"n": 120}]),
    ("SELECT 1 AS a UNION ALL SELECT 2", lambda rows: [r["a"] for r in rows] == [1, 2]),
]


@pytest.mark.parametrize("query, check", ALLOWED, ids=[q.split()[0] for q, _ in ALLOWED])
def test_read_only_kinds_work(folder: Path, query: str, check: object) -> None:
    before = snapshot(folder)
    code, out, exc = sql(folder, query)
    assert code == 0, (out, exc)
    assert check([json.loads(line) for line in out.splitlines()])  # type: ignore[operator]
    assert snapshot(folder) == before


def test_library_read_query_refuses_the_same(folder: Path) -> None:
    """Database.read_query, which `dmdb sql` calls, is the guard (not the CLI)."""
    db = dmdb.connect(folder / "exp.duckdb", read_only=True)
    before = snapshot(folder)
    for query, message in REFUSED[:8]:
        with pytest.raises(dmdb.DmdbError, match=message.split()[0]):
            db.read_query(query.format(db=folder / "exp.duckdb", dir=folder))
    with pytest.raises(UsageError, match="empty query"):
        db.read_query("")
    assert db.read_query("SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 120}]
    assert snapshot(folder) == before
