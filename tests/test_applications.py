"""`dmdb embed` and `dmdb leakage` (dmdb.applications) against numpy oracles."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import dmdb
from dmdb.applications import embed, leakage
from dmdb.errors import UsageError
from dmdb.fitting import latest_fit
from tests.conftest import N_TARGETS, N_TRAIN
from tests.test_views import HAND_MADE, dense_fit, fitted_path, insert_fit


@pytest.fixture
def fitted(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> dmdb.Database:
    """A private copy of the shared fitted database, which embed may write to."""
    path = tmp_path / "copy.duckdb"
    shutil.copy(fitted_path(tmp_path_factory), path)
    return dmdb.connect(path)


def app_tables(db: dmdb.Database) -> tuple[list, list]:
    return (db.sql("SELECT * FROM embeddings ORDER BY ALL").to_pylist(),
            db.sql("SELECT * FROM target_similarity ORDER BY ALL").to_pylist())


def cosine_oracle(w: np.ndarray, k: int) -> dict[int, list[tuple[int, float]]]:
    """Each row's top k other non-zero rows by cosine, ties by the smaller index."""
    norms = np.linalg.norm(w, axis=1)
    valid = norms > 0
    unit = w / np.where(valid, norms, 1)[:, None]
    cos = unit @ unit.T
    out = {}
    for a in np.flatnonzero(valid):
        others = np.array([b for b in np.flatnonzero(valid) if b != a])
        order = others[np.lexsort((others, -cos[a, others]))][:k]
        out[int(a)] = [(int(b), float(cos[a, b])) for b in order]
    return out


def test_latest_fit(fitted: dmdb.Database, db: dmdb.Database) -> None:
    assert latest_fit(fitted) == 3
    with pytest.raises(UsageError, match="no fits yet; run `dmdb fit DB`"):
        latest_fit(db)
    with pytest.raises(UsageError, match="no fits yet"):
        embed(db)


def test_embed(fitted: dmdb.Database) -> None:
    report = embed(fitted, fit_id=1, components=3, clusters=2, neighbours=3, seed=1)
    assert (report.fit_id, report.n_targets, report.components) == (1, N_TARGETS, 3)
    assert sum(report.cluster_sizes) == N_TARGETS and report.n_zero_targets == 0
    rows = fitted.sql("SELECT * FROM embeddings WHERE fit_id = 1 ORDER BY target_idx").to_pylist()
    assert [r["target_idx"] for r in rows] == list(range(N_TARGETS))
    coords = np.array([r["embedding"] for r in rows])
    assert coords.shape == (N_TARGETS, 3)
    assert {r["cluster"] for r in rows} == {0, 1}
    # PCA: the coordinates are the top principal directions' projections (up to sign)
    _, _, w = dense_fit(fitted, 1)
    centred = w - w.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    assert np.allclose(np.abs(coords), np.abs(u[:, :3] * s[:3]), atol=1e-4)
    assert report.explained_variance == pytest.approx((s[:3] ** 2).sum() / (s**2).sum())
    # nearest targets: cosine of raw weight vectors, sorted, ties by target_b
    sim = fitted.sql("SELECT * FROM target_similarity WHERE fit_id = 1 "
                     "ORDER BY target_a, rank").to_pylist()
    oracle = cosine_oracle(w, 3)
    assert len(sim) == report.n_similarities == N_TARGETS * 3
    for a, expected in oracle.items():
        got = [r for r in sim if r["target_a"] == a]
        assert [r["rank"] for r in got] == [1, 2, 3]
        assert [r["target_b"] for r in got] == [b for b, _ in expected]
        assert [r["cosine"] for r in got] == pytest.approx([c for _, c in expected], abs=1e-5)
        assert all(x["cosine"] >= y["cosine"] for x, y in zip(got, got[1:], strict=False))


def test_embed_again_replaces_only_that_fit(fitted: dmdb.Database) -> None:
    embed(fitted, fit_id=1, components=3, clusters=2, neighbours=3)
    embed(fitted, fit_id=2, components=2, clusters=2, neighbours=1)
    embed(fitted, fit_id=1, components=2, clusters=3, neighbours=2)
    counts = fitted.sql("SELECT fit_id, count(*) AS n, max(len(embedding)) AS width, "
                        "count(DISTINCT cluster) AS k FROM embeddings GROUP BY ALL ORDER BY 1"
                        ).to_pylist()
    assert counts == [{"fit_id": 1, "n": 6, "width": 2, "k": 3},
                      {"fit_id": 2, "n": 6, "width": 2, "k": 2}]
    sims = fitted.sql("SELECT fit_id, count(*) AS n FROM target_similarity GROUP BY ALL "
                      "ORDER BY 1").to_pylist()
    assert sims == [{"fit_id": 1, "n": 12}, {"fit_id": 2, "n": 6}]


def test_embed_targets_without_weights(fitted: dmdb.Database) -> None:
    """Fit 3's target 3 has no weights: no cosine, no cluster, but an embedding."""
    report = embed(fitted, components=2, clusters=2, neighbours=5)  # the latest fit: 3
    assert report.fit_id == 3 and report.n_zero_targets == 1
    clusters = fitted.sql("SELECT target_idx, cluster FROM embeddings WHERE fit_id = 3 "
                          "ORDER BY target_idx").to_pydict()["cluster"]
    assert clusters[3] is None and all(c in (0, 1) for i, c in enumerate(clusters) if i != 3)
    sim = fitted.sql("SELECT target_a, target_b, rank, cosine FROM target_similarity "
                     "WHERE fit_id = 3 ORDER BY target_a, rank").to_pylist()
    assert all(3 not in (r["target_a"], r["target_b"]) for r in sim)
    assert len(sim) == 5 * 4  # five targets with weights, four others each
    _, _, w = dense_fit(fitted, 3)
    for a, expected in cosine_oracle(w, 5).items():
        got = [r for r in sim if r["target_a"] == a]
        assert [r["target_b"] for r in got] == [b for b, _ in expected]
        assert [r["cosine"] for r in got] == pytest.approx([c for _, c in expected], abs=1e-6)


def test_embed_a_fit_without_any_weight(db: dmdb.Database) -> None:
    insert_fit(db, 1, 0.5, {t: (0.5, {}) for t in range(N_TARGETS)})
    report = embed(db, components=2, clusters=2, neighbours=2)
    assert report.clusters == 0 and report.n_similarities == 0 and report.notes
    rows = db.sql("SELECT embedding, cluster FROM embeddings").to_pylist()
    assert rows == [{"embedding": [0.0, 0.0], "cluster": None}] * N_TARGETS


@pytest.mark.parametrize("kwargs, message", [
    ({"fit_id": 99}, "no fit 99"),
    ({"fit_id": "1"}, "--fit takes a fit_id"),
    ({"components": 0}, "--components must be an integer in 1..5"),
    ({"components": N_TARGETS}, "--components"),
    ({"components": 2.5}, "--components"),
    ({"clusters": 1}, "--clusters must be an integer in 2..5"),
    ({"clusters": N_TARGETS}, "--clusters"),
    ({"neighbours": 0}, "--neighbours must be an integer in 1..5"),
    ({"neighbours": N_TARGETS}, "--neighbours"),
    ({"seed": -1}, "--seed"),
])
def test_embed_bad_arguments_change_nothing(fitted: dmdb.Database, kwargs: dict,
                                            message: str) -> None:
    embed(fitted, fit_id=1, components=2, clusters=2, neighbours=2)
    before = app_tables(fitted)
    args = {"fit_id": 1, "components": 2, "clusters": 2, "neighbours": 2} | kwargs
    with pytest.raises(UsageError, match=message):
        embed(fitted, **args)
    assert app_tables(fitted) == before


def test_leakage_with_pixels(fitted: dmdb.Database) -> None:
    got = leakage(fitted, fit_id=1, top=1000).to_pylist()
    view = fitted.sql("SELECT target_idx, train_idx FROM leakage_candidates WHERE fit_id = 1 "
                      "ORDER BY rank").to_pylist()
    assert [(r["target_idx"], r["train_idx"]) for r in got] == [tuple(v.values()) for v in view]
    train = fitted.sql("SELECT label, pixels FROM train_examples ORDER BY train_idx").to_pydict()
    target = fitted.sql("SELECT label, pixels FROM targets ORDER BY target_idx").to_pydict()
    for r in got:
        a = np.array(target["pixels"][r["target_idx"]])
        b = np.array(train["pixels"][r["train_idx"]])
        assert r["pixel_distance"] == pytest.approx(np.linalg.norm(a - b), rel=1e-5)
        assert r["same_label"] == (target["label"][r["target_idx"]]
                                   == train["label"][r["train_idx"]])
    top = leakage(fitted, top=2).to_pylist()  # the latest fit: 3
    assert [(r["fit_id"], r["rank"], r["target_idx"], r["train_idx"]) for r in top] == [
        (3, 1, 0, 1), (3, 2, 5, 20)]
    # target 0 is planted as a near-duplicate of train example 20
    assert top[1]["pixel_distance"] > 0.5
    near = np.linalg.norm(np.array(target["pixels"][0]) - np.array(train["pixels"][20]))
    assert near == pytest.approx(0.04, abs=1e-5)


def test_leakage_without_pixels(db: dmdb.Database) -> None:
    insert_fit(db, 1, None, HAND_MADE)
    got = leakage(db).to_pylist()
    assert len(got) > 0 and [r["rank"] for r in got] == list(range(1, len(got) + 1))
    assert all(r["pixel_distance"] is None and r["same_label"] is None for r in got)
    with pytest.raises(UsageError, match="--top"):
        leakage(db, top=0)
    with pytest.raises(UsageError, match="no fit 2"):
        leakage(db, fit_id=2)


def test_embed_in_memory_and_on_file(db: dmdb.Database) -> None:
    rng = np.random.default_rng(0)
    models = {t: (0.0, {int(i): float(rng.normal()) for i in rng.choice(N_TRAIN, 8)})
              for t in range(N_TARGETS)}
    insert_fit(db, 1, 0.5, models)
    report = embed(db, components=3, clusters=2, neighbours=4)
    assert report.n_similarities == N_TARGETS * 4
    assert db.sql("SELECT count(*) FROM embeddings").column(0)[0].as_py() == N_TARGETS
