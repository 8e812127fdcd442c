"""The one error hierarchy of dmdb.

The CLI turns every :class:`DmdbError` into a single line on stderr and exit
status 1. Library users catch :class:`DmdbError` (or a subclass).
"""

from __future__ import annotations


class DmdbError(Exception):
    """Base class of every error dmdb reports to its user."""


class InputError(DmdbError):
    """Input data (arrays, Arrow batches, files) is malformed or inconsistent."""


class UsageError(DmdbError):
    """An option or argument is out of range or contradicts another."""


class DatabaseError(DmdbError):
    """The database file is missing, of the wrong kind, or in an unexpected state."""


class SchemaVersionError(DatabaseError):
    """The database was written by a newer dmdb than the one running."""


class BusyError(DatabaseError):
    """Another process holds the database file lock."""


class DeviceError(DmdbError):
    """The requested compute device is not available."""


class TrainerError(DmdbError):
    """A trainer could not be found, or returned invalid results."""


class FitError(DmdbError):
    """The data cannot be fitted as asked (too few runs, constant target, ...)."""
