"""A database made by schema version 1 (tests/fixtures/schema_v1.py) meets this dmdb.

Reads refuse it and leave its bytes alone; the first write (or `dmdb migrate`)
brings it to the current version with every row intact; and a migration that
fails (injected) leaves it at version 1, exactly as it was.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner

import dmdb
from dmdb import migrations
from dmdb.cli import cli
from dmdb.errors import DatabaseError
from dmdb.resources import sql_dir
from tests.conftest import make_runs, run_table
from tests.fixtures import schema_v1

TABLES = ("experiment", "train_examples", "targets", "runs", "masks", "margins", "fits",
          "fit_runs", "datamodels", "weights")


@pytest.fixture
def v1(tmp_path: Path) -> tuple[Path, schema_v1.V1Contents]:
    path = tmp_path / "v1.duckdb"
    return path, schema_v1.build(path)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state(path: Path) -> dict[str, object]:
    """The version, the tables, and every row of the version-1 tables."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}
        rows["version"] = migrations.db_version(con)
        rows["tables"] = sorted(r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables()").fetchall())
        return rows
    finally:
        con.close()


def test_fixture_is_version_1(v1: tuple[Path, schema_v1.V1Contents]) -> None:
    path, made = v1
    s = state(path)
    assert s["version"] == 1 and "embeddings" not in s["tables"]  # 0002's table
    assert len(s["runs"]) == len(made.run_ids) == 12  # type: ignore[arg-type]


def test_reads_refuse_version_1_and_change_nothing(v1: tuple[Path, schema_v1.V1Contents]
                                                   ) -> None:
    path, _ = v1
    before = digest(path)
    for args in (["status"], ["sql", "SELECT 1"], ["fits"], ["leakage"]):
        result = CliRunner().invoke(cli, [args[0], str(path), *args[1:]])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert "schema version 1, older than this dmdb's" in lines[0]
        assert f"dmdb migrate {path}" in lines[0]
    with pytest.raises(DatabaseError, match="older than this dmdb"):
        dmdb.connect(path, read_only=True).load_runs()
    assert digest(path) == before


def test_version_1_is_migrated_on_open(v1: tuple[Path, schema_v1.V1Contents]) -> None:
    """A writable open migrates it; the runs, the fit and the experiment come through."""
    path, made = v1
    db = dmdb.connect(path)
    ids, masks, margins = db.load_runs()  # 'verify' runs are left out, as always
    trained = np.array([s != "verify" for s in made.splits])
    np.testing.assert_array_equal(ids, made.run_ids[trained])
    np.testing.assert_array_equal(masks, made.masks[trained])
    np.testing.assert_array_equal(margins, made.margins[trained])
    assert state(path)["version"] == migrations.code_version()
    draws = db.sql("SELECT run_id, draw, \"repeat\" FROM runs ORDER BY run_id").to_pylist()
    assert [r["draw"] for r in draws] == made.draws  # 0003 backfilled them from info
    assert [r["repeat"] for r in draws] == [0] * 10 + [None, None]
    bias, weights = db.load_fit(1)
    np.testing.assert_allclose(bias, made.bias)
    np.testing.assert_array_equal(weights.toarray(), made.weights)
    assert db.experiment.n_train == schema_v1.N_TRAIN
    assert len(db.sql("SELECT * FROM lds").to_pylist()) == schema_v1.N_TARGETS  # views made
    db.ingest(run_table(*make_runs(5)))  # and it takes new runs in the current schema
    assert db.sql("SELECT count(*) FROM runs").column(0)[0].as_py() == 17


def test_dmdb_migrate_command(v1: tuple[Path, schema_v1.V1Contents]) -> None:
    path, _ = v1
    result = CliRunner().invoke(cli, ["migrate", str(path)])
    assert result.exit_code == 0
    assert result.output.strip() == f"{path}: schema version {migrations.code_version()}"
    assert CliRunner().invoke(cli, ["status", str(path)]).exit_code == 0


def broken_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: int) -> None:
    """Ship migrations in which migration ``broken`` fails half-way (after a CREATE)."""
    folder = tmp_path / "schema"
    folder.mkdir()
    for path in migrations.sql_files("schema"):
        text = path.read_text()
        if int(path.name[:4]) == broken:
            text = "CREATE TABLE half_done (x INTEGER);\n" + text + \
                "\nSELECT * FROM no_such_table;\n"
        (folder / path.name).write_text(text)
    monkeypatch.setattr(
        migrations, "sql_files",
        lambda kind: sorted(folder.glob("*.sql")) if kind == "schema"
        else sorted(sql_dir(kind).glob("*.sql")))


def test_failed_migration_leaves_version_1_intact(
    v1: tuple[Path, schema_v1.V1Contents], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = v1
    before = state(path)
    broken_schema(tmp_path, monkeypatch, broken=2)
    for attempt in (lambda: dmdb.connect(path).migrate(),
                    lambda: dmdb.connect(path).ingest(run_table(*make_runs(5)))):
        with pytest.raises(DatabaseError, match="migration 0002_applications failed") as e:
            attempt()
        assert "\n" not in str(e.value)
        assert state(path) == before  # version 1, no half_done table, every row as it was
    result = CliRunner().invoke(cli, ["migrate", str(path)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "0002_applications" in lines[0]
    assert state(path) == before
    monkeypatch.undo()  # the shipped migrations again: now it migrates
    assert dmdb.connect(path).migrate() == migrations.code_version()


def test_failed_later_migration_keeps_the_earlier_ones(
    v1: tuple[Path, schema_v1.V1Contents], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each migration is its own transaction: 0003 failing keeps 0002, rolls back 0003."""
    path, _ = v1
    broken_schema(tmp_path, monkeypatch, broken=3)
    with pytest.raises(DatabaseError, match="migration 0003_run_identity failed"):
        dmdb.connect(path).migrate()
    s = state(path)
    assert s["version"] == 2 and "embeddings" in s["tables"]  # type: ignore[operator]
    assert "half_done" not in s["tables"]  # type: ignore[operator]
    con = duckdb.connect(str(path), read_only=True)
    try:
        columns = {r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() "
                                             "WHERE table_name = 'runs'").fetchall()}
    finally:
        con.close()
    assert "draw" not in columns
