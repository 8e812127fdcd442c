"""The fits catalog: find, list and delete fits (reads and writes only the fit tables).

Commands that only look fits up (``dmdb fits``, ``embed``, ``leakage``, ``export``,
``verify``) use this module, not :mod:`dmdb.fitting`, so they never import the solver.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from dmdb.db import Database
from dmdb.errors import UsageError

# Tables keyed by fit_id, children first; later applications add theirs here.
FIT_TABLES = [
    "weights", "datamodels", "fit_runs", "embeddings", "target_similarity", "verify_runs",
    "noise_ceiling", "fits",
]


def latest_fit(db: Database) -> int:
    """The newest fit that is not a learning-curve refit (see :func:`dmdb.fitting.fit`)."""
    fit_id = db.sql(
        "SELECT max(fit_id) FROM fits "
        "WHERE json_extract_string(parameters, '$.learning_curve_of') IS NULL"
    ).column(0)[0].as_py()
    if fit_id is None:
        raise UsageError("no fits yet; run `dmdb fit DB`")
    return int(fit_id)


def resolve_fit(db: Database, fit_id: int | None) -> int:
    """``fit_id`` checked to exist, or the latest fit when it is None."""
    if fit_id is None:
        return latest_fit(db)
    if isinstance(fit_id, bool) or not isinstance(fit_id, int | np.integer):
        raise UsageError(f"--fit takes a fit_id (an integer), got {fit_id!r}")
    db.check_fit(int(fit_id))
    return int(fit_id)


def load_fit(db: Database, fit_id: int) -> tuple[np.ndarray, Any]:
    """The fit's bias (M,) and weights (CSR, M x N) in mask space; see :meth:`Database.load_fit`."""
    return db.load_fit(fit_id)


def list_fits(db: Database) -> pa.Table:
    """Every fit with its run counts, targets and mean LDS."""
    return db.sql(
        "SELECT f.fit_id, f.created_at, f.solver, f.device, f.alpha, f.n_fit, f.n_val, f.n_test, "
        "f.target_lo || ':' || f.target_hi AS targets, round(f.wall_seconds, 2) AS seconds, "
        "round(avg(d.test_spearman), 4) AS mean_lds, round(avg(d.nnz), 1) AS mean_nnz "
        "FROM fits f LEFT JOIN datamodels d USING (fit_id) GROUP BY ALL ORDER BY f.fit_id"
    )


def drop_fit(db: Database, fit_id: int) -> None:
    """Delete a fit and everything it wrote, in one transaction."""
    db.check_fit(fit_id)
    with db.transaction() as con:
        for table in FIT_TABLES:  # fixed names from this module, never user input
            con.execute(f"DELETE FROM {table} WHERE fit_id = ?", [fit_id])
