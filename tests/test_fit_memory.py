"""The fit's memory plan: batches sized to --memory, the Gram-free fallback, and refusals.

Real fits on a real DuckDB file; each budget is worked out from the same formula
the fit plans with, so the test says which plan a budget must give.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dmdb
from dmdb import fit_memory
from dmdb.cli import cli
from dmdb.errors import FitError
from dmdb.fitting import fit
from dmdb.gram import BLOCK_WIDTH, KERNELS, add_gram
from tests.conftest import N_TARGETS, N_TRAIN, make_runs, run_table

QUIET = {"progress": False, "echo": lambda s: None}


@pytest.fixture
def runs_db(tmp_path: Path) -> dmdb.Database:
    db = dmdb.init(tmp_path / "m.duckdb", n_train=N_TRAIN, n_targets=N_TARGETS)
    db.ingest(run_table(*make_runs(600, seed=5)))
    return db


def shape_of(db: dmdb.Database, **kw: object) -> fit_memory.FitShape:
    """The FitShape that `dmdb fit` plans for on this database (all targets)."""
    n_val = len(db.run_ids(split="val"))
    n_fit = len(db.run_ids(split="fit"))
    return fit_memory.FitShape(n_train=N_TRAIN, n_targets=N_TARGETS, n_val=n_val,
                               chunk=min(4096, n_fit), all_targets=N_TARGETS, **kw)


def gb(n_bytes: float) -> float:
    return n_bytes / fit_memory.GB


def plan_of(db: dmdb.Database, fit_id: int) -> dict:
    raw = db.sql("SELECT parameters FROM fits WHERE fit_id = ?", [fit_id]).column(0)[0].as_py()
    return json.loads(raw)["memory_plan"]


def test_a_budget_for_two_targets_batches_by_two_and_changes_nothing() -> None:
    from dmdb.lasso import DatamodelLasso

    # Many validation runs, so that the solve is the largest phase even at this N.
    masks, margins = make_runs(3400, seed=5)
    x, y, xv, yv = masks[:400], margins[:400], masks[400:], margins[400:]
    shape = fit_memory.FitShape(n_train=N_TRAIN, n_targets=N_TARGETS, n_val=len(xv), chunk=400,
                                dtype_bytes=8)
    two = fit_memory.estimate(shape, gram=True, target_batch=2)
    assert max(two.phases.values()) == two.phases["solve"]
    # Solved to a tight gap, the batches' answers agree to round-off.
    exact = {"dtype": "float64", "tol": 1e-10}
    whole = DatamodelLasso(**exact).fit(x, y, xv, yv)
    small = DatamodelLasso(memory=gb(two.peak + 100), **exact).fit(x, y, xv, yv)
    assert whole.memory_.target_batch == N_TARGETS
    assert small.memory_.target_batch == 2 and small.memory_.gram
    assert small.memory_.peak <= small.memory_budget_
    np.testing.assert_allclose(small.intercept_, whole.intercept_, atol=1e-5)
    np.testing.assert_allclose(small.coef_.toarray(), whole.coef_.toarray(), atol=1e-5)


def test_a_gram_too_big_for_the_budget_falls_back_to_gram_free(runs_db: dmdb.Database) -> None:
    shape = shape_of(runs_db)
    with_gram = fit_memory.estimate(shape, gram=True, target_batch=1).peak
    free = fit_memory.estimate(shape, gram=False, target_batch=N_TARGETS).peak
    assert free < with_gram  # at this size the Gram-free path needs less
    lines: list[str] = []
    report = fit(runs_db, memory=gb(free + 100), progress=False, echo=lines.append)
    plan = plan_of(runs_db, report.fit_id)
    assert not plan["gram"] and plan["target_batch"] == N_TARGETS
    assert any("Gram-free" in line for line in lines)
    reference = fit(runs_db, gram=False, **QUIET)
    np.testing.assert_allclose(runs_db.load_fit(report.fit_id)[1].toarray(),
                               runs_db.load_fit(reference.fit_id)[1].toarray(), atol=1e-6)


def test_a_budget_too_small_for_anything_is_refused_before_reading(
    runs_db: dmdb.Database,
) -> None:
    before = runs_db.sql("SELECT count(*) FROM fits").column(0)[0].as_py()
    with pytest.raises(FitError, match=r"needs at least .* GB .* but --memory is 0\.10 GB"):
        fit(runs_db, memory=0.1, **QUIET)
    assert runs_db.sql("SELECT count(*) FROM fits").column(0)[0].as_py() == before
    r = CliRunner().invoke(cli, ["fit", runs_db.path, "-q", "--memory", "0.1"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "--target-range" in r.output


def test_the_formula_grows_as_written() -> None:
    """Doubling N quadruples the Gram terms; a target more costs one solver row."""
    shape = fit_memory.FitShape(n_train=4000, n_targets=100, n_val=1000, chunk=4096)
    one = fit_memory.estimate(shape, gram=True, target_batch=1)
    two = fit_memory.estimate(shape, gram=True, target_batch=2)
    assert two.phases["solve"] - one.phases["solve"] == fit_memory.SOLVER_ROW_VALUES * 4 * 4000
    big = fit_memory.estimate(fit_memory.FitShape(n_train=8000, n_targets=100, n_val=1000,
                                                  chunk=4096), gram=True, target_batch=1)
    assert big.parts["gram"] == 4 * one.parts["gram"] == 4 * 4 * 8000**2 // 4
    free = fit_memory.estimate(shape, gram=False, target_batch=1)
    assert free.parts["gram"] == free.parts["counts"] == 0
    # the plan takes as many targets as the budget allows (found here by brute force),
    # and no more than asked
    for extra in (0.5, 10.5, 60.5):
        budget = fit_memory.BASE_BYTES + max(one.phases.values()) + extra * 256000
        fits = [b for b in range(1, 101)
                if fit_memory.estimate(shape, gram=True, target_batch=b).peak <= budget]
        assert fit_memory.plan(shape, budget).target_batch == max(fits)
    assert fit_memory.plan(shape, 1e12, target_batch=5).target_batch == 5


@pytest.mark.parametrize("kernel", KERNELS)
def test_blocked_counts_are_exact_past_one_block(kernel: str) -> None:
    """N wider than a block: the blocks add into the counts exactly, in every kernel."""
    n_feat = BLOCK_WIDTH["cpu"] + 77
    gen = torch.Generator().manual_seed(3)
    a = (torch.rand(300, n_feat, generator=gen) < 0.5).to(torch.uint8)
    out = torch.full((n_feat, n_feat), 5, dtype=torch.int32)  # adds to what is there
    add_gram(out, a, kernel)
    a64 = a.to(torch.float64)
    assert torch.equal(out, (a64.T @ a64).to(torch.int32) + 5)


def test_scale_ladder_runs_at_reduced_size(tmp_path: Path) -> None:
    """benchmarks/scale.py --reduced: every rung's commands run as users run them, the
    fit's own estimate is near the peak RSS measured in its process, and the laws,
    the extrapolation and the plot come out (the full ladder is a benchmark)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "scale.py"), "--reduced", "--threads", "1",
         "--plot", str(tmp_path / "scale.png"), "--json", str(tmp_path / "scale.json"),
         "--work", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=True).stdout
    rungs = json.loads((tmp_path / "scale.json").read_text())
    assert [r["name"].split(" ")[0] for r in rungs] == ["N=60", "N=120", "N=240", "long",
                                                        "wide"]
    for r in rungs:
        assert set(r["seconds"]) == {"ingest", "stats", "solve", "write", "lds",
                                     "predict_subset", "brittleness"}
        assert 0.6 < r["estimate"] / r["rss"]["fit"] < 1.5, r
        assert r["disk"] > 0
    assert "fitted costs" in out and "[extrapolated]" in out and "one H200" in out
    assert (tmp_path / "scale.png").stat().st_size > 10_000
