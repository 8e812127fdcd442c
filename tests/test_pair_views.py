"""Second-order datamodels (migration 0005) in every view and macro, against numpy.

A real database, in memory and on file, built once per module:

- fit 1: a real linear `dmdb fit` (every view must give exactly the linear results);
- fit 2: fit 1's datamodels recorded again with ``record_fit`` on the same runs, at
  alpha 0.4, plus random interactions (a few per target, some with members outside the
  weights; target 5 has none);
- fit 3: a hand-made pair fit whose targets hit the brittleness cases (HAND_PAIRS);
- fit 4: interactions only, with ties in |weight| (TIED_PAIRS).

The oracle is dense numpy: theta (M x N) and an upper-triangular phi (M x N x N).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import dmdb
from dmdb.catalog import record_fit
from dmdb.fitting import fit as fit_linear
from dmdb.verify import load_fit_under_test, support_sizes
from tests.conftest import N_TARGETS, N_TRAIN, make_runs, run_table
from tests.test_views import brittleness_oracle, dense_fit, insert_fit, top_oracle

ALPHA = {1: 0.5, 2: 0.4, 3: 0.5, 4: 0.5}
# per-target margin offsets: supports of every kind (NULL, 0, small and larger) in fits 1, 2
MARGIN_OFFSETS = np.array([0.6, 0.5, 0.4, 0.3, 0.2, -1.0], dtype=np.float32)
ATOL = 1e-4

# fit 3 (alpha 0.5): target -> (bias, {train_idx: weight}, {(a, b): phi}); dyadic values.
HAND_PAIRS: dict[int, tuple[float, dict[int, float], dict[tuple[int, int], float]]] = {
    # influence 1 = 1.5, 2 = 0.5; before 0.75; removing 1 takes the pair too: 0 -> support 1
    0: (0.0, {1: 1.0}, {(1, 2): 1.0}),
    # influence 4 = 5 = 0 (no rows in top_influencers); before 0.625; removing 3 leaves
    # 0.125 and the pair (4, 5) never leaves: support NULL
    1: (0.25, {3: 1.0, 4: -0.25, 5: -0.25}, {(4, 5): 0.5}),
    # influence 7 = 0.75 ranks above 6 = 8 = 0.5 (tie: 6 first); before 0.125: support 1
    2: (-0.5, {6: 0.5, 7: 0.25}, {(7, 8): 1.0}),
    3: (0.1, {}, {}),                                      # nothing: support NULL
    # pairs only: influence 0 = 0.5, 1 = 0.25, 2 = -0.25; before 0.025: support 1
    4: (-0.1, {}, {(0, 1): 1.0, (1, 2): -0.5}),
    # a negative pair: removing 10 raises the margin by 0.375 first; support 2
    5: (0.0, {10: 1.0, 11: 1.0}, {(10, 11): -1.5}),
}
HAND_SUPPORT = [1, None, 1, None, 1, 2]
# fit 4, target 0: expected order (5,6), then |0.5| by train_a, train_b, then |0.25|
TIED_PAIRS = {(3, 9): 0.5, (1, 7): -0.5, (1, 4): 0.5, (2, 3): -0.25, (0, 30): 0.25,
              (5, 6): 1.0}
TIED_ORDER = [(5, 6), (1, 4), (1, 7), (3, 9), (0, 30), (2, 3)]
N_VERIFY = 18  # synthetic counterfactual verify runs per verified fit


def insert_pairs(db: dmdb.Database, fit_id: int, rows: list[tuple[int, int, int, float]]) -> None:
    """Write (target_idx, train_a, train_b, weight) rows into interactions, in one transaction."""
    with db.transaction() as con:
        con.executemany("INSERT INTO interactions VALUES (?, ?, ?, ?, ?)",
                        [[fit_id, t, a, b, w] for t, a, b, w in rows])


def random_pairs(rng: np.random.Generator, weights: np.ndarray
                 ) -> list[tuple[int, int, int, float]]:
    """A few pairs per target (none for the last), among and outside the target's weights."""
    rows = []
    for t in range(N_TARGETS - 1):
        inside = np.flatnonzero(weights[t])
        outside = np.flatnonzero(weights[t] == 0)
        members = {tuple(sorted(rng.choice(inside, 2, replace=False))),         # both weighted
                   tuple(sorted((rng.choice(inside), rng.choice(outside)))),   # one weighted
                   tuple(sorted(rng.choice(outside, 2, replace=False))),       # neither
                   tuple(sorted(rng.choice(N_TRAIN, 2, replace=False)))}
        rows += [(t, int(a), int(b), float(np.float32(rng.normal(0, 0.4))))
                 for a, b in sorted(members)]
    return rows


def verify_rows(rng: np.random.Generator, fit_id: int, members: list[int]
                ) -> list[tuple[int, str, int, list[int] | None]]:
    """Counterfactual verify runs: (target, condition, k, removed), per target a 'none'
    baseline (one with removed NULL), 'top' sets that hit pair members and 'random' sets."""
    rows: list[tuple[int, str, int, list[int] | None]] = []
    for t in (0, 2, 4):
        rows += [(t, "none", 0, None), (t, "none", 0, [])]
        rows += [(t, "top", 2, members[:2])] * 2  # one set, two models
        rows += [(t, "random", 3, sorted(rng.choice(N_TRAIN, 3, replace=False).tolist()))
                 for _ in range(2)]
    assert len(rows) == N_VERIFY
    return rows


def add_verify_runs(db: dmdb.Database, fit_id: int, first_run: int,
                    rows: list[tuple[int, str, int, list[int] | None]], seed: int) -> None:
    """Verify runs (masks excluding their removed sets) and their verify_runs rows."""
    rng = np.random.default_rng(seed)
    masks = rng.random((len(rows), N_TRAIN)) < ALPHA[fit_id]
    for m, (_, _, _, removed) in zip(masks, rows, strict=True):
        m[removed or []] = False
    margins = rng.normal(0.5, 1.0, (len(rows), N_TARGETS)).astype(np.float32)
    ids = np.arange(first_run, first_run + len(rows), dtype=np.int64)
    db.ingest(run_table(masks, margins, alpha=ALPHA[fit_id], run_id=pa.array(ids),
                        split=pa.array(["verify"] * len(rows))))
    with db.transaction() as con:
        con.executemany("INSERT INTO verify_runs VALUES (?, ?, 'counterfactual', ?, ?, ?, ?)",
                        [[int(i), fit_id, t, c, k, r]
                         for i, (t, c, k, r) in zip(ids, rows, strict=True)])


def build(path: str | Path) -> dmdb.Database:
    db = dmdb.init(path, n_train=N_TRAIN, n_targets=N_TARGETS, seed=3)
    masks, margins = make_runs(300, seed=31)
    db.ingest(run_table(masks, margins + MARGIN_OFFSETS))
    assert fit_linear(db, progress=False, echo=lambda s: None).fit_id == 1
    split = db.sql("SELECT run_id, split FROM fit_runs WHERE fit_id = 1").to_pydict()
    runs = {s: np.array([r for r, x in zip(split["run_id"], split["split"], strict=True)
                         if x == s], dtype=np.int64) for s in ("fit", "val", "test")}
    bias, weights = db.load_fit(1)
    assert record_fit(db, runs=runs, target_range=(0, N_TARGETS), bias=bias, weights=weights,
                      solver="test-pairs", alpha=ALPHA[2], parameters={"pairs": 4}) == 2
    insert_pairs(db, 2, random_pairs(np.random.default_rng(8), weights.toarray()))
    insert_fit(db, 3, ALPHA[3], {t: (b, w) for t, (b, w, _) in HAND_PAIRS.items()})
    insert_pairs(db, 3, [(t, a, b, w) for t, (_, _, p) in HAND_PAIRS.items()
                         for (a, b), w in p.items()])
    insert_fit(db, 4, ALPHA[4], {0: (0.0, {})})
    insert_pairs(db, 4, [(0, a, b, w) for (a, b), w in TIED_PAIRS.items()])
    rng = np.random.default_rng(9)
    _, pa_, pb, _ = db.load_interactions(2)
    members = [int(pa_[0]), int(pb[1])]  # a member of two different pairs of target 0
    add_verify_runs(db, 1, 10_000, verify_rows(rng, 1, members), seed=1)
    add_verify_runs(db, 2, 20_000, verify_rows(rng, 2, [int(pa_[2]), int(pb[2])]), seed=2)
    return db


@pytest.fixture(scope="module", params=["memory", "file"])
def pdb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> dmdb.Database:
    if request.param == "memory":
        return build(":memory:")
    path = tmp_path_factory.mktemp("p") / "p.duckdb"
    build(path)
    # the tests only read: through one held connection, as a notebook would (fast)
    return dmdb.connect(duckdb.connect(str(path), read_only=True), read_only=True)


# --------------------------------------------------------------------------- #
# The oracle


class Dense:
    """A fit as dense float64 arrays: bias (m,), theta (m, N), upper-triangular phi (m, N, N)."""

    def __init__(self, db: dmdb.Database, fit_id: int) -> None:
        self.targets, self.bias, self.theta = dense_fit(db, fit_id)
        self.alpha = ALPHA[fit_id]
        self.phi = np.zeros((N_TARGETS, N_TRAIN, N_TRAIN))
        t, a, b, w = db.load_interactions(fit_id)
        assert (a < b).all()
        self.phi[t, a, b] = w
        self.phi = self.phi[self.targets]

    def subset(self, subset: list[int]) -> np.ndarray:
        s = sorted(set(subset))
        return self.bias + self.theta[:, s].sum(axis=1) + self.phi[:, s][:, :, s].sum(axis=(1, 2))

    def removal(self, removed: list[int]) -> np.ndarray:
        keep = np.setdiff1d(np.arange(N_TRAIN), removed)
        return (self.bias + self.alpha * self.theta[:, keep].sum(axis=1)
                + self.alpha ** 2 * self.phi[:, keep][:, :, keep].sum(axis=(1, 2)))

    def pair_weight(self) -> np.ndarray:
        return self.phi.sum(axis=2) + self.phi.sum(axis=1)

    def influence(self) -> np.ndarray:
        return self.theta + self.alpha * self.pair_weight()

    def in_pair(self) -> np.ndarray:
        return (self.phi != 0).any(axis=2) | (self.phi != 0).any(axis=1)

    def ranked(self, row: int) -> np.ndarray:
        """train_idx of positive influence, largest first, ties by smaller train_idx."""
        infl = self.influence()[row]
        pos = np.flatnonzero(infl > 0)
        return pos[np.lexsort((pos, -infl[pos]))]

    def support(self) -> list[int | None]:
        """By brute force: predict_removal of every prefix of the ranking."""
        before = self.removal([])
        out: list[int | None] = []
        for row, m in enumerate(before):
            order = self.ranked(row).tolist()
            after = [self.removal(order[:k])[row] for k in range(1, len(order) + 1)]
            flips = [k + 1 for k, v in enumerate(after) if v <= 0]
            out.append(0 if m <= 0 else (flips[0] if flips else None))
        return out


def rows_of(db: dmdb.Database, sql: str, params: list | None = None) -> dict[str, list]:
    return db.sql(sql, params).to_pydict()


def subsets(rng: np.random.Generator, db: dmdb.Database) -> list[list[int]]:
    """Empty, everything, duplicates, and sets with one or both members of fit 2's pairs."""
    _, a, b, _ = db.load_interactions(2)
    return [[], list(range(N_TRAIN)), [int(a[0])],                     # one member of a pair
            [int(a[0]), int(b[0]), int(b[0]), int(a[0])],              # both, duplicated
            [int(a[1]), int(b[1]), 5, 5, 36],
            *[rng.choice(N_TRAIN, size, replace=False).tolist() for size in (1, 10, 25)]]


# --------------------------------------------------------------------------- #
# predict_subset, predict_removal, example_influence


def test_fit_alpha(pdb: dmdb.Database) -> None:
    got = rows_of(pdb, "SELECT fit_id, alpha FROM fit_alpha ORDER BY fit_id")
    assert got["fit_id"] == [1, 2, 3, 4]
    np.testing.assert_allclose(got["alpha"], [ALPHA[f] for f in got["fit_id"]], atol=1e-12)


@pytest.mark.parametrize("fit_id", [1, 2, 3])
def test_predict_subset(pdb: dmdb.Database, fit_id: int) -> None:
    dense = Dense(pdb, fit_id)
    for subset in subsets(np.random.default_rng(fit_id), pdb):
        got = rows_of(pdb, "SELECT * FROM predict_subset(?, ?)", [fit_id, subset])
        assert got["target_idx"] == dense.targets.tolist()
        np.testing.assert_allclose(got["predicted"], dense.subset(subset), atol=ATOL,
                                   err_msg=str(subset))


@pytest.mark.parametrize("fit_id", [1, 2, 3])
def test_predict_removal(pdb: dmdb.Database, fit_id: int) -> None:
    dense = Dense(pdb, fit_id)
    fut = load_fit_under_test(pdb, fit_id)
    for removed in subsets(np.random.default_rng(10 + fit_id), pdb):
        got = rows_of(pdb, "SELECT * FROM predict_removal(?, ?)", [fit_id, removed])
        assert got["target_idx"] == dense.targets.tolist()
        np.testing.assert_allclose(got["predicted"], dense.removal(removed), atol=ATOL,
                                   err_msg=str(removed))
        mine = [fut.predict_removal(int(t), removed) for t in dense.targets]
        np.testing.assert_allclose(mine, got["predicted"], atol=ATOL)
    np.testing.assert_allclose(fut.margin_before()[dense.targets], dense.removal([]), atol=ATOL)


def test_a_linear_fit_predicts_exactly_as_before(pdb: dmdb.Database) -> None:
    """Fit 1 has no interactions: the plain linear formulas, to float64 rounding."""
    targets, bias, w = dense_fit(pdb, 1)
    for s in subsets(np.random.default_rng(0), pdb):
        keep = np.setdiff1d(np.arange(N_TRAIN), s)
        sub = rows_of(pdb, "SELECT predicted FROM predict_subset(1, ?)", [s])["predicted"]
        rem = rows_of(pdb, "SELECT predicted FROM predict_removal(1, ?)", [s])["predicted"]
        np.testing.assert_allclose(sub, bias + w[:, sorted(set(s))].sum(axis=1), atol=1e-6)
        np.testing.assert_allclose(rem, bias + 0.5 * w[:, keep].sum(axis=1), atol=1e-6)
    fut = load_fit_under_test(pdb, 1)
    assert not fut.has_pairs
    np.testing.assert_array_equal(fut.n_positive(), np.diff((fut.weights > 0).tocsr().indptr))
    for t in targets:
        row = fut.weights.getrow(int(t))
        order = np.lexsort((row.indices, -row.data))
        idx, infl = fut.ranked(int(t))
        np.testing.assert_array_equal(idx, row.indices[order])
        np.testing.assert_array_equal(infl, row.data[order].astype(np.float64))


@pytest.mark.parametrize("fit_id", [1, 2, 3])
def test_example_influence(pdb: dmdb.Database, fit_id: int) -> None:
    dense = Dense(pdb, fit_id)
    got = rows_of(pdb, "SELECT * FROM example_influence WHERE fit_id = ? "
                       "ORDER BY target_idx, train_idx", [fit_id])
    assert list(got) == ["fit_id", "target_idx", "train_idx", "weight", "pair_weight",
                         "influence"]
    rows, cols = np.nonzero((dense.theta != 0) | dense.in_pair())
    assert got["target_idx"] == dense.targets[rows].tolist()
    assert got["train_idx"] == cols.tolist()
    np.testing.assert_allclose(got["weight"], dense.theta[rows, cols], atol=ATOL)
    np.testing.assert_allclose(got["pair_weight"], dense.pair_weight()[rows, cols], atol=ATOL)
    np.testing.assert_allclose(got["influence"], dense.influence()[rows, cols], atol=ATOL)
    if fit_id == 1:  # linear: exactly the weights rows
        w = rows_of(pdb, "SELECT target_idx, train_idx, weight FROM weights WHERE fit_id = 1 "
                         "ORDER BY target_idx, train_idx")
        assert (got["target_idx"], got["train_idx"]) == (w["target_idx"], w["train_idx"])
        assert got["weight"] == got["influence"] == w["weight"]
        assert set(got["pair_weight"]) == {0.0}


@pytest.mark.parametrize("fit_id", [2, 3])
def test_influence_is_the_effect_of_removing_one_example(pdb: dmdb.Database,
                                                         fit_id: int) -> None:
    dense = Dense(pdb, fit_id)
    base = dense.removal([])
    got = rows_of(pdb, "SELECT target_idx, train_idx, influence FROM example_influence "
                       "WHERE fit_id = ? ORDER BY ALL", [fit_id])
    for i in sorted(set(got["train_idx"]))[:8]:
        alone = rows_of(pdb, "SELECT predicted FROM predict_removal(?, [?])", [fit_id, i])
        drop = base - np.array(alone["predicted"])
        for t, j, infl in zip(*got.values(), strict=True):
            if j == i:
                assert dense.alpha * infl == pytest.approx(drop[t], abs=ATOL)


# --------------------------------------------------------------------------- #
# top_influencers, top_interactions


def influence_oracle(dense: Dense, k: int) -> list[tuple]:
    """(target_idx, sign, rank, train_idx, weight, influence) by |influence|."""
    infl = dense.influence()
    rows = []
    for r, t in enumerate(dense.targets):
        for sign, picked in (("+", np.flatnonzero(infl[r] > 0)),
                             ("-", np.flatnonzero(infl[r] < 0))):
            order = picked[np.lexsort((picked, -np.abs(infl[r, picked])))][:k]
            rows += [(int(t), sign, n + 1, int(i), dense.theta[r, i], infl[r, i])
                     for n, i in enumerate(order)]
    return rows


def check_top(got: dict[str, list], expected: list[tuple]) -> None:
    assert list(got) == ["fit_id", "target_idx", "sign", "rank", "train_idx", "weight",
                         "influence"]
    keys = list(zip(got["target_idx"], got["sign"], got["rank"], got["train_idx"], strict=True))
    assert keys == [e[:4] for e in expected]
    np.testing.assert_allclose(got["weight"], [e[4] for e in expected], atol=ATOL)
    np.testing.assert_allclose(got["influence"], [e[5] for e in expected], atol=ATOL)


@pytest.mark.parametrize("fit_id", [2, 3])
def test_top_influencers_rank_by_influence(pdb: dmdb.Database, fit_id: int) -> None:
    dense = Dense(pdb, fit_id)
    order = " ORDER BY target_idx, sign, rank"
    check_top(rows_of(pdb, "SELECT * FROM top_influencers WHERE fit_id = ?" + order, [fit_id]),
              influence_oracle(dense, 10))
    for k in (1, 3, N_TRAIN):
        check_top(rows_of(pdb, "SELECT * FROM top_influencers_k(?, ?)" + order, [fit_id, k]),
                  influence_oracle(dense, k))
    fut = load_fit_under_test(pdb, fit_id)
    infl = dense.influence()
    np.testing.assert_array_equal(fut.n_positive()[dense.targets], (infl > 0).sum(axis=1))
    for r, t in enumerate(dense.targets):
        idx, values = fut.ranked(int(t))
        nz = np.flatnonzero(infl[r])
        assert idx.tolist() == nz[np.lexsort((nz, -infl[r, nz]))].tolist()
        np.testing.assert_allclose(values, infl[r, idx], atol=ATOL)


def test_hand_made_influencers(pdb: dmdb.Database) -> None:
    got = rows_of(pdb, "SELECT target_idx, sign, train_idx, weight, influence "
                       "FROM top_influencers_k(3, 5) ORDER BY target_idx, sign, rank")
    by_target: dict[int, list] = {}
    for t, s, i, w, infl in zip(*got.values(), strict=True):
        by_target.setdefault(t, []).append((s, i, w, infl))
    assert by_target[0] == [("+", 1, 1.0, 1.5), ("+", 2, 0.0, 0.5)]
    assert by_target[1] == [("+", 3, 1.0, 1.0)]  # 4 and 5: influence 0, no rows
    assert by_target[2] == [("+", 7, 0.25, 0.75), ("+", 6, 0.5, 0.5), ("+", 8, 0.0, 0.5)]
    assert 3 not in by_target
    assert by_target[4] == [("+", 0, 0.0, 0.5), ("+", 1, 0.0, 0.25), ("-", 2, 0.0, -0.25)]


def test_linear_top_influencers_are_unchanged(pdb: dmdb.Database) -> None:
    got = pdb.sql("SELECT * FROM top_influencers WHERE fit_id = 1 "
                  "ORDER BY target_idx, sign, rank").to_pylist()
    assert [(r["target_idx"], r["sign"], r["rank"], r["train_idx"], r["weight"]) for r in got] \
        == top_oracle(pdb, 1, 10)  # float32 weights: exact
    assert all(r["influence"] == r["weight"] for r in got)


def interaction_oracle(db: dmdb.Database, fit_id: int, k: int) -> list[tuple]:
    t, a, b, w = db.load_interactions(fit_id)
    rows = []
    for target in np.unique(t):
        sel = np.flatnonzero(t == target)
        order = sel[np.lexsort((b[sel], a[sel], -np.abs(w[sel])))][:k]
        rows += [(fit_id, int(target), n + 1, int(a[i]), int(b[i]), float(w[i]))
                 for n, i in enumerate(order)]
    return rows


@pytest.mark.parametrize("fit_id", [1, 2, 3, 4])
def test_top_interactions(pdb: dmdb.Database, fit_id: int) -> None:
    def rows(sql: str, params: list) -> list[tuple]:
        got = pdb.sql(sql + " ORDER BY fit_id, target_idx, rank", params)
        assert got.column_names == ["fit_id", "target_idx", "rank", "train_a", "train_b",
                                    "weight"]
        return [tuple(r.values()) for r in got.to_pylist()]

    assert rows("SELECT * FROM top_interactions WHERE fit_id = ?", [fit_id]) \
        == interaction_oracle(pdb, fit_id, 10)
    for k in (1, 2, 100):
        assert rows("SELECT * FROM top_interactions_k(?, ?)", [fit_id, k]) \
            == interaction_oracle(pdb, fit_id, k)
    if fit_id == 1:
        assert rows("SELECT * FROM top_interactions_k(1, 5)", []) == []
    if fit_id == 4:
        got = rows("SELECT * FROM top_interactions_k(4, 4)", [])
        assert [(r[3], r[4]) for r in got] == TIED_ORDER[:4]
        assert [r[2] for r in got] == [1, 2, 3, 4]


# --------------------------------------------------------------------------- #
# brittleness


@pytest.mark.parametrize("fit_id", [1, 2, 3])
def test_brittleness(pdb: dmdb.Database, fit_id: int) -> None:
    dense = Dense(pdb, fit_id)
    got = rows_of(pdb, "SELECT * FROM brittleness WHERE fit_id = ? ORDER BY target_idx",
                  [fit_id])
    assert got["target_idx"] == dense.targets.tolist()
    np.testing.assert_allclose(got["margin_before"], dense.removal([]), atol=ATOL)
    removal = rows_of(pdb, "SELECT predicted FROM predict_removal(?, [])", [fit_id])
    np.testing.assert_allclose(got["margin_before"], removal["predicted"], atol=1e-9)
    support = dense.support()
    assert got["support_size"] == support
    before, size = support_sizes(load_fit_under_test(pdb, fit_id))
    np.testing.assert_allclose(before[dense.targets], got["margin_before"], atol=ATOL)
    mine = [0 if b <= 0 else (None if np.isnan(s) else int(s))
            for b, s in zip(before[dense.targets], size[dense.targets], strict=True)]
    assert mine == support
    if fit_id == 1:  # the linear rule, as before
        assert support == brittleness_oracle(pdb, 1)[1]
    if fit_id == 3:
        assert support == HAND_SUPPORT


def test_brittleness_flips_with_the_support_set(pdb: dmdb.Database) -> None:
    """Removing the first support_size '+' rows of top_influencers_k flips the prediction."""
    got = pdb.sql("SELECT fit_id, target_idx, support_size FROM brittleness "
                  "WHERE support_size > 0 ORDER BY ALL").to_pylist()
    assert {r["fit_id"] for r in got} >= {2, 3}
    for r in got:
        f, t, k = r["fit_id"], r["target_idx"], r["support_size"]
        top = rows_of(pdb, "SELECT train_idx FROM top_influencers_k(?, ?) WHERE target_idx = ? "
                           "AND sign = '+' ORDER BY rank", [f, k, t])["train_idx"]
        assert len(top) == k
        after = rows_of(pdb, "SELECT predicted FROM predict_removal(?, ?) WHERE target_idx = ?",
                        [f, top, t])["predicted"]
        shorter = rows_of(pdb, "SELECT predicted FROM predict_removal(?, ?) "
                               "WHERE target_idx = ?", [f, top[:-1], t])["predicted"]
        assert after[0] <= 0 < shorter[0]


@pytest.mark.parametrize("fit_id", [1, 2, 3])
def test_brittleness_curve(pdb: dmdb.Database, fit_id: int) -> None:
    got = rows_of(pdb, "SELECT k, fraction_flippable FROM brittleness_curve WHERE fit_id = ? "
                       "ORDER BY k", [fit_id])
    sizes = np.array([np.inf if s is None else s for s in Dense(pdb, fit_id).support()])
    np.testing.assert_allclose(got["fraction_flippable"], [(sizes <= k).mean() for k in got["k"]])


# --------------------------------------------------------------------------- #
# counterfactuals


def counterfactual_oracle(db: dmdb.Database, verified: int, model: int) -> list[dict[str, Any]]:
    """Rows of counterfactuals_with(model) for fit ``verified``'s runs, from numpy."""
    dense = Dense(db, model)
    dense.alpha = ALPHA[verified]  # the runs were trained at the verified fit's alpha
    row_of = {int(t): r for r, t in enumerate(dense.targets)}
    vr = db.sql("SELECT run_id, target_idx, condition, k, removed FROM verify_runs "
                "WHERE fit_id = ? ORDER BY run_id", [verified]).to_pylist()
    run_ids, _, margins = db.load_runs(split="verify")
    margin_of = {int(r): m for r, m in zip(run_ids, margins, strict=True)}
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for r in vr:
        t = r["target_idx"]
        pred = dense.removal(r["removed"] or [])[row_of[t]]
        groups.setdefault((t, r["condition"], r["k"]), []).append(
            (pred, float(margin_of[r["run_id"]][t])))
    out = []
    for (t, c, k), v in sorted(groups.items()):
        p, a = np.mean(v, axis=0)
        bp, ba = np.mean(groups[(t, "none", 0)], axis=0)
        out.append({"fit_id": verified, "target_idx": t, "condition": c, "k": k,
                    "predicted": p, "actual": a, "n_models": len(v),
                    "accuracy": np.mean([x > 0 for _, x in v]),
                    "predicted_change": p - bp, "actual_change": a - ba,
                    "model_fit_id": model})
    return out


def check_counterfactuals(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected, strict=True):
        assert list(g) == list(e)
        for key, value in e.items():
            if isinstance(value, float | np.floating):
                assert g[key] == pytest.approx(value, abs=ATOL), key
            else:
                assert g[key] == value, key


@pytest.mark.parametrize("verified, model", [(1, None), (1, 1), (1, 2), (1, 3), (2, None),
                                             (2, 1)])
def test_counterfactuals_with(pdb: dmdb.Database, verified: int, model: int | None) -> None:
    got = pdb.sql("SELECT * FROM counterfactuals_with(?) WHERE fit_id = ?",
                  [model, verified]).to_pylist()
    check_counterfactuals(got, counterfactual_oracle(pdb, verified, model or verified))
    assert sum(r["n_models"] for r in got) == N_VERIFY


def test_counterfactuals_view_is_counterfactuals_with_null(pdb: dmdb.Database) -> None:
    view = pdb.sql("SELECT * FROM counterfactuals")
    macro = pdb.sql("SELECT * FROM counterfactuals_with(NULL)")
    assert view.column_names == macro.column_names[:-1] == [
        "fit_id", "target_idx", "condition", "k", "predicted", "actual", "n_models",
        "accuracy", "predicted_change", "actual_change"]
    assert view.to_pylist() == macro.drop_columns(["model_fit_id"]).to_pylist()
    assert macro.column("model_fit_id").to_pylist() == macro.column("fit_id").to_pylist()
    for verified in (1, 2):
        expected = counterfactual_oracle(pdb, verified, verified)
        got = pdb.sql("SELECT * FROM counterfactuals WHERE fit_id = ?", [verified]).to_pylist()
        check_counterfactuals(got, [{k: v for k, v in e.items() if k != "model_fit_id"}
                                    for e in expected])


def test_counterfactuals_of_a_linear_fit_are_linear(pdb: dmdb.Database) -> None:
    """Fit 1's own rows: bias + alpha * (weights outside R), as before pairs existed."""
    bias, weights = pdb.load_fit(1)
    w = weights.toarray().astype(np.float64)
    vr = pdb.sql("SELECT run_id, target_idx, condition, k, removed FROM verify_runs "
                 "WHERE fit_id = 1").to_pylist()
    groups: dict[tuple, list[float]] = {}
    for r in vr:
        kept = np.ones(N_TRAIN, bool)
        kept[r["removed"] or []] = False
        groups.setdefault((r["target_idx"], r["condition"], r["k"]), []).append(
            bias[r["target_idx"]] + 0.5 * w[r["target_idx"], kept].sum())
    got = pdb.sql("SELECT * FROM counterfactuals WHERE fit_id = 1").to_pylist()
    for r in got:
        assert r["predicted"] == pytest.approx(
            np.mean(groups[(r["target_idx"], r["condition"], r["k"])]), abs=1e-6)


# --------------------------------------------------------------------------- #
# The DuckDB shell users have


SHELL = shutil.which("duckdb")


@pytest.mark.skipif(SHELL is None, reason="duckdb-cli is not installed")
def test_pair_views_in_the_shell(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.test_shell import same_rows, shell

    path = tmp_path_factory.mktemp("shell") / "s.duckdb"
    db = build(path)
    queries = [
        "SELECT * FROM predict_subset(2, [0, 3, 5, 17, 36]) ORDER BY ALL",
        "SELECT * FROM predict_removal(3, [1, 7]) ORDER BY ALL",
        "SELECT * FROM example_influence ORDER BY fit_id, target_idx, train_idx",
        "SELECT * FROM top_influencers_k(3, 3) ORDER BY ALL",
        "SELECT * FROM top_interactions ORDER BY ALL",
        "SELECT * FROM brittleness ORDER BY ALL",
        "SELECT * FROM counterfactuals_with(2) ORDER BY ALL",
        "SELECT * FROM counterfactuals ORDER BY ALL",
    ]
    for query in queries:
        python = db.sql(query).to_pylist()
        assert python, query
        assert same_rows(shell(str(path), query), python), query
