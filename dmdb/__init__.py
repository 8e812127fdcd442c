"""dmdb: an embedded DuckDB database for datamodels."""

from dmdb.db import Database, Experiment, IngestResult, connect, init
from dmdb.errors import DmdbError

__version__ = "0.1.0"

__all__ = ["Database", "DmdbError", "Experiment", "IngestResult", "connect", "init", "__version__"]
