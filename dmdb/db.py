"""The dmdb database: one experiment per DuckDB file.

A :class:`Database` holds a path, not an open file. DuckDB lets one process hold
a file at a time (even a reader in another process is locked out), so every
operation opens the file, does its work and closes it again; a long training
job therefore holds the lock only while it flushes. An in-memory database
(``":memory:"``) keeps one connection for its lifetime.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from dmdb import migrations
from dmdb.codec import decode_runs, display_path, quote_literal, utcnow
from dmdb.errors import BusyError, DatabaseError, InputError, UsageError

MAX_TARGETS = 100_000  # DuckDB's ARRAY size limit (FLOAT[M])
# N is not bound by an ARRAY (masks are packed BLOBs); this keeps init's own tables
# (one row per training example) to a few hundred MB. ImageNet's N is 1.28M.
MAX_TRAIN = 10_000_000
# Each shipped file is written with this storage version so that PyPI's duckdb-cli
# 1.5.x (the DuckDB shell users have) can open it.
STORAGE_VERSION = "v1.5.0"
# Small row groups: runs are fat rows (N/8 + 4M bytes), so a full 2,048-run group
# is written straight to the file at commit instead of through the WAL, and a
# checkpoint never rewrites a huge half-full group (see DESIGN.md).
ROW_GROUP_SIZE = 2048
# Seconds to retry while another process holds the file, unless a caller says otherwise
# (`dmdb --wait SECONDS COMMAND` sets it for one command).
DEFAULT_BUSY_TIMEOUT = 10.0
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.1


def _is_lock_error(e: Exception) -> bool:
    msg = str(e)
    return "lock on file" in msg or "Conflicting lock" in msg


_READ_ONLY_FS = ("{path} is on a read-only file system; reads still work (copy it somewhere "
                 "writable to change it)")


def _open_error(path: str, e: Exception, write: bool) -> DatabaseError:
    """One line for a file DuckDB would not open, saying what to do about it."""
    first = str(e).splitlines()[0]
    if "Unique file handle conflict" in first:
        return DatabaseError(
            f"{path} is already open in this process (a notebook's duckdb connection?); "
            "close that connection, or pass it in: dmdb.connect(con)"
        )
    if "Permission denied" in first and write:
        return DatabaseError(f"{path}: no permission to write this file; reads still work")
    if "Read-only file system" in first and write:
        return DatabaseError(_READ_ONLY_FS.format(path=path))
    return DatabaseError(f"{path}: cannot open: {first}")


def _attached_file(con: duckdb.DuckDBPyConnection) -> tuple[str, bool]:
    """The file behind a user's connection (its current database) and whether it is read-only."""
    rows = con.execute(
        "SELECT path, readonly FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchall()
    if not rows:
        raise DatabaseError("the connection has no current database")
    path, read_only = rows[0]
    return (path or ":memory:"), bool(read_only)


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


class Database:
    """A dmdb database file (or an in-memory database, or a user's open connection).

    Parameters
    ----------
    path : str, Path, or duckdb.DuckDBPyConnection
        The DuckDB file, ":memory:", or a connection the caller already holds (a
        notebook's ``duckdb.connect(path)``): dmdb then works through cursors of it
        instead of opening the file a second time, which DuckDB refuses within one
        process ("Unique file handle conflict").
    read_only : bool
        Never write: nothing is migrated and nothing can be written. Reads open the
        file read-only in any case, so many processes can read at once.
    busy_timeout : float, optional
        Seconds to keep retrying while another process holds the file lock
        (default :data:`DEFAULT_BUSY_TIMEOUT`, 10 s).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | duckdb.DuckDBPyConnection,
        *,
        read_only: bool = False,
        busy_timeout: float | None = None,
        _creating: bool = False,
    ) -> None:
        self._user: duckdb.DuckDBPyConnection | None = None
        if isinstance(path, duckdb.DuckDBPyConnection):
            self._user = path
            path, user_read_only = _attached_file(path)
            read_only = read_only or user_read_only
        self.path = str(path)
        self.read_only = read_only
        self.busy_timeout = DEFAULT_BUSY_TIMEOUT if busy_timeout is None else busy_timeout
        self._memory: duckdb.DuckDBPyConnection | None = None
        self._experiment: Experiment | None = None
        self._fingerprint: str | None = None
        # init() creates the file and its schema, so there is nothing to check or migrate.
        self._checked: set[bool] = {False, True} if _creating else set()
        if self.in_memory and self._user is None:
            self._memory = duckdb.connect()
        elif not _creating and self._user is None and not Path(self.path).exists():
            raise DatabaseError(f"{self.path}: no such database; create it with `dmdb init`")
        if self._user is None:
            _check_utf8(self.path)

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
                    raise _open_error(self.path, e, write) from e
                if time.monotonic() >= deadline:
                    raise BusyError(
                        f"{self.path}: database is busy (another process is writing to it); "
                        "retry when it has finished, or wait longer with --wait SECONDS"
                        if not write else
                        f"{self.path}: database is busy (another process has it open); "
                        "retry when it has finished, or wait longer with --wait SECONDS"
                    ) from e
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    @contextmanager
    def session(
        self, write: bool = False, create: bool = False
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one operation; the file is released when the block ends.

        Reads open the file READ_ONLY, so they run beside other readers.
        """
        if write and self.read_only:
            raise UsageError(
                f"{self.path} was opened read-only; open it for writing to change it"
                if self._user is None else
                f"{self.path}: the connection passed to dmdb is read-only; pass a "
                "read-write connection (duckdb.connect(path)) to write"
            )
        if self._memory is not None:
            yield self._memory
            return
        con = self._user.cursor() if self._user is not None else self._open(write, create)
        try:
            if write and not create:
                con.execute("SET checkpoint_threshold = '1GB'")
            yield con
        finally:
            con.close()

    def _check_schema(self, con: duckdb.DuckDBPyConnection, write: bool) -> None:
        """Refuse a newer or empty file; a write migrates an older one, a read refuses it."""
        version = migrations.db_version(con)
        if version == 0:
            raise DatabaseError(f"{self.path}: empty database; create it with `dmdb init`")
        migrations.check_not_newer(version)
        if version < migrations.code_version():
            if not write:
                raise DatabaseError(
                    f"{self.path} has schema version {version}, older than this dmdb's "
                    f"{migrations.code_version()}; open it once without read-only to migrate "
                    f"it: `dmdb migrate {self.path}`"
                )
            exp = self._read_experiment(con)
            migrations.migrate(con, n_train=exp.n_train, n_targets=exp.n_targets)
        if write:
            migrations.install_queries(con)

    @contextmanager
    def connection(self, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to a database whose schema is current (checked once per mode)."""
        if not write and False not in self._checked and not self.read_only:
            # A read opens read-only and cannot migrate; a Database that may write
            # migrates an older file first (read_only=True never does).
            with self.session(write=False) as con:
                older = self._schema_version(con) < migrations.code_version()
            if older:
                with self.connection(write=True):
                    pass
                self._checked.add(False)
        with self.session(write=write) as con:
            try:
                if write not in self._checked:
                    self._check_schema(con, write)
                    self._checked.add(write)
                yield con
            except duckdb.Error as e:
                raise DatabaseError(str(e).splitlines()[0]) from e

    def _schema_version(self, con: duckdb.DuckDBPyConnection) -> int:
        try:
            return migrations.db_version(con)
        except duckdb.Error as e:
            raise DatabaseError(f"{self.path}: {str(e).splitlines()[0]}") from e

    def migrate(self) -> int:
        """Bring an older file up to this dmdb's schema; return the schema version."""
        with self.connection(write=True) as con:
            return migrations.db_version(con)

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

    @property
    def fingerprint(self) -> str:
        """The experiment fingerprint: a sha256 of what defines the experiment.

        N, M, the seed, the dataset, the split fractions and the labels of the
        training and target examples; not the file's name or creation time, so a
        fresh ``dmdb init`` of the same experiment has the same fingerprint, and the
        runs that dmdb draws for it get the same ids. Workers carry it in their
        spec and shards; ingest refuses shards made for another experiment.
        """
        if self._fingerprint is None:
            exp = self.experiment
            with self.connection() as con:
                labels = [
                    con.sql(f"SELECT list(label ORDER BY {key}) FROM {table}").fetchall()[0][0]
                    for table, key in (("train_examples", "train_idx"), ("targets", "target_idx"))
                ]
            self._fingerprint = experiment_fingerprint(
                n_train=exp.n_train, n_targets=exp.n_targets, seed=exp.seed,
                dataset=exp.dataset, val_fraction=exp.val_fraction,
                test_fraction=exp.test_fraction, train_labels=labels[0], target_labels=labels[1],
            )
        return self._fingerprint

    # -- writing ------------------------------------------------------------------------

    def ingest(self, data: Any, *, source: str | None = None, progress: bool = False) -> Any:
        """Add runs; see :func:`dmdb.ingest.ingest`, which this calls (kept for notebooks)."""
        from dmdb.ingest import ingest  # the one upward call: a public method kept by name

        return ingest(self, data, source=source, progress=progress)

    def check_can_write(self) -> None:
        """Refuse at once, in one line, a file that can never be written here.

        For work that writes only at its end or in the background (training streams
        its runs), so that it does not train first and fail later: a read-only
        Database, a file without write permission, or one on a read-only file system.
        A busy file is not refused: it may be free by the time it is written.
        """
        if self.read_only:
            with self.session(write=True):
                pass  # raises the read-only UsageError
        if self.in_memory or self._user is not None:
            return
        if os.statvfs(self.path).f_flag & os.ST_RDONLY:
            raise DatabaseError(_READ_ONLY_FS.format(path=self.path))
        if not os.access(self.path, os.W_OK):
            raise DatabaseError(f"{self.path}: no permission to write this file; reads still "
                                "work")

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write connection inside one transaction, as sqlite-utils' ``atomic()``.

        Everything in the block commits together, or nothing does: any exception
        rolls back (a DuckDB error is raised as :class:`DatabaseError`).
        """
        with self.connection(write=True) as con, migrations.transaction(con):
            yield con

    def checkpoint(self) -> None:
        """Write everything committed into the file itself (no-op in memory)."""
        if not self.in_memory:
            with self.connection(write=True) as con:
                con.execute("CHECKPOINT")

    def has_table(self, name: str) -> bool:
        """Whether the database has table ``name`` (a file read before a migration may not)."""
        rows = self.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name])
        return bool(rows.column(0)[0].as_py())

    def has_view(self, name: str) -> bool:
        """Whether the database defines view ``name`` (older files may lack newer views)."""
        rows = self.sql("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [name])
        return bool(rows.column(0)[0].as_py())

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
                    yield decode_runs(pa.Table.from_batches(buffered), n_train)
                    buffered, count = [], 0
            if buffered:
                yield decode_runs(pa.Table.from_batches(buffered), n_train)

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
        """Run one of dmdb's own queries read-only and return the result as Arrow.

        For a query typed by a user, use :meth:`read_query`, which also refuses
        anything that could write.
        """
        with self.connection(write=False) as con:
            return con.sql(query, params=params).to_arrow_table()

    def read_query(self, query: str) -> pa.Table:
        """Run a user's query, which must be one SELECT, WITH, DESCRIBE, SHOW, EXPLAIN or
        SUMMARIZE statement; anything else is refused before it runs.

        The file is attached read-only and then DuckDB's own controls are locked:
        no file access outside the attached database (no ATTACH, COPY, EXPORT,
        read_csv of other files) and no configuration changes.
        """
        kinds = _statement_kinds(query)
        with self.connection(write=False) as con:
            if self._user is None and self._memory is None:
                con.execute("SET enable_external_access = false")
                con.execute("SET lock_configuration = true")
            if kinds != ["SELECT"] and kinds != ["EXPLAIN"]:
                raise UsageError(_refusal(kinds))
            return con.sql(query).to_arrow_table()

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


    def check_fit(self, fit_id: int) -> None:
        """Raise UsageError unless fit ``fit_id`` exists."""
        found = self.sql("SELECT count(*) FROM fits WHERE fit_id = ?", [int(fit_id)])
        if found.column(0)[0].as_py() == 0:
            raise UsageError(f"no fit {fit_id}; `dmdb fits DB` lists them")

    def load_fit(self, fit_id: int) -> tuple[np.ndarray, Any]:
        """A fit's bias, float64 (M,), and weights, scipy CSR (M x N), in mask space.

        prediction(S) = bias + weights[:, S].sum(axis=1). Targets outside the fit's
        target range have bias NaN and no weights.
        """
        import scipy.sparse as sp

        exp = self.experiment
        self.check_fit(fit_id)
        dm = self.sql("SELECT target_idx, bias FROM datamodels WHERE fit_id = ?", [fit_id])
        bias = np.full(exp.n_targets, np.nan)
        bias[dm.column("target_idx").to_numpy()] = dm.column("bias").to_numpy()
        w = self.sql("SELECT target_idx, train_idx, weight FROM weights WHERE fit_id = ?",
                     [fit_id])
        weights = sp.csr_matrix(
            (w.column("weight").to_numpy(), (w.column("target_idx").to_numpy(),
                                             w.column("train_idx").to_numpy())),
            shape=(exp.n_targets, exp.n_train), dtype=np.float32,
        )
        return bias, weights

    def load_interactions(self, fit_id: int) -> Any:
        """A fit's pairwise weights (migration 0005): (target_idx, train_a, train_b, weight).

        int64 arrays for the indices and a float32 array for the weights, with
        ``train_a < train_b``; all empty for a linear fit. prediction(S) adds the
        weights of the pairs with both members in S to :meth:`load_fit`'s sum.
        """
        self.check_fit(fit_id)
        if not self.has_table("interactions"):
            empty = np.zeros(0, np.int64)
            return empty, empty, empty, np.zeros(0, np.float32)
        t = self.sql("SELECT target_idx, train_a, train_b, weight FROM interactions "
                     "WHERE fit_id = ? ORDER BY target_idx, train_a, train_b", [fit_id])
        return (*(t.column(c).to_numpy().astype(np.int64)
                  for c in ("target_idx", "train_a", "train_b")),
                t.column("weight").to_numpy().astype(np.float32))


def experiment_fingerprint(
    *, n_train: int, n_targets: int, seed: int, dataset: str | None, val_fraction: float,
    test_fraction: float, train_labels: list[Any] | None, target_labels: list[Any] | None,
) -> str:
    """sha256 (hex) of an experiment's defining facts; see :attr:`Database.fingerprint`."""
    facts = {
        "n_train": int(n_train), "n_targets": int(n_targets), "seed": int(seed),
        "dataset": dataset, "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction),
        "train_labels": hashlib.sha256(json.dumps(train_labels).encode()).hexdigest(),
        "target_labels": hashlib.sha256(json.dumps(target_labels).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _statement_kinds(query: str) -> list[str]:
    """The statement types of ``query``, from DuckDB's own parser."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise UsageError(f"cannot parse the query: {str(e).splitlines()[0]}") from e
    return [s.type.name for s in statements]


def _refusal(kinds: list[str]) -> str:
    allowed = "SELECT, WITH, DESCRIBE, SHOW, EXPLAIN or SUMMARIZE"
    if not kinds:
        return f"empty query; give one {allowed} statement"
    if len(kinds) > 1:
        return f"{len(kinds)} statements given; `dmdb sql` runs exactly one ({allowed})"
    return f"`dmdb sql` is read-only: {kinds[0]} statements are not allowed; give one {allowed}"


def connect(
    path: str | os.PathLike[str] | duckdb.DuckDBPyConnection,
    *,
    read_only: bool = False,
    busy_timeout: float | None = None,
) -> Database:
    """Open an existing dmdb database (see :func:`init` to create one).

    ``path`` may be a DuckDB connection the caller holds (``dmdb.connect(con)``), so
    that dmdb works beside a notebook's own connection to the same file.
    """
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
    _check_init_memory(n_train, n_targets, train_pixels, target_pixels)
    path = str(path)
    _check_utf8(path)
    in_memory = path == ":memory:"
    building = path
    if not in_memory:
        p = Path(path)
        if p.is_dir():
            raise UsageError(f"{path} is a folder, not a database file")
        if p.exists() and not force:
            raise UsageError(f"{path} already exists; use --force to replace it")
        if not p.parent.is_dir():
            raise UsageError(f"{p.parent}: no such folder")
        if not os.access(p.parent, os.W_OK):
            raise UsageError(f"{p.parent}: no permission to create files in this folder")
        # Built under a temporary name and renamed into place once complete, so a
        # killed init never leaves a file that looks like a database.
        building = str(p.with_name(f".{p.name}.init-{os.getpid()}"))
        _remove_database_file(building)
        _remove_stale_builds(p)
    db = Database(building, _creating=True)
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
    except BaseException as e:
        if not in_memory:
            _remove_database_file(building)
        if isinstance(e, duckdb.Error):
            raise DatabaseError(f"init failed: {str(e).splitlines()[0]}") from e
        raise
    if in_memory:
        return db
    Path(path + ".wal").unlink(missing_ok=True)
    os.replace(building, path)
    return Database(path, _creating=True)


def _check_utf8(path: str) -> None:
    """DuckDB opens only file names that are valid UTF-8: refuse others in one line."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{display_path(path)}: DuckDB opens only file names that are valid "
                         "UTF-8; rename the file (or a folder above it)") from None


def _remove_stale_builds(p: Path) -> None:
    """Remove what killed inits of ``p`` left behind (.NAME.init-PID, whose PID is gone)."""
    prefix = f".{p.name}.init-"
    for left in p.parent.iterdir():
        pid = left.name[len(prefix):].removesuffix(".wal")
        if left.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            left.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_database_file(path: str) -> None:
    Path(path).unlink(missing_ok=True)
    Path(path + ".wal").unlink(missing_ok=True)


def _check_init_args(
    n_train: int, n_targets: int, seed: int, val_fraction: float, test_fraction: float
) -> None:
    if n_train < 1:
        raise UsageError(f"--train-size must be positive, got {n_train}")
    if n_train > MAX_TRAIN:
        raise UsageError(f"--train-size {n_train:,} is over dmdb's limit of {MAX_TRAIN:,} "
                         "training examples")
    if not 1 <= n_targets <= MAX_TARGETS:
        raise UsageError(
            f"--targets must be in 1..{MAX_TARGETS} (DuckDB's array size limit), got {n_targets}"
        )
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be a non-negative 64-bit integer, got {seed}")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UsageError("validation and test fractions must be in (0, 1) and sum below 1")


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_init_memory(
    n_train: int, n_targets: int, train_pixels: np.ndarray | None,
    target_pixels: np.ndarray | None,
) -> None:
    """Refuse an init whose examples' tables would not fit in memory, before allocating.

    init holds, per example, an int32 index and an int32 label, and for pixels a
    float32 copy plus the Arrow list built over it (8 bytes a value); a pixel array
    may be a view that has not allocated its values yet (np.broadcast_to).
    """
    need = 8 * (n_train + n_targets)
    for pixels in (train_pixels, target_pixels):
        if pixels is not None:
            need += 8 * math.prod(np.shape(pixels))
    available = _available_memory()
    if available is not None and need > available:
        raise UsageError(
            f"init would need about {need / 2**30:,.1f} GiB of memory for the examples' labels "
            f"and pixels, but only {available / 2**30:,.1f} GiB is available; give fewer "
            "training examples or targets, or smaller pixels"
        )


def _insert_experiment(
    con: duckdb.DuckDBPyConnection, name: str, dataset: str | None, n_train: int,
    n_targets: int, seed: int, val_fraction: float, test_fraction: float, config: dict[str, Any],
) -> None:
    con.execute(
        "INSERT INTO experiment VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [name, dataset, n_train, n_targets, seed, val_fraction, test_fraction, utcnow(),
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

