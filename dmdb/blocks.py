"""Fits split by targets: block files, their merge into one fit, shared statistics.

A paper-scale fit (N = 50,000, M = 10,000) is split by targets: each process,
GPU or machine fits a range of targets from the same runs, reading the database
read-only, and writes a **block file**; one process then merges the blocks into
one fit, in one transaction. The targets are independent given the runs, so a
merged fit is the fit of the whole range (to float32 round-off).

A block file is Parquet: one row per non-zero weight (``target_idx``,
``train_idx``, ``weight``, as the ``weights`` table; a second-order fit adds a
``train_b`` column, NULL on those rows and set on one row per non-zero
interaction, whose ``train_idx`` is then its ``train_a``), and under the schema
metadata key ``dmdb.fit_block`` a JSON document with everything else
:func:`dmdb.catalog.record_fit` records: the experiment's fingerprint, the target
range, the run ids of each split, the solver and parameters, and per target the
bias, penalty, validation and test scores.

The statistics every block computes from the runs (the Gram) can instead be
computed once and saved (:func:`save_stats`, ``dmdb fit --save-stats FILE``);
blocks then load them (``--stats FILE``), checked against the experiment and the
fit runs. The file is torch's format, loaded memory-mapped.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from dmdb.catalog import Pairs
from dmdb.errors import FitError, UsageError
from dmdb.version import __version__

__all__ = ["Block", "VOLATILE", "block_bytes", "check_blocks", "merge_records", "read_block",
           "write_block", "save_stats", "load_stats", "check_out_path"]

META_KEY = b"dmdb.fit_block"
FORMAT = 1
STATS_FORMAT = 1
SPLITS = ("fit", "val", "test")
#: Recorded parameters that may differ between the blocks of one fit: how and where
#: each block ran, not what it fitted.
VOLATILE = frozenset({"timings", "memory_plan", "gram_kernel_choice", "device", "progress",
                      "n_threads", "memory", "target_batch", "blocks", "stats_file",
                      "pair_fit"})
_SCORES = ("bias", "penalty", "val_mse", "test_mse", "test_pearson", "test_spearman")


@dataclass
class Block:
    """One block file, read and checked.

    Attributes
    ----------
    name : str
        Where it came from (for messages).
    meta : dict
        The JSON document (see the module docstring).
    weights : scipy.sparse.csr_matrix of shape (hi - lo, N)
    pairs : Pairs
        A second-order block's interactions, targets counted from its lo (empty
        for a linear block).
    """

    name: str
    meta: dict[str, Any]
    weights: sp.csr_matrix
    pairs: Pairs = field(default_factory=lambda: _no_pairs())

    @property
    def target_range(self) -> tuple[int, int]:
        lo, hi = self.meta["target_range"]
        return int(lo), int(hi)

    def runs(self) -> dict[str, np.ndarray]:
        return {s: np.asarray(self.meta["runs"][s], dtype=np.int64) for s in SPLITS}

    def shared_parameters(self) -> dict[str, Any]:
        """The parameters that every block of one fit must share."""
        return {k: v for k, v in self.meta["parameters"].items() if k not in VOLATILE}


def _no_pairs() -> Pairs:
    empty = np.zeros(0, np.int64)
    return empty, empty, empty, np.zeros(0, np.float32)


def check_out_path(path: str | Path, what: str = "--out") -> Path:
    """Refuse, before any work, an output path whose folder is missing or that is a folder."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what} {p} is a folder; give a file name such as block-0.parquet")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{what} {p}: the folder {parent} does not exist (or is a file)")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{what} {p}: the folder {parent} is not writable")
    return p


def _nan_list(values: Any) -> list[float | None]:
    a = np.asarray(values, dtype=np.float64)
    return [None if not np.isfinite(v) else float(v) for v in a]


def block_bytes(record: dict[str, Any], *, fingerprint: str, n_train: int,
                n_targets: int) -> bytes:
    """Serialise one block (``record`` holds :func:`dmdb.catalog.record_fit`'s keywords)."""
    lo, hi = record["target_range"]
    coef = sp.csr_matrix(record["weights"], dtype=np.float32)
    coef.eliminate_zeros()
    rows = np.repeat(np.arange(lo, hi, dtype=np.int32), np.diff(coef.indptr))
    test_mse, pearson, spearman = record["test_metrics"]
    nan = np.full(hi - lo, np.nan)
    scores = {
        "bias": [float(v) for v in np.asarray(record["bias"], np.float64)],
        "penalty": _nan_list(nan if record.get("penalty") is None else record["penalty"]),
        "val_mse": _nan_list(nan if record.get("val_mse") is None else record["val_mse"]),
        "test_mse": _nan_list(test_mse), "test_pearson": _nan_list(pearson),
        "test_spearman": _nan_list(spearman),
    }
    meta = {
        "format": FORMAT, "dmdb_version": __version__, "fingerprint": fingerprint,
        "n_train": int(n_train), "n_targets": int(n_targets), "target_range": [lo, hi],
        "solver": record["solver"], "device": record.get("device"), "alpha": record.get("alpha"),
        "parameters": record["parameters"], "wall_seconds": float(record.get("wall_seconds", 0)),
        "runs": {s: [int(r) for r in record["runs"][s]] for s in SPLITS},
        "datamodels": scores,
    }
    columns = {
        "target_idx": pa.array(rows, pa.int32()),
        "train_idx": pa.array(coef.indices.astype(np.int32), pa.int32()),
        "weight": pa.array(coef.data.astype(np.float32), pa.float32()),
    }
    if record.get("pairs") is not None:
        t, a, b, phi = record["pairs"]
        columns = {
            "target_idx": pa.array(np.r_[rows, np.asarray(t) + lo].astype(np.int32)),
            "train_idx": pa.array(np.r_[coef.indices, a].astype(np.int32)),
            "weight": pa.array(np.r_[coef.data, phi].astype(np.float32)),
            "train_b": pa.array(np.r_[np.zeros(len(rows)), b].astype(np.int32),
                                mask=np.r_[np.ones(len(rows), bool), np.zeros(len(b), bool)]),
        }
    table = pa.table(columns).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def write_block(path: str | Path, record: dict[str, Any], **identity: Any) -> Path:
    """Write one block file (written under a temporary name, then renamed into place)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_bytes(block_bytes(record, **identity))
    os.replace(tmp, p)
    return p


def read_block(source: str | Path | bytes, name: str | None = None) -> Block:
    """Read and check one block file (or its bytes).

    Raises
    ------
    FitError
        Not a readable Parquet file, not a dmdb block, or inconsistent inside.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "a block")
    try:
        table = pq.read_table(pa.BufferReader(source) if isinstance(source, bytes) else source)
    except (OSError, pa.ArrowException) as e:
        raise FitError(f"{label} is not a readable block file: {str(e).splitlines()[0]}") \
            from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise FitError(f"{label} is Parquet but not a dmdb fit block (no {META_KEY.decode()} "
                       "metadata); make blocks with dmdb fit --target-range LO:HI --out FILE")
    try:
        meta = json.loads(raw)
        lo, hi = (int(v) for v in meta["target_range"])
        n_train = int(meta["n_train"])
        scores = meta["datamodels"]
        bad = [k for k in _SCORES if len(scores[k]) != hi - lo]
        runs = {s: meta["runs"][s] for s in SPLITS}
        _ = meta["fingerprint"], meta["parameters"], meta["solver"]
    except (ValueError, KeyError, TypeError) as e:
        raise FitError(f"{label} has a damaged block header ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT:
        raise FitError(f"{label} is block format {meta.get('format')}; this dmdb reads {FORMAT}")
    if bad or not 0 <= lo < hi or not all(isinstance(v, list) for v in runs.values()):
        raise FitError(f"{label} is inconsistent: its header does not match its target range")
    tgt = table.column("target_idx").to_numpy().astype(np.int64)
    col = table.column("train_idx").to_numpy().astype(np.int64)
    val = table.column("weight").to_numpy()
    if "train_b" in table.column_names:
        b_col = table.column("train_b").combine_chunks()
        pair = ~np.asarray(b_col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        col_b = b_col.fill_null(0).to_numpy().astype(np.int64)
    else:
        pair, col_b = np.zeros(len(tgt), bool), np.zeros(len(tgt), np.int64)
    if len(tgt) and (tgt.min() < lo or tgt.max() >= hi or col.min() < 0 or col.max() >= n_train
                     or col_b.min() < 0 or col_b.max() >= n_train):
        raise FitError(f"{label} holds weights outside its targets {lo}:{hi} or its "
                       f"{n_train} training examples")
    if not np.isfinite(val).all():
        raise FitError(f"{label} holds a non-finite weight")
    if not (col[pair] < col_b[pair]).all():
        raise FitError(f"{label} holds an interaction whose train_a is not below its train_b")
    lin = ~pair
    weights = sp.csr_matrix((val[lin], (tgt[lin] - lo, col[lin])), shape=(hi - lo, n_train),
                            dtype=np.float32)
    order = np.lexsort((col_b[pair], col[pair], tgt[pair]))
    pairs = (tgt[pair][order] - lo, col[pair][order], col_b[pair][order],
             val[pair][order].astype(np.float32))
    return Block(name=label, meta=meta, weights=weights, pairs=pairs)


def check_blocks(blocks: Sequence[Block], *, fingerprint: str, n_train: int) -> None:
    """Refuse blocks that do not make one fit, naming the conflict.

    They must be fitted on this experiment, on the same runs, with the same
    solver and parameters, and cover target ranges that are disjoint and
    adjacent (their union is one range).
    """
    if not blocks:
        raise UsageError("--merge needs block files: dmdb fit DB --merge block-*.parquet")
    first = blocks[0]
    for b in blocks:
        if b.meta["fingerprint"] != fingerprint or b.meta["n_train"] != n_train:
            raise FitError(f"{b.name} was fitted on another experiment (fingerprint "
                           f"{b.meta['fingerprint'][:16]}, this database's {fingerprint[:16]})")
    for b in blocks[1:]:
        for split in SPLITS:
            if not np.array_equal(b.runs()[split], first.runs()[split]):
                raise FitError(f"{b.name} and {first.name} were fitted on different {split} runs;"
                               " blocks of one fit must use the same runs")
        for key in ("solver", "alpha"):
            if b.meta[key] != first.meta[key]:
                raise FitError(f"{b.name} and {first.name} differ in {key} "
                               f"({b.meta[key]!r} against {first.meta[key]!r})")
        mine, theirs = b.shared_parameters(), first.shared_parameters()
        if mine != theirs:
            key = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))[0]
            raise FitError(f"{b.name} and {first.name} were fitted with different parameters: "
                           f"{key} = {mine.get(key)!r} against {theirs.get(key)!r}")
    ordered = sorted(blocks, key=lambda b: b.target_range)
    for a, b in zip(ordered, ordered[1:], strict=False):
        (alo, ahi), (blo, bhi) = a.target_range, b.target_range
        if blo < ahi:
            raise FitError(f"{a.name} ({alo}:{ahi}) and {b.name} ({blo}:{bhi}) overlap at "
                           f"targets {blo}:{min(ahi, bhi)}")
        if blo > ahi:
            raise FitError(f"targets {ahi}:{blo} are in no block (between {a.name} and {b.name})")


def merge_records(blocks: Sequence[Block]) -> dict[str, Any]:
    """The one fit that checked blocks make, as :func:`dmdb.catalog.record_fit`'s keywords."""
    ordered = sorted(blocks, key=lambda b: b.target_range)
    first = ordered[0]

    def scores(key: str) -> np.ndarray:
        return np.array([np.nan if v is None else v for b in ordered
                         for v in b.meta["datamodels"][key]], dtype=np.float64)

    timings: dict[str, float] = {}
    for b in ordered:
        for k, v in (b.meta["parameters"].get("timings") or {}).items():
            timings[k] = timings.get(k, 0.0) + float(v)
    parameters = first.shared_parameters() | {
        "timings": timings,  # summed over the blocks: compute seconds, not wall time
        "blocks": [{"target_range": list(b.target_range), "device": b.meta["device"],
                    "wall_seconds": b.meta["wall_seconds"],
                    **{k: b.meta["parameters"].get(k) for k in sorted(VOLATILE - {"blocks"})
                       if k in b.meta["parameters"]}} for b in ordered],
    }
    devices = sorted({str(b.meta["device"]) for b in ordered})
    base = first.target_range[0]
    pairs = None
    if any(len(b.pairs[3]) for b in ordered):  # targets counted from the merged range's lo
        t, a, b_, phi = (np.concatenate(parts) for parts in zip(
            *((b.pairs[0] + b.target_range[0] - base, *b.pairs[1:]) for b in ordered),
            strict=True))
        pairs = (t, a, b_, phi)
    return {
        "pairs": pairs,
        "runs": first.runs(),
        "target_range": (first.target_range[0], ordered[-1].target_range[1]),
        "bias": scores("bias"),
        "weights": sp.vstack([b.weights for b in ordered], format="csr"),
        "penalty": scores("penalty"),
        "val_mse": scores("val_mse"),
        "solver": first.meta["solver"],
        "device": ",".join(devices),
        "alpha": first.meta["alpha"],
        "parameters": parameters,
        "wall_seconds": sum(float(b.meta["wall_seconds"]) for b in ordered),
        "test_metrics": (scores("test_mse"), scores("test_pearson"), scores("test_spearman")),
    }


# ---------------------------------------------------------------------- shared statistics


def save_stats(path: str | Path, state: dict[str, Any], *, fingerprint: str,
               fit_runs: np.ndarray, selection: dict[str, Any]) -> Path:
    """Write the fit runs' statistics (:meth:`dmdb.lasso_stats.GramStats.state`) to ``path``.

    ``selection`` records how the runs were chosen (alpha, max_fit_runs), so a
    block that selects other runs is refused.
    """
    import torch

    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    header = {"format": STATS_FORMAT, "fingerprint": fingerprint, "selection": selection,
              "dmdb_version": __version__}
    torch.save({"header": json.dumps(header), "fit_runs": torch.from_numpy(
        np.asarray(fit_runs, np.int64)), **state}, tmp)
    os.replace(tmp, p)
    return p


def load_stats(path: str | Path, *, fingerprint: str, fit_runs: np.ndarray) -> dict[str, Any]:
    """Load a stats file memory-mapped, checked against this experiment and these fit runs.

    Raises
    ------
    FitError
        Not a stats file, or made for another experiment or another set of fit runs.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--stats {p}: no such file (make it with dmdb fit DB --save-stats "
                         f"{p.name})")
    try:
        state = torch.load(p, mmap=True, weights_only=True)
        header = json.loads(state.pop("header"))
        saved_runs = state.pop("fit_runs").numpy()
    except Exception as e:  # noqa: BLE001 (torch raises many kinds for a foreign file)
        raise FitError(f"--stats {p} is not a dmdb stats file ({type(e).__name__})") from None
    if header.get("format") != STATS_FORMAT:
        raise FitError(f"--stats {p} is stats format {header.get('format')}; this dmdb reads "
                       f"{STATS_FORMAT}")
    if header["fingerprint"] != fingerprint:
        raise FitError(f"--stats {p} was computed for another experiment (fingerprint "
                       f"{header['fingerprint'][:16]}, this database's {fingerprint[:16]})")
    if not np.array_equal(saved_runs, np.asarray(fit_runs, np.int64)):
        raise FitError(f"--stats {p} was computed from {len(saved_runs):,} other fit runs "
                       f"({header['selection']}); this fit selects {len(fit_runs):,}: recompute "
                       "it with --save-stats")
    return state
