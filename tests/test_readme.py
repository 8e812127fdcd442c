"""The README is the front door: its commands and examples work (at a reduced size)."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from dmdb.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    test_command = next(b.strip() for b in blocks if "pytest" in b)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci  # run as written, in a fresh venv, before the FFCV extras
    main_command = blocks[0].strip()
    assert "dmdb quickstart" in main_command and main_command.startswith("pip install torch==")


@pytest.mark.slow
def test_quickstart_at_reduced_size(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["quickstart", str(tmp_path / "qs"), "--runs", "300", "-q"])
    assert result.exit_code == 0, result.output + str(result.exception)
    out = result.stdout
    for expected in ("mean LDS", "counterfactuals:", "database:", "report:", "Try next"):
        assert expected in out
    db = tmp_path / "qs" / "digits.duckdb"
    assert (tmp_path / "qs" / "report" / "index.html").exists()
    # the three queries it suggests run, in the CLI and from pandas
    queries = re.findall(r'dmdb sql \S+ "(.*)"', out)
    assert len(queries) == 3
    for query in queries:
        r = CliRunner().invoke(cli, ["sql", str(db), query])
        assert r.exit_code == 0 and "row" in r.stdout
        df = duckdb.connect(str(db), read_only=True).sql(query).df()
        assert len(df) > 0
