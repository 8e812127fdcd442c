"""The command line: help, messages and exit codes (Click's CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dmdb.cli import cli
from tests.conftest import make_runs

COMMANDS = sorted(cli.commands)  # from the CLI itself, never a hand-kept list


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    code, out, _ = run(command, "--help")
    assert code == 0 and "Usage:" in out and len(out.splitlines()) > 4


def test_the_commands_users_know_are_there() -> None:
    documented = {"init", "ingest", "status", "sql", "train", "fit", "fits", "export", "embed",
                  "leakage", "verify", "report", "quickstart", "spec"}
    assert documented <= set(COMMANDS)


def test_top_level_help_lists_commands() -> None:
    code, out, _ = run("--help")
    assert code == 0 and all(c in out for c in COMMANDS)


def test_init_ingest_status_sql(tmp_path: Path) -> None:
    db = str(tmp_path / "e.duckdb")
    code, out, _ = run("init", db, "--train-size", "37", "--targets", "6", "--name", "demo")
    assert code == 0 and "created" in out
    masks, margins = make_runs(50)
    np.save(tmp_path / "m.npy", masks)
    np.save(tmp_path / "y.npy", margins)
    code, out, _ = run("ingest", db, "--masks", str(tmp_path / "m.npy"),
                       "--margins", str(tmp_path / "y.npy"), "--alpha", "0.5", "-q")
    assert code == 0 and "ingested 50 new run(s)" in out
    code, out, _ = run("status", db)
    assert code == 0 and "demo" in out and "fit" in out and "no fits yet" in out
    code, out, _ = run("sql", db, "SELECT count(*) AS n FROM runs", "--format", "json")
    assert code == 0 and json.loads(out) == {"n": 50}
    code, out, _ = run("sql", db, "SELECT split, count(*) AS n FROM runs GROUP BY 1 ORDER BY 1",
                       "--format", "csv")
    assert code == 0 and out.splitlines()[0] == "split,n"
    code, out, _ = run("sql", db, "SELECT run_id, alpha FROM runs LIMIT 2")
    assert code == 0 and "(2 rows)" in out


@pytest.mark.parametrize("args, message", [
    (["init", "{db}", "--train-size", "5"], "give --train-size N and --targets M"),
    (["init", "{db}", "--dataset", "imagenet"], "unknown dataset"),
    (["status", "{tmp}/missing.duckdb"], "no such database"),
    (["sql", "{db}", "SELECT * FROM nope"], "nope"),
    (["sql", "{db}", "DELETE FROM runs"], "read-only"),
    (["ingest", "{db}"], "nothing to ingest"),
    (["ingest", "{db}", "--masks", "{tmp}/m.npy", "--margins", "{tmp}/y.npy"],
     "--alpha is required"),
    (["ingest", "{db}", "--masks", "{tmp}/m.npy", "--margins", "{tmp}/none.npy", "--alpha", "0.5"],
     "no such file"),
])
def test_errors_are_one_line_with_status_1(tmp_path: Path, args: list[str], message: str) -> None:
    db = str(tmp_path / "e.duckdb")
    run("init", db, "-N", "37", "-M", "6")
    masks, margins = make_runs(5)
    np.save(tmp_path / "m.npy", masks)
    np.save(tmp_path / "y.npy", margins)
    code, out, err = run(*[a.format(db=db, tmp=tmp_path) for a in args])
    assert code == 1
    assert err.startswith("Error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_ingest_through_cli_changes_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "e.duckdb")
    run("init", db, "-N", "37", "-M", "6")
    masks, margins = make_runs(10)
    margins[9, 0] = np.inf
    np.save(tmp_path / "m.npy", masks)
    np.save(tmp_path / "y.npy", margins)
    code, _, err = run("ingest", db, "--masks", str(tmp_path / "m.npy"),
                       "--margins", str(tmp_path / "y.npy"), "--alpha", "0.5")
    assert code == 1 and "NaN or inf" in err
    _, out, _ = run("sql", db, "SELECT count(*) AS n FROM runs", "--format", "json")
    assert json.loads(out) == {"n": 0}
