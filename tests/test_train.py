"""`dmdb train`: resume, masks, streaming, plug-ins and bad input, with real training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import dmdb
from dmdb.cli import cli
from dmdb.errors import DeviceError, TrainerError, UsageError
from dmdb.training import draw_masks, train
from tests.conftest import counts

PLUGIN = "tests.plugin_examples:centroid"


@pytest.fixture
def digits_db(tmp_path: Path) -> dmdb.Database:
    return dmdb.init(tmp_path / "digits.duckdb", dataset="digits", n_train=1297, n_targets=500,
                     seed=3)


def cli_run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_mlp_runs_64_then_96_leaves_96(tmp_path: Path) -> None:
    db = str(tmp_path / "d.duckdb")
    assert cli_run("init", db, "--dataset", "digits")[0] == 0
    code, out, err = cli_run("train", db, "--runs", "64", "--alpha", "0.5", "--set", "epochs=3",
                             "-q")
    assert code == 0, err
    code, out, _ = cli_run("train", db, "--runs", "96", "--alpha", "0.5", "--set", "epochs=3",
                           "-q")
    assert code == 0 and "training 32 mask(s)" in out
    code, out, _ = cli_run("train", db, "--runs", "96", "--alpha", "0.5", "-q")
    assert code == 0 and "nothing to do" in out
    database = dmdb.connect(db)
    _, masks, margins = database.load_runs()
    assert masks.shape == (96, 1297)
    assert abs(masks.mean() - 0.5) < 0.01
    assert (margins > 0).mean() > 0.8  # the models learn
    info = database.sql("SELECT min(target_acc) AS lo, avg(train_acc) AS tr, "
                        "count(DISTINCT mask_id) AS masks, any_value(trainer) AS t FROM runs")
    row = info.to_pylist()[0]
    assert row["masks"] == 96 and row["t"] == "mlp" and row["lo"] > 0.5 and row["tr"] > 0.8


def test_masks_are_reproducible_bernoulli() -> None:
    a = draw_masks(3, 0.3, np.arange(200), 500)
    b = draw_masks(3, 0.3, np.arange(100, 200), 500)
    assert np.array_equal(a[100:], b)
    assert abs(a.mean() - 0.3) < 0.01
    assert len(set(a.sum(axis=1))) > 10  # Bernoulli, not fixed size
    assert not np.array_equal(draw_masks(4, 0.3, np.arange(5), 500), a[:5])


def test_resume_draws_the_same_masks_as_one_go(digits_db: dmdb.Database, tmp_path: Path) -> None:
    train(digits_db, runs=5, alpha=0.5, trainer=PLUGIN, progress=False, echo=lambda s: None)
    train(digits_db, runs=9, alpha=0.5, trainer=PLUGIN, progress=False, echo=lambda s: None)
    other = dmdb.init(tmp_path / "o.duckdb", dataset="digits", n_train=1297, n_targets=500, seed=3)
    train(other, runs=9, alpha=0.5, trainer=PLUGIN, progress=False, echo=lambda s: None)
    a, b = digits_db.load_runs(), other.load_runs()
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2])


def test_repeats_share_masks(digits_db: dmdb.Database) -> None:
    train(digits_db, runs=4, alpha=0.5, repeats=3, trainer=PLUGIN, progress=False,
          echo=lambda s: None)
    rows = digits_db.sql("SELECT mask_id, count(*) AS n, count(DISTINCT seed) AS s, "
                         "count(DISTINCT split) AS sp FROM runs GROUP BY mask_id").to_pylist()
    assert len(rows) == 4 and all(r["n"] == 3 and r["s"] == 3 and r["sp"] == 1 for r in rows)
    averaged = digits_db.sql("SELECT n_seeds FROM mask_margins").column(0).to_pylist()
    assert averaged == [3, 3, 3, 3]


def test_averaged_margins_view_matches_numpy(digits_db: dmdb.Database) -> None:
    train(digits_db, runs=3, alpha=0.5, repeats=2, trainer="tests.plugin_examples:centroid",
          progress=False, echo=lambda s: None)
    rows = digits_db.sql("SELECT r.mask_id, m.margins FROM runs r JOIN margins m USING (run_id)"
                         ).to_pylist()
    by_mask: dict[int, list] = {}
    for r in rows:
        by_mask.setdefault(r["mask_id"], []).append(np.array(r["margins"]))
    view = digits_db.sql("SELECT mask_id, margins FROM mask_margins").to_pylist()
    for r in view:
        assert np.allclose(r["margins"], np.mean(by_mask[r["mask_id"]], axis=0), atol=1e-5)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"alpha": 0.0}, UsageError, "--alpha must be in"),
    ({"alpha": 1.5}, UsageError, "--alpha must be in"),
    ({"runs": 0}, UsageError, "--runs must be positive"),
    ({"repeats": 0}, UsageError, "--repeats must be positive"),
    ({"trainer": "nosuch"}, TrainerError, "unknown trainer"),
    ({"trainer": "not_a_module_xyz:fn"}, TrainerError, "cannot import"),
    ({"trainer": "tests.plugin_examples:bad_int_dtype"}, TrainerError, "dtype"),
    ({"trainer": "tests.plugin_examples:bad_batched_shape"}, TrainerError, "shape"),
    ({"device": "cuda"}, DeviceError, "no CUDA"),
])
def test_bad_input_writes_nothing(digits_db: dmdb.Database, kwargs: dict, error: type,
                                  message: str) -> None:
    args = {"runs": 4, "alpha": 0.5, "trainer": PLUGIN} | kwargs
    with pytest.raises(error, match=message):
        train(digits_db, progress=False, echo=lambda s: None, **args)
    assert counts(digits_db)["runs"] == 0


@pytest.mark.parametrize("plugin", ["bad_nan_for_seed_2", "bad_shape_for_seed_2",
                                    "bad_raises_for_seed_2"])
def test_plugin_failing_partway_keeps_earlier_runs(digits_db: dmdb.Database, plugin: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Seeds are hashes; make run 2 the one with seed 2.
    monkeypatch.setattr("dmdb.training.run_seeds", lambda seed, d, r: np.arange(len(d)))
    message = "run 2 of this command .*the 2 run\\(s\\) trained before it are saved"
    with pytest.raises(TrainerError, match=message):
        train(digits_db, runs=5, alpha=0.5, trainer=f"tests.plugin_examples:{plugin}",
              progress=False, echo=lambda s: None)
    assert counts(digits_db)["runs"] == 2


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    db = str(tmp_path / "d.duckdb")
    cli_run("init", db, "--dataset", "digits")
    for args, message in [
        (["--alpha", "2"], "--alpha must be in (0, 1]"),
        (["--runs", "-1"], "--runs must be positive"),
        (["--trainer", "os.path:nope"], "cannot import"),
        (["--device", "cuda"], "no CUDA"),
    ]:
        code, _, err = cli_run("train", db, "--runs", "2", "--alpha", "0.5",
                               "--trainer", PLUGIN, *args)
        assert code == 1 and err.startswith("Error:") and message in err
        assert len(err.strip().splitlines()) == 1
    code, _, err = cli_run("init", str(tmp_path / "x.duckdb"), "--dataset", "cifar100")
    assert code == 1 and "unknown dataset" in err


def test_plugin_on_user_data(tmp_path: Path) -> None:
    # The README's plug-in example: logistic regression on breast_cancer, no built-in dataset.
    from examples.logreg_plugin import N_TARGETS, N_TRAIN

    db = dmdb.init(tmp_path / "bc.duckdb", n_train=N_TRAIN, n_targets=N_TARGETS)
    report = train(db, runs=6, alpha=0.5, trainer="examples.logreg_plugin:train",
                   progress=False, echo=lambda s: None)
    assert report.trained == 6 and report.mean_target_acc > 0.8
    with pytest.raises(UsageError, match="pass --trainer"):
        train(db, runs=7, alpha=0.5, progress=False, echo=lambda s: None)


def test_batch_models_changes_chunks_not_runs(tmp_path: Path) -> None:
    # The MLP is bit-identical per (mask, seed), so --batch-models is throughput only.
    dbs = []
    for name, extra in (("a", []), ("b", ["--batch-models", "3"])):
        db = str(tmp_path / f"{name}.duckdb")
        assert cli_run("init", db, "--dataset", "digits")[0] == 0
        code, _, err = cli_run("train", db, "--runs", "7", "--alpha", "0.5", "--set", "epochs=1",
                               "-q", *extra)
        assert code == 0, err
        dbs.append(dmdb.connect(db, read_only=True))
    (ids_a, masks_a, margins_a), (ids_b, masks_b, margins_b) = (d.load_runs() for d in dbs)
    assert np.array_equal(ids_a, ids_b) and np.array_equal(masks_a, masks_b)
    assert np.array_equal(margins_a, margins_b)
    options = dbs[1].sql("SELECT DISTINCT CAST(info->'$.options' AS VARCHAR) AS o FROM runs")
    assert options.column("o").to_pylist() == ['{"epochs":"1"}']


def test_config_file_trains_the_mlp_and_is_recorded(tmp_path: Path) -> None:
    db = str(tmp_path / "d.duckdb")
    config = tmp_path / "mlp.json"
    config.write_text('{"epochs": 1, "hidden": 16}')
    assert cli_run("init", db, "--dataset", "digits")[0] == 0
    code, out, err = cli_run("train", db, "--runs", "3", "--alpha", "0.5", "--config",
                             str(config), "--set", "hidden=8", "-q")
    assert code == 0, err
    info = dmdb.connect(db, read_only=True).sql(
        "SELECT DISTINCT info->>'$.options.config' AS c, info->>'$.options.hidden' AS h "
        "FROM runs").to_pylist()
    assert info == [{"c": str(config), "h": "8"}]
    code, _, err = cli_run("train", db, "--runs", "4", "--alpha", "0.5", "--config",
                           str(tmp_path / "missing.toml"), "-q")
    assert code == 1 and "cannot read config file" in err
