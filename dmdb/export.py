"""`dmdb export`: a fit's bias and weights as files for other tools."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from dmdb.codec import display_path
from dmdb.db import Database
from dmdb.errors import UsageError


def check_output_folder(folder: str | Path, what: str) -> Path:
    """Refuse an output folder that cannot be a folder (a plain file, or one under a file).

    Nothing is created; call :func:`output_folder` once the input has been checked.
    """
    out = Path(folder)
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "is" if parent == out else f"is under {display_path(parent)}, which is"
                raise UsageError(f"{display_path(out)} {where} a file; give a folder for {what}")
            break
    return out


def output_folder(folder: str | Path, what: str) -> Path:
    """Create ``folder`` (and its parents) and prove that files can be written in it.

    A probe file is created and removed again, so that a read-only folder or file
    system is refused in one line before anything is computed or written (a
    permission check alone says yes to root, whatever the file system says).
    """
    out = check_output_folder(folder, what)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise UsageError(f"{display_path(out)}: cannot write {what} there ({reason})") from e
    return out


def export_fit(db: Database, fit_id: int, folder: str | Path, fmt: str) -> list[Path]:
    """Write fit ``fit_id`` to ``folder``.

    npy: ``bias.npy`` (M,) float64 and ``weights.npz`` (scipy.sparse CSR, M x N,
    load with ``scipy.sparse.load_npz``). parquet: ``datamodels.parquet`` (one row
    per target) and ``weights.parquet`` (target_idx, train_idx, weight).
    A second-order fit adds its pairs: ``interactions.npz`` (``numpy.load``: arrays
    target_idx, train_a, train_b, weight) or ``interactions.parquet`` (those columns).
    """
    if fmt not in ("npy", "parquet"):
        raise UsageError(f"unknown export format {fmt!r}; use npy or parquet")
    check_output_folder(folder, "the export")
    bias, weights = db.load_fit(fit_id)
    out = output_folder(folder, "the export")
    try:
        return _write(db, fit_id, out, fmt, bias, weights)
    except OSError as e:  # e.g. the disk filled up half-way
        reason = e.strerror or type(e).__name__
        raise UsageError(f"{display_path(out)}: writing the export failed ({reason})") from e


def _write(
    db: Database, fit_id: int, out: Path, fmt: str, bias: np.ndarray, weights: sp.csr_matrix
) -> list[Path]:
    target, a, b, phi = db.load_interactions(fit_id)
    pairs = {"target_idx": target.astype(np.int32), "train_a": a.astype(np.int32),
             "train_b": b.astype(np.int32), "weight": phi.astype(np.float32)}
    if fmt == "npy":
        paths = [out / "bias.npy", out / "weights.npz"]
        np.save(paths[0], bias)
        sp.save_npz(paths[1], weights)
        if len(phi):
            paths.append(out / "interactions.npz")
            np.savez(paths[-1], **pairs)  # type: ignore[arg-type]
        return paths
    paths = [out / "datamodels.parquet", out / "weights.parquet"]
    coo = weights.tocoo()
    tables = [
        db.sql("SELECT * FROM datamodels WHERE fit_id = ? ORDER BY target_idx", [fit_id]),
        pa.table({"target_idx": coo.row.astype(np.int32), "train_idx": coo.col.astype(np.int32),
                  "weight": coo.data.astype(np.float32)}),
    ]
    if len(phi):
        paths.append(out / "interactions.parquet")
        tables.append(pa.table(pairs))
    for table, path in zip(tables, paths, strict=True):
        with open(path, "wb") as f:  # by Python: pyarrow cannot encode a non-UTF-8 name
            pq.write_table(table, f)
    return paths
