"""The dmdb database: one experiment per DuckDB file.

A :class:`Database` holds a path, not an open file. DuckDB lets one process hold
a file at a time (even a reader in another process is locked out), so every
operation opens the file, does its work and closes it again; a long training
job therefore holds the lock only while it flushes. An in-memory database
(``":memory:"``) keeps one connection for its lifetime.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from dmdb import migrations
from dmdb.errors import BusyError, DatabaseError, DmdbError, InputError, UsageError
from dmdb.resources import sql_text
from dmdb.runs import binary_rows, complete, unpack_masks, validate
from dmdb.sources import ArrowSource, Source

MAX_TARGETS = 100_000  # DuckDB's ARRAY size limit (FLOAT[M])
# Each shipped file is written with this storage version so that PyPI's duckdb-cli
# 1.5.x (the DuckDB shell users have) can open it.
STORAGE_VERSION = "v1.5.0"
# Small row groups: runs are fat rows (N/8 + 4M bytes), so a full 2,048-run group
# is written straight to the file at commit instead of through the WAL, and a
# checkpoint never rewrites a huge half-full group (see DESIGN.md).
ROW_GROUP_SIZE = 2048
# Runs per write transaction; large, to avoid DuckDB's small-insert slowdown.
WRITE_RUNS = 4096
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.1


def quote_literal(text: str) -> str:
    """Quote a string as a SQL literal. Used only where DuckDB takes no parameter (ATTACH)."""
    return "'" + text.replace("'", "''") + "'"


def _is_lock_error(e: Exception) -> bool:
    msg = str(e)
    return "lock on file" in msg or "Conflicting lock" in msg


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass
class Experiment:
    """The experiment row of a database."""

    name: str
    dataset: str | None
    n_train: int
    n_targets: int
    seed: int
    val_fraction: float
    test_fraction: float
    created_at: datetime
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class IngestResult:
    """What one ingest did."""

    n_input: int = 0
    n_new: int = 0
    n_skipped: int = 0
    files_skipped: int = 0
    warnings: list[str] = field(default_factory=list)


class Database:
    """A dmdb database file (or an in-memory database).

    Parameters
    ----------
    path : str or Path
        The DuckDB file, or ":memory:".
    read_only : bool
        Open read-only: nothing is migrated and nothing can be written.
    busy_timeout : float
        Seconds to keep retrying while another process holds the file lock.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        busy_timeout: float = 10.0,
        _creating: bool = False,
    ) -> None:
        self.path = str(path)
        self.read_only = read_only
        self.busy_timeout = busy_timeout
        self._memory: duckdb.DuckDBPyConnection | None = None
        self._experiment: Experiment | None = None
        # init() creates the file and its schema, so there is nothing to check or migrate.
        self._current = _creating
        if self.in_memory:
            self._memory = duckdb.connect()
        elif not _creating and not Path(self.path).exists():
            raise DatabaseError(f"{self.path}: no such database; create it with `dmdb init`")

    @property
    def in_memory(self) -> bool:
        return self.path == ":memory:"

    # -- connections -------------------------------------------------------------------

    def _open(self, write: bool, create: bool = False) -> duckdb.DuckDBPyConnection:
        options = [f"ROW_GROUP_SIZE {ROW_GROUP_SIZE}"]
        if create:
            options.append(f"STORAGE_VERSION {quote_literal(STORAGE_VERSION)}")
        if not write:
            options = ["READ_ONLY"]
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.05
        while True:
            con = duckdb.connect()
            try:
                con.execute(f"ATTACH {quote_literal(self.path)} AS dmdb ({', '.join(options)})")
                con.execute("USE dmdb")
                return con
            except duckdb.Error as e:
                con.close()
                if not _is_lock_error(e):
                    first = str(e).splitlines()[0]
                    raise DatabaseError(f"{self.path}: cannot open: {first}") from e
                if time.monotonic() >= deadline:
                    raise BusyError(
                        f"{self.path}: database is busy (another process holds it); "
                        "retry when it has finished writing"
                    ) from e
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    @contextmanager
    def session(
        self, write: bool = False, create: bool = False
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one operation; the file is released when the block ends."""
        if write and self.read_only:
            raise UsageError(f"{self.path} was opened read-only")
        if self._memory is not None:
            yield self._memory
            return
        con = self._open(write, create)
        try:
            if write and not create:
                con.execute("SET checkpoint_threshold = '1GB'")
            yield con
        finally:
            con.close()

    def _check_schema(self, con: duckdb.DuckDBPyConnection, write: bool) -> None:
        version = migrations.db_version(con)
        if version == 0:
            raise DatabaseError(f"{self.path}: empty database; create it with `dmdb init`")
        migrations.check_not_newer(version)
        if version < migrations.code_version():
            if not write:
                raise DatabaseError(
                    f"{self.path} has schema version {version}, older than this dmdb's "
                    f"{migrations.code_version()}; open it once without read-only to migrate it"
                )
            exp = self._read_experiment(con)
            migrations.migrate(con, n_train=exp.n_train, n_targets=exp.n_targets)
        if write:
            migrations.install_queries(con)

    def _ensure_current(self) -> None:
        """Once per Database: migrate an older file (unless opened read-only)."""
        if self._current:
            return
        with self.session(write=not self.read_only) as con:
            try:
                self._check_schema(con, write=not self.read_only)
            except duckdb.Error as e:
                raise DatabaseError(str(e).splitlines()[0]) from e
        self._current = True

    @contextmanager
    def connection(self, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to a database whose schema is current."""
        self._ensure_current()
        with self.session(write=write) as con:
            try:
                yield con
            except duckdb.Error as e:
                raise DatabaseError(str(e).splitlines()[0]) from e

    # -- the experiment ----------------------------------------------------------------

    @staticmethod
    def _read_experiment(con: duckdb.DuckDBPyConnection) -> Experiment:
        rows = con.execute(
            "SELECT name, dataset, n_train, n_targets, seed, val_fraction, test_fraction, "
            "created_at, config FROM experiment"
        ).fetchall()
        if len(rows) != 1:
            raise DatabaseError(f"expected one experiment row, found {len(rows)}")
        r = rows[0]
        return Experiment(
            name=r[0], dataset=r[1], n_train=int(r[2]), n_targets=int(r[3]), seed=int(r[4]),
            val_fraction=float(r[5]), test_fraction=float(r[6]), created_at=r[7],
            config=json.loads(r[8]) if r[8] else {},
        )

    @property
    def experiment(self) -> Experiment:
        """The experiment row (cached: it never changes after init)."""
        if self._experiment is None:
            with self.connection() as con:
                self._experiment = self._read_experiment(con)
        return self._experiment

    # -- ingest ------------------------------------------------------------------------

    def ingest(
        self,
        data: pa.Table | pa.RecordBatch | pa.RecordBatchReader | Source,
        *,
        source: str | None = None,
        progress: bool = False,
    ) -> IngestResult:
        """Add runs given in the run schema (see :mod:`dmdb.sources`).

        The whole input is validated first; nothing is written if any of it is bad.
        Runs already present (same run_id and content) are skipped, so ingesting
        the same runs again is a no-op; a known run_id with other content is an
        InputError.

        Parameters
        ----------
        data : pyarrow Table, RecordBatch, RecordBatchReader, or a dmdb Source
            A RecordBatchReader is drained into memory first; for data larger
            than memory write shard files and ingest those.
        source : str, optional
            Provenance recorded in runs.source for rows that carry none.
        progress : bool
            Show a progress bar.
        """
        src = self._as_source(data, source)
        exp = self.experiment
        result = IngestResult()
        with self.connection(write=True) as con:
            done = self._ingested_files(con)
            pending = [k for k in src.files if k not in done]
            result.files_skipped = len(src.files) - len(pending)
            if src.files and not pending:
                return result
            staged = list(self._stage(con, src, exp))  # pass 1: validate everything
            result.n_input = sum(n for _, n, _ in staged)
            new = [t for _, _, t in staged if t.num_rows]
            result.n_new = sum(t.num_rows for t in new)
            result.n_skipped = result.n_input - result.n_new
            # A shard's batches are labelled with its path: count its runs for the record.
            per_file: dict[str, int] = {}
            for where, n, _ in staged:
                key = str(Path(where).resolve())
                per_file[key] = per_file.get(key, 0) + n
            files = [(key, per_file.get(key[0], 0)) for key in pending]
            self._write(con, new, files, progress)
        return result

    @staticmethod
    def _as_source(data: Any, label: str | None) -> Source:
        if isinstance(data, Source):
            return data
        if isinstance(data, pa.RecordBatchReader):
            data = data.read_all()
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if not isinstance(data, pa.Table):
            raise InputError(
                f"cannot ingest a {type(data).__name__}; pass a pyarrow Table, RecordBatch "
                "or RecordBatchReader in the run schema"
            )
        return ArrowSource(data, label=label or "input")

    @staticmethod
    def _ingested_files(con: duckdb.DuckDBPyConnection) -> set[tuple[str, int, int]]:
        rows = con.execute("SELECT path, size, mtime_ns FROM ingested_files").fetchall()
        return {(r[0], int(r[1]), int(r[2])) for r in rows}

    def _stage(
        self, con: duckdb.DuckDBPyConnection, src: Source, exp: Experiment
    ) -> Iterator[tuple[str, int, pa.Table]]:
        """Validate every batch; yield where it came from, its run count, and its new runs."""
        seen: dict[int, int] = {}
        for where, batch in src.batches(exp.n_train, exp.n_targets):
            validate(batch, n_train=exp.n_train, n_targets=exp.n_targets, where=where)
            if batch.source is None:
                batch.source = src.label
            table = complete(
                batch, seed=exp.seed, val_fraction=exp.val_fraction, test_fraction=exp.test_fraction
            )
            table = self._dedupe_input(table, seen, where)
            yield where, table.num_rows, self._drop_existing(con, table, where)

    @staticmethod
    def _dedupe_input(table: pa.Table, seen: dict[int, int], where: str) -> pa.Table:
        """Drop runs repeated within the input; a repeated run_id must have equal content."""
        ids = table.column("run_id").to_numpy()
        hashes = table.column("content_hash").to_numpy()
        keep = np.ones(len(ids), dtype=bool)
        for i, (rid, h) in enumerate(zip(ids.tolist(), hashes.tolist(), strict=True)):
            if rid in seen:
                if seen[rid] != h:
                    raise InputError(f"{where}: run_id {rid} appears twice with different content")
                keep[i] = False
            else:
                seen[rid] = h
        return table if keep.all() else table.filter(pa.array(keep))

    @staticmethod
    def _drop_existing(con: duckdb.DuckDBPyConnection, staged: pa.Table, where: str) -> pa.Table:
        """The staged runs not yet in the database; a known run_id with other content is refused."""
        existing = con.execute(sql_text("ingest", "existing_runs")).fetchall()
        if not existing:
            return staged
        stored = dict(existing)
        ids = staged.column("run_id").to_numpy()
        hashes = staged.column("content_hash").to_numpy()
        for rid, h in zip(ids.tolist(), hashes.tolist(), strict=True):
            if rid in stored and stored[rid] != h:
                raise InputError(
                    f"{where}: run_id {rid} is already in the database with different content; "
                    "runs are never overwritten"
                )
        keep = ~np.isin(ids, np.fromiter(stored, np.int64, len(stored)))
        return staged if keep.all() else staged.filter(pa.array(keep))

    def _write(
        self,
        con: duckdb.DuckDBPyConnection,
        tables: list[pa.Table],
        files: list[tuple[tuple[str, int, int], int]],
        progress: bool,
    ) -> None:
        """Pass 2: insert in large transactions, each checkpointed as it commits."""
        from tqdm.auto import tqdm

        total = sum(t.num_rows for t in tables)
        bar = tqdm(total=total, unit="run", desc="ingest", disable=not progress or total == 0)
        groups: list[list[pa.Table]] = [[]]
        for t in tables:
            if groups[-1] and sum(x.num_rows for x in groups[-1]) + t.num_rows > WRITE_RUNS:
                groups.append([])
            groups[-1].append(t)
        # Commits skip the WAL: a transaction smaller than a row group would otherwise
        # be written twice, to the WAL and again by the checkpoint. With both
        # thresholds at their minimum every commit checkpoints instead, so each
        # transaction is durable in the file itself. A transaction of less than a row
        # group runs on one thread, which appends fat array rows about twice as fast
        # (with more, the Arrow scan's chunks are buffered and reordered); larger ones
        # keep every thread, which compress the full row groups they write.
        settings = ("threads", "checkpoint_threshold", "auto_checkpoint_skip_wal_threshold")
        saved = [con.sql(f"SELECT current_setting('{k}')").fetchall()[0][0] for k in settings]
        if not self.in_memory:
            con.execute("SET checkpoint_threshold = '1B'")
            con.execute("SET auto_checkpoint_skip_wal_threshold = 1")
        try:
            for i, group in enumerate(groups):
                staged = pa.concat_tables(group) if group else None  # noqa: F841 (used by SQL)
                small = staged is None or staged.num_rows < ROW_GROUP_SIZE
                con.execute(f"SET threads = {1 if small else int(saved[0])}")
                con.execute("BEGIN TRANSACTION")
                try:
                    if staged is not None:
                        for name in ("insert_masks", "insert_margins", "insert_runs"):
                            con.execute(sql_text("ingest", name))
                    if i == len(groups) - 1:
                        for key, n_runs in files:
                            con.execute(sql_text("ingest", "record_file"), [*key, n_runs, _now()])
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                bar.update(0 if staged is None else staged.num_rows)
        finally:
            for k, v in zip(settings, saved, strict=True):
                con.execute(f"SET {k} = {quote_literal(str(v))}")
            bar.close()

    # -- reading runs ------------------------------------------------------------------

    def _run_filter(
        self, split: str | None, alpha: float | None, run_ids: np.ndarray | None
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if split is None:
            clauses.append("r.split <> 'verify'")
        else:
            if split not in ("fit", "val", "test", "verify"):
                raise UsageError(f"unknown split {split!r}; use fit, val, test or verify")
            clauses.append("r.split = ?")
            params.append(split)
        if alpha is not None:
            clauses.append("abs(r.alpha - ?) < 1e-9")
            params.append(float(alpha))
        if run_ids is not None:
            clauses.append("r.run_id IN (SELECT unnest(?::BIGINT[]))")
            params.append([int(x) for x in run_ids])
        return " AND ".join(clauses), params

    def run_ids(
        self, split: str | None = None, alpha: float | None = None
    ) -> np.ndarray:
        """The run ids matching the filter, in run_id order (int64)."""
        where, params = self._run_filter(split, alpha, None)
        with self.connection() as con:
            rows = con.sql(
                f"SELECT run_id FROM runs r WHERE {where} ORDER BY run_id", params=params
            ).fetchnumpy()
        return rows["run_id"].astype(np.int64)

    def iter_runs(
        self,
        split: str | None = None,
        alpha: float | None = None,
        *,
        run_ids: np.ndarray | None = None,
        chunk_runs: int = 4096,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (run_ids, masks, margins) chunks of about ``chunk_runs`` runs.

        One pass over the tables in storage order (no sort of the fat rows), so it
        streams data larger than memory; each chunk is sorted by run_id. See
        :meth:`load_runs` for the arguments and array types.
        """
        n_train = self.experiment.n_train
        where, params = self._run_filter(split, alpha, run_ids)
        query = (
            "SELECT r.run_id, k.mask, m.margins FROM runs r JOIN masks k USING (run_id) "
            f"JOIN margins m USING (run_id) WHERE {where}"
        )
        with self.connection() as con:
            reader = con.sql(query, params=params).to_arrow_reader(min(chunk_runs, 1 << 20))
            buffered: list[pa.RecordBatch] = []
            count = 0
            for rb in reader:
                buffered.append(rb)
                count += rb.num_rows
                if count >= chunk_runs:
                    yield _decode(pa.Table.from_batches(buffered), n_train)
                    buffered, count = [], 0
            if buffered:
                yield _decode(pa.Table.from_batches(buffered), n_train)

    def load_runs(
        self,
        split: str | None = None,
        alpha: float | None = None,
        *,
        run_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Load runs into memory, in run_id order.

        Parameters
        ----------
        split : {'fit', 'val', 'test', 'verify'}, optional
            Without it, every run except 'verify' runs.
        alpha : float, optional
            Only runs drawn at this subset fraction.
        run_ids : int array, optional
            Only these runs.

        Returns
        -------
        run_ids : int64 array of shape (R,), ascending
        masks : bool array of shape (R, N)
        margins : float32 array of shape (R, M)
        """
        exp = self.experiment
        parts = list(self.iter_runs(split, alpha, run_ids=run_ids, chunk_runs=1 << 62))
        if not parts:
            return (
                np.zeros(0, np.int64),
                np.zeros((0, exp.n_train), bool),
                np.zeros((0, exp.n_targets), np.float32),
            )
        if len(parts) == 1:
            return parts[0]
        ids, masks, margins = (np.concatenate(x) for x in zip(*parts, strict=True))
        order = np.argsort(ids, kind="stable")
        return ids[order], masks[order], margins[order]

    # -- queries -----------------------------------------------------------------------

    def sql(self, query: str, params: list[Any] | None = None) -> pa.Table:
        """Run a query read-only (on a file) and return the result as Arrow."""
        with self.session(write=False) as con:
            try:
                return con.sql(query, params=params).to_arrow_table()
            except duckdb.Error as e:
                raise DatabaseError(str(e).splitlines()[0]) from e

    def status(self) -> dict[str, Any]:
        """The experiment, the run counts by alpha and split, the fits and the file size."""
        exp = self.experiment
        with self.connection() as con:
            runs = con.sql("SELECT * FROM run_summary").fetchall()
            fits = con.sql(
                "SELECT f.fit_id, f.created_at, f.solver, f.alpha, f.n_fit, f.n_val, f.n_test, "
                "avg(d.test_spearman) AS mean_lds, count(d.target_idx) AS n_targets, "
                "json_extract_string(f.parameters, '$.learning_curve_of') AS learning_curve_of "
                "FROM fits f LEFT JOIN datamodels d USING (fit_id) GROUP BY ALL ORDER BY fit_id"
            ).fetchall()
        size = 0 if self.in_memory else os.path.getsize(self.path)
        return {"experiment": exp, "runs": runs, "fits": fits, "file_bytes": size}


    def load_fit(self, fit_id: int) -> tuple[np.ndarray, Any]:
        """A fit's bias, float64 (M,), and weights, scipy CSR (M x N), in mask space.

        prediction(S) = bias + weights[:, S].sum(axis=1). Targets outside the fit's
        target range have bias NaN and no weights.
        """
        from dmdb.fitting import load_fit

        return load_fit(self, fit_id)


def _decode(table: pa.Table, n_train: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrow (run_id, mask blob, margins array) into numpy without per-row Python."""
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


def connect(
    path: str | os.PathLike[str], *, read_only: bool = False, busy_timeout: float = 10.0
) -> Database:
    """Open an existing dmdb database (see :func:`init` to create one)."""
    return Database(path, read_only=read_only, busy_timeout=busy_timeout)


def init(
    path: str | os.PathLike[str],
    *,
    n_train: int,
    n_targets: int,
    name: str | None = None,
    seed: int = 0,
    dataset: str | None = None,
    train_labels: np.ndarray | None = None,
    target_labels: np.ndarray | None = None,
    train_pixels: np.ndarray | None = None,
    target_pixels: np.ndarray | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    config: dict[str, Any] | None = None,
    force: bool = False,
) -> Database:
    """Create a database: the schema, the experiment row, train_examples and targets.

    Parameters
    ----------
    n_train, n_targets : int
        N (mask length) and M (margins per run).
    seed : int
        The experiment seed: it draws masks and assigns splits.
    train_labels, target_labels : int arrays of shape (N,) and (M,), optional
    train_pixels, target_pixels : float arrays of shape (N, D) and (M, D), optional
        Flattened images, for reports.
    force : bool
        Replace an existing file.
    """
    _check_init_args(n_train, n_targets, seed, val_fraction, test_fraction)
    for arr, size, what in (
        (train_labels, n_train, "train labels"), (target_labels, n_targets, "target labels"),
        (train_pixels, n_train, "train pixels"), (target_pixels, n_targets, "target pixels"),
    ):
        if arr is not None and len(arr) != size:
            raise InputError(f"{len(arr)} {what} for {size} examples")
    path = str(path)
    in_memory = path == ":memory:"
    if not in_memory:
        p = Path(path)
        if p.exists():
            if not force:
                raise UsageError(f"{path} already exists; use --force to replace it")
            if p.is_dir():
                raise UsageError(f"{path} is a folder, not a database file")
            p.unlink()
            Path(path + ".wal").unlink(missing_ok=True)
        elif not p.parent.exists():
            raise UsageError(f"{p.parent}: no such folder")
    db = Database(path, _creating=True)
    try:
        with db.session(write=True, create=True) as con:
            migrations.migrate(con, n_train=n_train, n_targets=n_targets)
            _insert_experiment(
                con, name or (Path(path).stem if not in_memory else "memory"), dataset, n_train,
                n_targets, seed, val_fraction, test_fraction, config or {},
            )
            _insert_examples(
                con, "train_examples", "train_idx", n_train, train_labels, train_pixels
            )
            _insert_examples(con, "targets", "target_idx", n_targets, target_labels, target_pixels)
            migrations.install_queries(con)
            if not in_memory:
                con.execute("CHECKPOINT")
    except (DmdbError, duckdb.Error) as e:
        if not in_memory:
            Path(path).unlink(missing_ok=True)
            Path(path + ".wal").unlink(missing_ok=True)
        if isinstance(e, DmdbError):
            raise
        raise DatabaseError(f"init failed: {str(e).splitlines()[0]}") from e
    return db


def _check_init_args(
    n_train: int, n_targets: int, seed: int, val_fraction: float, test_fraction: float
) -> None:
    if n_train < 1:
        raise UsageError(f"--train-size must be positive, got {n_train}")
    if not 1 <= n_targets <= MAX_TARGETS:
        raise UsageError(
            f"--targets must be in 1..{MAX_TARGETS} (DuckDB's array size limit), got {n_targets}"
        )
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be a non-negative 64-bit integer, got {seed}")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UsageError("validation and test fractions must be in (0, 1) and sum below 1")


def _insert_experiment(
    con: duckdb.DuckDBPyConnection, name: str, dataset: str | None, n_train: int,
    n_targets: int, seed: int, val_fraction: float, test_fraction: float, config: dict[str, Any],
) -> None:
    con.execute(
        "INSERT INTO experiment VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [name, dataset, n_train, n_targets, seed, val_fraction, test_fraction, _now(),
         json.dumps(config)],
    )


def _insert_examples(
    con: duckdb.DuckDBPyConnection, table: str, key: str, n: int,
    labels: np.ndarray | None, pixels: np.ndarray | None,
) -> None:
    columns: dict[str, pa.Array] = {key: pa.array(np.arange(n, dtype=np.int32))}
    columns["label"] = (
        pa.array(np.asarray(labels, dtype=np.int32))
        if labels is not None
        else pa.nulls(n, pa.int32())
    )
    if pixels is not None:
        flat = np.asarray(pixels, dtype=np.float32).reshape(n, -1)
        columns["pixels"] = pa.ListArray.from_arrays(
            pa.array(np.arange(0, flat.size + 1, flat.shape[1], dtype=np.int32)),
            pa.array(flat.reshape(-1)),
        )
    else:
        columns["pixels"] = pa.nulls(n, pa.list_(pa.float32()))
    examples = pa.table(columns)  # noqa: F841 (read by the SQL below)
    # table and key are fixed names from this module, never user input.
    con.execute(f"INSERT INTO {table} SELECT {key}, label, pixels FROM examples")

