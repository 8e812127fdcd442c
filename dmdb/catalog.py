"""The fits catalog: find, list and delete fits (reads and writes only the fit tables).

Commands that only look fits up (``dmdb fits``, ``embed``, ``leakage``, ``export``,
``verify``) use this module, not :mod:`dmdb.fitting`, so they never import the solver.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from dmdb.codec import utcnow
from dmdb.db import Database
from dmdb.errors import UsageError
from dmdb.metrics import correlations
from dmdb.version import __version__

# Tables keyed by fit_id, children first; later applications add theirs here.
FIT_TABLES = [
    "interactions", "weights", "datamodels", "fit_runs", "embeddings", "target_similarity",
    "verify_runs", "noise_ceiling", "fits",
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
    """Every fit with its run counts, targets and mean LDS, and an imported fit's name.

    ``name`` is last, so queries that select the earlier columns by position still work.
    """
    return db.sql(
        "SELECT f.fit_id, f.created_at, f.solver, f.device, f.alpha, f.n_fit, f.n_val, f.n_test, "
        "f.target_lo || ':' || f.target_hi AS targets, round(f.wall_seconds, 2) AS seconds, "
        "round(avg(d.test_spearman), 4) AS mean_lds, round(avg(d.nnz), 1) AS mean_nnz, "
        "f.parameters->>'name' AS name "
        "FROM fits f LEFT JOIN datamodels d USING (fit_id) GROUP BY ALL ORDER BY f.fit_id"
    )


def drop_fit(db: Database, fit_id: int) -> None:
    """Delete a fit and everything it wrote, in one transaction."""
    db.check_fit(fit_id)
    with db.transaction() as con:
        for table in FIT_TABLES:  # fixed names from this module, never user input
            con.execute(f"DELETE FROM {table} WHERE fit_id = ?", [fit_id])


#: A fit's pairwise weights (migration 0005): target (0-based within the fit's range),
#: train_a < train_b, weight; int64, int64, int64, float32 arrays of one length.
Pairs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def sibling_fits(db: Database, fit_id: int) -> list[int]:
    """Other fits of exactly the same fit, val and test runs (learning-curve refits excluded).

    A linear fit and its second-order refit (``dmdb fit --pairs``) are siblings:
    checks that retrain for one (``dmdb verify``) score the others on the same runs.
    """
    rows = db.sql(
        "WITH me AS (SELECT run_id, split FROM fit_runs WHERE fit_id = ?), "
        "n AS (SELECT count(*) AS c FROM me) "
        "SELECT f.fit_id FROM fits f JOIN fit_runs r USING (fit_id) "
        "LEFT JOIN me ON me.run_id = r.run_id AND me.split = r.split "
        "WHERE f.fit_id <> ? AND f.parameters->>'learning_curve_of' IS NULL "
        "GROUP BY f.fit_id "
        "HAVING count(*) = (SELECT c FROM n) AND count(me.run_id) = (SELECT c FROM n) "
        "ORDER BY f.fit_id", [int(fit_id), int(fit_id)])
    return [int(f) for f in rows.column(0).to_pylist()]


def fit_label(db: Database, fit_id: int) -> str:
    """A short name of a fit's model: 'linear', 'second-order (K = 60)' or an import's name."""
    row = db.sql("SELECT solver, parameters FROM fits WHERE fit_id = ?", [int(fit_id)]
                 ).to_pylist()
    if not row:
        return f"fit {fit_id}"
    params = json.loads(row[0]["parameters"] or "{}")
    if row[0]["solver"] == "imported":
        return str(params.get("name", "imported"))
    return f"second-order (K = {params['pairs']})" if params.get("pairs") else "linear"


def predict_masks(bias: np.ndarray, weights: Any, masks: np.ndarray,
                  pairs: Pairs | None = None) -> np.ndarray:
    """A fit's predicted margins for 0/1 masks: float64 (n, len(bias)).

    bias + weights @ mask, plus for a second-order fit the weights of the pairs
    with both members in the mask (``pairs``' targets count from bias's first row).
    """
    x = np.asarray(masks)
    pred = np.asarray(bias, np.float64)[None, :] + np.asarray((weights @ x.T.astype(np.float32)).T)
    if pairs is not None and len(pairs[3]):
        pred += pair_predictions(x, *pairs, n_targets=len(bias))
    return pred


def evaluate_fit(
    db: Database, bias: np.ndarray, weights: Any, run_ids: np.ndarray, lo: int = 0,
    pairs: Pairs | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fit's quality on held-out runs: per-target MSE, Pearson and Spearman (LDS).

    Parameters
    ----------
    bias : float array of shape (k,)
        Targets lo..lo+k-1.
    weights : scipy sparse or dense array of shape (k, N), mask space
    run_ids : int array
        The evaluation runs (a fit's test runs).
    pairs : Pairs, optional
        A second-order fit's interactions, added for pairs with both members in a run.
    """
    _, x, y = db.load_runs(run_ids=run_ids)
    pred = predict_masks(bias, weights, x, pairs)
    actual = y[:, lo : lo + len(bias)]
    pearson, spearman = correlations(pred, actual)
    return ((pred - actual) ** 2).mean(axis=0), pearson, spearman


def pair_predictions(masks: np.ndarray, target: np.ndarray, a: np.ndarray, b: np.ndarray,
                     weight: np.ndarray, n_targets: int, block: int = 1024) -> np.ndarray:
    """Σ_{pairs of target t with both members in the mask} φ: float64 (n, n_targets)."""
    import scipy.sparse as sp

    masks = np.asarray(masks)
    out = np.zeros((len(masks), n_targets))
    if not len(weight):
        return out
    scatter = sp.csr_matrix((np.asarray(weight, np.float64), (np.arange(len(weight)), target)),
                            shape=(len(weight), n_targets))
    for lo in range(0, len(masks), block):
        x = masks[lo: lo + block].astype(bool)
        both = (x[:, a] & x[:, b]).astype(np.float64)
        out[lo: lo + block] = np.asarray(both @ scatter)
    return out


def _nan_to_null(values: np.ndarray) -> pa.Array:
    values = np.asarray(values, dtype=np.float64)
    return pa.array(values, mask=~np.isfinite(values))


def record_fit(
    db: Database,
    *,
    runs: dict[str, np.ndarray],
    target_range: tuple[int, int],
    bias: np.ndarray,
    weights: Any,
    solver: str,
    parameters: dict[str, Any],
    penalty: np.ndarray | None = None,
    val_mse: np.ndarray | None = None,
    device: str | None = None,
    alpha: float | None = None,
    wall_seconds: float = 0.0,
    test_metrics: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    pairs: Pairs | None = None,
) -> int:
    """Store a fit (computed here or anywhere else) as a new fit_id, in one transaction.

    Parameters
    ----------
    runs : dict of 'fit', 'val', 'test' -> int run-id arrays
        Recorded in ``fit_runs``, so the fit's metrics never drift; 'test' runs are
        the ones it is evaluated on.
    target_range : (lo, hi)
    bias : float array of shape (hi - lo,)
    weights : scipy sparse matrix of shape (hi - lo, N), mask space
    penalty, val_mse : float arrays of shape (hi - lo,), optional (NULL where unknown)
    test_metrics : (mse, pearson, spearman), optional
        Computed with :func:`evaluate_fit` on ``runs['test']`` when not given.
    pairs : Pairs, optional
        A second-order fit's interactions (``target`` counted from ``lo``), written
        to ``interactions``; ``parameters['pairs']`` should then say its K.
    """
    import scipy.sparse as sp

    lo, hi = target_range
    k = hi - lo
    coef = sp.csr_matrix(weights, dtype=np.float32)
    coef.eliminate_zeros()
    if test_metrics is None:
        test_metrics = evaluate_fit(db, bias, coef, runs["test"], lo, pairs)
    test_mse, pearson, spearman = test_metrics
    nan = np.full(k, np.nan)
    splits = ("fit", "val", "test")
    fit_runs_tbl = pa.table({  # noqa: F841 (read by SQL)
        "run_id": pa.array(np.concatenate([runs.get(s, np.zeros(0, np.int64)) for s in splits])),
        "split": pa.array([s for s in splits for _ in runs.get(s, ())], pa.string()),
    })
    datamodels_tbl = pa.table({  # noqa: F841
        "target_idx": pa.array(np.arange(lo, hi, dtype=np.int32)),
        "bias": pa.array(np.asarray(bias, np.float64)),
        "penalty": _nan_to_null(nan if penalty is None else penalty),
        "nnz": pa.array(np.diff(coef.indptr).astype(np.int32)),
        "val_mse": _nan_to_null(nan if val_mse is None else val_mse),
        "test_mse": _nan_to_null(test_mse),
        "test_pearson": _nan_to_null(pearson),
        "test_spearman": _nan_to_null(spearman),
    })
    rows = np.repeat(np.arange(k, dtype=np.int32), np.diff(coef.indptr)) + lo
    weights_tbl = pa.table({  # noqa: F841
        "target_idx": pa.array(rows.astype(np.int32)),
        "train_idx": pa.array(coef.indices.astype(np.int32)),
        "weight": pa.array(coef.data.astype(np.float32)),
    })
    target, a, b, phi = pairs if pairs is not None else (np.zeros(0, np.int64),) * 3 + (
        np.zeros(0, np.float32),)
    if len(phi) and not (np.asarray(a) < np.asarray(b)).all():
        raise UsageError("interactions must have train_a < train_b")
    interactions_tbl = pa.table({  # noqa: F841
        "target_idx": pa.array((np.asarray(target) + lo).astype(np.int32)),
        "train_a": pa.array(np.asarray(a).astype(np.int32)),
        "train_b": pa.array(np.asarray(b).astype(np.int32)),
        "weight": pa.array(np.asarray(phi, np.float32)),
    })
    with db.transaction() as con:
        fit_id = int(con.execute("SELECT coalesce(max(fit_id), 0) + 1 FROM fits"
                                 ).fetchall()[0][0])
        con.execute(
            "INSERT INTO fits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [fit_id, utcnow(), solver, device, alpha, *(len(runs.get(s, ())) for s in splits),
             lo, hi, wall_seconds, __version__, json.dumps(parameters)],
        )
        con.execute("INSERT INTO fit_runs SELECT ?, run_id, split FROM fit_runs_tbl", [fit_id])
        con.execute("INSERT INTO datamodels SELECT ?, * FROM datamodels_tbl", [fit_id])
        con.execute("INSERT INTO weights SELECT ?, * FROM weights_tbl", [fit_id])
        if len(phi):
            con.execute("INSERT INTO interactions SELECT ?, * FROM interactions_tbl", [fit_id])
    db.checkpoint()
    return fit_id
