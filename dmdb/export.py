"""`dmdb export`: a fit's bias and weights as files for other tools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from dmdb.db import Database
from dmdb.errors import UsageError


def export_fit(db: Database, fit_id: int, folder: str | Path, fmt: str) -> list[Path]:
    """Write fit ``fit_id`` to ``folder``.

    npy: ``bias.npy`` (M,) float64 and ``weights.npz`` (scipy.sparse CSR, M x N,
    load with ``scipy.sparse.load_npz``). parquet: ``datamodels.parquet`` (one row
    per target) and ``weights.parquet`` (target_idx, train_idx, weight).
    """
    if fmt not in ("npy", "parquet"):
        raise UsageError(f"unknown export format {fmt!r}; use npy or parquet")
    bias, weights = db.load_fit(fit_id)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        paths = [out / "bias.npy", out / "weights.npz"]
        np.save(paths[0], bias)
        sp.save_npz(paths[1], weights)
        return paths
    paths = [out / "datamodels.parquet", out / "weights.parquet"]
    pq.write_table(db.sql("SELECT * FROM datamodels WHERE fit_id = ? ORDER BY target_idx",
                          [fit_id]), paths[0])
    coo = weights.tocoo()
    pq.write_table(pa.table({"target_idx": coo.row.astype(np.int32),
                             "train_idx": coo.col.astype(np.int32),
                             "weight": coo.data.astype(np.float32)}), paths[1])
    return paths
