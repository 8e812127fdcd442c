"""kill -9 during init, ingest, train and fit (issue 12, §5 and §6).

Each test starts the real command in its own process, waits (polling the file or
the process's output, with a bound) until the command is really mid-work, and
kills it with SIGKILL. Afterwards the file opens, holds only whole runs (as many
runs as masks as margins, each run with both), passes CHECKPOINT, and every table
reads; running the command again completes it exactly: the totals, and the rows
themselves, are those of one uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pytest

import dmdb

DMDB = [sys.executable, "-c", "from dmdb.cli import main; main()"]
TRAIN = ["--alpha", "0.5", "--set", "epochs=1"]  # one epoch: a few hundred models a second
TRAIN_RUNS = 3000  # the writer flushes every 2,048 runs, so a kill can land between flushes
FIT = ["--threads", "1", "--target-range", "0:100"]  # one thread: the same weights every time
TIMEOUT = 120.0


def dmdb_run(*args: str) -> str:
    """Run a dmdb command to completion; return its stdout."""
    done = subprocess.run([*DMDB, *args], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def kill_when(args: list[str], ready: Callable[[subprocess.Popen, str], bool],
              tmp: Path, poll: float = 0.005) -> subprocess.Popen:
    """Start ``dmdb ARGS``, poll ``ready(process, stderr so far)`` and SIGKILL it then.

    Fails if the command ends first (it was never caught mid-work) or TIMEOUT passes.
    """
    err = tmp / f"stderr-{time.monotonic_ns()}"
    with open(err, "wb") as f:
        proc = subprocess.Popen([*DMDB, *args], stdout=subprocess.DEVNULL, stderr=f)
    deadline = time.monotonic() + TIMEOUT
    try:
        while not ready(proc, err.read_text(errors="replace")):
            assert proc.poll() is None, f"dmdb {args[0]} ended before the kill: {err.read_text()}"
            assert time.monotonic() < deadline, f"dmdb {args[0]} never got under way"
            time.sleep(poll)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    return proc


def runs_visible(path: Path) -> int:
    """Runs a reader sees now (0 while the writer holds the file)."""
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return 0
    try:
        return int(con.execute("SELECT count(*) FROM runs").fetchall()[0][0])
    finally:
        con.close()


def check_whole(path: Path) -> dict[str, int]:
    """The file after a crash: dmdb reads it, CHECKPOINT passes, every table reads, and
    every run is whole. Returns the row count of every table."""
    assert "experiment" in dmdb_run("status", str(path))
    con = duckdb.connect(str(path))
    try:
        con.execute("CHECKPOINT")
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        counts = {}
        for t in tables:
            counts[t] = con.sql(f"SELECT * FROM {t}").to_arrow_table().num_rows
        for a, b in (("runs", "masks"), ("runs", "margins"), ("masks", "runs"),
                     ("margins", "runs")):
            orphans = con.execute(f"SELECT count(*) FROM {a} WHERE run_id NOT IN "
                                  f"(SELECT run_id FROM {b})").fetchall()[0][0]
            assert orphans == 0, f"{orphans} row(s) of {a} without {b}"
        assert counts["runs"] == counts["masks"] == counts["margins"]
        for view in ("run_summary", "lds"):
            con.execute(f"SELECT * FROM {view}").fetchall()
    finally:
        con.close()
    return counts


def same_rows(a: Path, b: Path, queries: list[str]) -> None:
    """The two files hold the same rows for each query."""
    ca, cb = duckdb.connect(str(a), read_only=True), duckdb.connect(str(b), read_only=True)
    try:
        for q in queries:
            assert ca.execute(q).fetchall() == cb.execute(q).fetchall(), q
    finally:
        ca.close()
        cb.close()


RUN_ROWS = [
    "SELECT * EXCLUDE (created_at) FROM runs ORDER BY run_id",
    "SELECT * FROM masks ORDER BY run_id",
    "SELECT * FROM margins ORDER BY run_id",
]
FIT_ROWS = [
    "SELECT * FROM datamodels ORDER BY ALL",
    "SELECT * FROM weights ORDER BY ALL",
    "SELECT fit_id, solver, n_fit, n_val, n_test, target_lo, target_hi FROM fits",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits, TRAIN_RUNS runs trained without interruption: the reference for train."""
    path = tmp_path_factory.mktemp("crash_ref") / "digits.duckdb"
    dmdb_run("init", str(path), "--dataset", "digits")
    dmdb_run("train", str(path), "--runs", str(TRAIN_RUNS), *TRAIN, "-q")
    return path


def test_kill_during_init_leaves_no_database(tmp_path: Path) -> None:
    """init builds under a temporary name: a kill leaves nothing at the path, and over an
    existing file (--force) the old database stays whole."""
    n = str(dmdb.db.MAX_TRAIN)
    path = tmp_path / "big.duckdb"

    def inserting(proc: subprocess.Popen, _: str) -> bool:
        # The schema is committed and the N rows of train_examples are on their way.
        temp = tmp_path / f".big.duckdb.init-{proc.pid}"
        return temp.exists() and temp.stat().st_size > 100_000

    kill_when(["init", str(path), "-N", n, "-M", "4"], inserting, tmp_path)
    assert not path.exists()  # what is left is the hidden temporary file, never a database
    assert all(p.name.startswith(".big.duckdb.init-") for p in tmp_path.glob("*big*"))
    done = subprocess.run([*DMDB, "status", str(path)], capture_output=True, text=True)
    assert done.returncode == 1 and "no such database" in done.stderr
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".big.duckdb.init-")]
    assert left  # the killed init's file (its process is gone) ...
    dmdb_run("init", str(path), "-N", n, "-M", "4")
    assert not any(p.exists() for p in left)  # ... is removed by the next init of the path
    counts = check_whole(path)
    assert counts["train_examples"] == dmdb.db.MAX_TRAIN and counts["targets"] == 4

    old = tmp_path / "old.duckdb"
    dmdb_run("init", str(old), "-N", "37", "-M", "6")
    db = dmdb.connect(old)
    from tests.conftest import make_runs, run_table
    db.ingest(run_table(*make_runs(25)))
    kill_when(["init", str(old), "-N", n, "-M", "4", "--force"],
              lambda proc, _: (tmp_path / f".old.duckdb.init-{proc.pid}").exists()
              and (tmp_path / f".old.duckdb.init-{proc.pid}").stat().st_size > 100_000,
              tmp_path)
    counts = check_whole(old)
    assert counts["runs"] == 25 and counts["train_examples"] == 37
    assert dmdb.connect(old, read_only=True).experiment.n_train == 37


def committed(path: Path) -> Callable[[subprocess.Popen, str], bool]:
    """True once a write transaction has committed: every commit of ingest checkpoints,
    so its WAL appears and is gone again when the runs are in the file itself."""
    wal = Path(f"{path}.wal")
    seen = [False]

    def ready(proc: subprocess.Popen, _: str) -> bool:
        exists = wal.exists()
        seen[0] = seen[0] or exists
        return seen[0] and not exists

    return ready


def test_kill_during_ingest_keeps_whole_transactions(tmp_path: Path) -> None:
    """20,000 runs from npy (N=64, M=8), written 4,096 runs a transaction: a kill keeps
    the committed transactions, and ingesting again adds exactly the rest."""
    rng = np.random.default_rng(5)
    masks = rng.random((20_000, 64)) < 0.5
    margins = rng.normal(size=(20_000, 8)).astype(np.float32)
    np.save(tmp_path / "m.npy", masks)
    np.save(tmp_path / "y.npy", margins)
    args = ["--masks", str(tmp_path / "m.npy"), "--margins", str(tmp_path / "y.npy"),
            "--alpha", "0.5", "-q"]
    ref = tmp_path / "ref.duckdb"
    dmdb_run("init", str(ref), "-N", "64", "-M", "8")
    dmdb_run("ingest", str(ref), *args)

    for attempt in range(3):  # the write pass is short; a kill may, rarely, come too late
        path = tmp_path / f"crash-{attempt}.duckdb"
        dmdb_run("init", str(path), "-N", "64", "-M", "8")
        kill_when(["ingest", str(path), *args], committed(path), tmp_path, poll=0.0005)
        counts = check_whole(path)
        assert counts["runs"] % 4096 == 0
        if 0 < counts["runs"] < 20_000:
            break
    assert 0 < counts["runs"] < 20_000, "no kill came between two commits"
    out = dmdb_run("ingest", str(path), *args)
    assert out.strip() == (f"ingested {20_000 - counts['runs']} new run(s); "
                           f"{counts['runs']} already present")
    assert check_whole(path)["runs"] == 20_000
    same_rows(path, ref, RUN_ROWS)


def test_kill_during_train_then_rerun_continues(tmp_path: Path, trained: Path) -> None:
    """A kill after the writer's first flush keeps those runs; train again adds the rest,
    and the runs are exactly those of one uninterrupted train (same ids, masks, margins)."""
    path = tmp_path / "digits.duckdb"
    dmdb_run("init", str(path), "--dataset", "digits")
    kill_when(["train", str(path), "--runs", str(TRAIN_RUNS), *TRAIN],
              lambda proc, _: runs_visible(path) > 0, tmp_path)
    kept = check_whole(path)["runs"]
    assert 0 < kept < TRAIN_RUNS
    out = dmdb_run("train", str(path), "--runs", str(TRAIN_RUNS), *TRAIN, "-q")
    assert f"trained {TRAIN_RUNS - kept} model(s)" in out
    assert check_whole(path)["runs"] == TRAIN_RUNS
    same_rows(path, trained, RUN_ROWS)


def test_kill_during_fit_then_rerun_fits(tmp_path: Path, trained: Path) -> None:
    """A fit writes in one transaction: a kill mid-solve leaves no trace of it, and
    fitting again gives the fit an uninterrupted one gives."""
    path, ref = tmp_path / "fit.duckdb", tmp_path / "ref.duckdb"
    shutil.copy(trained, path)
    shutil.copy(trained, ref)
    kill_when(["fit", str(path), *FIT], lambda proc, err: "lasso path" in err, tmp_path)
    counts = check_whole(path)
    assert (counts["fits"], counts["datamodels"], counts["weights"]) == (0, 0, 0)
    assert counts["runs"] == TRAIN_RUNS
    assert "fit 1: 100 targets" in dmdb_run("fit", str(path), *FIT, "-q")
    dmdb_run("fit", str(ref), *FIT, "-q")
    counts = check_whole(path)
    assert (counts["fits"], counts["datamodels"]) == (1, 100)
    same_rows(path, ref, FIT_ROWS)
