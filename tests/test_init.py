"""dmdb init, migrations and the schema contract."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

import dmdb
from dmdb import migrations
from dmdb.errors import DatabaseError, SchemaVersionError, UsageError

CONTRACT = {
    "experiment": {"name", "dataset", "n_train", "n_targets", "created_at", "config", "seed"},
    "train_examples": {"train_idx", "label"},
    "targets": {"target_idx", "label"},
    "runs": {"run_id", "mask_id", "alpha", "seed", "split", "created_at", "target_acc"},
    "masks": {"run_id", "mask"},
    "margins": {"run_id", "margins"},
    "fits": {"fit_id", "created_at", "parameters", "solver", "n_fit", "n_val", "n_test"},
    "datamodels": {"fit_id", "target_idx", "bias", "penalty", "nnz", "val_mse", "test_mse",
                   "test_pearson", "test_spearman"},
    "weights": {"fit_id", "target_idx", "train_idx", "weight"},
}


def test_init_creates_the_contract_tables(db: dmdb.Database) -> None:
    for table, columns in CONTRACT.items():
        got = set(db.sql(f"SELECT * FROM {table} LIMIT 0").column_names)
        assert columns <= got, (table, columns - got)
    assert db.sql("SELECT count(*) FROM train_examples").column(0)[0].as_py() == 37
    assert db.sql("SELECT count(*) FROM targets").column(0)[0].as_py() == 6
    exp = db.experiment
    assert (exp.n_train, exp.n_targets, exp.seed) == (37, 6, 7)
    types = db.sql("SELECT data_type FROM duckdb_columns() WHERE table_name = 'margins' "
                   "AND column_name = 'margins'").column(0)[0].as_py()
    assert types == "FLOAT[6]"


def test_migrations_are_recorded(db: dmdb.Database) -> None:
    rows = db.sql("SELECT version, name FROM dmdb_migrations ORDER BY version").to_pylist()
    assert [r["version"] for r in rows] == list(range(1, migrations.code_version() + 1))
    assert rows[0]["name"] == "0001_core"


def test_init_refuses_existing_file_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "a.duckdb"
    dmdb.init(path, n_train=5, n_targets=2)
    with pytest.raises(UsageError, match="already exists; use --force"):
        dmdb.init(path, n_train=9, n_targets=3)
    assert dmdb.connect(path).experiment.n_train == 5
    dmdb.init(path, n_train=9, n_targets=3, force=True)
    assert dmdb.connect(path).experiment.n_train == 9


@pytest.mark.parametrize("kwargs, message", [
    ({"n_train": 0, "n_targets": 3}, "--train-size must be positive"),
    ({"n_train": 4, "n_targets": 0}, "--targets must be in"),
    ({"n_train": 4, "n_targets": 100_001}, "array size limit"),
    ({"n_train": 4, "n_targets": 2, "seed": -1}, "--seed"),
])
def test_init_rejects_bad_sizes(tmp_path: Path, kwargs: dict, message: str) -> None:
    path = tmp_path / "bad.duckdb"
    with pytest.raises(UsageError, match=message):
        dmdb.init(path, **kwargs)
    assert not path.exists()


def test_labels_are_stored(tmp_path: Path) -> None:
    db = dmdb.init(tmp_path / "l.duckdb", n_train=4, n_targets=2,
                   train_labels=np.array([0, 1, 2, 1]), target_labels=np.array([5, 6]),
                   train_pixels=np.ones((4, 3)))
    assert db.sql("SELECT label FROM train_examples ORDER BY train_idx").column(0).to_pylist() \
        == [0, 1, 2, 1]
    assert db.sql("SELECT pixels FROM train_examples LIMIT 1").column(0)[0].as_py() == [1, 1, 1]


def test_newer_database_is_refused(file_db: dmdb.Database) -> None:
    con = duckdb.connect(file_db.path)
    con.execute("INSERT INTO dmdb_migrations VALUES (999, '0999_future', now()::TIMESTAMP)")
    con.close()
    with pytest.raises(SchemaVersionError, match="upgrade dmdb"):
        dmdb.connect(file_db.path).status()


def test_older_database_is_migrated(file_db: dmdb.Database, monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
    # A future migration appears in the shipped folder: opening for writing applies it.
    schema = tmp_path / "schema"
    schema.mkdir()
    for path in migrations.sql_files("schema"):
        (schema / path.name).write_text(path.read_text())
    (schema / f"{migrations.code_version() + 1:04d}_extra.sql").write_text(
        "CREATE TABLE extra_thing (x INTEGER);")
    monkeypatch.setattr(migrations, "sql_files",
                        lambda kind: sorted(schema.glob("*.sql")) if kind == "schema"
                        else sorted(__import__("dmdb.resources").resources.sql_dir(kind)
                                    .glob("*.sql")))
    with pytest.raises(DatabaseError, match="without read-only to migrate it"):
        dmdb.connect(file_db.path, read_only=True).load_runs()
    from tests.conftest import make_runs, run_table
    dmdb.connect(file_db.path).ingest(run_table(*make_runs(3)))
    versions = dmdb.connect(file_db.path).sql("SELECT max(version) FROM dmdb_migrations")
    assert versions.column(0)[0].as_py() == migrations.code_version()
    assert dmdb.connect(file_db.path).sql("SELECT count(*) FROM extra_thing").num_rows == 1


def test_not_a_dmdb_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.duckdb"
    duckdb.connect(str(path)).execute("CREATE TABLE t (x INT)").close()
    with pytest.raises(DatabaseError, match="not a dmdb database"):
        dmdb.connect(path).status()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="no such database"):
        dmdb.connect(tmp_path / "nope.duckdb")


def test_init_removes_only_the_builds_of_dead_processes(tmp_path: Path) -> None:
    """What a killed init left (.NAME.init-PID, PID gone) goes; a live build or an odd name
    stays."""
    dead = 2**22 + 12345  # above Linux's pid_max: no such process
    names = [f".x.duckdb.init-{dead}", f".x.duckdb.init-{dead}.wal", ".x.duckdb.init-1",
             ".x.duckdb.init-abc", f".y.duckdb.init-{dead}"]
    for name in names:
        (tmp_path / name).write_bytes(b"left over")
    dmdb.init(tmp_path / "x.duckdb", n_train=5, n_targets=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["x.duckdb", ".x.duckdb.init-1", ".x.duckdb.init-abc", f".y.duckdb.init-{dead}"])
