"""Where the shipped SQL lives.

The SQL folders ``schema/``, ``ingest/`` and ``queries/`` sit at the top of the
repository so that users can ``.read`` them from the DuckDB shell; the wheel
carries them as ``dmdb/sql/<folder>``. Both layouts are looked up here and
nowhere else.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from dmdb.errors import DatabaseError

_PACKAGE = Path(__file__).resolve().parent
_KINDS = ("schema", "ingest", "queries")


def sql_dir(kind: str) -> Path:
    """Return the folder of shipped SQL files of ``kind`` (schema, ingest or queries)."""
    if kind not in _KINDS:
        raise ValueError(f"unknown SQL folder {kind!r}")
    for candidate in (_PACKAGE / "sql" / kind, _PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    raise DatabaseError(f"dmdb is installed without its SQL folder {kind!r}; reinstall dmdb")


@cache
def sql_text(kind: str, name: str) -> str:
    """Return the text of ``<kind>/<name>.sql``."""
    return (sql_dir(kind) / f"{name}.sql").read_text()


def sql_files(kind: str) -> list[Path]:
    """Return the .sql files of a folder, sorted by name."""
    return sorted(sql_dir(kind).glob("*.sql"))
