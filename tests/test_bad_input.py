"""Every bad input gets one line, exit status 1, and changes nothing.

One table, one row per case, across every command (issue 12, §2-§5). Each row
asserts three things: exit status 1 (a DmdbError turned into a message, never an
exception that Click's runner swallowed), one printable line of output without
"Traceback" and without a warning, and the row counts of every table that ingest,
fit or the applications write unchanged. The databases are built once per module.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import dmdb
from dmdb import migrations
from dmdb.cli import cli
from dmdb.errors import UsageError
from tests.conftest import make_runs, run_table

N, M = 37, 6
TABLES = ("runs", "masks", "margins", "ingested_files", "fits", "datamodels", "weights")
# A file name that is not valid UTF-8, as Python hands it over (surrogate escapes).
BAD_NAME = os.fsdecode(b"bad\xff")


def invoke(*args: str) -> tuple[int, str, BaseException | None, list[warnings.WarningMessage]]:
    """Run the CLI in-process; return status, output (stdout and stderr), exception, warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output, result.exception, caught


def table_counts(path: str) -> dict[str, int] | None:
    """Row counts of the written tables, read with plain DuckDB (any schema version)."""
    if not Path(path).is_file():
        return None
    try:
        con = duckdb.connect(path, read_only=True)
    except duckdb.Error:
        return None
    try:
        names = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                for t in TABLES if t in names}
    finally:
        con.close()


def save_shard(path: Path, table: pa.Table) -> Path:
    with open(path, "wb") as f:  # by Python, so that a non-UTF-8 name works
        pq.write_table(table, f)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The databases and input files every row refers to, by name."""
    tmp = tmp_path_factory.mktemp("bad_input")
    w: dict[str, str] = {"tmp": str(tmp)}

    def db(name: str) -> str:
        w[name] = str(tmp / f"{name}.duckdb")
        return w[name]

    masks, margins = make_runs(300, seed=1)
    w["m"], w["y"] = str(tmp / "m.npy"), str(tmp / "y.npy")
    np.save(w["m"], masks)
    np.save(w["y"], margins)
    for args in (["init", db("exp"), "-N", str(N), "-M", str(M)],
                 ["ingest", w["exp"], "--masks", str(tmp / "m.npy"), "--margins",
                  str(tmp / "y.npy"), "--alpha", "0.5", "-q"],
                 ["fit", w["exp"], "-q", "--n-lambdas", "8"],
                 ["fit", w["exp"], "-q", "--n-lambdas", "8", "--solver", "reference"],
                 ["export", w["exp"], "--fit", "1", "--out", str(tmp / "exported")],
                 ["init", db("empty"), "-N", str(N), "-M", str(M)],
                 ["init", db("digits"), "--dataset", "digits"]):
        code, out, exc, _ = invoke(*args)
        assert code == 0, (args, out, exc)
    _fit_block_files(tmp, w, db("exp2"))
    shutil.copy(w["exp"], db("newer"))
    con = duckdb.connect(w["newer"])
    con.execute("INSERT INTO dmdb_migrations VALUES (99, '0099_future', now()::TIMESTAMP)")
    con.close()
    duckdb.connect(db("notdmdb")).execute("CREATE TABLE t (x INT)").close()
    Path(db("garbage")).write_text("not a database\n")
    w["missing"] = str(tmp / "missing.duckdb")
    w["new"] = str(tmp / "new.duckdb")  # init rows must never create it
    w["plain"] = str(tmp / "plain")
    Path(w["plain"]).write_text("a plain file\n")
    w["folder"] = str(tmp / "folder")
    os.mkdir(w["folder"])
    _npy_files(tmp, w, masks, margins)
    _shard_files(tmp, w, masks, margins)
    return w


def _fit_block_files(tmp: Path, w: dict[str, str], exp2: str) -> None:
    """Block files that do not make one fit, and stats files for other runs or experiments."""
    fit = ["fit", w["exp"], "-q", "--n-lambdas", "8"]
    made = {"b0": ["--target-range", "0:2"], "b1": ["--target-range", "2:4"],
            "b1x": ["--target-range", "1:4"], "b3": ["--target-range", f"3:{M}"],
            "btol": ["--target-range", "2:4", "--tol", "1e-3"],
            "bruns": ["--target-range", "2:4", "--max-fit-runs", "100"]}
    for name, extra in made.items():
        w[name] = str(tmp / f"{name}.parquet")
        code, out, exc, _ = invoke(*fit, *extra, "--out", w[name])
        assert code == 0, (name, out, exc)
    w["truncated"] = str(tmp / "truncated.parquet")
    data = Path(w["b1"]).read_bytes()
    Path(w["truncated"]).write_bytes(data[: len(data) // 2])
    w["notblock"] = str(tmp / "notblock.parquet")
    pq.write_table(pa.table({"x": [1, 2]}), w["notblock"])
    w["stats_few"] = str(tmp / "stats_few.pt")
    w["stats2"] = str(tmp / "stats2.pt")
    for args in (["fit", w["exp"], "-q", "--max-fit-runs", "100", "--save-stats",
                  w["stats_few"]],
                 ["init", exp2, "-N", str(N), "-M", str(M), "--seed", "7"],
                 ["ingest", exp2, "--masks", w["m"], "--margins", w["y"], "--alpha", "0.5", "-q"],
                 ["fit", exp2, "-q", "--save-stats", w["stats2"]]):
        code, out, exc, _ = invoke(*args)
        assert code == 0, (args, out, exc)


def _npy_files(tmp: Path, w: dict[str, str], masks: np.ndarray, margins: np.ndarray) -> None:
    def save(name: str, arr: np.ndarray) -> None:
        w[name] = str(tmp / f"{name}.npy")
        np.save(w[name], arr)

    save("m20", masks[:20])  # good partners of the 20-run bad files
    save("y20", margins[:20])

    save("strings", np.full((20, N), "a"))  # a <U1 npy
    twos = masks[:20].astype(np.uint8)
    twos[7, 3] = 2
    save("twos", twos)
    save("narrow", masks[:20, :-1])
    save("short_margins", margins[:19])
    huge = margins[:20].astype(np.float64)
    huge[19, 2] = 1e300
    save("huge", huge)
    nan = margins[:20].copy()
    nan[4, 1] = np.nan
    save("nan", nan)
    save("margins_int", np.ones((20, M), np.int32))
    save("masks_3d", masks[:20].reshape(20, 1, N))
    w["scores_wrong"] = str(tmp / "scores_wrong.npy")
    np.save(w["scores_wrong"], np.ones((N + 1, M)))
    # Non-UTF-8 names: a bad npy under one, and one that does not exist.
    w["bad_name_db"] = os.path.join(w["tmp"], BAD_NAME + "-copy.duckdb")  # a real database
    shutil.copy(w["exp"], w["bad_name_db"])
    w["bad_name_npy"] = os.path.join(w["tmp"], BAD_NAME + ".npy")
    np.save(w["bad_name_npy"], np.full((20, N), "a"))
    w["bad_name_missing"] = os.path.join(w["tmp"], BAD_NAME + "-missing.npy")
    w["not_npy"] = str(tmp / "not_npy.npy")
    Path(w["not_npy"]).write_text("not an npy file\n")


def _shard_files(tmp: Path, w: dict[str, str], masks: np.ndarray, margins: np.ndarray) -> None:
    m, y = masks[:20], margins[:20]

    def shard(name: str, table: pa.Table, suffix: str = ".parquet") -> None:
        w[name] = str(save_shard(tmp / f"{name}{suffix}", table))

    shard("alpha_text", run_table(m, y).set_column(0, "alpha", pa.array(["0.5"] * 20)))
    shard("seed_text", run_table(m, y, seed=pa.array([str(i) for i in range(20)])))
    shard("train_acc_text", run_table(m, y, train_acc=pa.array(["high"] * 20)))
    shard("split_bad", run_table(m, y, split=pa.array(["fit"] * 20)))
    shard("no_margins", run_table(m, y).drop_columns(["margins"]))
    shard("extra_column", run_table(m, y, colour=pa.array(["red"] * 20)))
    shard("short_mask", run_table(m[:, :-8], y))
    shard("margins_width", run_table(m, np.ones((20, M + 1), np.float32)))
    shard("alpha_zero", run_table(m, y, alpha=0.0))
    w["fake_parquet"] = str(tmp / "fake.parquet")
    Path(w["fake_parquet"]).write_text("not parquet\n")
    w["csv"] = str(tmp / "runs.csv")
    Path(w["csv"]).write_text("alpha,mask,margins\n")
    w["no_shards"] = str(tmp / "no_shards")
    os.mkdir(w["no_shards"])
    # A shard under a non-UTF-8 name, with a column of the wrong type.
    w["bad_name_shard"] = os.path.join(w["tmp"], BAD_NAME + ".parquet")
    save_shard(Path(w["bad_name_shard"]),
               run_table(m, y, seed=pa.array([str(i) for i in range(20)])))
    # §3: 4,096 good runs, then a bad info value in the last row of the last shard.
    late = tmp / "late"
    late.mkdir()
    lm, ly = make_runs(4097, seed=2)
    info = [f'{{"i": {i}}}' for i in range(4097)]
    info[-1] = '{"i": 4096, "broken": '
    full = run_table(lm, ly, info=pa.array(info))
    save_shard(late / "a.parquet", full.slice(0, 2048))
    save_shard(late / "b.parquet", full.slice(2048))
    w["late"] = str(late)


# A file written by a newer dmdb: every command that opens a file names both versions.
NEWER = f"schema version 99, but this dmdb knows only up to {migrations.code_version()}"

# (database the row writes to or reads, command line, fragment of the one line)
ROWS = [
    # init (§5: sizes are refused before anything is allocated or created)
    ("new", ["init", "{new}", "--train-size", "2000000000", "--targets", "4"], "over dmdb's limit"),
    ("new", ["init", "{new}", "-N", "5"], "give --train-size N and --targets M"),
    ("new", ["init", "{new}", "-N", "0", "-M", "3"], "--train-size must be positive"),
    ("new", ["init", "{new}", "-N", "5", "-M", "100001"], "array size limit"),
    ("new", ["init", "{new}", "-N", "5", "-M", "2", "--seed", "-1"], "--seed"),
    ("new", ["init", "{new}", "--dataset", "imagenet"], "unknown dataset"),
    ("new", ["init", "{new}", "--dataset", "digits", "-N", "5"], "contradicts dataset digits"),
    ("exp", ["init", "{exp}", "-N", "5", "-M", "2"], "already exists; use --force"),
    ("new", ["init", "{plain}/x.duckdb", "-N", "5", "-M", "2"], "no such folder"),
    # ingest: npy (§4)
    ("exp", ["ingest", "{exp}", "--masks", "{strings}", "--margins", "{y20}", "--alpha", "0.5"],
     "masks must be 0/1 or bool, got dtype <U1"),
    ("exp", ["ingest", "{exp}", "--masks", "{twos}", "--margins", "{y20}", "--alpha", "0.5"],
     "twos.npy: mask of row 7 has value 2 at column 3; masks must be 0/1"),
    ("exp", ["ingest", "{exp}", "--masks", "{bad_name_npy}", "--margins", "{y20}", "--alpha",
             "0.5"], "bad\\xff.npy: masks must be 0/1 or bool"),
    ("exp", ["ingest", "{exp}", "--masks", "{bad_name_missing}", "--margins", "{y20}", "--alpha",
             "0.5"], "bad\\xff-missing.npy: no such file"),
    ("exp", ["ingest", "{exp}", "--masks", "{narrow}", "--margins", "{y20}", "--alpha", "0.5"],
     "n_train=37"),
    ("exp", ["ingest", "{exp}", "--masks", "{m20}", "--margins", "{short_margins}", "--alpha",
             "0.5"], "one row per run"),
    ("exp", ["ingest", "{exp}", "--masks", "{m20}", "--margins", "{huge}", "--alpha", "0.5"],
     "margin out of float32 range"),
    ("exp", ["ingest", "{exp}", "--masks", "{m20}", "--margins", "{nan}", "--alpha", "0.5"],
     "NaN or inf"),
    ("exp", ["ingest", "{exp}", "--masks", "{m20}", "--margins", "{margins_int}", "--alpha", "0.5"],
     "margins must be float16/32/64"),
    ("exp", ["ingest", "{exp}", "--masks", "{masks_3d}", "--margins", "{y20}", "--alpha", "0.5"],
     "masks must be 2-D"),
    ("exp", ["ingest", "{exp}", "--masks", "{not_npy}", "--margins", "{y20}", "--alpha", "0.5"],
     "not a readable .npy file"),
    ("exp", ["ingest", "{exp}", "--masks", "{m}"], "--masks and --margins go together"),
    ("exp", ["ingest", "{exp}", "--masks", "{m}", "--margins", "{y}"], "--alpha is required"),
    ("exp", ["ingest", "{exp}", "--masks", "{m}", "--margins", "{y}", "--alpha", "1.5"],
     "--alpha must be in (0, 1]"),
    ("exp", ["ingest", "{exp}"], "nothing to ingest"),
    # ingest: shards (§3, §4)
    ("exp", ["ingest", "{exp}", "{alpha_text}"], "column alpha must hold numbers"),
    ("exp", ["ingest", "{exp}", "{seed_text}"], "column seed must hold integers"),
    ("exp", ["ingest", "{exp}", "{train_acc_text}"], "column train_acc must hold numbers"),
    ("exp", ["ingest", "{exp}", "{bad_name_shard}"], "column seed must hold integers"),
    ("exp", ["ingest", "{exp}", "{late}"], "info of row 2048 is not valid JSON"),
    ("exp", ["ingest", "{exp}", "{split_bad}"], "split"),
    ("exp", ["ingest", "{exp}", "{no_margins}"], "missing column(s) margins"),
    ("exp", ["ingest", "{exp}", "{extra_column}"], "unknown column(s) colour"),
    ("exp", ["ingest", "{exp}", "{short_mask}"], "bytes (packed)"),
    ("exp", ["ingest", "{exp}", "{margins_width}"], "expected 6"),
    ("exp", ["ingest", "{exp}", "{alpha_zero}"], "alpha"),
    ("exp", ["ingest", "{exp}", "{fake_parquet}"], "cannot read shard"),
    ("exp", ["ingest", "{exp}", "{csv}"], "not a shard file"),
    ("exp", ["ingest", "{exp}", "{no_shards}"], "no shard files"),
    ("exp", ["ingest", "{exp}", "{tmp}/" + BAD_NAME], "bad\\xff: no such file or folder"),
    # a database whose file name is not UTF-8, which DuckDB cannot open
    ("exp", ["init", "{tmp}/" + BAD_NAME + ".duckdb", "-N", "5", "-M", "2"],
     "bad\\xff.duckdb: DuckDB opens only file names that are valid UTF-8"),
    ("exp", ["status", "{bad_name_db}"], "bad\\xff-copy.duckdb: DuckDB opens only file names"),
    ("exp", ["sql", "{bad_name_db}", "SELECT 1"], "valid UTF-8; rename the file"),
    ("exp", ["fit", "{bad_name_db}", "-q"], "valid UTF-8; rename the file"),
    ("missing", ["ingest", "{missing}", "{alpha_text}"], "no such database"),
    ("newer", ["ingest", "{newer}", "--masks", "{m}", "--margins", "{y}", "--alpha", "0.5"],
     NEWER),
    # train (digits: a built-in trainer; none of these may train a model)
    ("digits", ["train", "{digits}", "--runs", "10", "--alpha", "0.5", "--seed", "-1"], "--seed"),
    ("digits", ["train", "{digits}", "--runs", "0", "--alpha", "0.5"], "--runs must be positive"),
    ("digits", ["train", "{digits}", "--runs", "5", "--alpha", "0"], "--alpha must be in (0, 1]"),
    ("digits", ["train", "{digits}", "--runs", "5", "--alpha", "0.5", "--repeats", "0"],
     "--repeats must be positive"),
    ("digits", ["train", "{digits}", "--runs", "5", "--alpha", "0.5", "--set", "epochs=three"],
     "epochs"),
    ("digits", ["train", "{digits}", "--runs", "5", "--alpha", "0.5", "--set", "epochs"],
     "--set takes key=value"),
    ("digits", ["train", "{digits}", "--runs", "5", "--alpha", "0.5", "--trainer", "nosuch"],
     "nosuch"),
    ("digits", ["train", "{digits}", "--runs", "5", "--alpha", "0.5", "--config",
                "{tmp}/none.toml"], "none.toml"),
    ("exp", ["train", "{exp}", "--runs", "5", "--alpha", "0.5"], "no default trainer"),
    ("newer", ["train", "{newer}", "--runs", "5", "--alpha", "0.5"], NEWER),
    # spec (what a worker trains from; written only when everything checks out)
    ("digits", ["spec", "{digits}", "--alpha", "0", "--out", "{tmp}/s.json"], "--alpha"),
    ("digits", ["spec", "{digits}", "--alpha", "0.5", "--trainer", "nosuch", "--out",
                "{tmp}/s.json"], "nosuch"),
    ("digits", ["spec", "{digits}", "--alpha", "0.5", "--set", "epochs=three", "--out",
                "{tmp}/s.json"], "epochs"),
    ("exp", ["spec", "{exp}", "--alpha", "0.5", "--out", "{tmp}/s.json"], "trainer"),
    ("digits", ["spec", "{digits}", "--alpha", "0.5", "--out", "{plain}/s.json"], "plain"),
    ("newer", ["spec", "{newer}", "--alpha", "0.5", "--out", "{tmp}/s.json"],
     NEWER),
    # fit
    ("exp", ["fit", "{exp}", "-q", "--target-range", "4:2"], "target"),
    ("exp", ["fit", "{exp}", "-q", "--alpha", "0.9"], "0.9"),
    ("exp", ["fit", "{exp}", "-q", "--n-lambdas", "1"], "n_lambdas"),
    ("exp", ["fit", "{exp}", "-q", "--lambda-ratio", "2"], "lambda_ratio"),
    ("exp", ["fit", "{exp}", "-q", "--max-iter", "0"], "max_iter"),
    ("exp", ["fit", "{exp}", "-q", "--memory", "0"], "memory"),
    ("exp", ["fit", "{exp}", "-q", "--memory", "0.01"], "--memory is 0.01 GB"),
    ("exp", ["fit", "{exp}", "-q", "--memory", "0.01", "--solver", "reference"], "--memory"),
    ("empty", ["fit", "{empty}", "-q"], "runs"),
    ("exp", ["fit", "{exp}", "-q", "--device", "cuda"], "CUDA"),
    # fit split by targets: blocks that do not make one fit, and stats for other runs
    ("exp", ["fit", "{exp}", "--merge", "{b0}", "{b1x}"], "overlap at targets 1:2"),
    ("exp", ["fit", "{exp}", "--merge", "{b0}", "{b3}"], "targets 2:3 are in no block"),
    ("exp", ["fit", "{exp}", "--merge", "{b0}", "{btol}"], "different parameters: tol"),
    ("exp", ["fit", "{exp}", "--merge", "{b0}", "{bruns}"], "different fit runs"),
    ("exp", ["fit", "{exp}", "--merge", "{b0}", "{truncated}"], "not a readable block file"),
    ("exp", ["fit", "{exp}", "--merge", "{b0}", "{plain}"], "not a readable block file"),
    ("exp", ["fit", "{exp}", "--merge", "{b0}", "{notblock}"], "not a dmdb fit block"),
    ("exp", ["fit", "{exp}", "--merge", "{b0}", "{tmp}/nothere.parquet"], "not a readable"),
    ("exp", ["fit", "{exp}", "--merge"], "needs block files"),
    ("exp", ["fit", "{exp}", "{b0}"], "need --merge"),
    ("exp2", ["fit", "{exp2}", "--merge", "{b0}", "{b1}"], "another experiment"),
    ("exp", ["fit", "{exp}", "-q", "--out", "{tmp}/nofolder/b.parquet"], "does not exist"),
    ("exp", ["fit", "{exp}", "-q", "--out", "{folder}"], "is a folder"),
    ("exp", ["fit", "{exp}", "-q", "--out", "{tmp}/b.parquet", "--merge"], "cannot be combined"),
    ("exp", ["fit", "{exp}", "-q", "--stats", "{stats_few}"], "other fit runs"),
    ("exp", ["fit", "{exp}", "-q", "--stats", "{stats2}"], "another experiment"),
    ("exp", ["fit", "{exp}", "-q", "--stats", "{plain}"], "not a dmdb stats file"),
    ("exp", ["fit", "{exp}", "-q", "--stats", "{tmp}/nostats.pt"], "no such file"),
    ("exp", ["fit", "{exp}", "-q", "--backend", "ray", "--blocks", "0"], "--blocks"),
    ("exp", ["fit", "{exp}", "-q", "--backend", "ray", "--blocks", "2", "--stats",
             "{stats_few}"], "other fit runs"),
    ("newer", ["fit", "{newer}", "-q"], NEWER),
    # fits
    ("exp", ["fits", "{exp}", "--drop", "99"], "no fit 99"),
    ("newer", ["fits", "{newer}"], NEWER),
    ("newer", ["fits", "{newer}", "--drop", "1"], NEWER),
    ("notdmdb", ["fits", "{notdmdb}"], "not a dmdb database"),
    # export (§4)
    ("exp", ["export", "{exp}", "--fit", "99", "--out", "{tmp}/ex99"], "no fit 99"),
    ("exp", ["export", "{exp}", "--fit", "1", "--out", "{plain}/x"], "is under"),
    ("exp", ["export", "{exp}", "--fit", "1", "--out", "{plain}"], "is a file"),
    ("newer", ["export", "{newer}", "--fit", "1", "--out", "{tmp}/exn"], NEWER),
    # embed
    ("exp", ["embed", "{exp}", "--fit", "99"], "no fit 99"),
    ("exp", ["embed", "{exp}", "--components", "0"], "--components"),
    ("exp", ["embed", "{exp}", "--components", "2", "--clusters", "0"], "--clusters"),
    ("empty", ["embed", "{empty}"], "fit"),
    ("newer", ["embed", "{newer}"], NEWER),
    # leakage
    ("exp", ["leakage", "{exp}", "--fit", "99"], "no fit 99"),
    ("exp", ["leakage", "{exp}", "--top", "0"], "--top must be a positive integer"),
    ("empty", ["leakage", "{empty}"], "fit"),
    ("newer", ["leakage", "{newer}"], NEWER),
    # verify (exp has no dataset, so no trainer: refused before any retraining)
    ("exp", ["verify", "{exp}", "-q", "--k", "2", "--targets", "2", "--brittleness-targets", "2"],
     "trainer"),
    ("exp", ["verify", "{exp}", "-q"], "--k values must be integers in 1..36"),
    ("exp", ["verify", "{exp}", "-q", "--fit", "99"], "no fit 99"),
    ("empty", ["verify", "{empty}", "-q"], "fit"),
    ("newer", ["verify", "{newer}", "-q"], NEWER),
    # report (§4)
    ("exp", ["report", "{exp}", "{plain}/r", "-q", "--no-learning-curve"], "is under"),
    ("exp", ["report", "{exp}", "{plain}", "-q", "--no-learning-curve"], "is a file"),
    ("exp", ["report", "{exp}", "{tmp}/r99", "-q", "--fit", "99"], "no fit 99"),
    ("empty", ["report", "{empty}", "{tmp}/r0", "-q"], "fit"),
    ("newer", ["report", "{newer}", "{tmp}/rn", "-q"], NEWER),
    # status
    ("newer", ["status", "{newer}"], NEWER),
    ("missing", ["status", "{missing}"], "no such database"),
    ("notdmdb", ["status", "{notdmdb}"], "not a dmdb database"),
    ("garbage", ["status", "{garbage}"], "cannot open"),
    ("missing", ["status", "{tmp}/" + BAD_NAME + ".duckdb"], "no such database"),
    # sql (§2; every statement is in tests/test_sql_safety.py)
    ("exp", ["sql", "{exp}", ""], "empty query"),
    ("exp", ["sql", "{exp}", "DELETE FROM weights"], "read-only"),
    ("exp", ["sql", "{exp}", "DETACH dmdb; ATTACH '{exp}' AS x; DELETE FROM x.weights"],
     "3 statements"),
    ("exp", ["sql", "{exp}", "CHECKPOINT"], "not allowed"),
    ("exp", ["sql", "{exp}", "SELECT * FROM nope"], "nope"),
    ("exp", ["sql", "{exp}", "SELEC 1"], "syntax error"),
    ("exp", ["sql", "{exp}", "SELECT * FROM read_csv('{tmp}/runs.csv')"], "disabled"),
    ("newer", ["sql", "{newer}", "SELECT 1"], NEWER),
    # migrate
    ("newer", ["migrate", "{newer}"], NEWER),
    ("notdmdb", ["migrate", "{notdmdb}"], "not a dmdb database"),
    ("missing", ["migrate", "{missing}"], "no such database"),
    # import-fit
    ("exp", ["import-fit", "{exp}", "{tmp}/none.npy"], "no such file"),
    ("exp", ["import-fit", "{exp}", "{strings}"], "real numbers"),
    ("exp", ["import-fit", "{exp}", "{scores_wrong}"], "(N, M) = (37, 6)"),
    ("exp", ["import-fit", "{exp}", "{plain}"], "unknown format"),
    ("newer", ["import-fit", "{newer}", "{tmp}/exported"], NEWER),
    # compare
    ("exp", ["compare", "{exp}", "--fits", "1,x", "--out", "{tmp}/c.png"], "--fits takes"),
    ("exp", ["compare", "{exp}", "--fits", "1,99", "--out", "{tmp}/c.png"], "99"),
    ("empty", ["compare", "{empty}", "--out", "{tmp}/c.png"], "two fits"),
    ("newer", ["compare", "{newer}", "--out", "{tmp}/c.png"], NEWER),
    ("exp", ["compare", "{exp}", "--out", "{plain}/c.png"], "plain"),
    # quickstart
    ("new", ["quickstart", "{plain}/q", "--runs", "10", "-q"], "plain"),
]


def _values(row: object) -> tuple:
    return row.values if hasattr(row, "values") else row  # type: ignore[attr-defined,return-value]


def _row_id(i: int, row: object) -> str:
    target, args, _ = _values(row)
    return f"{i:03d}-{args[0]}-{target}"


@pytest.mark.parametrize("target, args, message", ROWS,
                         ids=[_row_id(i, r) for i, r in enumerate(ROWS)])
def test_bad_input_is_one_line_and_changes_nothing(
    world: dict[str, str], target: str, args: list[str], message: str
) -> None:
    path = world[target]
    before = table_counts(path)
    new_exists = Path(world["new"]).exists()
    code, out, exc, caught = invoke(*[a.format(**world) for a in args])
    lines = out.strip().splitlines()
    assert isinstance(exc, SystemExit), f"an exception escaped: {exc!r}"
    assert code == 1, out
    assert len(lines) == 1 and "Traceback" not in out, out
    assert lines[0].startswith("Error: ") and lines[0].isprintable(), out
    assert message in lines[0], out
    assert not caught, [str(w.message) for w in caught]
    assert table_counts(path) == before
    assert Path(world["new"]).exists() == new_exists  # no half-made database


def test_the_table_covers_every_command() -> None:
    """Derived from the CLI's own command list, so a new command needs its rows."""
    covered = {_values(r)[1][0] for r in ROWS}
    assert set(cli.commands) <= covered, set(cli.commands) - covered
    assert len(ROWS) >= 40


def test_huge_init_is_refused_before_allocating(world: dict[str, str]) -> None:
    """§5: N = 2,000,000,000 would have grown to tens of GB; it is refused at once."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    code, out, _, _ = invoke("init", world["new"], "--train-size", "2000000000", "--targets", "4")
    assert code == 1 and "limit of 10,000,000" in out
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200 * 1024
    assert not Path(world["new"]).exists()


def test_init_estimates_memory_before_allocating(tmp_path: Path) -> None:
    """Pixels that would not fit in memory are refused before any copy (a zero-stride
    view stands for 4 TB of pixels without allocating them)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pixels = np.broadcast_to(np.float32(0.5), (1_000_000, 1_000_000))
    path = tmp_path / "big.duckdb"
    with pytest.raises(UsageError, match=r"init would need about 7,45\d.\d GiB of memory"):
        dmdb.init(path, n_train=1_000_000, n_targets=4, train_pixels=pixels)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200 * 1024
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_non_utf8_names_ingest(tmp_path: Path) -> None:
    """A valid npy or shard under a non-UTF-8 name is ingested; its name is recorded
    with \\xNN escapes, and the shard is known again by that name."""
    db = str(tmp_path / "e.duckdb")
    assert invoke("init", db, "-N", str(N), "-M", str(M))[0] == 0
    masks, margins = make_runs(30, seed=3)
    npy = os.path.join(str(tmp_path), BAD_NAME + ".npy")
    np.save(npy, masks)
    np.save(tmp_path / "y.npy", margins)
    code, out, exc, _ = invoke("ingest", db, "--masks", npy, "--margins", str(tmp_path / "y.npy"),
                               "--alpha", "0.5", "-q")
    assert code == 0 and "ingested 30 new run(s)" in out, (out, exc)
    shard = os.path.join(str(tmp_path), BAD_NAME + ".parquet")
    save_shard(Path(shard), run_table(*make_runs(20, seed=4)))
    for expected in ("ingested 20 new run(s)", "1 file(s) already ingested"):
        code, out, exc, _ = invoke("ingest", db, shard, "-q")
        assert code == 0 and expected in out, (out, exc)
    database = dmdb.connect(db, read_only=True)
    sources = database.sql("SELECT DISTINCT source FROM runs ORDER BY 1").column(0).to_pylist()
    assert sources == ["1 shard file(s)", "bad\\xff.npy/y.npy"]
    files = database.sql("SELECT path, n_runs FROM ingested_files").to_pylist()
    assert [(Path(f["path"]).name, f["n_runs"]) for f in files] == [("bad\\xff.parquet", 20)]


def _runs_as(user: str) -> bool:
    """Whether this interpreter and dmdb can be run by ``user`` (root can switch users)."""
    if os.geteuid() != 0:
        return False
    try:
        probe = subprocess.run([sys.executable, "-c", "import dmdb"], user=user,
                               capture_output=True, timeout=60, cwd="/")
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def test_export_into_a_read_only_folder(world: dict[str, str]) -> None:
    """A folder its user may not write: one line, and nothing is created. Root may write
    anywhere, so this runs the command as user nobody, where nobody can run Python."""
    if not _runs_as("nobody"):
        pytest.skip("needs root and an interpreter that user nobody can run (this one is "
                    f"{sys.executable}); a path under a plain file is tested above")
    with tempfile.TemporaryDirectory() as tmp:  # pytest's tmp_path is root's only
        folder, db = Path(tmp, "ro"), Path(tmp, "exp.duckdb")
        folder.mkdir()
        shutil.copy(world["exp"], db)
        for p, mode in ((Path(tmp), 0o755), (folder, 0o755), (db, 0o644)):
            p.chmod(mode)
        result = subprocess.run(
            [sys.executable, "-c", "from dmdb.cli import main; main()", "export", str(db),
             "--fit", "1", "--out", str(folder / "x")],
            user="nobody", capture_output=True, text=True, timeout=120, cwd="/",
        )
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, lines
        assert "cannot write the export there (Permission denied)" in lines[0]
        assert list(folder.iterdir()) == []


@contextlib.contextmanager
def read_only_mount(where: Path, holding: str | None = None) -> Iterator[Path]:
    """A read-only tmpfs at ``where`` (with a copy of file ``holding`` in it): read-only even
    for root, as an archive or a read-only share is. Skips where it cannot mount."""
    where.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        if holding is not None:
            shutil.copy(holding, where)
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True,
                       capture_output=True, timeout=30)
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, capture_output=True, timeout=30)


@pytest.mark.parametrize("command", ["export", "report"])
def test_output_on_a_read_only_file_system(world: dict[str, str], tmp_path: Path,
                                           command: str) -> None:
    """Root may write into any folder, but not onto a read-only file system: one line."""
    db = str(tmp_path / "exp.duckdb")
    shutil.copy(world["exp"], db)
    before = table_counts(db)
    with read_only_mount(tmp_path / "ro") as ro:
        args = (["export", db, "--fit", "1", "--out", str(ro / "x")] if command == "export"
                else ["report", db, str(ro / "x"), "-q"])
        code, out, exc, _ = invoke(*args)
        assert code == 1 and len(out.strip().splitlines()) == 1, (out, exc)
        assert "cannot write the " in out and "(Read-only file system)" in out, out
        assert list(ro.iterdir()) == []
    assert table_counts(db) == before


def test_reads_work_on_a_read_only_file_system(world: dict[str, str], tmp_path: Path) -> None:
    """Status, SQL, export and the views read a database on a read-only file system."""
    with read_only_mount(tmp_path / "ro", holding=world["exp"]) as ro:
        db = str(ro / Path(world["exp"]).name)
        for args, expected in ((["status", db], "fit"),
                               (["sql", db, "SELECT count(*) AS n FROM lds"], "row"),
                               (["fits", db], "fast"),
                               (["export", db, "--fit", "1", "--out", str(tmp_path / "x")],
                                "weights")):
            code, out, exc, _ = invoke(*args)
            assert code == 0 and expected in out, (args, out, exc)
        lds = dmdb.connect(db, read_only=True).sql("SELECT avg(spearman) FROM lds").column(0)
        assert lds[0].as_py() is not None
        for args in (["fit", db, "-q"], ["ingest", db, "--masks", world["m"], "--margins",
                                          world["y"], "--alpha", "0.5", "-q"]):
            code, out, _, _ = invoke(*args)  # a write: one line, nothing changes
            assert code == 1 and len(out.strip().splitlines()) == 1, out
            assert "read-only file system" in out
        assert table_counts(db) == table_counts(world["exp"])


def test_training_on_a_read_only_file_system_refuses_before_it_trains(
    world: dict[str, str], tmp_path: Path
) -> None:
    """train, verify and verify --ceiling would train first and fail when writing."""
    from tests.test_verify import make_digits_db

    made = make_digits_db(tmp_path / "digits.duckdb", runs=40).path  # MLP runs and a fit
    with read_only_mount(tmp_path / "ro", holding=made) as ro:
        db = str(ro / "digits.duckdb")
        for args in (["train", db, "--runs", "50", "--alpha", "0.5", "-q"],
                     ["verify", db, "--targets", "2", "--k", "3", "--models", "2",
                      "--brittleness-targets", "0", "-q"],
                     ["verify", db, "--ceiling", "--masks", "3", "--seeds", "2", "-q"]):
            code, out, exc, _ = invoke(*args)
            assert code == 1 and out.strip().splitlines() == [
                f"Error: {db} is on a read-only file system; reads still work (copy it "
                "somewhere writable to change it)"], (out, exc)
        assert table_counts(db) == table_counts(made)
