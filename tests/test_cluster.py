"""Scale-out collection: specs, job-array workers writing shards, and the Ray backend.

Every path must leave exactly the runs a single-machine `dmdb train` would: the
same run ids and masks, margins equal to float32 round-off. Ray runs for real, as
a local cluster bound to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import dmdb
from dmdb.cli import cli
from tests.conftest import counts

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["--set", "epochs=2", "--set", "hidden=16"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def digits_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cluster")
    path = folder / "template.duckdb"
    assert run("init", str(path), "--dataset", "digits")[0] == 0
    return path


@pytest.fixture(scope="module")
def reference(digits_template: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """32 runs trained by a plain single-machine `dmdb train`."""
    path = digits_template.with_name("reference.duckdb")
    shutil.copy(digits_template, path)
    code, out = run("train", str(path), "--runs", "32", "--alpha", "0.5", *TRAIN, "-q")
    assert code == 0, out
    return dmdb.connect(path, read_only=True).load_runs()


def fresh(template: Path, tmp_path: Path, name: str = "exp.duckdb") -> Path:
    path = tmp_path / name
    shutil.copy(template, path)
    return path


def same_runs(path: Path, reference: tuple[np.ndarray, ...]) -> None:
    ids, masks, margins = dmdb.connect(path, read_only=True).load_runs()
    assert len(ids) == len(reference[0])
    np.testing.assert_array_equal(ids, reference[0])
    np.testing.assert_array_equal(masks, reference[1])
    np.testing.assert_allclose(margins, reference[2], rtol=1e-5, atol=1e-5)


def spec_file(db: Path, tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "spec.json"
    code, text = run("spec", str(db), "--alpha", "0.5", *TRAIN, *extra, "--out", str(out))
    assert code == 0, text
    return out


def worker(spec: Path, shards: Path, i: int, w: int, runs: int = 32,
           *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dmdb.cli", "train", "--spec", str(spec), "--runs", str(runs),
         "--shard-dir", str(shards), "--worker-index", str(i), "--num-workers", str(w), "-q",
         *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_three_workers_at_once_then_ingest_equal_a_local_train(
        digits_template: Path, reference: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    db = fresh(digits_template, tmp_path)
    spec = spec_file(db, tmp_path)
    shards = tmp_path / "shards"
    procs = [worker(spec, shards, i, 3, 32, "--shard-runs", "4") for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert not list(shards.glob("*.tmp"))
    code, out = run("ingest", str(db), str(shards), "-q")
    assert code == 0 and "ingested 32 new run(s)" in out, out
    same_runs(db, reference)
    # again: only new shards are read, and there are none
    code, out = run("ingest", str(db), str(shards), "-q")
    assert code == 0 and "ingested 0 new run(s)" in out
    assert counts(dmdb.connect(db))["runs"] == 32


def test_a_killed_worker_rerun_finishes_without_duplicates(
        digits_template: Path, reference: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    db = fresh(digits_template, tmp_path)
    spec = spec_file(db, tmp_path)
    shards = tmp_path / "shards"
    p = worker(spec, shards, 0, 1, 32, "--shard-runs", "2", "--batch-models", "2")
    deadline = time.monotonic() + 120
    while len(list(shards.glob("*.arrow"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    written = len(list(shards.glob("*.arrow")))
    assert 2 <= written < 16, "the kill came before the worker finished"
    # a reader while the worker is away: only complete shards, tmp files skipped
    (shards / "half.arrow.tmp").write_bytes(b"not a finished shard")
    code, out = run("ingest", str(db), str(shards), "-q")
    assert code == 0, out
    p = worker(spec, shards, 0, 1, 32, "--shard-runs", "2")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    code, out = run("ingest", str(db), str(shards), "-q")
    assert code == 0, out
    same_runs(db, reference)


def test_local_train_fills_every_missing_draw(digits_template: Path, tmp_path: Path,
                                              reference: tuple[np.ndarray, ...]) -> None:
    """A finished worker 1 with a dead worker 0 leaves gaps; `--runs K` fills them."""
    db = fresh(digits_template, tmp_path)
    spec = spec_file(db, tmp_path)
    shards = tmp_path / "shards"
    p = worker(spec, shards, 1, 2)
    assert p.communicate(timeout=300) and p.returncode == 0
    assert run("ingest", str(db), str(shards), "-q")[0] == 0
    code, out = run("train", str(db), "--runs", "32", "--alpha", "0.5", *TRAIN, "-q")
    assert code == 0 and "training 16 mask(s)" in out, out
    same_runs(db, reference)


def test_follow_ingests_shards_until_the_runs_are_in(
        digits_template: Path, tmp_path: Path) -> None:
    db = fresh(digits_template, tmp_path)
    spec = spec_file(db, tmp_path)
    shards = tmp_path / "shards"
    p = worker(spec, shards, 0, 1, 12, "--shard-runs", "3")
    code, out = run("ingest", str(db), str(shards), "--follow", "0.2", "--runs", "12",
                    "--alpha", "0.5", "-q")
    p.communicate(timeout=120)
    assert code == 0 and "ingested 12 new run(s) in all" in out, out
    assert counts(dmdb.connect(db))["runs"] == 12


BAD_WORKER = [
    (["--worker-index", "3", "--num-workers", "3"], "--worker-index must be in 0..2"),
    (["--worker-index", "-1", "--num-workers", "2"], "--worker-index must be in 0..1"),
    (["--num-workers", "0"], "--num-workers must be at least 1"),
    (["--runs", "0"], "--runs must be positive"),
]


@pytest.mark.parametrize(("args", "message"), BAD_WORKER)
def test_bad_worker_arguments(digits_template: Path, tmp_path: Path, args: list[str],
                              message: str) -> None:
    db = fresh(digits_template, tmp_path)
    spec = spec_file(db, tmp_path)
    base = {"--runs": "8", "--worker-index": "0", "--num-workers": "1"}
    for k, v in zip(args[::2], args[1::2], strict=True):
        base[k] = v
    flat = [x for kv in base.items() for x in kv]
    code, out = run("train", "--spec", str(spec), "--shard-dir", str(tmp_path / "s"), *flat)
    assert code == 1 and message in out and len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / "s").exists()


def test_bad_spec_files(tmp_path: Path, digits_template: Path) -> None:
    db = fresh(digits_template, tmp_path)
    good = json.loads(spec_file(db, tmp_path).read_text())
    cases = {
        "missing.json": (None, "no such spec file"),
        "corrupt.json": ("{not json", "not a dmdb spec file"),
        "newer.json": (json.dumps(good | {"spec_version": 99}), "made by a newer dmdb"),
        "edited.json": (json.dumps(good | {"alpha": 0.25}), "edited after it was written"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        code, out = run("train", "--spec", str(path), "--runs", "4", "--shard-dir",
                        str(tmp_path / "s"))
        assert code == 1 and message in out and "Traceback" not in out, (name, out)
        before = counts(dmdb.connect(db))
        code, out = run("train", str(db), "--runs", "4", "--backend", "ray", "--spec", str(path))
        assert code == 1 and message in out, (name, out)
        assert counts(dmdb.connect(db)) == before


def test_a_shard_from_another_experiment_is_refused(digits_template: Path,
                                                    tmp_path: Path) -> None:
    db = fresh(digits_template, tmp_path)
    other = tmp_path / "other.duckdb"
    assert run("init", str(other), "--dataset", "digits", "--seed", "5")[0] == 0
    spec = spec_file(other, tmp_path)
    shards = tmp_path / "shards"
    p = worker(spec, shards, 0, 1, 4)
    assert p.communicate(timeout=120) and p.returncode == 0
    before = counts(dmdb.connect(db))
    code, out = run("ingest", str(db), str(shards))
    assert code == 1 and "made for experiment fingerprint" in out and "this database's" in out
    assert len(out.strip().splitlines()) == 1
    assert counts(dmdb.connect(db)) == before


# -- Ray -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One real local Ray cluster on 127.0.0.1 for the module's tests."""
    pytest.importorskip("ray")
    from dmdb.cluster import start_ray

    os.environ["DMDB_FLAKY_DIR"] = str(tmp_path_factory.mktemp("flaky"))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray, started, _ = start_ray(None, num_cpus=2)
    node = ray.nodes()[0]["NodeManagerAddress"]
    assert node == "127.0.0.1", f"the test cluster must use loopback only, not {node}"
    yield ray
    if started:
        ray.shutdown()


def test_ray_backend_equals_a_local_train(ray_cluster: object, digits_template: Path,
                                          reference: tuple[np.ndarray, ...],
                                          tmp_path: Path) -> None:
    db = fresh(digits_template, tmp_path)
    code, out = run("train", str(db), "--runs", "32", "--alpha", "0.5", *TRAIN,
                    "--backend", "ray", "--runs-per-task", "8", "-q")
    assert code == 0 and "landed 32 run(s) from 4 Ray task(s)" in out, out
    same_runs(db, reference)
    code, out = run("train", str(db), "--runs", "32", "--alpha", "0.5", *TRAIN,
                    "--backend", "ray", "-q")
    assert code == 0 and "nothing to do" in out


def test_a_failing_ray_task_is_retried_and_lands_once(ray_cluster: object,
                                                      digits_template: Path,
                                                      tmp_path: Path) -> None:
    db = fresh(digits_template, tmp_path)
    code, out = run("train", str(db), "--runs", "12", "--alpha", "0.5", "--trainer",
                    "tests.cluster_plugins:flaky_once", "--backend", "ray",
                    "--runs-per-task", "2", "-q")
    assert code == 0, out
    assert len(list(Path(os.environ["DMDB_FLAKY_DIR"]).iterdir())) >= 3  # failures happened
    database = dmdb.connect(db, read_only=True)
    assert counts(database)["runs"] == 12
    draws = database.sql("SELECT draw FROM runs ORDER BY draw").column(0).to_pylist()
    assert draws == list(range(12))


def test_unreachable_ray_address_fails_fast_naming_it(digits_template: Path,
                                                      tmp_path: Path) -> None:
    db = fresh(digits_template, tmp_path)
    before = counts(dmdb.connect(db))
    t = time.monotonic()
    code, out = run("train", str(db), "--runs", "4", "--alpha", "0.5", "--backend", "ray",
                    "--address", "127.0.0.1:9")
    assert code == 1 and "127.0.0.1:9" in out and len(out.strip().splitlines()) == 1, out
    assert time.monotonic() - t < 20
    assert counts(dmdb.connect(db)) == before


def test_ray_not_installed_names_the_extra(digits_template: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import dmdb.cluster

    db = fresh(digits_template, tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    before = counts(dmdb.connect(db))
    code, out = run("train", str(db), "--runs", "4", "--alpha", "0.5", "--backend", "ray")
    assert code == 1 and "pip install 'dmdb[ray]'" in out, out
    assert counts(dmdb.connect(db)) == before
    assert dmdb.cluster.SPEC_VERSION == 1
