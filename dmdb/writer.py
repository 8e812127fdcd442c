"""RunWriter: add runs one at a time (or a batch at a time) from a training loop.

Runs are buffered and flushed as one ingest of many runs, because DuckDB's
small inserts are slow and because the database file is locked while written:
the writer opens the file only to flush. If another process (a reader, the
DuckDB shell) holds the file at flush time, the runs stay in memory and the
flush is retried with backoff; if the file stays busy at close, the runs are
written to a Parquet shard beside the database for a later ``dmdb ingest``.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dmdb.codec import as_float32_margins, pack_masks, utcnow
from dmdb.db import Database
from dmdb.errors import BusyError, InputError
from dmdb.ingest import IngestResult, ingest
from dmdb.runs import RunBatch
from dmdb.sources import BatchSource, batch_to_arrow


class RunBuffer:
    """Buffer runs in canonical form; subclasses say where a flush puts them.

    The plain buffer keeps everything until :meth:`take` (a Ray task returns its
    runs that way); :class:`RunWriter` flushes into a database, :class:`ShardWriter`
    into shard files.

    Parameters
    ----------
    n_train, n_targets : int
        The experiment's N and M; every run is checked against them when added.
    flush_runs : int
        Flush when this many runs are buffered.
    flush_seconds : float
        Also flush when the oldest buffered run is this old.
    trainer, source : str, optional
        Provenance recorded with every run.
    """

    def __init__(
        self,
        n_train: int,
        n_targets: int,
        *,
        flush_runs: int = 2048,
        flush_seconds: float = float("inf"),
        trainer: str | None = None,
        source: str | None = None,
    ) -> None:
        self.n_train, self.n_targets = n_train, n_targets
        self.flush_runs = flush_runs
        self.flush_seconds = flush_seconds
        self.trainer = trainer
        self.source = source or (f"trainer:{trainer}" if trainer else "writer")
        self._parts: list[dict[str, Any]] = []
        self._oldest: float | None = None

    @property
    def pending(self) -> int:
        """Runs buffered and not yet in the database."""
        return sum(len(p["masks"]) for p in self._parts)

    def add(
        self,
        mask: np.ndarray,
        margins: np.ndarray,
        *,
        alpha: float,
        seed: int | None = None,
        **extra: Any,
    ) -> None:
        """Buffer one run: mask (N,) bool/0-1, margins (M,) float. See :meth:`add_batch`."""
        self.add_batch(
            np.asarray(mask)[None, :],
            np.asarray(margins)[None, :],
            alpha=alpha,
            seeds=None if seed is None else np.array([seed]),
            **{k: None if v is None else np.asarray([v]) for k, v in extra.items()},  # type: ignore[arg-type]
        )

    def add_batch(
        self,
        masks: np.ndarray,
        margins: np.ndarray,
        *,
        alpha: float | np.ndarray,
        seeds: np.ndarray | None = None,
        run_id: np.ndarray | None = None,
        mask_id: np.ndarray | None = None,
        split: np.ndarray | None = None,
        train_acc: np.ndarray | None = None,
        info: np.ndarray | None = None,
        draw: np.ndarray | None = None,
        repeat: np.ndarray | None = None,
        fingerprint: str | None = None,
    ) -> None:
        """Buffer k runs: masks (k, N) bool, margins (k, M) float; flush when due.

        Runs drawn by dmdb pass ``draw``, ``repeat`` and the experiment ``fingerprint``,
        which make their identity (see :func:`dmdb.runs.drawn_run_ids`). Shapes are
        checked now, so that a bad run fails at its own add, not at a later flush.
        """
        masks = np.asarray(masks)
        margins = np.asarray(margins)
        k = masks.shape[0]
        if masks.ndim != 2 or masks.shape[1] != self.n_train:
            raise InputError(
                f"mask must have n_train={self.n_train} entries, got {masks.shape[1:]}"
            )
        if margins.shape != (k, self.n_targets):
            raise InputError(
                f"margins must have n_targets={self.n_targets} entries per run, "
                f"got {margins.shape[1:]}"
            )
        if not np.isfinite(margins).all():
            raise InputError("margins contain NaN or inf")
        alpha_arr = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (k,)).copy()
        self._parts.append({
            "masks": pack_masks(masks), "margins": as_float32_margins(margins),
            "alpha": alpha_arr, "seed": seeds, "run_id": run_id, "mask_id": mask_id,
            "split": split, "train_acc": train_acc, "info": info, "draw": draw,
            "repeat": repeat, "fingerprint": fingerprint,
        })
        if self._oldest is None:
            self._oldest = time.monotonic()
        if self.pending >= self.flush_runs or time.monotonic() - self._oldest >= self.flush_seconds:
            self.flush(wait=False)

    def _batch(self) -> RunBatch:
        def cat(key: str, dtype: Any = None) -> np.ndarray | None:
            values = [p[key] for p in self._parts]
            if all(v is None for v in values):
                return None
            if any(v is None for v in values):
                raise InputError(f"give {key} for every run or for none")
            return np.concatenate([np.asarray(v, dtype=dtype) for v in values])

        split = cat("split", object)
        info = cat("info", object)
        prints = {p["fingerprint"] for p in self._parts}
        if len(prints) > 1:
            raise InputError("runs of two experiments (fingerprints) in one writer")
        return RunBatch(
            masks=np.concatenate([p["masks"] for p in self._parts]),
            margins=np.concatenate([p["margins"] for p in self._parts]),
            alpha=np.concatenate([p["alpha"] for p in self._parts]),
            seed=cat("seed", np.int64),
            run_id=cat("run_id", np.int64),
            mask_id=cat("mask_id", np.int64),
            split=split,
            train_acc=cat("train_acc", np.float64),
            trainer=self.trainer,
            source=self.source,
            info=None if info is None else list(info),
            draw=cat("draw", np.int64),
            repeat=cat("repeat", np.int64),
            fingerprint=prints.pop(),
        )

    def flush(self, wait: bool = True) -> Any:
        """Where the buffered runs go; the plain buffer keeps them."""
        return None

    def take(self) -> RunBatch | None:
        """The buffered runs as one batch (None if there are none); the buffer is emptied."""
        if not self._parts:
            return None
        batch = self._batch()
        self._parts, self._oldest = [], None
        return batch


class RunWriter(RunBuffer):
    """Buffer runs and flush them to a database in large batches.

    Parameters
    ----------
    db : Database
    flush_runs : int
        Flush when this many runs are buffered.
    flush_seconds : float
        Also flush when the oldest buffered run is this old, so that readers see progress.
    trainer, source : str, optional
        Provenance recorded with every run.
    on_message : callable, optional
        Called with a line for the user (busy database, spilled runs).
    close_timeout : float
        At close, how long to keep retrying a busy database before spilling to a file.

    Examples
    --------
    >>> with RunWriter(db, trainer="mine") as w:            # doctest: +SKIP
    ...     for seed in range(100):
    ...         mask = rng.random(db.experiment.n_train) < 0.5
    ...         w.add(mask, train_and_measure(mask, seed), alpha=0.5, seed=seed)
    """

    def __init__(
        self,
        db: Database,
        *,
        flush_runs: int = 2048,
        flush_seconds: float = 60.0,
        trainer: str | None = None,
        source: str | None = None,
        on_message: Callable[[str], None] | None = None,
        close_timeout: float = 120.0,
    ) -> None:
        db.check_can_write()  # before anything is trained for it
        exp = db.experiment
        super().__init__(exp.n_train, exp.n_targets, flush_runs=flush_runs,
                         flush_seconds=flush_seconds, trainer=trainer, source=source)
        self.db = db
        # The same database (an in-memory one included), but quick to give up when busy.
        self._quick = copy.copy(db)
        self._quick.busy_timeout = 0.5
        self.on_message = on_message or (lambda line: None)
        self.close_timeout = close_timeout
        self._next_try = 0.0
        self._backoff = 1.0
        self.written = 0

    def flush(self, wait: bool = True) -> IngestResult | None:
        """Write the buffered runs; without ``wait``, a busy database leaves them buffered."""
        if not self._parts:
            return None
        if not wait and time.monotonic() < self._next_try:
            return None
        batch = self._batch()
        deadline = time.monotonic() + (self.close_timeout if wait else 0.0)
        while True:
            try:
                result = ingest(self._quick, BatchSource(batch, self.source))
                break
            except BusyError:
                if time.monotonic() >= deadline:
                    if not wait:
                        self._next_try = time.monotonic() + self._backoff
                        self.on_message(
                            f"database busy: keeping {len(batch)} run(s) in memory, "
                            f"retrying in {self._backoff:.0f}s"
                        )
                        self._backoff = min(self._backoff * 2, 60.0)
                        return None
                    raise
                time.sleep(min(self._backoff, max(deadline - time.monotonic(), 0.05)))
                self._backoff = min(self._backoff * 2, 30.0)
        self._parts, self._oldest, self._backoff = [], None, 1.0
        self.written += result.n_new
        return result

    def close(self) -> None:
        """Flush everything; if the database stays busy, spill the runs to a shard file."""
        try:
            self.flush(wait=True)
        except BusyError:
            path = self._spill()
            self.on_message(
                f"database stayed busy: wrote {self.pending} run(s) to {path}; "
                f"add them with `dmdb ingest {self.db.path} {path}`"
            )
            self._parts = []

    def _spill(self) -> Path:
        staged = batch_to_arrow(self._batch())
        base = Path(self.db.path)
        path = base.with_name(f"{base.stem}.pending-{utcnow():%Y%m%d-%H%M%S}.parquet")
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(staged, tmp)
        tmp.rename(path)
        return path

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Flush on every exit, Ctrl-C included: trained runs are never thrown away.
        self.close()


class ShardWriter(RunBuffer):
    """Buffer runs and write them as Arrow IPC shard files of at most ``flush_runs`` runs.

    Each shard is written as ``NAME.tmp`` and renamed into place once complete, so
    a reader (``dmdb ingest DIR``, which skips ``.tmp`` files) never sees half a file.

    Parameters
    ----------
    folder : Path
        Created if missing.
    prefix : str
        The start of every shard's file name (a worker's own prefix keeps workers apart).
    """

    def __init__(self, folder: Path, prefix: str, n_train: int, n_targets: int, *,
                 flush_runs: int = 256, trainer: str | None = None) -> None:
        super().__init__(n_train, n_targets, flush_runs=flush_runs, trainer=trainer)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.paths: list[Path] = []

    def flush(self, wait: bool = True) -> Path | None:
        batch = self.take()
        if batch is None:
            return None
        first = int(batch.draw[0]) if batch.draw is not None else len(self.paths)
        path = self.folder / f"{self.prefix}-d{first:09d}-n{len(batch)}.arrow"
        write_shard(batch_to_arrow(batch), path)
        self.paths.append(path)
        return path

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_shard(table: pa.Table, path: Path) -> None:
    """Write an Arrow IPC file as ``path.tmp`` and rename it into place."""
    import pyarrow.ipc as ipc

    tmp = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, table.schema) as out:
        out.write_table(table)
    os.replace(tmp, path)
