"""Sources of runs for ingest: Arrow data, shard files, npy matrices, authors' stores.

Each source is re-iterable: :meth:`Source.batches` can be called twice, once to
validate everything and once to write, so that one ingest is all-or-nothing with
respect to bad input without holding the input in memory.

The run schema (Arrow)
----------------------
=============  =========================================  ========
column         type                                       required
=============  =========================================  ========
alpha          float (the subset fraction, in (0, 1])     yes
mask           binary (np.packbits, ceil(N/8) bytes) or   yes
               list<bool> / list<int 0/1> of length N
margins        list<float> of length M (any float width)  yes
run_id         int64 (default: hash of the content)       no
seed           int64, the training seed                   no
mask_id        int64 (default: hash of the mask)          no
split          string: only 'verify' (or null)            no
train_acc      float                                      no
trainer        string                                     no
info           string (JSON provenance)                   no
=============  =========================================  ========
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from dmdb.codec import (
    as_float32_margins,
    binary_rows,
    display_path,
    margins_array,
    mask_array,
    pack_masks,
)
from dmdb.errors import InputError
from dmdb.runs import RunBatch

REQUIRED = ("alpha", "mask", "margins")
OPTIONAL = ("run_id", "seed", "mask_id", "split", "train_acc", "trainer", "info", "draw", "repeat",
            "fingerprint")
# The Arrow type each optional column must have (checked before anything is written).
_INTEGER = ("run_id", "seed", "mask_id", "draw", "repeat")
_NUMBER = ("alpha", "train_acc")
_TEXT = ("split", "trainer", "info", "fingerprint")
SHARD_SUFFIXES = (".parquet", ".arrow", ".feather", ".ipc", ".arrows")
CHUNK_RUNS = 2048


def _list_values(col: pa.ChunkedArray | pa.Array, width: int, what: str, row0: int) -> np.ndarray:
    """Flatten a list / fixed-size-list column of equal-length rows into a (k, width) array."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    k = len(arr)
    if pa.types.is_fixed_size_list(arr.type):
        if arr.type.list_size != width:
            raise InputError(
                f"{what} of row {row0} has length {arr.type.list_size}, expected {width}"
            )
    elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != width)
        if len(bad):
            raise InputError(
                f"{what} of row {row0 + int(bad[0])} has length {lengths[bad[0]]}, expected {width}"
            )
    else:
        raise InputError(f"column {what!r} must be a list, got {arr.type}")
    if arr.null_count:
        raise InputError(f"{what} of row {row0 + int(np.flatnonzero(arr.is_null())[0])} is null")
    values = pc.list_flatten(arr)
    if values.null_count:
        raise InputError(f"{what} contain null values")
    return values.to_numpy(zero_copy_only=False).reshape(k, width)


def batch_from_arrow(
    table: pa.Table | pa.RecordBatch, *, n_train: int, n_targets: int, row0: int = 0
) -> RunBatch:
    """Convert Arrow data in the run schema into a :class:`RunBatch` (not yet validated)."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    names = set(table.column_names)
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}; the run schema needs {REQUIRED}")
    unknown = sorted(names - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise InputError(
            f"unknown column(s) {', '.join(unknown)}; allowed: {', '.join(REQUIRED + OPTIONAL)}"
        )
    k = table.num_rows
    mask_col = table.column("mask").combine_chunks()
    if pa.types.is_binary(mask_col.type) or pa.types.is_large_binary(mask_col.type) or (
        pa.types.is_fixed_size_binary(mask_col.type)
    ):
        n_bytes = (n_train + 7) // 8
        if mask_col.null_count:
            row = row0 + int(np.flatnonzero(mask_col.is_null())[0])
            raise InputError(f"mask of row {row} is null")
        lengths = (
            np.full(k, mask_col.type.byte_width)
            if pa.types.is_fixed_size_binary(mask_col.type)
            else pc.binary_length(mask_col).to_numpy(zero_copy_only=False)
        )
        bad = np.flatnonzero(lengths != n_bytes)
        if len(bad):
            raise InputError(
                f"mask of row {row0 + int(bad[0])} has {lengths[bad[0]]} bytes (packed), but "
                f"n_train={n_train} needs {n_bytes}"
            )
        flat = mask_col.cast(pa.binary()) if not pa.types.is_binary(mask_col.type) else mask_col
        packed = binary_rows(flat, n_bytes).copy()
    else:
        packed = pack_masks(_list_values(mask_col, n_train, "mask", row0),
                            rows=np.arange(row0, row0 + k))
    margins = as_float32_margins(_list_values(table.column("margins"), n_targets, "margins", row0))

    for name in names & set(_INTEGER + _NUMBER + _TEXT):
        _check_type(table.column(name), name)
    info = table.column("info").to_pylist() if "info" in names else None
    if info is not None:
        _check_json(info, row0)
    fingerprint = None
    if "fingerprint" in names:
        values = [v for v in table.column("fingerprint").unique().to_pylist() if v is not None]
        if len(values) > 1:
            raise InputError(f"runs from {len(values)} experiments (fingerprints) in one batch")
        fingerprint = values[0] if values else None

    def ints(name: str) -> np.ndarray | None:
        if name not in names:
            return None
        col = table.column(name)
        if col.null_count == len(col):
            return None
        if col.null_count:
            raise InputError(f"column {name} has nulls in some rows; give it for all or none")
        return col.to_numpy().astype(np.int64)

    alpha_col = table.column("alpha")
    if alpha_col.null_count:
        raise InputError("alpha has nulls; every run needs its subset fraction")
    trainer = None
    if "trainer" in names:
        values = table.column("trainer").unique().to_pylist()
        trainer = values[0] if len(values) == 1 else ",".join(str(v) for v in values)
    train_acc = None
    if "train_acc" in names:
        train_acc = table.column("train_acc").cast(pa.float64()).to_numpy(zero_copy_only=False)
    return RunBatch(
        masks=packed,
        margins=margins,
        alpha=alpha_col.cast(pa.float64()).to_numpy(zero_copy_only=False),
        seed=ints("seed"),
        run_id=ints("run_id"),
        mask_id=ints("mask_id"),
        split=(
            np.array(table.column("split").to_pylist(), dtype=object)
            if "split" in names else None
        ),
        train_acc=train_acc,
        trainer=trainer,
        info=info,
        draw=ints("draw"),
        repeat=ints("repeat"),
        fingerprint=fingerprint,
    )


def _check_type(col: pa.ChunkedArray, name: str) -> None:
    """Refuse a column of the wrong Arrow type, naming it (before anything is written)."""
    t = col.type
    if pa.types.is_null(t):
        return
    if name in _INTEGER:
        ok, want = pa.types.is_integer(t), "integers"
    elif name in _NUMBER:
        ok, want = pa.types.is_integer(t) or pa.types.is_floating(t), "numbers"
    else:
        ok, want = pa.types.is_string(t) or pa.types.is_large_string(t), "text"
    if not ok:
        raise InputError(f"column {name} must hold {want}, got {t}")


def _check_json(values: list[str | None], row0: int) -> None:
    """Every non-null info value must be JSON, or the insert would fail half-way."""
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            json.loads(v)
        except ValueError as e:
            raise InputError(f"info of row {row0 + i} is not valid JSON ({e})") from None


class Source:
    """A re-iterable source of run batches."""

    label: str = "input"
    files: list[tuple[str, int, int]] = []

    def batches(self, n_train: int, n_targets: int) -> Iterator[tuple[str, RunBatch]]:
        """Yield (where, batch) pairs; ``where`` names the file/rows for error messages."""
        raise NotImplementedError


@dataclass
class ArrowSource(Source):
    """Arrow data already in memory (a Table, RecordBatch or a drained RecordBatchReader)."""

    table: pa.Table
    label: str = "input"

    def __post_init__(self) -> None:
        self.files = []

    def batches(self, n_train: int, n_targets: int) -> Iterator[tuple[str, RunBatch]]:
        for start in range(0, max(self.table.num_rows, 1), CHUNK_RUNS):
            part = self.table.slice(start, CHUNK_RUNS)
            if part.num_rows == 0:
                return
            yield self.label, batch_from_arrow(
                part, n_train=n_train, n_targets=n_targets, row0=start
            )


def file_key(path: Path) -> tuple[str, int, int]:
    """The identity under which an ingested shard file is recorded."""
    st = path.stat()
    return (display_path(path.resolve()), st.st_size, st.st_mtime_ns)


class ShardSource(Source):
    """Parquet or Arrow IPC shard files in the run schema."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.files = [file_key(p) for p in paths]
        self.label = f"{len(paths)} shard file(s)"

    def _read(self, path: Path) -> Iterator[pa.RecordBatch]:
        try:
            # Opened by Python, not by name: pyarrow cannot encode a non-UTF-8 file name.
            with open(path, "rb") as f:
                if path.suffix == ".parquet":
                    yield from pq.ParquetFile(f).iter_batches(batch_size=CHUNK_RUNS)
                    return
                try:
                    reader = ipc.open_file(f)
                    batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
                    yield from batches
                except pa.ArrowInvalid:
                    f.seek(0)
                    yield from ipc.open_stream(f)
        except (pa.ArrowException, OSError) as e:
            raise InputError(
                f"{display_path(path)}: cannot read shard: {str(e).splitlines()[0]}"
            ) from e

    def batches(self, n_train: int, n_targets: int) -> Iterator[tuple[str, RunBatch]]:
        for path in self.paths:
            row0 = 0
            for rb in self._read(path):
                yield display_path(path), batch_from_arrow(
                    rb, n_train=n_train, n_targets=n_targets, row0=row0
                )
                row0 += rb.num_rows


def find_shards(path: Path) -> list[Path]:
    """The shard files in a folder (sorted), or the file itself."""
    shown = display_path(path)
    if path.is_dir():
        found = sorted(
            p for p in path.iterdir() if p.suffix in SHARD_SUFFIXES and not p.name.startswith(".")
        )
        if not found:
            raise InputError(
                f"{shown}: no shard files ({', '.join(SHARD_SUFFIXES)}) in this folder"
            )
        return found
    if not path.exists():
        raise InputError(f"{shown}: no such file or folder")
    if path.suffix not in SHARD_SUFFIXES:
        raise InputError(
            f"{shown}: not a shard file (expected {', '.join(SHARD_SUFFIXES)}); "
            "for .npy matrices use --masks/--margins"
        )
    return [path]


def _open_npy(path: Path, what: str) -> np.ndarray:
    if not path.exists():
        raise InputError(f"{display_path(path)}: no such file ({what})")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{display_path(path)}: not a readable .npy file ({what}): {first}") from e


class NpySource(Source):
    """A runs x N bool mask matrix and a runs x M float margins matrix, memory-mapped.

    ``completed`` (a bool per row, as in the authors' store) selects the rows to take.
    """

    def __init__(
        self,
        masks: Path,
        margins: Path,
        alpha: float,
        completed: Path | None = None,
        label: str | None = None,
    ) -> None:
        self.masks = _open_npy(masks, "masks")
        self.margins = _open_npy(margins, "margins")
        self.alpha = alpha
        self.label = label or display_path(f"{masks.name}/{margins.name}")
        shown_masks, shown_margins = display_path(masks), display_path(margins)
        self.shown_masks = shown_masks
        self.files = []
        if not (self.masks.dtype == np.bool_ or np.issubdtype(self.masks.dtype, np.number)):
            raise InputError(
                f"{shown_masks}: masks must be 0/1 or bool, got dtype {self.masks.dtype}"
            )
        if self.masks.ndim != 2:
            raise InputError(
                f"{shown_masks}: masks must be 2-D (runs x n_train), got {self.masks.shape}"
            )
        if self.margins.ndim != 2:
            raise InputError(
                f"{shown_margins}: margins must be 2-D (runs x M), got {self.margins.shape}"
            )
        if self.masks.shape[0] != self.margins.shape[0]:
            raise InputError(
                f"masks have {self.masks.shape[0]} rows but margins have {self.margins.shape[0]}; "
                "they must have one row per run"
            )
        if not np.issubdtype(self.margins.dtype, np.floating):
            raise InputError(
                f"{shown_margins}: margins must be float16/32/64, got {self.margins.dtype}"
            )
        rows = np.arange(self.masks.shape[0])
        if completed is not None:
            flags = np.asarray(_open_npy(completed, "completion flags")).astype(bool).reshape(-1)
            if flags.shape[0] != self.masks.shape[0]:
                raise InputError(
                    f"{display_path(completed)}: {flags.shape[0]} flags for "
                    f"{self.masks.shape[0]} rows"
                )
            rows = rows[flags]
        self.rows = rows

    def batches(self, n_train: int, n_targets: int) -> Iterator[tuple[str, RunBatch]]:
        for start in range(0, len(self.rows), CHUNK_RUNS):
            idx = self.rows[start : start + CHUNK_RUNS]
            contiguous = len(idx) and idx[-1] - idx[0] == len(idx) - 1
            sel = slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else idx
            masks = np.asarray(self.masks[sel])
            if masks.shape[1] != n_train:
                raise InputError(
                    f"{self.label}: masks have {masks.shape[1]} columns, but the experiment has "
                    f"n_train={n_train}"
                )
            where = f"{self.label} rows {int(idx[0])}.."
            yield where, RunBatch(
                masks=pack_masks(masks, self.shown_masks, rows=idx),
                margins=as_float32_margins(np.asarray(self.margins[sel]), where),
                alpha=np.full(len(idx), self.alpha),
                source=self.label,
            )

    def mask_density(self, sample: int = 4096) -> float:
        """The fraction of ones in (a sample of) the masks, to check against alpha."""
        idx = self.rows[:: max(1, len(self.rows) // sample)][:sample]
        if len(idx) == 0:
            return float("nan")
        return float(np.asarray(self.masks[np.sort(idx)]).mean())


def store_source(folder: Path, alpha: float, masks_key: str, margins_key: str) -> NpySource:
    """An authors'-style store: ``<key>.npy`` memmaps plus ``_completed.npy`` flags."""
    return NpySource(
        folder / f"{masks_key}.npy",
        folder / f"{margins_key}.npy",
        alpha,
        completed=folder / "_completed.npy",
        label=display_path(folder),
    )


def is_store(path: Path) -> bool:
    """A folder holding ``_completed.npy`` is an authors' store; otherwise shards."""
    return path.is_dir() and (path / "_completed.npy").exists()



class BatchSource(Source):
    """Runs already in canonical form (from a trainer or a RunWriter)."""

    def __init__(self, batch: RunBatch, label: str = "writer") -> None:
        self.batch = batch
        self.label = label
        self.files = []

    def batches(self, n_train: int, n_targets: int) -> Iterator[tuple[str, RunBatch]]:
        yield self.label, self.batch


class MultiSource(Source):
    """Several sources ingested as one all-or-nothing input."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources
        self.files = [f for s in sources for f in s.files]
        self.label = ", ".join(s.label for s in sources)

    def batches(self, n_train: int, n_targets: int) -> Iterator[tuple[str, RunBatch]]:
        for s in self.sources:
            for where, batch in s.batches(n_train, n_targets):
                if batch.source is None:
                    batch.source = s.label
                yield where, batch


def batch_to_arrow(batch: RunBatch) -> pa.Table:
    """A RunBatch in the public run schema (the inverse of :func:`batch_from_arrow`).

    The experiment fingerprint, when the runs have one, is also in the schema's
    metadata (``dmdb.fingerprint``), so a shard's experiment is known without a scan.
    """
    k = len(batch)
    columns: dict[str, Any] = {
        "alpha": pa.array(batch.alpha),
        "mask": mask_array(batch.masks),
        "margins": margins_array(batch.margins),
    }
    for name in ("run_id", "seed", "mask_id", "train_acc", "draw", "repeat"):
        value = getattr(batch, name)
        if value is not None:
            columns[name] = pa.array(value)
    if batch.split is not None:
        columns["split"] = pa.array(list(batch.split), pa.string())
    if batch.info is not None:
        columns["info"] = pa.array(batch.info, pa.string())
    if batch.trainer is not None:
        columns["trainer"] = pa.array([batch.trainer] * k, pa.string())
    meta = None
    if batch.fingerprint is not None:
        columns["fingerprint"] = pa.array([batch.fingerprint] * k, pa.string())
        meta = {"dmdb.fingerprint": batch.fingerprint}
    return pa.table(columns, metadata=meta)
