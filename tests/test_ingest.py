"""Getting runs in and out: Arrow, shards, npy, stores; identity, splits, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

import dmdb
from dmdb import sources
from dmdb.errors import InputError, UsageError
from dmdb.ingest import ingest_paths
from tests.conftest import N_TARGETS, N_TRAIN, counts, make_runs, run_table


def sort_by_content(masks: np.ndarray, margins: np.ndarray) -> np.ndarray:
    return np.lexsort(margins.T[::-1])


@pytest.mark.parametrize("packed", [True, False])
def test_round_trip_is_exact(db: dmdb.Database, packed: bool) -> None:
    masks, margins = make_runs(40)
    ids = np.arange(1000, 1040)[::-1].copy()
    res = db.ingest(run_table(masks, margins, packed=packed, run_id=pa.array(ids)))
    assert (res.n_new, res.n_skipped) == (40, 0)
    run_ids, m2, y2 = db.load_runs(split=None)
    order = np.argsort(ids)
    assert np.array_equal(run_ids, ids[order])
    assert m2.dtype == np.bool_ and y2.dtype == np.float32
    assert np.array_equal(m2, masks[order]) and np.array_equal(y2, margins[order])


def test_ingest_leaves_no_wal(file_db: dmdb.Database) -> None:
    # Each ingest transaction checkpoints as it commits: nothing is left in a WAL for
    # every later read-only open to replay, and such an open sees every run.
    masks, margins = make_runs(30)
    file_db.ingest(run_table(masks, margins))
    wal = Path(file_db.path + ".wal")
    assert not wal.exists() or wal.stat().st_size == 0
    _, m2, y2 = dmdb.connect(file_db.path, read_only=True).load_runs()
    assert sorted(map(bytes, y2)) == sorted(map(bytes, margins))
    assert sorted(map(bytes, m2)) == sorted(map(bytes, masks))


def test_record_batch_and_reader(db: dmdb.Database) -> None:
    table = run_table(*make_runs(10))
    db.ingest(table.to_batches()[0])
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
    assert db.ingest(reader).n_new == 0
    assert counts(db)["runs"] == 10


def test_same_runs_twice_is_a_no_op(db: dmdb.Database) -> None:
    table = run_table(*make_runs(25))
    db.ingest(table)
    before = counts(db)
    res = db.ingest(table)
    assert (res.n_new, res.n_skipped) == (0, 25)
    assert counts(db) == before


def test_run_hash_is_stable() -> None:
    # Stored content hashes are run identity: the hash must never change between
    # versions, and hashing parts side by side equals hashing their concatenation.
    from dmdb.runs import row_hash

    rows = np.arange(3 * 13, dtype=np.uint8).reshape(3, 13)
    assert row_hash(rows, 0).tolist() == [
        3150458458804034080, 3742227373291895858, 6177964945090657495
    ]
    big = np.random.default_rng(0).integers(0, 256, (300, 6250 + 4000), dtype=np.uint8)
    assert np.array_equal(row_hash([big[:, :6250], big[:, 6250:]], 7), row_hash(big, 7))


def test_same_run_id_other_content_is_refused(db: dmdb.Database) -> None:
    masks, margins = make_runs(5)
    db.ingest(run_table(masks, margins, run_id=pa.array(np.arange(5))))
    before = counts(db)
    margins2 = margins.copy()
    margins2[3, 0] += 1
    with pytest.raises(InputError, match="run_id 3 is already in the database with different"):
        db.ingest(run_table(masks, margins2, run_id=pa.array(np.arange(5))))
    assert counts(db) == before


def test_duplicate_run_id_within_input(db: dmdb.Database) -> None:
    masks, margins = make_runs(4)
    with pytest.raises(InputError, match="appears twice"):
        db.ingest(run_table(masks, margins, run_id=pa.array([1, 2, 2, 3])))
    assert counts(db)["runs"] == 0


def _bad_tables() -> list[tuple[str, pa.Table, str]]:
    masks, margins = make_runs(6)
    bad_nan = margins.copy()
    bad_nan[4, 2] = np.nan
    bad_inf = margins.copy()
    bad_inf[1, 0] = np.inf
    nonbinary = pa.array([[0, 1, 2] + [0] * (N_TRAIN - 3)] + [[0] * N_TRAIN] * 5,
                         pa.list_(pa.int8()))
    short = pa.array([bytes(4)] * 6, pa.binary())
    padding = pa.array([bytes(4) + b"\x01"] * 6, pa.binary())
    t = run_table(masks, margins)
    return [
        ("short packed mask", t.set_column(1, "mask", short), "has 4 bytes"),
        ("bits beyond N", t.set_column(1, "mask", padding), "beyond n_train=37"),
        ("short bool mask", run_table(masks[:, :-1], margins, packed=False), "length 36"),
        ("non 0/1 mask", t.set_column(1, "mask", nonbinary), "must be 0/1"),
        ("wrong margins", run_table(masks, margins[:, :-1]), "length 5, expected 6"),
        ("NaN margin", run_table(masks, bad_nan), "row 4 contain NaN"),
        ("inf margin", run_table(masks, bad_inf), "row 1 contain NaN or inf"),
        ("alpha 0", run_table(masks, margins, alpha=0.0), "alpha must be in"),
        ("alpha 1.5", run_table(masks, margins, alpha=1.5), "alpha must be in"),
        ("unknown column", run_table(masks, margins, colour=pa.array(["x"] * 6)), "unknown column"),
        ("missing column", t.drop_columns(["alpha"]), "missing column"),
        ("split given", run_table(masks, margins, split=pa.array(["fit"] * 6)), "only 'verify'"),
    ]


@pytest.mark.parametrize("case", _bad_tables(), ids=lambda c: c[0])
def test_bad_input_changes_nothing(db: dmdb.Database, case: tuple[str, pa.Table, str]) -> None:
    db.ingest(run_table(*make_runs(3, seed=9)))
    before = counts(db)
    _, table, message = case
    with pytest.raises(InputError, match=message):
        db.ingest(table)
    assert counts(db) == before


def test_splits_follow_the_mask(db: dmdb.Database) -> None:
    masks, margins = make_runs(400, seed=3)
    repeats = np.concatenate([masks[:50]] * 2)
    noise = np.random.default_rng(0).normal(0, 1, (100, N_TARGETS)).astype(np.float32)
    db.ingest(run_table(np.concatenate([masks, repeats]),
                        np.concatenate([margins, noise]),
                        seed=pa.array(np.arange(500))))
    rows = db.sql("SELECT mask_id, count(DISTINCT split) AS s, count(*) AS n FROM runs "
                  "GROUP BY mask_id").to_pylist()
    assert len(rows) == 400 and all(r["s"] == 1 for r in rows)
    assert sum(r["n"] == 3 for r in rows) == 50
    share = db.sql("SELECT split, count(*) / 500 AS f FROM runs GROUP BY split").to_pylist()
    share = {r["split"]: r["f"] for r in share}
    assert 0.72 < share["fit"] < 0.88 and 0.05 < share["val"] < 0.15
    # deterministic: another database with the same seed assigns the same splits
    other = dmdb.init(":memory:", n_train=N_TRAIN, n_targets=N_TARGETS, seed=7)
    other.ingest(run_table(masks, margins))
    q = "SELECT mask_id, split FROM runs ORDER BY mask_id"
    mine = {r["mask_id"]: r["split"] for r in db.sql(q).to_pylist()}
    assert all(mine[r["mask_id"]] == r["split"] for r in other.sql(q).to_pylist())


def test_load_runs_filters(db: dmdb.Database) -> None:
    m1, y1 = make_runs(60, seed=1)
    m2, y2 = make_runs(10, seed=2, alpha=0.2)
    db.ingest(run_table(m1, y1))
    db.ingest(run_table(m2, y2, alpha=0.2))
    db.ingest(run_table(*make_runs(4, seed=5), split=pa.array(["verify"] * 4)))
    assert len(db.load_runs()[0]) == 70
    assert len(db.load_runs(alpha=0.2)[0]) == 10
    assert len(db.load_runs(split="verify")[0]) == 4
    fit = db.load_runs(split="fit")
    assert 0 < len(fit[0]) < 70
    chunks = list(db.iter_runs(split="fit", chunk_runs=7))
    assert all(len(c[0]) >= 7 for c in chunks[:-1])
    ids = np.concatenate([c[0] for c in chunks])
    order = np.argsort(ids)
    assert np.array_equal(ids[order], fit[0])
    assert np.array_equal(np.concatenate([c[2] for c in chunks])[order], fit[2])
    with pytest.raises(UsageError, match="unknown split"):
        db.load_runs(split="train")


# -- npy, stores and shard files -------------------------------------------------------------


def write_npy(tmp: Path, masks: np.ndarray, margins: np.ndarray) -> tuple[Path, Path]:
    np.save(tmp / "masks.npy", masks)
    np.save(tmp / "margins.npy", margins)
    return tmp / "masks.npy", tmp / "margins.npy"


def test_npy_float16_memmap(db: dmdb.Database, tmp_path: Path) -> None:
    masks, margins = make_runs(30)
    m, y = write_npy(tmp_path, masks, margins.astype(np.float16))
    res = ingest_paths(db, [], masks=m, margins=y, alpha=0.5)
    assert res.n_new == 30 and not res.warnings
    again = ingest_paths(db, [], masks=m, margins=y, alpha=0.5)
    assert again.n_new == 0
    _, _, y2 = db.load_runs()
    expected = margins.astype(np.float16).astype(np.float32)
    assert np.allclose(np.sort(y2.ravel()), np.sort(expected.ravel()))


def test_npy_density_warning(db: dmdb.Database, tmp_path: Path) -> None:
    masks, margins = make_runs(200, alpha=0.3)
    m, y = write_npy(tmp_path, masks, margins)
    res = ingest_paths(db, [], masks=m, margins=y, alpha=0.5)
    assert res.warnings and "density" in res.warnings[0]


def test_npy_is_validated_whole_before_writing(db: dmdb.Database, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "CHUNK_RUNS", 8)
    masks, margins = make_runs(50)
    margins[47, 1] = np.nan  # in the last chunk
    m, y = write_npy(tmp_path, masks, margins)
    with pytest.raises(InputError, match="NaN"):
        ingest_paths(db, [], masks=m, margins=y, alpha=0.5)
    assert counts(db)["runs"] == 0


@pytest.mark.parametrize("problem, message", [
    ("rows", "masks have 30 rows but margins have 29"),
    ("missing", "no such file"),
    ("corrupt", "not a readable .npy"),
    ("width", "n_train=37"),
    ("values", "must be 0/1"),
    ("no alpha", "--alpha is required"),
    ("bad alpha", "--alpha must be in"),
])
def test_npy_bad_input(db: dmdb.Database, tmp_path: Path, problem: str, message: str) -> None:
    masks, margins = make_runs(30)
    m, y = write_npy(tmp_path, masks, margins)
    alpha: float | None = 0.5
    if problem == "rows":
        np.save(y, margins[:29])
    elif problem == "missing":
        y.unlink()
    elif problem == "corrupt":
        y.write_bytes(b"\x93NUMPY garbage")
    elif problem == "width":
        np.save(m, masks[:, :30])
    elif problem == "values":
        bad = masks.astype(np.int8)
        bad[3, 3] = 5
        np.save(m, bad)
    elif problem == "no alpha":
        alpha = None
    else:
        alpha = 0.0
    with pytest.raises((InputError, UsageError), match=message):
        ingest_paths(db, [], masks=m, margins=y, alpha=alpha)
    assert counts(db)["runs"] == 0


def test_authors_store_takes_completed_rows(db: dmdb.Database, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    masks, margins = make_runs(20)
    np.save(store / "masks.npy", masks)
    np.save(store / "logits.npy", margins)
    done = np.zeros(20, bool)
    done[[0, 3, 4, 5, 19]] = True
    np.save(store / "_completed.npy", done)
    res = ingest_paths(db, [store], alpha=0.5, margins_key="logits")
    assert res.n_new == 5
    _, m2, _ = db.load_runs()
    got = {bytes(np.packbits(r)) for r in m2}
    assert got == {bytes(np.packbits(masks[i])) for i in np.flatnonzero(done)}


def test_shard_folder_is_recorded(db: dmdb.Database, tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    masks, margins = make_runs(30)
    pq.write_table(run_table(masks[:10], margins[:10]), folder / "a.parquet")
    feather.write_feather(run_table(masks[10:], margins[10:]), folder / "b.arrow")
    res = ingest_paths(db, [folder])
    assert res.n_new == 30
    recorded = db.sql("SELECT n_runs FROM ingested_files ORDER BY path").column(0).to_pylist()
    assert recorded == [10, 20]
    before = counts(db)
    again = ingest_paths(db, [folder])
    assert (again.n_new, again.files_skipped) == (0, 2)
    assert counts(db) == before


def test_bad_shard_among_good_ones_writes_nothing(db: dmdb.Database, tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    masks, margins = make_runs(20)
    pq.write_table(run_table(masks[:10], margins[:10]), folder / "a.parquet")
    (folder / "b.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="b.parquet: cannot read shard"):
        ingest_paths(db, [folder])
    assert counts(db)["runs"] == 0 and counts(db)["ingested_files"] == 0


def test_not_a_shard(db: dmdb.Database, tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(InputError, match="not a shard file"):
        ingest_paths(db, [tmp_path / "x.csv"])
    with pytest.raises(InputError, match="no such file"):
        ingest_paths(db, [tmp_path / "missing.parquet"])
