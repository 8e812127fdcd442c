"""`dmdb quickstart DIR`: the README's main job, end to end on built-in data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

import dmdb


def run_quickstart(
    folder: str | Path, *, runs: int = 2000, echo: Callable[[str], None] = print
) -> dmdb.Database:
    """Create DIR/digits.duckdb and fill it.

    Until `dmdb train` and `dmdb fit` exist this is the foundation demo: init on
    the digits shape, ingest generated runs from Arrow, and report the status.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "demo.duckdb"
    n_train, n_targets = 1297, 500
    db = dmdb.init(path, n_train=n_train, n_targets=n_targets, name="demo", force=True)
    echo(f"created {path} (N={n_train}, M={n_targets})")
    rng = np.random.default_rng(0)
    masks = rng.random((runs, n_train)) < 0.5
    w = rng.standard_t(3, (n_train, n_targets)) * (rng.random((n_train, n_targets)) < 0.03)
    margins = (masks @ w + rng.normal(0, 1, (runs, n_targets))).astype(np.float32)
    packed = np.packbits(masks, axis=1)
    table = pa.table({
        "alpha": pa.array(np.full(runs, 0.5)),
        "seed": pa.array(np.arange(runs)),
        "mask": pa.array([bytes(r) for r in packed], pa.binary()),
        "margins": pa.FixedSizeListArray.from_arrays(pa.array(margins.ravel()), n_targets),
    })
    result = db.ingest(table, source="quickstart:generated", progress=True)
    echo(f"ingested {result.n_new} generated runs")
    for alpha, split, n_runs, n_masks, _, _ in db.status()["runs"]:
        echo(f"  alpha={alpha} {split:<5} {n_runs} runs ({n_masks} masks)")
    echo(f"next: dmdb status {path}")
    return db
