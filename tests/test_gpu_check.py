"""benchmarks/gpu_check.sh: its tiny CPU run prints parseable figures; no GPU fails cleanly.

The figures themselves are timings and are not checked here (house style: timings
belong to benchmarks); only that every step ran and reported in the agreed form.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

# "label: value unit (note)", e.g. "fit solve: 0.08 s (recorded in fits.parameters)".
FIGURE = re.compile(r"^(?P<label>[a-z0-9 -]+): (?P<value>-?[\d,]+(?:\.\d+)?) "
                    r"(?P<unit>s|models/s|mean LDS)(?: \(.+\))?$")
# Lines that report a choice or a skip rather than a figure.
TEXT_LABELS = ("fit gram kernel", "cifar10")
FIT_FIGURES = ["fit generate", "fit ingest", "fit stats", "fit gram", "fit solve",
               "fit recorded wall", "fit command", "fit quality"]
CIFAR_FIGURES = ["cifar10 betons", "cifar10 warm-up", "cifar10 epoch 1", "cifar10 epoch 2"]
MLP_FIGURES = ["mlp", "mlp command"]


def run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the script with this interpreter (the one whose FFCV the tests look for)."""
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def tiny_cpu() -> subprocess.CompletedProcess[str]:
    return run_script("--device", "cpu", "--tiny")


def figures(stdout: str) -> dict[str, tuple[float, str]]:
    """Every figure line as label -> (value, unit); fails on a line of unknown form."""
    found: dict[str, tuple[float, str]] = {}
    for line in stdout.splitlines()[1:]:
        match = FIGURE.match(line)
        if match is None:
            assert line.split(":", 1)[0] in TEXT_LABELS, f"unparseable line: {line!r}"
            continue
        assert match["label"] not in found, f"figure printed twice: {line!r}"
        found[match["label"]] = (float(match["value"].replace(",", "")), match["unit"])
    return found


@pytest.mark.slow
def test_tiny_cpu_run_prints_every_figure(tiny_cpu):
    assert tiny_cpu.returncode == 0, tiny_cpu.stderr
    assert "Traceback" not in tiny_cpu.stderr
    lines = tiny_cpu.stdout.splitlines()
    assert lines[0].startswith("CPU: "), lines[0]
    found = figures(tiny_cpu.stdout)
    for label in [*FIT_FIGURES, *MLP_FIGURES, "total"]:
        assert label in found, f"no {label!r} line in:\n{tiny_cpu.stdout}"
    for stage in ("stats", "gram", "solve", "recorded wall", "command"):
        value, unit = found[f"fit {stage}"]
        assert unit == "s" and value >= 0
    assert found["fit quality"][1] == "mean LDS" and -1 <= found["fit quality"][0] <= 1
    assert any(line.startswith("fit gram kernel: ") for line in lines)
    rate, unit = found["mlp"]
    assert unit == "models/s" and rate > 0
    assert "8 digits runs" in tiny_cpu.stdout  # the tiny size's --runs, all trained


@pytest.mark.slow
def test_tiny_cpu_run_reports_cifar10_or_its_skip(tiny_cpu):
    found = figures(tiny_cpu.stdout)
    if importlib.util.find_spec("ffcv") is None:
        assert "cifar10: skipped (FFCV is not installed" in tiny_cpu.stdout
        assert not any(label.startswith("cifar10") for label in found)
    else:
        for label in CIFAR_FIGURES:
            assert found[label][1] == "s", f"no {label!r} line in:\n{tiny_cpu.stdout}"
        assert "no per-epoch hook" in tiny_cpu.stdout


def test_cuda_without_a_gpu_fails_with_one_line():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    done = run_script("--device", "cuda", timeout=60)
    assert done.returncode == 1
    output = (done.stdout + done.stderr).strip().splitlines()
    assert len(output) == 1, output
    assert "Traceback" not in output[0]
    assert "no CUDA GPU" in output[0] and "--device cpu" in output[0]
