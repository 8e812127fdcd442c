"""The wheel carries the SQL folders: install it into a fresh venv and run `dmdb init`."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_install_finds_its_sql(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(dist.glob("dmdb-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, str(wheel)], check=True)
    work = tmp_path / "elsewhere"  # not the source tree, so only the wheel's SQL can be found
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    dmdb_bin = env_dir / "bin" / "dmdb"
    out = subprocess.run([str(dmdb_bin), "init", "w.duckdb", "-N", "10", "-M", "3"],
                         cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    where = subprocess.run(
        [str(py), "-c", "from dmdb.resources import sql_dir; print(sql_dir('schema'))"],
        cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert "site-packages" in where and where.strip().endswith("dmdb/sql/schema")
    status = subprocess.run([str(dmdb_bin), "status", "w.duckdb"], cwd=work, env=env,
                            capture_output=True, text=True)
    assert status.returncode == 0 and "no runs yet" in status.stdout
