"""The datamodel applications that need Python: `dmdb embed` and `dmdb leakage`.

Everything else (LDS, counterfactual predictions, top influencers, brittleness,
leakage candidates) is a pure-SQL view or table macro in ``queries/``; see
``docs_apps.md``. This module adds what SQL cannot do well:

- :func:`embed` -- PCA and spectral clustering of the targets' weight vectors, and
  each target's nearest targets by cosine similarity, written to the tables
  ``embeddings`` and ``target_similarity``;
- :func:`leakage` -- the view ``leakage_candidates`` with labels and pixel distances,
  to tell near-duplicates from mere strong influence.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from dmdb.catalog import resolve_fit
from dmdb.db import Database
from dmdb.errors import UsageError

# Entries of one block of the m x m cosine matrix held at a time (float64, 64 MB).
SIMILARITY_BLOCK = 8_000_000


# -- leakage -----------------------------------------------------------------------------

def leakage(db: Database, fit_id: int | None = None, top: int = 50) -> pa.Table:
    """The strongest train-test leakage candidates of a fit, with pixel distances.

    A candidate is a (target, training example) pair where the example holds at least
    20% of the target's positive weight (view ``leakage_candidates``). A small pixel
    distance and the same label suggest a near-duplicate; a large distance, an example
    that is merely very influential.

    Parameters
    ----------
    fit_id : int, optional
        The fit; the latest one when None.
    top : int
        How many candidates, by rank (largest share first).

    Returns
    -------
    pyarrow.Table with columns fit_id, rank, target_idx, train_idx, weight, share,
    target_label, train_label, same_label (NULL where a label is missing) and
    pixel_distance (Euclidean distance between the flattened images; NULL where
    either has no pixels, or their sizes differ).
    """
    fit = resolve_fit(db, fit_id)
    if isinstance(top, bool) or not isinstance(top, int | np.integer) or top < 1:
        raise UsageError(f"--top must be a positive integer, got {top!r}")
    return db.sql("SELECT * FROM leakage_pairs WHERE fit_id = ? ORDER BY rank LIMIT ?",
                  [fit, int(top)])


# -- embeddings --------------------------------------------------------------------------


@dataclass
class EmbedReport:
    """What one `dmdb embed` wrote."""

    fit_id: int
    n_targets: int
    components: int
    explained_variance: float  # fraction of the weight vectors' variance the components keep
    clusters: int  # 0 when too few targets have weights to cluster
    cluster_sizes: list[int]
    neighbours: int
    n_similarities: int  # rows written to target_similarity
    n_zero_targets: int  # targets without any weight: no cosine, no cluster
    seconds: float
    notes: list[str] = field(default_factory=list)


def embed(
    db: Database,
    fit_id: int | None = None,
    components: int = 32,
    clusters: int = 10,
    neighbours: int = 10,
    seed: int = 0,
) -> EmbedReport:
    """Datamodel embeddings: PCA, spectral clusters and nearest targets of a fit.

    Each target's weight vector (length N, mask space) is a feature vector. This
    writes, replacing any earlier rows of the fit, in one transaction:

    - ``embeddings`` (fit_id, target_idx, embedding FLOAT[components], cluster): the
      PCA coordinates of every target of the fit, and its spectral cluster;
    - ``target_similarity`` (fit_id, target_a, target_b, rank, cosine): each target's
      ``neighbours`` most similar other targets by cosine similarity of the raw weight
      vectors, rank 1 first, ties by the smaller target_b.

    A target with no weights at all has no direction, so its cosine is undefined: it
    gets no target_similarity rows (as target_a or target_b) and a NULL cluster; its
    embedding is the PCA projection of the zero vector.

    Clustering is spectral on the cosine nearest-neighbour graph: the
    target_similarity edges, weighted (1 + cosine) / 2 and made symmetric.

    Parameters
    ----------
    fit_id : int, optional
        The fit; the latest one when None.
    components : int
        PCA components, 1 .. min(m, N) - 1 for a fit of m targets.
    clusters : int
        Spectral clusters, 2 .. m - 1 (the spectral embedding needs fewer clusters than
        targets). When fewer than clusters + 1 targets have any weight, none are made.
    neighbours : int
        Nearest targets kept per target, 1 .. m - 1.
    seed : int
        Seeds PCA's and the spectral embedding's random starts.
    """
    started = time.perf_counter()
    fit = resolve_fit(db, fit_id)
    exp = db.experiment
    target_idx = db.sql(
        "SELECT target_idx FROM datamodels WHERE fit_id = ? ORDER BY target_idx", [fit]
    ).column(0).to_numpy().astype(np.int32)
    m = len(target_idx)
    _check_embed_args(m, exp.n_train, components, clusters, neighbours, seed)
    _, all_weights = db.load_fit(fit)
    weights = sp.csr_matrix(all_weights[target_idx], dtype=np.float64)
    norms = np.sqrt(np.asarray(weights.multiply(weights).sum(axis=1)).ravel())
    valid = norms > 0
    notes: list[str] = []

    coords, explained = _pca(weights, components, seed)
    pairs = _nearest(weights, norms, neighbours)
    labels, n_clusters = _cluster(pairs, valid, clusters, seed, notes)
    sizes = np.bincount(labels[labels >= 0], minlength=n_clusters).tolist() if n_clusters else []

    embeddings = pa.table({
        "target_idx": pa.array(target_idx),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(coords.astype(np.float32).ravel()), components
        ).cast(pa.list_(pa.float32())),
        "cluster": pa.array(labels, mask=labels < 0, type=pa.int32()),
    })
    rows, cols, ranks, cosines = pairs
    similarity = pa.table({
        "target_a": pa.array(target_idx[rows]),
        "target_b": pa.array(target_idx[cols]),
        "rank": pa.array(ranks.astype(np.int32)),
        "cosine": pa.array(cosines.astype(np.float32)),
    })
    _write_embeddings(db, fit, embeddings, similarity)
    return EmbedReport(
        fit_id=fit, n_targets=m, components=components, explained_variance=explained,
        clusters=n_clusters, cluster_sizes=sizes, neighbours=neighbours,
        n_similarities=similarity.num_rows, n_zero_targets=int((~valid).sum()),
        seconds=time.perf_counter() - started, notes=notes,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_embed_args(
    m: int, n_train: int, components: int, clusters: int, neighbours: int, seed: int
) -> None:
    """Refuse out-of-range arguments before anything is computed or written."""
    if m < 3:
        raise UsageError(f"the fit has {m} target(s); embeddings need at least 3")
    checks = [
        ("--components", components, 1, min(m, n_train) - 1,
         f"a fit of {m} targets on {n_train} training examples"),
        ("--clusters", clusters, 2, m - 1, f"a fit of {m} targets"),
        ("--neighbours", neighbours, 1, m - 1, f"a fit of {m} targets"),
        ("--seed", seed, 0, 2**32 - 1, "numpy's seed range"),
    ]
    for name, value, lo, hi, why in checks:
        if not _is_int(value) or not lo <= value <= hi:
            raise UsageError(f"{name} must be an integer in {lo}..{hi} for {why}, got {value!r}")


def _pca(weights: sp.csr_matrix, components: int, seed: int) -> tuple[np.ndarray, float]:
    """PCA coordinates (m, components) and the fraction of variance they explain."""
    from sklearn.decomposition import PCA

    if weights.nnz == 0:  # nothing varies: every target sits at the origin
        return np.zeros((weights.shape[0], components)), 0.0
    # ARPACK on the sparse matrix centres it implicitly, never densifying it; a full SVD
    # of the dense matrix took 37 s at m = 1,000, N = 5,000; this embed took 2 s in all.
    pca = PCA(n_components=components, svd_solver="arpack", random_state=seed)
    coords = pca.fit_transform(weights)
    ratio = np.nan_to_num(pca.explained_variance_ratio_)
    return coords, float(ratio.sum())


_Pairs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _nearest(weights: sp.csr_matrix, norms: np.ndarray, neighbours: int) -> _Pairs:
    """Each target's top ``neighbours`` other targets by cosine, computed in row blocks.

    Returns (rows, cols, ranks, cosines) as positions in the fit's targets, sorted by
    row, then rank (cosine descending, ties by the smaller column).
    """
    m = weights.shape[0]
    valid = norms > 0
    scale = sp.diags(np.where(valid, 1.0 / np.where(valid, norms, 1.0), 0.0))
    unit = (scale @ weights).tocsr()
    unit_t = unit.T.tocsc()
    block = max(1, SIMILARITY_BLOCK // m)
    parts: list[tuple[np.ndarray, ...]] = []
    for lo in range(0, m, block):
        hi = min(m, lo + block)
        cos = np.asarray((unit[lo:hi] @ unit_t).todense(), dtype=np.float64)
        cos[:, ~valid] = -np.inf
        cos[~valid[lo:hi]] = -np.inf
        cos[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf  # not one's own neighbour
        parts.append(_top_per_row(cos, neighbours, lo))
    rows, cols, ranks, cosines = (np.concatenate(x) for x in zip(*parts, strict=True))
    return rows, cols, ranks, np.clip(cosines, -1.0, 1.0)


def _top_per_row(cos: np.ndarray, k: int, offset: int) -> tuple[np.ndarray, ...]:
    """The k largest finite entries of each row, ties by the smaller column."""
    k = min(k, cos.shape[1])
    kth = -np.partition(-cos, k - 1, axis=1)[:, k - 1]
    rows, cols = np.nonzero((cos >= kth[:, None]) & np.isfinite(cos))
    values = cos[rows, cols]
    order = np.lexsort((cols, -values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.searchsorted(rows, rows, side="left")
    ranks = np.arange(len(rows)) - starts + 1
    keep = ranks <= k
    return rows[keep] + offset, cols[keep], ranks[keep], values[keep]


def _cluster(
    pairs: _Pairs, valid: np.ndarray, clusters: int, seed: int, notes: list[str]
) -> tuple[np.ndarray, int]:
    """Spectral cluster labels (m,), -1 for targets without weights, and the cluster count."""
    from sklearn.cluster import SpectralClustering

    m = len(valid)
    labels = np.full(m, -1, dtype=np.int64)
    idx = np.flatnonzero(valid)
    if len(idx) <= clusters:
        notes.append(f"only {len(idx)} target(s) have weights: too few for {clusters} "
                     "clusters, so none were made")
        return labels, 0
    rows, cols, _, cosines = pairs
    affinity = sp.coo_matrix(((1 + cosines) / 2, (rows, cols)), shape=(m, m)).tocsr()
    affinity = affinity.maximum(affinity.T)[idx][:, idx]
    model = SpectralClustering(
        n_clusters=clusters, affinity="precomputed", assign_labels="cluster_qr",
        random_state=seed,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels[idx] = model.fit_predict(affinity)
    if any("not fully connected" in str(w.message) for w in caught):
        notes.append("the neighbour graph is not connected; clusters follow its components "
                     "(try more --neighbours)")
    return labels, clusters


def _write_embeddings(
    db: Database, fit: int, embeddings: pa.Table, similarity: pa.Table
) -> None:
    """Replace the fit's rows of embeddings and target_similarity in one transaction."""
    new_embeddings, new_similarity = embeddings, similarity  # noqa: F841 (read by the SQL)
    with db.transaction() as con:
        con.execute("DELETE FROM embeddings WHERE fit_id = ?", [fit])
        con.execute("DELETE FROM target_similarity WHERE fit_id = ?", [fit])
        con.execute(
            "INSERT INTO embeddings SELECT ?, target_idx, embedding, cluster "
            "FROM new_embeddings", [fit]
        )
        con.execute(
            "INSERT INTO target_similarity SELECT ?, target_a, target_b, rank, cosine "
            "FROM new_similarity", [fit]
        )
    db.checkpoint()
