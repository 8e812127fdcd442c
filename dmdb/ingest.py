"""`dmdb ingest`: validate staged runs and move them into the tables, all or nothing.

The engine: a :class:`~dmdb.sources.Source` yields run batches; pass 1 validates
every batch, derives identities and splits (:mod:`dmdb.runs`) and drops runs the
database already holds; pass 2 writes the rest in large transactions with the SQL
in ``ingest/``. Nothing is written if any batch is bad. :func:`ingest_paths` turns
command-line paths (shards, npy matrices, authors' stores) into a Source first.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from dmdb import migrations
from dmdb.codec import quote_literal, utcnow
from dmdb.db import ROW_GROUP_SIZE, Database, Experiment, connect
from dmdb.errors import InputError, UsageError
from dmdb.resources import sql_text
from dmdb.runs import check_alpha, complete, validate
from dmdb.sources import (
    SHARD_SUFFIXES,
    ArrowSource,
    MultiSource,
    NpySource,
    ShardSource,
    Source,
    find_shards,
    is_store,
    store_source,
)

# Warn when the masks' density disagrees with the declared alpha by more than this.
DENSITY_TOLERANCE = 0.02
# Runs per write transaction; large, to avoid DuckDB's small-insert slowdown.
WRITE_RUNS = 4096


@dataclass
class IngestResult:
    """What one ingest did."""

    n_input: int = 0
    n_new: int = 0
    n_skipped: int = 0
    files_skipped: int = 0
    warnings: list[str] = field(default_factory=list)


def ingest(
    db: Database,
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
    db : Database
    data : pyarrow Table, RecordBatch, RecordBatchReader, or a dmdb Source
        A RecordBatchReader is drained into memory first; for data larger
        than memory write shard files and ingest those.
    source : str, optional
        Provenance recorded in runs.source for rows that carry none.
    progress : bool
        Show a progress bar.
    """
    src = _as_source(data, source)
    exp = db.experiment
    fingerprint = db.fingerprint  # read before the write connection holds the file
    result = IngestResult()
    with db.connection(write=True) as con:
        done = _ingested_files(con)
        pending = [k for k in src.files if k not in done]
        result.files_skipped = len(src.files) - len(pending)
        if src.files and not pending:
            return result
        staged = list(_stage(con, src, exp, fingerprint))  # pass 1: validate everything
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
        _write(con, new, files, progress, in_memory=db.in_memory)
    return result


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


def _ingested_files(con: duckdb.DuckDBPyConnection) -> set[tuple[str, int, int]]:
    rows = con.execute("SELECT path, size, mtime_ns FROM ingested_files").fetchall()
    return {(r[0], int(r[1]), int(r[2])) for r in rows}


def _stage(
    con: duckdb.DuckDBPyConnection, src: Source, exp: Experiment, fingerprint: str
) -> Iterator[tuple[str, int, pa.Table]]:
    """Validate every batch; yield where it came from, its run count, and its new runs."""
    seen: dict[int, int] = {}
    for where, batch in src.batches(exp.n_train, exp.n_targets):
        validate(batch, n_train=exp.n_train, n_targets=exp.n_targets, where=where)
        if batch.fingerprint is not None and batch.fingerprint != fingerprint:
            raise InputError(
                f"{where}: made for experiment fingerprint {batch.fingerprint[:16]}…, but this "
                f"database's is {fingerprint[:16]}…; ingest it into the database its spec came from"
            )
        if batch.source is None:
            batch.source = src.label
        table = complete(
            batch, seed=exp.seed, val_fraction=exp.val_fraction, test_fraction=exp.test_fraction
        )
        table = _dedupe_input(table, seen, where)
        yield where, table.num_rows, _drop_existing(con, table, where)


def _dedupe_input(table: pa.Table, seen: dict[int, int], where: str) -> pa.Table:
    """Drop runs repeated within the input; a repeated run_id must have equal content,
    unless dmdb drew it (then its identity is the draw, and the first copy wins)."""
    ids = table.column("run_id").to_numpy()
    hashes = table.column("content_hash").to_numpy()
    drawn = _drawn(table)
    keep = np.ones(len(ids), dtype=bool)
    for i, (rid, h) in enumerate(zip(ids.tolist(), hashes.tolist(), strict=True)):
        if rid in seen:
            if seen[rid] != h and not drawn[i]:
                raise InputError(f"{where}: run_id {rid} appears twice with different content")
            keep[i] = False
        else:
            seen[rid] = h
    return table if keep.all() else table.filter(pa.array(keep))


def _drop_existing(con: duckdb.DuckDBPyConnection, staged: pa.Table, where: str) -> pa.Table:
    """The staged runs not yet in the database; a known run_id with other content is refused."""
    existing = con.execute(sql_text("ingest", "existing_runs")).fetchall()
    if not existing:
        return staged
    stored = dict(existing)
    ids = staged.column("run_id").to_numpy()
    hashes = staged.column("content_hash").to_numpy()
    drawn = _drawn(staged)
    for rid, h, d in zip(ids.tolist(), hashes.tolist(), drawn.tolist(), strict=True):
        if rid in stored and stored[rid] != h and not d:
            raise InputError(
                f"{where}: run_id {rid} is already in the database with different content; "
                "runs are never overwritten"
            )
    keep = ~np.isin(ids, np.fromiter(stored, np.int64, len(stored)))
    return staged if keep.all() else staged.filter(pa.array(keep))


def _drawn(table: pa.Table) -> np.ndarray:
    """Which staged runs were drawn by dmdb (their identity is the draw, not the content)."""
    return np.asarray(table.column("draw").is_valid().to_numpy(zero_copy_only=False), bool)


def _write(
    con: duckdb.DuckDBPyConnection,
    tables: list[pa.Table],
    files: list[tuple[tuple[str, int, int], int]],
    progress: bool,
    *,
    in_memory: bool,
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
    if not in_memory:
        con.execute("SET checkpoint_threshold = '1B'")
        con.execute("SET auto_checkpoint_skip_wal_threshold = 1")
    try:
        for i, group in enumerate(groups):
            staged = pa.concat_tables(group) if group else None  # noqa: F841 (used by SQL)
            small = staged is None or staged.num_rows < ROW_GROUP_SIZE
            con.execute(f"SET threads = {1 if small else int(saved[0])}")
            with migrations.transaction(con):
                if staged is not None:
                    for name in ("insert_masks", "insert_margins", "insert_runs"):
                        con.execute(sql_text("ingest", name))
                if i == len(groups) - 1:
                    for key, n_runs in files:
                        con.execute(sql_text("ingest", "record_file"), [*key, n_runs, utcnow()])
            bar.update(0 if staged is None else staged.num_rows)
    finally:
        for k, v in zip(settings, saved, strict=True):
            con.execute(f"SET {k} = {quote_literal(str(v))}")
        bar.close()


def _check_alpha(alpha: float | None, what: str) -> float:
    if alpha is None:
        raise UsageError(
            f"--alpha is required for {what}: the subset fraction the masks were drawn at"
        )
    return check_alpha(alpha)


def _density_warning(src: NpySource) -> str | None:
    density = src.mask_density()
    if abs(density - src.alpha) > DENSITY_TOLERANCE:
        return (
            f"{src.label}: the masks' density is {density:.3f}, but --alpha is {src.alpha}; "
            "check --alpha"
        )
    return None


def plan_sources(
    paths: list[Path],
    *,
    masks: Path | None = None,
    margins: Path | None = None,
    alpha: float | None = None,
    masks_key: str = "masks",
    margins_key: str = "margins",
) -> list[Source]:
    """Resolve command-line inputs into Sources, opening (not yet reading) every file."""
    sources: list[Source] = []
    if (masks is None) != (margins is None):
        raise UsageError("--masks and --margins go together")
    if masks is not None and margins is not None:
        sources.append(NpySource(masks, margins, _check_alpha(alpha, "--masks/--margins")))
    shard_files: list[Path] = []
    for path in paths:
        if is_store(path):
            sources.append(
                store_source(path, _check_alpha(alpha, f"store {path}"), masks_key, margins_key)
            )
        else:
            shard_files += find_shards(path)
    if shard_files:
        sources.append(ShardSource(shard_files))
    if not sources:
        raise UsageError(
            "nothing to ingest: give shard files/folders, a store, or --masks/--margins"
        )
    return sources


def ingest_paths(
    db: str | Database,
    paths: list[Path],
    *,
    masks: Path | None = None,
    margins: Path | None = None,
    alpha: float | None = None,
    masks_key: str = "masks",
    margins_key: str = "margins",
    progress: bool = False,
) -> IngestResult:
    """Ingest every input; all inputs are validated before any is written."""
    database = db if isinstance(db, Database) else connect(db)
    sources = plan_sources(
        paths, masks=masks, margins=margins, alpha=alpha, masks_key=masks_key,
        margins_key=margins_key,
    )
    source: Source = sources[0] if len(sources) == 1 else MultiSource(sources)
    warnings = [w for s in sources if isinstance(s, NpySource) if (w := _density_warning(s))]
    result = ingest(database, source, progress=progress)
    result.warnings += warnings
    return result


def follow(
    db: Database, folder: Path, *, every: float, runs: int | None = None,
    alpha: float | None = None, progress: bool = False, echo: Any = print,
    stop: Any = None,
) -> IngestResult:
    """Ingest a shard folder again every ``every`` seconds, while workers write to it.

    Only shards not yet ingested are read, and half-written ``.tmp`` files never are.
    Stops on Ctrl-C, or once draws 0..runs-1 are all in at ``alpha`` when both are
    given (``stop``, a callable, is a test's way to end it).
    """
    if every <= 0:
        raise UsageError(f"--follow takes a positive number of seconds, got {every}")
    if (runs is None) != (alpha is None) and runs is not None:
        raise UsageError("--follow --runs K needs --alpha A (the draws' subset fraction)")
    total = IngestResult()
    try:
        while True:
            if folder.is_dir() and any(p.suffix in SHARD_SUFFIXES for p in folder.iterdir()):
                result = ingest_paths(db, [folder], progress=progress)
                total.n_new += result.n_new
                total.n_skipped += result.n_skipped
                if result.n_new:
                    echo(f"ingested {result.n_new} new run(s)")
            if runs is not None and alpha is not None and _draws_in(db, alpha, runs) >= runs:
                return total
            if stop is not None and stop():
                return total
            time.sleep(every)
    except KeyboardInterrupt:
        return total


def _draws_in(db: Database, alpha: float, runs: int) -> int:
    rows = db.sql("SELECT count(DISTINCT draw) FROM runs WHERE draw BETWEEN 0 AND ? - 1 "
                  "AND split <> 'verify' AND abs(alpha - ?) < 1e-9", [runs, alpha])
    return int(rows.column(0)[0].as_py())
