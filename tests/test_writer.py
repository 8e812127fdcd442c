"""RunWriter: buffering, flushing on exit, and a busy database."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dmdb
from dmdb.errors import InputError
from dmdb.writer import RunWriter
from tests.conftest import N_TARGETS, N_TRAIN, counts, make_runs


def test_buffers_and_flushes_in_batches(db: dmdb.Database) -> None:
    masks, margins = make_runs(25)
    with RunWriter(db, flush_runs=10, trainer="test") as w:
        for i in range(25):
            w.add(masks[i], margins[i], alpha=0.5, seed=i, train_acc=1.0)
            assert w.pending == (i + 1) % 10
        assert w.written == 20
    assert counts(db)["runs"] == 25
    row = db.sql("SELECT trainer, train_acc FROM runs LIMIT 1").to_pylist()[0]
    assert row == {"trainer": "test", "train_acc": 1.0}


def test_flushes_on_keyboard_interrupt(db: dmdb.Database) -> None:
    masks, margins = make_runs(5)
    with pytest.raises(KeyboardInterrupt), RunWriter(db, flush_runs=100) as w:
        for i in range(5):
            w.add(masks[i], margins[i], alpha=0.5)
        raise KeyboardInterrupt
    assert counts(db)["runs"] == 5


def test_bad_run_fails_at_add(db: dmdb.Database) -> None:
    w = RunWriter(db)
    with pytest.raises(InputError, match="n_targets=6"):
        w.add(np.zeros(N_TRAIN, bool), np.zeros(N_TARGETS + 1), alpha=0.5)
    with pytest.raises(InputError, match="NaN"):
        w.add(np.zeros(N_TRAIN, bool), np.full(N_TARGETS, np.nan), alpha=0.5)
    assert w.pending == 0


HOLD = """
import duckdb, sys, time
con = duckdb.connect(sys.argv[1])
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(path: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, path, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    return proc


def test_busy_database_keeps_runs_and_retries(file_db: dmdb.Database) -> None:
    masks, margins = make_runs(6)
    messages: list[str] = []
    w = RunWriter(file_db, flush_runs=3, on_message=messages.append, close_timeout=20)
    proc = hold_lock(file_db.path, 2.0)
    try:
        for i in range(6):
            w.add(masks[i], margins[i], alpha=0.5)
        assert w.pending == 6 and any("busy" in m for m in messages)
    finally:
        proc.wait()
    w.close()  # the holder has gone: the flush succeeds
    assert w.pending == 0 and counts(file_db)["runs"] == 6


def test_database_busy_at_close_spills_to_a_shard(file_db: dmdb.Database) -> None:
    masks, margins = make_runs(4)
    messages: list[str] = []
    w = RunWriter(file_db, flush_runs=100, on_message=messages.append, close_timeout=0.5)
    for i in range(4):
        w.add(masks[i], margins[i], alpha=0.5, seed=i)
    proc = hold_lock(file_db.path, 3.0)
    try:
        w.close()
    finally:
        proc.wait()
    spilled = list(Path(file_db.path).parent.glob("*.pending-*.parquet"))
    assert len(spilled) == 1 and "dmdb ingest" in messages[-1]
    from dmdb.ingest import ingest_paths
    assert ingest_paths(file_db.path, spilled).n_new == 4


def test_reader_gets_busy_message(file_db: dmdb.Database) -> None:
    proc = hold_lock(file_db.path, 1.5)
    try:
        t = time.monotonic()
        with pytest.raises(dmdb.DmdbError, match="database is busy"):
            dmdb.connect(file_db.path, busy_timeout=0.3).status()
        assert time.monotonic() - t < 1.4
    finally:
        proc.wait()
    assert dmdb.connect(file_db.path).status()["runs"] == []
