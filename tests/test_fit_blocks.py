"""Fits split by targets: 3 blocks, merged, are the unsplit fit.

Real fits through the CLI on a real DuckDB file; the blocks are real Parquet
files; the Ray backend runs on a local cluster on 127.0.0.1, started by the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import dmdb
from dmdb.blocks import META_KEY, read_block
from dmdb.cli import cli
from tests.conftest import N_TARGETS, N_TRAIN, make_runs, run_table

RANGES = ("0:2", "2:4", f"4:{N_TARGETS}")


def run(*args: str) -> str:
    """Run the CLI; return its last line (the summary)."""
    r = CliRunner().invoke(cli, list(args))
    assert r.exit_code == 0, (args, r.output, r.exception)
    return r.output.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def exp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("blocks") / "b.duckdb"
    db = dmdb.init(path, n_train=N_TRAIN, n_targets=N_TARGETS)
    db.ingest(run_table(*make_runs(900, seed=21)))
    run("fit", str(path), "-q")  # fit 1: the unsplit fit
    return path


def fit_rows(path: Path, fit_id: int) -> dict[str, np.ndarray]:
    db = dmdb.connect(path, read_only=True)
    dm = db.sql("SELECT target_idx, bias, penalty, val_mse, test_mse, test_pearson, "
                "test_spearman FROM datamodels WHERE fit_id = ? ORDER BY target_idx",
                [fit_id]).to_pydict()
    lds = db.sql("SELECT * EXCLUDE (fit_id) FROM lds WHERE fit_id = ? ORDER BY ALL",
                 [fit_id]).to_pydict()
    bias, weights = db.load_fit(fit_id)
    phi = np.zeros((N_TARGETS, N_TRAIN, N_TRAIN))  # a second-order fit's pairs, dense
    t, a, b, w = db.load_interactions(fit_id)
    phi[t, a, b] = w
    return {**{k: np.asarray(v, dtype=float) for k, v in dm.items()},
            **{f"lds.{k}": np.asarray(v, dtype=float) for k, v in lds.items()},
            "weights": weights.toarray(), "loaded_bias": bias, "interactions": phi}


def assert_same_fit(path: Path, a: int, b: int, atol: float = 1e-6) -> None:
    x, y = fit_rows(path, a), fit_rows(path, b)
    assert set(x) == set(y)
    for key in x:
        np.testing.assert_allclose(x[key], y[key], rtol=1e-5, atol=atol, err_msg=key)


def fit_runs(path: Path, fit_id: int) -> list[tuple]:
    db = dmdb.connect(path, read_only=True)
    return db.sql("SELECT run_id, split FROM fit_runs WHERE fit_id = ? ORDER BY run_id",
                  [fit_id]).to_pylist()


def test_three_blocks_merged_are_the_unsplit_fit(exp: Path, tmp_path: Path) -> None:
    before = exp.read_bytes()
    files = []
    for i, rng in enumerate(RANGES):
        files.append(str(tmp_path / f"block-{i}.parquet"))
        out = run("fit", str(exp), "-q", "--target-range", rng, "--out", files[-1])
        assert out.startswith(f"block {files[-1]}: ")
    assert exp.read_bytes() == before  # the blocks only read the database
    block = read_block(files[1])
    assert block.target_range == (2, 4) and block.weights.shape == (2, N_TRAIN)
    meta = json.loads(pq.read_schema(files[1]).metadata[META_KEY])
    assert meta["fingerprint"] == dmdb.connect(exp, read_only=True).fingerprint
    # any order on the command line
    out = run("fit", str(exp), "--merge", files[2], files[0], files[1])
    fit_id = int(out.split()[1].rstrip(":"))
    assert_same_fit(exp, 1, fit_id)
    assert fit_runs(exp, 1) == fit_runs(exp, fit_id)
    params = json.loads(dmdb.connect(exp, read_only=True).sql(
        "SELECT parameters FROM fits WHERE fit_id = ?", [fit_id]).column(0)[0].as_py())
    assert [b["target_range"] for b in params["blocks"]] == [[0, 2], [2, 4], [4, N_TARGETS]]
    lo_hi = dmdb.connect(exp, read_only=True).sql(
        "SELECT target_lo, target_hi FROM fits WHERE fit_id = ?", [fit_id]).to_pylist()
    assert lo_hi == [{"target_lo": 0, "target_hi": N_TARGETS}]


def test_blocks_from_saved_stats_are_the_same_fit(exp: Path, tmp_path: Path) -> None:
    stats = str(tmp_path / "stats.pt")
    run("fit", str(exp), "-q", "--save-stats", stats)
    files = [str(tmp_path / f"s-{i}.parquet") for i in range(len(RANGES))]
    for rng, f in zip(RANGES, files, strict=True):
        run("fit", str(exp), "-q", "--target-range", rng, "--out", f, "--stats", stats)
    out = run("fit", str(exp), "--merge", *files)
    fit_id = int(out.split()[1].rstrip(":"))
    assert_same_fit(exp, 1, fit_id)
    # a whole fit from the stats is the same fit too
    out = run("fit", str(exp), "-q", "--stats", stats)
    assert_same_fit(exp, 1, int(out.split()[1].rstrip(":")))


def test_the_ray_backend_fits_blocks_and_merges_them(exp: Path) -> None:
    pytest.importorskip("ray")
    out = run("fit", str(exp), "-q", "--backend", "ray", "--blocks", "3")
    fit_id = int(out.split()[1].rstrip(":"))
    assert_same_fit(exp, 1, fit_id)
    params = json.loads(dmdb.connect(exp, read_only=True).sql(
        "SELECT parameters FROM fits WHERE fit_id = ?", [fit_id]).column(0)[0].as_py())
    assert len(params["blocks"]) == 3


@pytest.fixture(scope="module")
def second_order(exp: Path) -> int:
    """The unsplit second-order fit of the same runs."""
    out = run("fit", str(exp), "-q", "--pairs", "8")
    fit_id = int(out.split()[1].rstrip(":"))
    assert dmdb.connect(exp, read_only=True).load_interactions(fit_id)[3].size
    return fit_id


def test_second_order_blocks_merged_are_the_unsplit_fit(exp: Path, second_order: int,
                                                        tmp_path: Path) -> None:
    files = [str(tmp_path / f"p-{i}.parquet") for i in range(len(RANGES))]
    for rng, f in zip(RANGES, files, strict=True):
        run("fit", str(exp), "-q", "--target-range", rng, "--out", f, "--pairs", "8")
    block = read_block(files[1])
    t, a, b, _ = block.pairs
    assert len(t) and t.min() >= 0 and t.max() < 2 and (a < b).all()  # counted from its lo
    out = run("fit", str(exp), "--merge", *files)
    fit_id = int(out.split()[1].rstrip(":"))
    assert_same_fit(exp, second_order, fit_id)
    params = json.loads(dmdb.connect(exp, read_only=True).sql(
        "SELECT parameters FROM fits WHERE fit_id = ?", [fit_id]).column(0)[0].as_py())
    assert params["pairs"] == 8 and all("pair_fit" in b for b in params["blocks"])
    # a linear and a second-order block do not make one fit
    linear = str(tmp_path / "linear.parquet")
    run("fit", str(exp), "-q", "--target-range", RANGES[0], "--out", linear)
    r = CliRunner().invoke(cli, ["fit", str(exp), "--merge", linear, *files[1:]])
    assert r.exit_code == 1 and "different parameters: pairs" in r.output, r.output


def test_the_ray_backend_fits_second_order_blocks(exp: Path, second_order: int) -> None:
    pytest.importorskip("ray")
    out = run("fit", str(exp), "-q", "--backend", "ray", "--blocks", "2", "--pairs", "8")
    # one thread per task here, two in the unsplit fit: float32 sums in another order, and
    # the bias carries the pairs' constant terms (a sum over them)
    assert_same_fit(exp, second_order, int(out.split()[1].rstrip(":")), atol=1e-5)
