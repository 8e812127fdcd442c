"""Shared fixtures: real DuckDB databases, in memory and on file, and generated runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import dmdb

N_TRAIN, N_TARGETS = 37, 6  # N deliberately not a multiple of 8


def make_runs(k: int, *, n_train: int = N_TRAIN, n_targets: int = N_TARGETS, seed: int = 0,
              alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """k random Bernoulli(alpha) masks and margins that depend on them."""
    rng = np.random.default_rng(seed)
    masks = rng.random((k, n_train)) < alpha
    w = rng.normal(0, 1, (n_train, n_targets))
    margins = (masks @ w / np.sqrt(n_train) + rng.normal(0, 0.3, (k, n_targets))).astype(np.float32)
    return masks, margins


def run_table(masks: np.ndarray, margins: np.ndarray, *, alpha: float = 0.5, packed: bool = True,
              **extra: object) -> pa.Table:
    """Runs in the public Arrow run schema."""
    if packed:
        mask_col = pa.array([bytes(row) for row in np.packbits(masks, axis=1)], pa.binary())
    else:
        mask_col = pa.array([list(map(bool, row)) for row in masks], pa.list_(pa.bool_()))
    cols: dict[str, object] = {
        "alpha": pa.array(np.full(len(masks), alpha)),
        "mask": mask_col,
        "margins": pa.array([list(map(float, r)) for r in margins], pa.list_(pa.float32())),
    }
    cols.update(extra)
    return pa.table(cols)


def counts(db: dmdb.Database) -> dict[str, int]:
    """Row counts of every table ingest or fit may write."""
    names = ["runs", "masks", "margins", "ingested_files", "fits", "datamodels", "weights"]
    return {t: db.sql(f"SELECT count(*) FROM {t}").column(0)[0].as_py() for t in names}


@pytest.fixture(params=["memory", "file"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> dmdb.Database:
    """An empty experiment with N=37, M=6, in memory and on file."""
    path = ":memory:" if request.param == "memory" else str(tmp_path / "exp.duckdb")
    return dmdb.init(path, n_train=N_TRAIN, n_targets=N_TARGETS, seed=7)


@pytest.fixture
def file_db(tmp_path: Path) -> dmdb.Database:
    return dmdb.init(str(tmp_path / "exp.duckdb"), n_train=N_TRAIN, n_targets=N_TARGETS, seed=7)
