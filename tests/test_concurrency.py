"""dmdb beside other readers and writers (issue 12, §1 and §6).

Between processes: many readers at once; a reader or writer beside a writer gets
a clear busy message, or waits with ``--wait SECONDS``. In one process: dmdb
beside a notebook's own DuckDB connection, in both orders, for reads and writes.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pytest

import dmdb
from dmdb.errors import DatabaseError, UsageError
from tests.conftest import N_TARGETS, N_TRAIN, make_runs, run_table

DMDB = [sys.executable, "-c", "from dmdb.cli import main; main()"]
HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "read")
print("ready", flush=True)
sys.stdin.readline()
con.close()
"""
TIMEOUT = 120


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A database with 40 runs."""
    p = tmp_path / "exp.duckdb"
    dmdb.init(p, n_train=N_TRAIN, n_targets=N_TARGETS, seed=7).ingest(run_table(*make_runs(40)))
    return p


@contextlib.contextmanager
def held(path: Path, mode: str) -> Iterator[subprocess.Popen]:
    """Another process holding ``path`` open ('read' or 'write') until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        release(proc)


def release(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=TIMEOUT)


def dmdb_cli(*args: str) -> tuple[int, list[str], float]:
    """Run a dmdb command in its own process: status, output lines, seconds taken."""
    start = time.monotonic()
    done = subprocess.run([*DMDB, *args], capture_output=True, text=True, timeout=TIMEOUT)
    return (done.returncode, (done.stdout + done.stderr).strip().splitlines(),
            time.monotonic() - start)


def n_runs(path: Path) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return int(con.execute("SELECT count(*) FROM runs").fetchall()[0][0])
    finally:
        con.close()


def npy_args(tmp: Path) -> list[str]:
    masks, margins = make_runs(10, seed=9)
    np.save(tmp / "m.npy", masks)
    np.save(tmp / "y.npy", margins)
    return ["--masks", str(tmp / "m.npy"), "--margins", str(tmp / "y.npy"), "--alpha", "0.5",
            "-q"]


# -- between processes -------------------------------------------------------------------


def test_reader_beside_a_reader(path: Path) -> None:
    """Readers share the file: with --wait 0 a wait would be an error, so none happened."""
    with held(path, "read"):
        code, lines, _ = dmdb_cli("--wait", "0", "status", str(path))
        assert code == 0 and "40" in "\n".join(lines), lines
        code, lines, _ = dmdb_cli("--wait", "0", "sql", str(path), "SELECT count(*) AS n FROM runs",
                                  "--format", "csv")
        assert code == 0 and lines == ["n", "40"]
        assert dmdb.connect(path, read_only=True).load_runs()[0].shape == (40,)


@pytest.mark.parametrize("command", [
    ["status"], ["sql", "SELECT 1"], ["fits"], ["export", "--fit", "1"],
])
def test_reader_beside_a_writer_is_told_busy(path: Path, command: list[str]) -> None:
    with held(path, "write"):
        code, lines, seconds = dmdb_cli("--wait", "0.5", command[0], str(path), *command[1:])
    assert code == 1 and len(lines) == 1, lines
    assert "database is busy" in lines[0] and "--wait SECONDS" in lines[0]
    assert 0.5 <= seconds < 0.5 + 30  # it retried for --wait, then gave up


def test_reader_waits_for_a_writer_with_wait(path: Path) -> None:
    """With a long enough --wait, status retries until the writer lets go, then succeeds."""
    with held(path, "write") as writer:
        start = time.monotonic()
        status = subprocess.Popen([*DMDB, "--wait", "60", "status", str(path)], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            time.sleep(1.0)
            assert status.poll() is None, status.communicate()  # still waiting on the lock
            release(writer)
            out, err = status.communicate(timeout=TIMEOUT)
        finally:
            status.kill()
    assert status.returncode == 0, err
    assert "experiment" in out and time.monotonic() - start >= 1.0


@pytest.mark.parametrize("holder", ["write", "read"])
def test_second_writer_is_told_busy_and_writes_nothing(path: Path, tmp_path: Path,
                                                       holder: str) -> None:
    """A writer beside a writer, or beside another process's reader (DuckDB gives a
    writer the file alone): one line, exit 1, and nothing written."""
    args = npy_args(tmp_path)
    with held(path, holder):
        code, lines, _ = dmdb_cli("--wait", "0.5", "ingest", str(path), *args)
        assert code == 1 and len(lines) == 1 and "database is busy" in lines[0], lines
        code, lines, _ = dmdb_cli("--wait", "0.5", "fit", str(path), "-q")
        # fit makes sure that it can write before it reads or fits anything
        assert code == 1 and len(lines) == 1 and "database is busy" in lines[0], lines
    assert n_runs(path) == 40
    assert dmdb.connect(path, read_only=True).sql("SELECT count(*) FROM fits").column(0)[0] \
        .as_py() == 0
    code, lines, _ = dmdb_cli("ingest", str(path), *args)
    assert code == 0 and "ingested 10 new run(s); 0 already present" in lines, lines


# -- one process: a notebook's connection and dmdb -----------------------------------------


def test_notebook_reader_then_dmdb_reads(path: Path) -> None:
    con = duckdb.connect(str(path), read_only=True)
    try:
        ids, masks, margins = dmdb.connect(path).load_runs()
        assert masks.shape == (40, N_TRAIN) and margins.shape == (40, N_TARGETS)
        assert dmdb.connect(path).status()["runs"]
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(40,)]
    finally:
        con.close()


def test_dmdb_reading_then_notebook_opens(path: Path) -> None:
    """While dmdb streams runs, the notebook opens the file read-only and reads it."""
    chunks = dmdb.connect(path, read_only=True).iter_runs(chunk_runs=8)
    first = next(chunks)
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(40,)]
        rest = list(chunks)
    finally:
        con.close()
    assert len(first[0]) + sum(len(c[0]) for c in rest) == 40


def test_notebook_writer_then_dmdb_through_its_connection(path: Path) -> None:
    """A read-write notebook connection: dmdb.connect(con) reads and writes through it."""
    con = duckdb.connect(str(path))
    try:
        db = dmdb.connect(con)
        assert db.load_runs()[0].shape == (40,)
        assert db.status()["experiment"].n_train == N_TRAIN
        result = db.ingest(run_table(*make_runs(5, seed=11)))
        assert result.n_new == 5
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(45,)]
    finally:
        con.close()
    assert n_runs(path) == 45


def test_notebook_writer_then_dmdb_by_path_says_what_to_do(path: Path) -> None:
    con = duckdb.connect(str(path))
    try:
        for call in (lambda: dmdb.connect(path).status(),
                     lambda: dmdb.connect(path, read_only=True).load_runs(),
                     lambda: dmdb.connect(path).ingest(run_table(*make_runs(5, seed=12)))):
            with pytest.raises(DatabaseError) as e:
                call()
            message = str(e.value)
            assert "\n" not in message and "already open in this process" in message
            assert "dmdb.connect(con)" in message
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(40,)]
    finally:
        con.close()


def test_notebook_reader_then_dmdb_writes_say_what_to_do(path: Path) -> None:
    """A read-only notebook connection: a write by path, or through it, is refused in
    one line that says what to do, and nothing is written."""
    con = duckdb.connect(str(path), read_only=True)
    runs = run_table(*make_runs(5, seed=13))
    try:
        with pytest.raises(DatabaseError) as by_path:
            dmdb.connect(path).ingest(runs)
        assert "\n" not in str(by_path.value)
        assert "close that connection, or pass it in" in str(by_path.value)
        with pytest.raises(UsageError) as through:
            dmdb.connect(con).ingest(runs)
        assert "\n" not in str(through.value) and "read-write connection" in str(through.value)
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(40,)]
    finally:
        con.close()
    assert n_runs(path) == 40


def test_dmdb_writes_then_notebook_opens(path: Path) -> None:
    """dmdb holds the file only while it writes: right after, a notebook opens it, for
    reading and for writing, and sees the new runs."""
    db = dmdb.connect(path)
    db.ingest(run_table(*make_runs(5, seed=14)))
    for read_only in (True, False):
        con = duckdb.connect(str(path), read_only=read_only)
        try:
            assert con.execute("SELECT count(*) FROM runs").fetchall() == [(45,)]
        finally:
            con.close()
    db.ingest(run_table(*make_runs(5, seed=15)))  # and dmdb writes again after the notebook
    assert n_runs(path) == 50
