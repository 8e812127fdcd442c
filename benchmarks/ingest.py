"""Ingest and read-back speed, and bytes on disk, against np.save / np.load.

Run: python benchmarks/ingest.py [--runs 2000] [--n-train 50000] [--targets 10000]

Every figure is a ratio against a reference measured in the same process, since
the machine is shared and noisy. The references write/read the same arrays as
.npy files: the packed masks (np.packbits) and the float32 margins.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import dmdb
from dmdb.codec import margins_array, mask_array, unpack_masks


def best_of(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run_table(masks: np.ndarray, margins: np.ndarray, alpha: float) -> pa.Table:
    k = len(masks)
    return pa.table({
        "run_id": pa.array(np.arange(k, dtype=np.int64)),
        "alpha": pa.array(np.full(k, alpha)),
        "mask": mask_array(np.packbits(masks, axis=1)),
        "margins": margins_array(margins),
    })


def table_bytes(db_path: str, table: str) -> int:
    con = dmdb.connect(db_path, read_only=True)
    info = con.sql(
        "SELECT count(DISTINCT block_id) AS blocks FROM pragma_storage_info(?) "
        "WHERE persistent AND block_id >= 0", [table]
    )
    size = con.sql("SELECT block_size FROM pragma_database_size()").column(0)[0].as_py()
    return int(info.column(0)[0].as_py()) * int(size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--targets", type=int, default=10_000)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    masks = rng.random((args.runs, args.n_train)) < 0.5
    # Margins like real ones: a per-target offset plus run noise.
    margins = (rng.normal(2, 1, args.targets) + rng.normal(0, 1.5, (args.runs, args.targets)))
    margins = margins.astype(np.float32)
    packed_bits = np.packbits(masks, axis=1)

    with tempfile.TemporaryDirectory() as tmp:
        npy_m, npy_y = Path(tmp, "masks.npy"), Path(tmp, "margins.npy")

        def save() -> None:
            np.save(npy_m, np.packbits(masks, axis=1))
            np.save(npy_y, margins)

        def load() -> None:
            unpack_masks(np.load(npy_m), args.n_train)
            np.load(npy_y)

        t_save = best_of(save)
        t_load = best_of(load)
        db_path = os.path.join(tmp, "bench.duckdb")
        table = run_table(masks, margins, 0.5)
        times = []
        for _ in range(3):  # a fresh database each time; init is not part of ingest
            db = dmdb.init(db_path, n_train=args.n_train, n_targets=args.targets, force=True)
            start = time.perf_counter()
            db.ingest(table)
            times.append(time.perf_counter() - start)
        t_ingest = min(times)
        db = dmdb.connect(db_path)
        t_read = best_of(lambda: db.load_runs())
        ids, m2, y2 = db.load_runs()
        assert np.array_equal(m2, masks) and np.array_equal(y2, margins)
        mask_bytes = table_bytes(db_path, "masks")
        margin_bytes = table_bytes(db_path, "margins")
        file_bytes = os.path.getsize(db_path)

    print(f"runs={args.runs} N={args.n_train} M={args.targets}")
    print(f"np.save {t_save:.3f}s  np.load {t_load:.3f}s  (references)")
    print(f"ingest / np.save          {t_ingest / t_save:6.2f}x   ({t_ingest:.3f}s)")
    print(f"load_runs / np.load       {t_read / t_load:6.2f}x   ({t_read:.3f}s)")
    print(f"masks on disk / packed    {mask_bytes / packed_bits.nbytes:6.3f}x")
    print(f"margins on disk / raw f32 {margin_bytes / margins.nbytes:6.3f}x")
    print(f"file / (packed + raw)     {file_bytes / (packed_bits.nbytes + margins.nbytes):6.3f}x")


if __name__ == "__main__":
    main()
