"""`dmdb verify`: real retraining on a small digits database, checked against numpy.

The database is digits trained with the real MLP at a tiny size (2 epochs, 16 hidden
units). Its fit is a plain scikit-learn Lasso written through dmdb's own fit writer, so
that these tests do not depend on the speed of the production solver on an
under-determined problem (fewer runs than training examples).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import spearmanr

import dmdb
from dmdb.catalog import record_fit
from dmdb.collect import train
from dmdb.datasets import load_dataset
from dmdb.errors import DmdbError, TrainerError, UsageError
from dmdb.fitting import correlations, select_runs
from dmdb.verify import (
    brittleness_results,
    ceiling,
    ceiling_metrics,
    load_fit_under_test,
    support_sizes,
    verify,
)

QUIET: dict[str, Any] = {"progress": False, "echo": lambda s: None}
OPTIONS = {"epochs": 2, "hidden": 16}
TARGETS = (0, 30)  # the fit covers targets 0..29 only


def make_digits_db(path: Path, runs: int = 150) -> dmdb.Database:
    """Digits with pixels, ``runs`` tiny-MLP runs at alpha 0.5, and fit 1."""
    data = load_dataset("digits")
    db = dmdb.init(path, n_train=data.n_train, n_targets=data.n_targets, dataset="digits",
                   train_labels=data.y_train, target_labels=data.y_targets,
                   train_pixels=data.x_train, target_pixels=data.x_targets,
                   config={"image_shape": list(data.image_shape or ())})
    train(db, runs=runs, alpha=0.5, options=OPTIONS, **QUIET)
    store_lasso_fit(db, *TARGETS)
    return db


def store_lasso_fit(db: dmdb.Database, lo: int, hi: int, penalty: float = 0.002) -> int:
    """Fit targets lo..hi-1 with scikit-learn's Lasso and store it as a dmdb fit."""
    import scipy.sparse as sp
    from sklearn.linear_model import Lasso

    runs = select_runs(db, 0.5, None)
    _, x, y = db.load_runs(run_ids=runs["fit"])
    _, xt, yt = db.load_runs(run_ids=runs["test"])
    coef = np.zeros((hi - lo, x.shape[1]))
    bias = np.zeros(hi - lo)
    for j in range(hi - lo):
        model = Lasso(alpha=penalty, max_iter=5000).fit(x.astype(float), y[:, lo + j])
        coef[j], bias[j] = model.coef_, model.intercept_
    pred = bias + xt @ coef.T
    pearson, spearman = correlations(pred, yt[:, lo:hi])
    return record_fit(db, runs=runs, target_range=(lo, hi), bias=bias,
                      weights=sp.csr_matrix(coef.astype(np.float32)),
                      penalty=np.full(hi - lo, penalty), val_mse=np.full(hi - lo, np.nan),
                      solver="test-lasso", device="cpu", alpha=0.5, parameters={},
                      test_metrics=(((pred - yt[:, lo:hi]) ** 2).mean(axis=0), pearson, spearman))


_TEMPLATE: dict[str, Path] = {}


def digits_copy(factory: pytest.TempPathFactory) -> dmdb.Database:
    """A fresh copy of one digits database built once per test session."""
    if "path" not in _TEMPLATE:
        _TEMPLATE["path"] = Path(make_digits_db(factory.mktemp("template") / "t.duckdb").path)
    path = factory.mktemp("digits") / "digits.duckdb"
    shutil.copy(_TEMPLATE["path"], path)
    return dmdb.connect(path)


@pytest.fixture(scope="module")
def digits_db(tmp_path_factory: pytest.TempPathFactory) -> dmdb.Database:
    return digits_copy(tmp_path_factory)


def table_counts(db: dmdb.Database) -> dict[str, int]:
    names = ["runs", "masks", "margins", "verify_runs", "noise_ceiling", "fits"]
    return {t: db.sql(f"SELECT count(*) FROM {t}").column(0)[0].as_py() for t in names}


@pytest.fixture(scope="module")
def verified(digits_db: dmdb.Database) -> Any:
    return verify(digits_db, targets=3, ks=(3, 6), models=3, brittleness_targets=2, seed=1,
                  **QUIET)


def test_verify_records_its_runs(digits_db: dmdb.Database, verified: Any) -> None:
    db = digits_db
    n_br = len(verified.brittleness)
    assert verified.trained == 3 * 5 * 3 + n_br * 2 * 3 and verified.reused == 0
    rows = db.sql("SELECT v.*, r.split, r.trainer, r.info->>'$.options.epochs' AS epochs "
                  "FROM verify_runs v JOIN runs r USING (run_id) "
                  "WHERE v.kind <> 'ceiling'").to_pylist()
    assert len(rows) == verified.trained
    assert {r["split"] for r in rows} == {"verify"}
    assert {r["trainer"] for r in rows} == {"mlp"}
    assert {r["epochs"] for r in rows} == {"2"}  # the fit runs' options were reused
    cf = [r for r in rows if r["kind"] == "counterfactual"]
    assert sorted({r["target_idx"] for r in cf}) == verified.targets
    assert {(r["condition"], r["k"]) for r in cf} == {
        ("none", 0), ("top", 3), ("top", 6), ("random", 3), ("random", 6)}
    fit = load_fit_under_test(db, 1)
    ids = np.array([r["run_id"] for r in rows])
    run_ids, masks, _ = db.load_runs(split="verify", run_ids=ids)
    mask_of = dict(zip(run_ids.tolist(), masks, strict=True))
    for r in rows:
        removed = np.array(r["removed"], dtype=int)
        assert len(removed) == r["k"]
        assert not mask_of[r["run_id"]][removed].any()  # removed examples were excluded
        if r["condition"] in ("top", "support"):
            idx, _ = fit.ranked(r["target_idx"])
            assert sorted(removed.tolist()) == sorted(idx[: r["k"]].tolist())
    assert 0.2 < masks.mean() < 0.6  # fresh Bernoulli(alpha) masks


def recompute_counterfactuals(db: dmdb.Database) -> dict[tuple[int, str, int], tuple[float, ...]]:
    """(target, condition, k) -> (predicted, actual, n) from load_fit and load_runs only."""
    bias, weights = db.load_fit(1)
    w = weights.toarray().astype(np.float64)
    vr = db.sql("SELECT run_id, target_idx, condition, k, removed FROM verify_runs "
                "WHERE kind = 'counterfactual'").to_pylist()
    run_ids, _, margins = db.load_runs(split="verify")
    row_of = {int(r): i for i, r in enumerate(run_ids)}
    groups: dict[tuple[int, str, int], list[tuple[float, float]]] = {}
    for r in vr:
        t = r["target_idx"]
        kept = np.ones(w.shape[1], bool)
        kept[np.array(r["removed"], dtype=int)] = False
        pred = bias[t] + 0.5 * w[t, kept].sum()
        groups.setdefault((t, r["condition"], r["k"]), []).append(
            (pred, float(margins[row_of[r["run_id"]], t])))
    return {key: (*np.mean(v, axis=0), len(v)) for key, v in groups.items()}


def test_counterfactuals_view_equals_numpy(digits_db: dmdb.Database, verified: Any) -> None:
    expected = recompute_counterfactuals(digits_db)
    rows = digits_db.sql("SELECT * FROM counterfactuals WHERE fit_id = 1").to_pylist()
    assert len(rows) == len(expected) == 3 * 5
    for r in rows:
        pred, actual, n = expected[(r["target_idx"], r["condition"], r["k"])]
        base_pred, base_actual, _ = expected[(r["target_idx"], "none", 0)]
        assert r["n_models"] == n == 3
        assert r["predicted"] == pytest.approx(pred, abs=1e-4)
        assert r["actual"] == pytest.approx(actual, abs=1e-5)
        assert r["predicted_change"] == pytest.approx(pred - base_pred, abs=1e-4)
        assert r["actual_change"] == pytest.approx(actual - base_actual, abs=1e-5)
    # the report's statistics are those of the view's changes
    changes = np.array([(r["predicted_change"], r["actual_change"]) for r in rows
                        if r["condition"] != "none"])
    assert verified.n_conditions == 12
    assert verified.pearson == pytest.approx(np.corrcoef(changes.T)[0, 1], abs=1e-9)
    assert verified.slope == pytest.approx(np.polyfit(*changes.T, 1)[0], abs=1e-9)
    assert "slope of actual on predicted change" in verified.summary()


def test_brittleness_view_agrees_with_numpy(digits_db: dmdb.Database, verified: Any) -> None:
    fit = load_fit_under_test(digits_db, 1)
    before, size = support_sizes(fit)
    rows = digits_db.sql("SELECT * FROM brittleness WHERE fit_id = 1").to_pylist()
    assert len(rows) == TARGETS[1] - TARGETS[0]
    for r in rows:
        t = r["target_idx"]
        assert r["margin_before"] == pytest.approx(before[t], abs=1e-4)
        mine = 0 if before[t] <= 0 else (None if np.isnan(size[t]) else int(size[t]))
        assert r["support_size"] == mine
    # the verified support sets are those sizes, and their summary is consistent
    for b in brittleness_results(digits_db, 1):
        assert b.support_size == size[b.target_idx]
        assert b.flipped == (b.support_margin <= 0)


def test_verify_again_reuses_runs_and_fits_ignore_them(
    digits_db: dmdb.Database, verified: Any
) -> None:
    before = table_counts(digits_db)
    again = verify(digits_db, targets=3, ks=(3, 6), models=3, brittleness_targets=2, seed=1,
                   **QUIET)
    assert again.trained == 0 and again.reused == verified.trained
    assert table_counts(digits_db) == before
    assert again.pearson == pytest.approx(verified.pearson)
    verify_ids = set(digits_db.run_ids(split="verify").tolist())
    chosen = select_runs(digits_db, None, None)
    assert not verify_ids & set(np.concatenate(list(chosen.values())).tolist())
    assert sum(len(v) for v in chosen.values()) == 150
    assert not verify_ids & set(digits_db.load_runs()[0].tolist())


@pytest.mark.parametrize("kwargs, error", [
    ({"fit_id": 99}, UsageError),
    ({"ks": (0, 5)}, UsageError),
    ({"ks": (1297,)}, UsageError),
    ({"ks": ()}, UsageError),
    ({"targets": 31}, UsageError),  # the fit covers 30 targets
    ({"models": 0}, UsageError),
    ({"targets": 0, "brittleness_targets": 0}, UsageError),
    ({"seed": -1}, UsageError),
    ({"trainer": "no_such_trainer"}, TrainerError),
    ({"options": {"epochs": 0}}, UsageError),
])
def test_verify_bad_input_writes_nothing(
    digits_db: dmdb.Database, kwargs: dict[str, Any], error: type[DmdbError]
) -> None:
    before = table_counts(digits_db)
    with pytest.raises(error):
        verify(digits_db, **({"targets": 2, "models": 2, "ks": (2,)} | kwargs), **QUIET)
    assert table_counts(digits_db) == before


@pytest.mark.parametrize("kwargs", [{"masks": 2}, {"seeds": 1}, {"fit_id": 5}])
def test_ceiling_bad_input_writes_nothing(digits_db: dmdb.Database,
                                          kwargs: dict[str, Any]) -> None:
    before = table_counts(digits_db)
    with pytest.raises(UsageError):
        ceiling(digits_db, **({"masks": 4, "seeds": 2} | kwargs), **QUIET)
    assert table_counts(digits_db) == before


def ceiling_oracle(db: dmdb.Database, fit_id: int = 1) -> dict[str, np.ndarray]:
    """Noise-ceiling metrics from the ceiling runs, with scipy and explicit loops."""
    bias, weights = db.load_fit(fit_id)
    ids = db.sql("SELECT v.run_id, CAST(r.info->>'$.ceiling_mask' AS INT) AS j, "
                 "CAST(r.info->>'$.ceiling_seed' AS INT) AS s FROM verify_runs v "
                 "JOIN runs r USING (run_id) WHERE v.kind = 'ceiling'").to_pylist()
    run_ids, masks, margins = db.load_runs(split="verify", run_ids=np.array(
        [r["run_id"] for r in ids]))
    row = {int(r): i for i, r in enumerate(run_ids)}
    n_j = max(r["j"] for r in ids) + 1
    n_s = max(r["s"] for r in ids) + 1
    y = np.zeros((n_j, n_s, margins.shape[1]))
    x = np.zeros((n_j, masks.shape[1]))
    for r in ids:
        y[r["j"], r["s"]] = margins[row[r["run_id"]]]
        x[r["j"]] = masks[row[r["run_id"]]]
    pred = bias + x @ weights.toarray().T
    for t, a, b, phi in zip(*db.load_interactions(fit_id), strict=True):
        pred[:, t] += phi * x[:, a] * x[:, b]
    out: dict[str, list[float]] = {k: [] for k in ("seed", "r2", "lds_1", "lds_2")}
    for t in range(*TARGETS):
        yt = y[:, :, t]
        out["seed"].append(np.mean([spearmanr(yt[:, a], yt[:, b])[0]
                                    for a in range(n_s) for b in range(a + 1, n_s)]))
        within = sum(np.var(yt[j], ddof=1) for j in range(n_j)) / n_j
        between = np.var(yt.mean(axis=1), ddof=1) - within / n_s
        out["r2"].append(between / (between + within))
        out["lds_1"].append(np.mean([spearmanr(pred[:, t], yt[:, s])[0] for s in range(n_s)]))
        out["lds_2"].append(spearmanr(pred[:, t], yt[:, :2].mean(axis=1))[0])
    return {k: np.array(v) for k, v in out.items()}


def test_ceiling_equals_numpy_and_reruns_replace(digits_db: dmdb.Database) -> None:
    report = ceiling(digits_db, masks=5, seeds=3, seed=4, **QUIET)
    assert report.trained == 15 and not report.interrupted
    rows = digits_db.sql("SELECT * FROM noise_ceiling WHERE fit_id = 1 ORDER BY target_idx"
                         ).to_pylist()
    assert [r["target_idx"] for r in rows] == list(range(*TARGETS))
    assert {(r["n_masks"], r["n_seeds"]) for r in rows} == {(5, 3)}
    oracle = ceiling_oracle(digits_db)
    got = {k: np.array([np.nan if r[c] is None else r[c] for r in rows])
           for k, c in (("seed", "seed_spearman"), ("r2", "mask_r2"), ("lds_1", "lds_1"),
                        ("lds_2", "lds_2"))}
    for k, v in got.items():
        np.testing.assert_allclose(v, oracle[k], atol=1e-6, err_msg=k)
    attainable = np.array([np.nan if r["attainable_lds"] is None else r["attainable_lds"]
                           for r in rows])
    np.testing.assert_allclose(attainable, np.sqrt(np.where(oracle["r2"] >= 0, oracle["r2"],
                                                            np.nan)), atol=1e-6)
    assert all(r["lds_5"] is None for r in rows)  # fewer than 5 seeds
    assert report.mask_r2 == pytest.approx(np.nanmean(oracle["r2"]))
    # a rerun with more masks reuses the runs there and replaces the fit's rows
    again = ceiling(digits_db, masks=6, seeds=3, seed=4, **QUIET)
    assert (again.trained, again.reused) == (3, 15)
    rows = digits_db.sql("SELECT n_masks, count(*) AS n FROM noise_ceiling WHERE fit_id = 1 "
                         "GROUP BY ALL").to_pylist()
    assert rows == [{"n_masks": 6, "n": TARGETS[1] - TARGETS[0]}]
    assert "attainable single-seed LDS" in again.summary()


def test_ceiling_metrics_recover_a_known_mask_share() -> None:
    rng = np.random.default_rng(0)
    masks, seeds, targets = 400, 4, 3
    signal = rng.normal(0, 1, (masks, 1, targets))
    noise = rng.normal(0, 1, (masks, seeds, targets))  # mask share 0.5 by construction
    m = ceiling_metrics(signal + noise, signal[:, 0, :])
    np.testing.assert_allclose(m["mask_r2"], 0.5, atol=0.08)
    np.testing.assert_allclose(m["attainable_lds"], np.sqrt(0.5), atol=0.06)
    assert (m["lds_2"] > m["lds_1"]).all() and np.isnan(m["lds_5"]).all()


def test_interrupted_verify_keeps_verify_runs_consistent(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = digits_copy(tmp_path_factory)
    import dmdb.verify.plan as mod

    real = mod.train_runs

    def interrupted(db_: dmdb.Database, trainer: Any, masks: np.ndarray, seeds: np.ndarray,
                    **kw: Any) -> np.ndarray:
        half = len(masks) // 2
        kw["infos"] = kw["infos"][:half]
        real(db_, trainer, masks[:half], seeds[:half], **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "train_runs", interrupted)
    first = verify(db, targets=2, ks=(4,), models=4, brittleness_targets=0, **QUIET)
    assert first.interrupted and first.trained == 12  # half of 2 x 3 conditions x 4 models
    linked = db.sql("SELECT count(*) FROM runs r JOIN verify_runs v USING (run_id)")
    assert linked.column(0)[0].as_py() == 12 == table_counts(db)["verify_runs"]
    monkeypatch.setattr(mod, "train_runs", real)
    second = verify(db, targets=2, ks=(4,), models=4, brittleness_targets=0, **QUIET)
    assert (second.trained, second.reused, second.interrupted) == (12, 12, False)
    n = db.sql("SELECT sum(n_models) FROM counterfactuals").column(0)[0].as_py()
    assert n == 24 == table_counts(db)["verify_runs"]


# --------------------------------------------------------------------------- #
# A fit and its second-order sibling (the same runs), side by side


@pytest.fixture(scope="module")
def with_sibling(tmp_path_factory: pytest.TempPathFactory) -> tuple[dmdb.Database, int]:
    """Fit 1 and a second-order fit of the same runs: fit 1's weights plus two pairs per target
    among its largest weights (phi of either sign, large enough to change the rankings)."""
    db = digits_copy(tmp_path_factory)
    lin = load_fit_under_test(db, 1)
    runs = {s: db.sql("SELECT run_id FROM fit_runs WHERE fit_id = 1 AND split = ? "
                      "ORDER BY run_id", [s]).column(0).to_numpy() for s in ("fit", "val", "test")}
    pairs: list[tuple[int, int, int, float]] = []
    for t in range(*TARGETS):
        idx, w = lin.ranked(t)
        if len(idx) >= 3:
            top = np.sort(idx[:3])
            pairs += [(t, int(top[0]), int(top[1]), -0.8 * float(w[0])),
                      (t, int(top[1]), int(top[2]), 0.3 * float(w[0]))]
    cols = [np.array(c) for c in zip(*pairs, strict=True)]
    fid = record_fit(db, runs=runs, target_range=TARGETS, bias=lin.bias[slice(*TARGETS)],
                     weights=lin.weights[slice(*TARGETS)], solver="test-lasso", device="cpu",
                     alpha=0.5, parameters={"pairs": 3},
                     pairs=(cols[0] - TARGETS[0], cols[1].astype(np.int64),
                            cols[2].astype(np.int64), cols[3].astype(np.float32)))
    return db, fid


def changes_with(db: dmdb.Database, verified: int, model: int
                 ) -> dict[tuple[int, str, int], np.ndarray]:
    """(target, condition, k) -> (predicted change, actual change) on the verified fit's runs,
    predicted by fit ``model`` with FitUnderTest.predict_removal, in numpy."""
    fit = load_fit_under_test(db, model)
    vr = db.sql("SELECT run_id, target_idx, condition, k, removed FROM verify_runs "
                "WHERE kind = 'counterfactual' AND fit_id = ?", [verified]).to_pylist()
    run_ids, _, margins = db.load_runs(split="verify")
    row_of = {int(r): i for i, r in enumerate(run_ids)}
    groups: dict[tuple[int, str, int], list[tuple[float, float]]] = {}
    for r in vr:
        t = r["target_idx"]
        groups.setdefault((t, r["condition"], r["k"]), []).append(
            (fit.predict_removal(t, r["removed"]), float(margins[row_of[r["run_id"]], t])))
    mean = {key: np.mean(v, axis=0) for key, v in groups.items()}
    return {key: mean[key] - mean[(key[0], "none", 0)] for key in mean if key[1] != "none"}


@pytest.mark.parametrize("verified_is_linear", [True, False])
def test_verify_scores_the_sibling_on_the_same_runs(
    with_sibling: tuple[dmdb.Database, int], verified_is_linear: bool
) -> None:
    db, pair_fit = with_sibling
    fid, other = (1, pair_fit) if verified_is_linear else (pair_fit, 1)
    report = verify(db, fit_id=fid, targets=3, ks=(3, 6), models=3, brittleness_targets=0,
                    seed=2, **QUIET)
    assert [m.fit_id for m in report.models_compared] == [fid, other]
    own, sibling = report.models_compared
    assert (own.pearson, own.slope) == (report.pearson, report.slope)
    assert {m.fit_id: m.label for m in report.models_compared} == {
        1: "linear", pair_fit: "second-order (K = 3)"}
    for model, score in ((fid, own), (other, sibling)):
        by_key = changes_with(db, fid, model)
        c = np.array(list(by_key.values()))
        assert score.n_conditions == len(c) == 12
        assert score.pearson == pytest.approx(np.corrcoef(c.T)[0, 1], abs=1e-6)
        assert score.slope == pytest.approx(np.polyfit(*c.T, 1)[0], abs=1e-6)
        top6 = [v[0] for (_, cond, k), v in by_key.items() if (cond, k) == ("top", 6)]
        assert score.top_predicted[6] == pytest.approx(np.mean(top6), abs=1e-6)
    assert own.pearson != pytest.approx(sibling.pearson, abs=1e-9)  # the pairs matter
    text = report.summary()
    assert "side by side" in text and "second-order (K = 3)" in text


def test_ceiling_records_the_sibling_with_its_pairs(
    with_sibling: tuple[dmdb.Database, int]
) -> None:
    db, pair_fit = with_sibling
    report = ceiling(db, fit_id=1, masks=5, seeds=3, seed=7, **QUIET)
    for fid in (1, pair_fit):
        rows = db.sql("SELECT lds_1, lds_2 FROM noise_ceiling WHERE fit_id = ? "
                      "ORDER BY target_idx", [fid]).to_pylist()
        oracle = ceiling_oracle(db, fid)
        assert len(rows) == TARGETS[1] - TARGETS[0]
        for name in ("lds_1", "lds_2"):
            got = np.array([np.nan if r[name] is None else r[name] for r in rows])
            np.testing.assert_allclose(got, oracle[name], atol=1e-6, err_msg=f"{fid} {name}")
    assert [m[0] for m in report.models] == [1, pair_fit]
    lin, second = (np.nanmean(ceiling_oracle(db, f)["lds_1"]) for f in (1, pair_fit))
    assert (report.models[0][2], report.models[1][2]) == (pytest.approx(lin),
                                                          pytest.approx(second))
    assert lin != pytest.approx(second, abs=1e-9)
    assert "side by side" in report.summary()
