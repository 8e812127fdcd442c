"""dmdb: an embedded DuckDB database for datamodels."""

import os

# OpenMP threads that spin while waiting turn a busy 2-core machine into a crawl:
# measured here under load, 2 torch threads trained 2.8 models/s with the default
# policy and 72 models/s with PASSIVE (the fit: 50 s vs 1.6 s). It only takes effect
# if torch has not been imported yet; set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dmdb.db import Database, Experiment, connect, init
from dmdb.errors import DmdbError
from dmdb.ingest import IngestResult
from dmdb.version import __version__

__all__ = ["Database", "DmdbError", "Experiment", "IngestResult", "connect", "init", "__version__"]
