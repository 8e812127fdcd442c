"""How dmdb's values are represented in DuckDB and Arrow: the one codec.

- A mask is a 0/1 vector of length N, stored as ``np.packbits`` bytes
  (big-endian bit order, so ``get_bit(mask::BIT, i)`` is example i; padding bits
  are zero) in a BLOB column.
- Margins are float32 vectors of length M, stored as DuckDB's ``FLOAT[M]``
  (an Arrow fixed-size list).
- Timestamps are naive UTC (DuckDB ``TIMESTAMP``).

Both the store (reading runs) and ingest (writing them) use these functions and
no other encoding.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from dmdb.errors import InputError


def utcnow() -> datetime:
    """Now, as the naive UTC datetime that DuckDB's TIMESTAMP columns hold."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def quote_literal(text: str) -> str:
    """Quote a string as a SQL literal. Used only where DuckDB takes no parameter (ATTACH)."""
    return "'" + text.replace("'", "''") + "'"


def pack_masks(masks: np.ndarray, where: str = "", rows: np.ndarray | None = None
               ) -> np.ndarray:
    """Pack a (k, N) 0/1 or bool array into (k, ceil(N/8)) uint8, checking it is 0/1.

    ``where`` (a file) and ``rows`` (each row's number there) name a bad value.
    """
    at = f"{where}: " if where else ""
    masks = np.asarray(masks)
    if masks.ndim != 2:
        raise InputError(f"masks must be 2-D (runs x n_train), got shape {masks.shape}")
    if masks.dtype != np.bool_:
        if not (np.issubdtype(masks.dtype, np.integer) or np.issubdtype(masks.dtype, np.floating)):
            raise InputError(f"masks must be 0/1 or bool, got dtype {masks.dtype}")
        bad = (masks != 0) & (masks != 1)
        if bad.any():
            r, c = (int(i) for i in np.argwhere(bad)[0])
            row = r if rows is None else int(rows[r])
            raise InputError(f"{at}mask of row {row} has value {masks[r, c].item()!r} at "
                             f"column {c}; masks must be 0/1")
        masks = masks.astype(np.bool_)
    return np.packbits(masks, axis=1)


def as_float32_margins(margins: np.ndarray, where: str = "") -> np.ndarray:
    """Margins as float32, refusing what float32 cannot hold (one line, no numpy warning)."""
    at = f"{where}: " if where else ""
    margins = np.asarray(margins)
    if not np.issubdtype(margins.dtype, np.floating):
        raise InputError(f"{at}margins must be floats, got {margins.dtype}")
    if margins.dtype.itemsize > 4:
        finite = np.isfinite(margins)
        big = finite & (np.abs(margins) > np.finfo(np.float32).max)
        if big.any():
            r = int(np.argwhere(big)[0][0])
            raise InputError(f"{at}margin out of float32 range in row {r}")
    return margins.astype(np.float32, copy=False)


def unpack_masks(packed: np.ndarray, n_train: int) -> np.ndarray:
    """Inverse of :func:`pack_masks`: a bool array of shape (k, n_train)."""
    return np.unpackbits(packed, axis=1, count=n_train).view(np.bool_)


def mask_array(packed: np.ndarray) -> pa.Array:
    """Packed masks, uint8 (k, n_bytes), as an Arrow binary column without a per-row copy."""
    k, n_bytes = packed.shape
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(n_bytes), k, [None, pa.py_buffer(np.ascontiguousarray(packed))]
    ).cast(pa.binary())


def margins_array(margins: np.ndarray) -> pa.FixedSizeListArray:
    """Margins, float (k, M), as an Arrow fixed-size-list column (DuckDB's FLOAT[M])."""
    return pa.FixedSizeListArray.from_arrays(pa.array(margins.reshape(-1)), margins.shape[1])


def binary_rows(column: pa.Array, n_bytes: int) -> np.ndarray:
    """A binary column whose rows all hold ``n_bytes`` bytes, as a uint8 (k, n_bytes) view."""
    k = len(column)
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8)
    start = int(np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset])
    return data[start : start + k * n_bytes].reshape(k, n_bytes)


def decode_runs(table: pa.Table, n_train: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrow (run_id, mask blob, margins array) into numpy, sorted by run_id.

    Returns
    -------
    run_ids : int64 array of shape (k,)
    masks : bool array of shape (k, n_train)
    margins : float32 array of shape (k, M)
    """
    k = table.num_rows
    ids = table.column("run_id").to_numpy().astype(np.int64)
    packed = binary_rows(table.column("mask").combine_chunks(), (n_train + 7) // 8)
    masks = unpack_masks(packed, n_train)
    arrays = table.column("margins").combine_chunks()
    values = arrays.values.to_numpy(zero_copy_only=False)
    width = arrays.type.list_size
    margins = values[arrays.offset * width : (arrays.offset + k) * width].reshape(k, width)
    if np.all(ids[:-1] <= ids[1:]):
        return ids, masks, margins
    order = np.argsort(ids, kind="stable")
    return ids[order], masks[order], margins[order]


def display_path(path: str | os.PathLike[str]) -> str:
    """A file name as one printable line of valid UTF-8, for messages and text columns.

    A name that is not valid UTF-8 reaches Python with surrogate escapes, which no
    message, terminal or DuckDB VARCHAR can encode; its undecodable bytes are shown
    as ``\\xNN`` instead, and control characters (a newline) as their escapes.
    """
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
