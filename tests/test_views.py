"""The application views and macros of queries/, each against a numpy oracle.

One real fitted database (file-backed) is built once per session and shared with
test_applications.py and test_shell.py (see :func:`fitted_path`). It holds:

- fit 1: a real `dmdb fit` over runs of two alphas (fits.alpha NULL, so the views use
  the mean alpha of its 'fit' runs);
- fit 2: fit 1's datamodels copied with fits.alpha = 0.3 (alpha set);
- fit 3: a hand-made fit whose targets hit every brittleness case (see HAND_MADE).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

import dmdb
from dmdb.fitting import fit
from tests.conftest import N_TARGETS, N_TRAIN, make_runs, run_table

# Per-target margin offsets, so that fit 1 has targets predicted right and wrong.
OFFSETS = np.array([3.0, 1.5, 0.8, 0.3, 0.0, -1.0], dtype=np.float32)
PIXELS = 16

# fit 3, target -> (bias, {train_idx: weight}); alpha 0.5. Dyadic values keep sums exact.
HAND_MADE: dict[int, tuple[float, dict[int, float]]] = {
    0: (-1.0, {1: 0.5}),                                   # wrong already: support 0
    1: (0.0, {2: 1.0, 3: 0.5, 4: 0.25, 5: -0.25}),         # 0.75 -> 0.25 -> 0: support 2
    2: (2.0, {0: 0.5, 1: 0.5}),                            # 2.5 -> 2.0 > 0: support NULL
    3: (0.1, {}),                                          # no weights: support NULL
    4: (0.0, {7: 0.25, 3: 0.25, 9: 0.25, 11: -0.25, 8: -0.25}),  # ties; support 1
    5: (-0.5, {20: 2.0, 21: 1.0, 22: -0.5}),               # 0.75 -> -0.25: support 1
}
HAND_MADE_SUPPORT = [0, 2, None, None, 1, 1]

_BUILT: dict[str, Path] = {}


def insert_fit(db: dmdb.Database, fit_id: int, alpha: float | None,
               models: dict[int, tuple[float, dict[int, float]]]) -> None:
    """Write a hand-made fit straight into fits, datamodels and weights."""
    with db.connection(write=True) as con:
        con.execute("INSERT INTO fits VALUES (?, now(), 'hand', 'cpu', ?, 0, 0, 0, ?, ?, 0, "
                    "'test', '{}')", [fit_id, alpha, min(models), max(models) + 1])
        for t, (bias, weights) in models.items():
            con.execute("INSERT INTO datamodels VALUES (?, ?, ?, 0.1, ?, NULL, NULL, NULL, NULL)",
                        [fit_id, t, bias, len(weights)])
            for i, w in weights.items():
                con.execute("INSERT INTO weights VALUES (?, ?, ?, ?)", [fit_id, t, i, w])


def fitted_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared fitted database (built on first use; tests only read it)."""
    if "path" not in _BUILT:
        path = tmp_path_factory.mktemp("fitted") / "fitted.duckdb"
        rng = np.random.default_rng(5)
        train_pixels = rng.random((N_TRAIN, PIXELS), dtype=np.float32)
        target_pixels = rng.random((N_TARGETS, PIXELS), dtype=np.float32)
        target_pixels[0] = train_pixels[20] + 0.01  # a near-duplicate
        db = dmdb.init(path, n_train=N_TRAIN, n_targets=N_TARGETS, seed=3,
                       train_labels=rng.integers(0, 3, N_TRAIN),
                       target_labels=rng.integers(0, 3, N_TARGETS),
                       train_pixels=train_pixels, target_pixels=target_pixels)
        masks, margins = make_runs(300, seed=21)
        db.ingest(run_table(masks, margins + OFFSETS))
        masks, margins = make_runs(150, seed=22, alpha=0.3)
        db.ingest(run_table(masks, margins + OFFSETS, alpha=0.3))
        assert fit(db, progress=False, echo=lambda s: None).fit_id == 1
        with db.connection(write=True) as con:
            con.execute("INSERT INTO fits SELECT 2, created_at, solver, device, 0.3, n_fit, n_val, "
                        "n_test, target_lo, target_hi, wall_seconds, dmdb_version, parameters "
                        "FROM fits WHERE fit_id = 1")
            for table in ("fit_runs", "datamodels", "weights"):
                con.execute(f"INSERT INTO {table} SELECT * REPLACE (2 AS fit_id) FROM {table} "
                            "WHERE fit_id = 1")
        insert_fit(db, 3, 0.5, HAND_MADE)
        _BUILT["path"] = path
    return _BUILT["path"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dmdb.Database:
    return dmdb.connect(fitted_path(tmp_path_factory), read_only=True)


FITS = [1, 2, 3]


def fit_alpha(db: dmdb.Database, fit_id: int) -> float:
    """The oracle for view fit_alpha."""
    if fit_id == 2:
        return 0.3
    if fit_id == 3:
        return 0.5
    ids = db.sql("SELECT run_id FROM fit_runs WHERE fit_id = ? AND split = 'fit'",
                 [fit_id]).column(0).to_pylist()
    alphas = db.sql("SELECT run_id, alpha FROM runs").to_pydict()
    lookup = dict(zip(alphas["run_id"], alphas["alpha"], strict=True))
    return float(np.mean([lookup[i] for i in ids]))


def dense_fit(db: dmdb.Database, fit_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fit's targets, their biases (float64) and dense weights (float64, m x N)."""
    bias, weights = db.load_fit(fit_id)
    targets = np.flatnonzero(np.isfinite(bias))
    return targets, bias[targets], weights.toarray().astype(np.float64)[targets]


def column(db: dmdb.Database, sql: str, params: list | None = None) -> np.ndarray:
    return db.sql(sql, params).column(0).to_numpy(zero_copy_only=False)


def test_fit_alpha(fitted: dmdb.Database) -> None:
    rows = fitted.sql("SELECT fit_id, alpha FROM fit_alpha ORDER BY fit_id").to_pylist()
    assert [r["fit_id"] for r in rows] == FITS
    for r in rows:
        assert r["alpha"] == pytest.approx(fit_alpha(fitted, r["fit_id"]), abs=1e-12)
    assert 0.3 < rows[0]["alpha"] < 0.5  # fit 1 mixes runs at 0.3 and 0.5


@pytest.mark.parametrize("fit_id", [1, 2])
def test_lds_equals_scipy_on_the_fit_test_runs(fitted: dmdb.Database, fit_id: int) -> None:
    test_ids = column(fitted, "SELECT run_id FROM fit_runs WHERE fit_id = ? AND split = 'test'",
                      [fit_id])
    _, x, y = fitted.load_runs(run_ids=test_ids)
    targets, bias, w = dense_fit(fitted, fit_id)
    pred = bias + x.astype(np.float64) @ w.T
    rows = fitted.sql("SELECT * FROM lds WHERE fit_id = ? ORDER BY target_idx",
                      [fit_id]).to_pylist()
    assert [r["target_idx"] for r in rows] == targets.tolist()
    for j, r in zip(targets, rows, strict=True):
        assert r["n_test_runs"] == len(test_ids) > 3
        assert r["spearman"] == pytest.approx(spearmanr(pred[:, j], y[:, j])[0], abs=1e-3)
        assert r["pearson"] == pytest.approx(pearsonr(pred[:, j], y[:, j])[0], abs=1e-3)


def subsets(rng: np.random.Generator) -> list[list[int]]:
    return [[], list(range(N_TRAIN)), [5, 5, 5, 36],
            *[rng.choice(N_TRAIN, size, replace=False).tolist() for size in (1, 10, 25)]]


@pytest.mark.parametrize("fit_id", FITS)
def test_predict_subset(fitted: dmdb.Database, fit_id: int) -> None:
    targets, bias, w = dense_fit(fitted, fit_id)
    for subset in subsets(np.random.default_rng(fit_id)):
        got = fitted.sql("SELECT * FROM predict_subset(?, ?)", [fit_id, subset]).to_pydict()
        assert got["target_idx"] == targets.tolist()  # every target, weights or not
        expected = bias + w[:, sorted(set(subset))].sum(axis=1)
        assert np.allclose(got["predicted"], expected, atol=1e-6), subset


@pytest.mark.parametrize("fit_id", FITS)
def test_predict_removal(fitted: dmdb.Database, fit_id: int) -> None:
    targets, bias, w = dense_fit(fitted, fit_id)
    alpha = fit_alpha(fitted, fit_id)
    for removed in subsets(np.random.default_rng(10 + fit_id)):
        got = fitted.sql("SELECT * FROM predict_removal(?, ?)", [fit_id, removed]).to_pydict()
        assert got["target_idx"] == targets.tolist()
        keep = np.setdiff1d(np.arange(N_TRAIN), removed)
        expected = bias + alpha * w[:, keep].sum(axis=1)
        assert np.allclose(got["predicted"], expected, atol=1e-6), removed
    everything = fitted.sql("SELECT predicted FROM predict_removal(?, range(?))",
                            [fit_id, N_TRAIN]).column(0).to_numpy()
    assert np.allclose(everything, bias)


def test_removal_uses_the_fit_alpha(fitted: dmdb.Database) -> None:
    """Fits 1 and 2 share weights; only alpha (mean of runs vs 0.3) differs."""
    q = "SELECT predicted FROM predict_removal(?, [])"
    _, bias, w = dense_fit(fitted, 1)
    one, two = (column(fitted, q, [f]) for f in (1, 2))
    assert np.allclose(one - bias, (two - bias) * fit_alpha(fitted, 1) / 0.3, atol=1e-6)


def top_oracle(fitted: dmdb.Database, fit_id: int, k: int) -> list[tuple]:
    """(target_idx, sign, rank, train_idx, weight): by |weight|, ties by smaller train_idx."""
    targets, _, w = dense_fit(fitted, fit_id)
    rows = []
    for row, t in zip(w, targets, strict=True):
        for sign, picked in (("+", np.flatnonzero(row > 0)), ("-", np.flatnonzero(row < 0))):
            order = picked[np.lexsort((picked, -np.abs(row[picked])))][:k]
            rows += [(int(t), sign, r + 1, int(i), float(row[i])) for r, i in enumerate(order)]
    return rows


def top_rows(fitted: dmdb.Database, sql: str, params: list) -> list[tuple]:
    got = fitted.sql(sql + " ORDER BY target_idx, sign, rank", params).to_pylist()
    return [(r["target_idx"], r["sign"], r["rank"], r["train_idx"], r["weight"]) for r in got]


@pytest.mark.parametrize("fit_id", FITS)
def test_top_influencers(fitted: dmdb.Database, fit_id: int) -> None:
    view = top_rows(fitted, "SELECT * FROM top_influencers WHERE fit_id = ?", [fit_id])
    assert view == top_oracle(fitted, fit_id, 10)  # float32 weights: exact
    for k in (1, 3, N_TRAIN):
        got = top_rows(fitted, "SELECT * FROM top_influencers_k(?, ?)", [fit_id, k])
        assert got == top_oracle(fitted, fit_id, k)
        assert {r[0] for r in got} <= set(range(N_TARGETS))


def test_top_influencer_ties_go_to_the_smaller_train_idx(fitted: dmdb.Database) -> None:
    got = top_rows(fitted, "SELECT * FROM top_influencers_k(3, 5) WHERE target_idx = 4", [])
    assert [(r[1], r[3]) for r in got] == [("+", 3), ("+", 7), ("+", 9), ("-", 8), ("-", 11)]


def brittleness_oracle(fitted: dmdb.Database, fit_id: int) -> tuple[np.ndarray, list]:
    targets, bias, w = dense_fit(fitted, fit_id)
    alpha = fit_alpha(fitted, fit_id)
    before = bias + alpha * w.sum(axis=1)
    support: list[int | None] = []
    for row, m in zip(w, before, strict=True):
        pos = np.flatnonzero(row > 0)
        pos = pos[np.lexsort((pos, -row[pos]))]
        flipped = np.flatnonzero(m - alpha * np.cumsum(row[pos]) <= 0)
        support.append(0 if m <= 0 else (int(flipped[0]) + 1 if len(flipped) else None))
    return before, support


@pytest.mark.parametrize("fit_id", FITS)
def test_brittleness(fitted: dmdb.Database, fit_id: int) -> None:
    got = fitted.sql("SELECT * FROM brittleness WHERE fit_id = ? ORDER BY target_idx",
                     [fit_id]).to_pydict()
    before, support = brittleness_oracle(fitted, fit_id)
    assert np.allclose(got["margin_before"], before, atol=1e-6)
    assert got["support_size"] == support
    removal = column(fitted, "SELECT predicted FROM predict_removal(?, [])", [fit_id])
    assert np.allclose(got["margin_before"], removal, atol=1e-9)


def test_brittleness_cases(fitted: dmdb.Database) -> None:
    got = fitted.sql("SELECT support_size FROM brittleness WHERE fit_id = 3 "
                     "ORDER BY target_idx").column(0).to_pylist()
    assert got == HAND_MADE_SUPPORT
    # removing the support set (the top positive weights) flips the prediction: target 1
    top = column(fitted, "SELECT train_idx FROM top_influencers_k(3, 2) "
                         "WHERE target_idx = 1 AND sign = '+' ORDER BY rank").tolist()
    after = column(fitted, "SELECT predicted FROM predict_removal(3, ?) WHERE target_idx = 1",
                   [top])
    assert top == [2, 3] and after[0] <= 0


@pytest.mark.parametrize("fit_id", FITS)
def test_brittleness_curve(fitted: dmdb.Database, fit_id: int) -> None:
    got = fitted.sql("SELECT k, fraction_flippable FROM brittleness_curve WHERE fit_id = ? "
                     "ORDER BY k", [fit_id]).to_pydict()
    _, support = brittleness_oracle(fitted, fit_id)
    assert got["k"] == [0, *range(1, 12), 13, 14, 16, 18, 20, 22, 25, 28, 32, 35, N_TRAIN]
    sizes = np.array([np.inf if s is None else s for s in support])
    expected = [(sizes <= k).mean() for k in got["k"]]
    assert np.allclose(got["fraction_flippable"], expected)
    assert np.all(np.diff(got["fraction_flippable"]) >= 0)


@pytest.mark.parametrize("fit_id", FITS)
def test_leakage_candidates(fitted: dmdb.Database, fit_id: int) -> None:
    targets, _, w = dense_fit(fitted, fit_id)
    expected = []
    for row, t in zip(w, targets, strict=True):
        positive = np.where(row > 0, row, 0)
        if not positive.any():
            continue
        share = positive / positive.sum()
        expected += [(-s, int(t), int(i), float(row[i]), float(s))
                     for i, s in enumerate(share) if s >= 0.2]
    expected.sort()
    got = fitted.sql("SELECT * FROM leakage_candidates WHERE fit_id = ? ORDER BY rank",
                     [fit_id]).to_pylist()
    assert [r["rank"] for r in got] == list(range(1, len(expected) + 1))
    assert [(r["target_idx"], r["train_idx"]) for r in got] == [e[1:3] for e in expected]
    assert [r["weight"] for r in got] == [e[3] for e in expected]
    assert [r["share"] for r in got] == pytest.approx([e[4] for e in expected])


def test_hand_made_leakage(fitted: dmdb.Database) -> None:
    got = fitted.sql("SELECT target_idx, train_idx, share FROM leakage_candidates "
                     "WHERE fit_id = 3 ORDER BY rank LIMIT 3").to_pylist()
    assert got == [{"target_idx": 0, "train_idx": 1, "share": 1.0},
                   {"target_idx": 5, "train_idx": 20, "share": pytest.approx(2 / 3)},
                   {"target_idx": 1, "train_idx": 2, "share": pytest.approx(1 / 1.75)}]
