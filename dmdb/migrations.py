"""Numbered schema migrations, each applied in its own transaction and recorded.

DuckDB has no ``user_version``, so applied migrations are rows of
``dmdb_migrations``. The schema version of this code is the number of files in
``schema/``; a database with a higher version was written by a newer dmdb and is
refused.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from dmdb.codec import utcnow
from dmdb.errors import DatabaseError, SchemaVersionError
from dmdb.resources import sql_files

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """Return (version, name, sql) for every shipped migration, in order."""
    found = []
    for path in sql_files("schema"):
        match = _NAME.match(path.name)
        if match is None:
            raise DatabaseError(f"badly named migration file {path.name}")
        found.append((int(match.group(1)), path.stem, path.read_text()))
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise DatabaseError(f"migrations are not numbered 1..n: {versions}")
    return found


def code_version() -> int:
    """The schema version this code writes."""
    return len(migrations())


def render(sql: str, *, n_train: int, n_targets: int) -> str:
    """Fill a templated migration's placeholders (integers only, never user text)."""
    return sql.replace("{n_targets}", str(int(n_targets))).replace("{n_train}", str(int(n_train)))


def db_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version of the open database (0 for an empty one)."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "dmdb_migrations" not in tables:
        if tables:
            raise DatabaseError(
                "this DuckDB file is not a dmdb database (no dmdb_migrations table)"
            )
        return 0
    row = con.execute("SELECT coalesce(max(version), 0) FROM dmdb_migrations").fetchall()
    return int(row[0][0])


def check_not_newer(version: int) -> None:
    """Refuse a database written by newer code."""
    known = code_version()
    if version > known:
        raise SchemaVersionError(
            f"this database has schema version {version}, but this dmdb knows only up to "
            f"{known}; upgrade dmdb (pip install -U dmdb) to open it"
        )


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN on ``con``; COMMIT if the block ends normally, ROLLBACK if it raises (anything)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def migrate(con: duckdb.DuckDBPyConnection, *, n_train: int, n_targets: int) -> int:
    """Apply every pending migration, each in its own transaction; return how many."""
    current = db_version(con)
    check_not_newer(current)
    applied = 0
    for version, name, sql in migrations():
        if version <= current:
            continue
        try:
            with transaction(con):
                con.execute(render(sql, n_train=n_train, n_targets=n_targets))
                con.execute("INSERT INTO dmdb_migrations VALUES (?, ?, ?)",
                            [version, name, utcnow()])
        except duckdb.Error as e:
            raise DatabaseError(f"migration {name} failed: {str(e).splitlines()[0]}") from e
        applied += 1
    return applied


def queries_digest() -> str:
    """A digest of the shipped views, to re-create them only when they changed."""
    h = hashlib.sha256()
    for path in sql_files("queries"):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def install_queries(con: duckdb.DuckDBPyConnection) -> bool:
    """(Re)create the application views and macros if they changed; return whether they did.

    Views may use the same {n_train} / {n_targets} placeholders as migrations.
    """
    digest = queries_digest()
    row = con.execute("SELECT value FROM dmdb_meta WHERE key = 'queries_digest'").fetchall()
    if row and row[0][0] == digest:
        return False
    n_train, n_targets = con.execute("SELECT n_train, n_targets FROM experiment").fetchall()[0]
    pending = [(p.name, render(p.read_text(), n_train=n_train, n_targets=n_targets))
               for p in sql_files("queries")]
    # Each file in its own transaction: a failed statement would abort a shared one,
    # and a view may use another defined in a later file, so retry until no progress.
    # Views are derived objects; the digest is recorded only once all of them exist.
    while pending:
        failed: list[tuple[str, str, duckdb.Error]] = []
        for name, sql in pending:
            try:
                con.execute(sql)
            except duckdb.CatalogException as e:
                failed.append((name, sql, e))
            except duckdb.Error as e:
                raise DatabaseError(f"view file {name}: {str(e).splitlines()[0]}") from e
        if len(failed) == len(pending):
            name, _, error = failed[0]
            raise DatabaseError(f"view file {name}: {str(error).splitlines()[0]}")
        pending = [(name, sql) for name, sql, _ in failed]
    con.execute("INSERT OR REPLACE INTO dmdb_meta VALUES ('queries_digest', ?)", [digest])
    return True
