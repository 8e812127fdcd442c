"""The GPU check of the scale-up issue: the fit, the cifar10 recipe and the MLP, timed.

On one GPU (sized to finish in under 8 minutes), this runs

1. ``dmdb fit DB --device cuda -q`` (the real CLI, in a subprocess) on a database
   of planted datamodel-like runs (n = 100,000 runs, N = 10,000, M = 1,000:
   Bernoulli(0.5) masks, 1-5% non-zero heavy-tailed true weights, noise) built
   through dmdb's Python API, and reports the stage timings the fit records in
   ``fits.parameters`` (stats, gram, solve), its recorded ``wall_seconds``, the
   whole command's wall time, the ingest time and the Gram kernel chosen;
2. the ``cifar10`` recipe at full width on synthetic 32x32 betons (50,000 train
   and 10,000 target images): after a warm-up, one Bernoulli(0.5) run at
   ``epochs=1`` and one at ``epochs=2`` on the same trainer (the recipe has no
   per-epoch hook, so the second epoch is their difference); skipped, with one
   line saying so, if FFCV is not installed;
3. ``dmdb train DB --trainer mlp --device cuda`` on the built-in digits, as
   models/s.

Output: the device's name first, then one line per figure, ``label: value unit
(note)``, e.g. ``fit solve: 12.3 s``, ``mlp: 2,345.6 models/s (...)``. With
``--device cuda`` and no GPU it prints one line and exits 1 at once.

    benchmarks/gpu_check.sh                       # one GPU, full size
    benchmarks/gpu_check.sh --device cuda --tiny  # a quick smoke run on the GPU
    benchmarks/gpu_check.sh --device cpu --tiny   # the same code on a CPU, in seconds
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dmdb  # before torch: it sets OMP_WAIT_POLICY

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

ALPHA = 0.5
GEN_CHUNK = 4096  # runs generated (and handed to the writer) at a time
FIT_STAGES = ("stats", "gram", "solve")  # the keys of fits.parameters' "timings"


@dataclass(frozen=True)
class Sizes:
    """The problem sizes of one check."""

    fit_runs: int          # n: runs in the database (fit + val + test)
    fit_train: int         # N
    fit_targets: int       # M
    cifar_train: int       # images in the training beton
    cifar_targets: int     # images in the targets beton
    cifar_options: dict[str, str]  # recipe options besides the betons and epochs
    mlp_runs: int
    mlp_batch_models: int
    timeout_s: float       # per subprocess


FULL = Sizes(
    fit_runs=100_000, fit_train=10_000, fit_targets=1_000,
    cifar_train=50_000, cifar_targets=10_000, cifar_options={},  # the paper's recipe, width 64
    mlp_runs=10_000, mlp_batch_models=1_000, timeout_s=420.0,
)
TINY = Sizes(
    fit_runs=600, fit_train=50, fit_targets=5,
    cifar_train=256, cifar_targets=64,
    cifar_options={"width": "8", "batch_size": "32", "eval_batch_size": "64",
                   "num_workers": "1"},
    mlp_runs=8, mlp_batch_models=4, timeout_s=120.0,
)


class CheckFailed(Exception):
    """A step of the check failed; the message is the one line to print."""


# ----------------------------------------------------------------------------- output


def figure(label: str, value: float, unit: str, note: str = "", digits: int = 2) -> None:
    """Print one figure line, ``label: value unit (note)``."""
    text = f"{label}: {value:,.{digits}f} {unit}"
    print(text + (f" ({note})" if note else ""), flush=True)


def device_name(device: str) -> str:
    """The first line: the GPU's name (nvidia-smi) or the CPU's (lscpu), and torch."""
    if device == "cuda":
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=30,
                check=True).stdout.splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError, IndexError):
            out = torch.cuda.get_device_name(0)
        return f"GPU: {out} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    model = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30,
                             check=True).stdout
        info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = info.get("Model name", model).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return (f"CPU: {model} ({os.cpu_count()} cores; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads)")


# ----------------------------------------------------------------------------- subprocesses


def dmdb_cli(args: list[str], what: str, timeout_s: float) -> tuple[str, float]:
    """Run ``python -m dmdb.cli ARGS`` from the repository root; (stdout, seconds).

    Raises
    ------
    CheckFailed
        If the command fails or runs past ``timeout_s``.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "dmdb.cli", *args]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"`dmdb {what}` ran past {timeout_s:.0f} s") from None
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        raise CheckFailed(f"`dmdb {what}` failed (exit {done.returncode}): {lines[-1]}")
    return done.stdout, seconds


# ----------------------------------------------------------------------------- 1. the fit


def planted_weights(n_train: int, n_targets: int, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Sparse heavy-tailed true weights (N, M) and per-target noise sds (M,).

    Each target has 1-5% non-zero weights drawn from Student's t(3); the noise
    sd puts the signal's share of the margin variance near 0.2-0.5.
    """
    w = np.zeros((n_train, n_targets), np.float32)
    for j in range(n_targets):
        k = max(1, int(rng.uniform(0.01, 0.05) * n_train))
        w[rng.choice(n_train, k, replace=False), j] = rng.standard_t(3, k)
    # Var(mask @ w) = alpha (1 - alpha) |w|^2 for Bernoulli(alpha) masks.
    signal_sd = np.sqrt(ALPHA * (1 - ALPHA) * (w**2).sum(0))
    noise_sd = signal_sd * rng.uniform(0.6, 1.2, n_targets)
    return w, noise_sd.astype(np.float32)


def planted_runs(sizes: Sizes, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Bernoulli(0.5) masks (n, N) bool and margins (n, M) float32, generated on ``device``."""
    w_np, sd_np = planted_weights(sizes.fit_train, sizes.fit_targets, np.random.default_rng(0))
    w = torch.from_numpy(w_np).to(device)
    sd = torch.from_numpy(sd_np).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    n = sizes.fit_runs
    masks = np.empty((n, sizes.fit_train), dtype=bool)
    margins = np.empty((n, sizes.fit_targets), dtype=np.float32)
    for lo in range(0, n, GEN_CHUNK):
        k = min(GEN_CHUNK, n - lo)
        x = torch.rand((k, sizes.fit_train), generator=gen, device=device) < ALPHA
        noise = torch.randn((k, sizes.fit_targets), generator=gen, device=device)
        y = x.float() @ w + 2.0 + sd * noise
        masks[lo : lo + k] = x.cpu().numpy()
        margins[lo : lo + k] = y.cpu().numpy()
    del w, sd, x, noise, y
    if device.type == "cuda":
        torch.cuda.empty_cache()  # leave the GPU's memory to the fit's own process
    return masks, margins


def ingest(path: Path, masks: np.ndarray, margins: np.ndarray) -> None:
    """Create the database and write the runs through :class:`dmdb.writer.RunWriter`."""
    from dmdb.writer import RunWriter

    db = dmdb.init(path, n_train=masks.shape[1], n_targets=margins.shape[1], seed=0)
    with RunWriter(db, flush_runs=4096) as writer:
        for lo in range(0, len(masks), GEN_CHUNK):
            writer.add_batch(masks[lo : lo + GEN_CHUNK], margins[lo : lo + GEN_CHUNK],
                             alpha=ALPHA)


def kernel_text(choice: dict[str, Any] | None) -> str:
    """The Gram kernel, why, and the probe's milliseconds per kernel."""
    if not choice:
        return "none (gram-free)"
    times = ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in (choice.get("seconds") or {}).items())
    probe = "x".join(map(str, choice.get("probe") or []))
    note = "; ".join(filter(None, [choice.get("reason"),
                                   f"probe {probe}: {times}" if times else ""]))
    return f"{choice.get('kernel', '?')}" + (f" ({note})" if note else "")


def check_fit(sizes: Sizes, device: str, tmp: Path) -> None:
    """Build the planted database, run ``dmdb fit`` on it and print its stage timings."""
    n, n_train, n_targets = sizes.fit_runs, sizes.fit_train, sizes.fit_targets
    t0 = time.perf_counter()
    masks, margins = planted_runs(sizes, torch.device(device))
    figure("fit generate", time.perf_counter() - t0, "s",
           f"planted runs on {device}: n={n:,}, N={n_train:,}, M={n_targets:,}")
    path = tmp / "fit.duckdb"
    t0 = time.perf_counter()
    ingest(path, masks, margins)
    t_ingest = time.perf_counter() - t0
    del masks, margins
    figure("fit ingest", t_ingest, "s",
           f"dmdb.init + RunWriter, {n / max(t_ingest, 1e-9):,.0f} runs/s")
    _, t_cmd = dmdb_cli(["fit", str(path), "--device", device, "-q"], "fit", sizes.timeout_s)
    db = dmdb.connect(path, read_only=True)
    row = db.sql("SELECT parameters, wall_seconds, n_fit, n_val, n_test FROM fits "
                 "ORDER BY fit_id DESC LIMIT 1").to_pylist()[0]
    lds = db.sql("SELECT avg(test_spearman) AS lds, count(*) AS m FROM datamodels "
                 "WHERE fit_id = (SELECT max(fit_id) FROM fits)").to_pylist()[0]
    params = json.loads(row["parameters"])
    timings = params.get("timings") or {}
    missing = [s for s in FIT_STAGES if s not in timings]
    if missing:
        raise CheckFailed(f"fits.parameters has no timings for {', '.join(missing)}: "
                          f"{sorted(timings)}")
    # The stages the issue asks for first, then any the fit records besides them.
    for stage in [*FIT_STAGES, *(s for s in timings if s not in FIT_STAGES)]:
        figure(f"fit {stage}", float(timings[stage]), "s", "recorded in fits.parameters")
    figure("fit recorded wall", float(row["wall_seconds"]), "s",
           f"fits.wall_seconds, on {row['n_fit']:,} fit / {row['n_val']:,} val / "
           f"{row['n_test']:,} test runs")
    figure("fit command", t_cmd, "s", f"`dmdb fit --device {device} -q`, start-up included")
    print(f"fit gram kernel: {kernel_text(params.get('gram_kernel_choice'))}", flush=True)
    figure("fit quality", float(lds["lds"]), "mean LDS",
           f"test Spearman over {lds['m']:,} targets", digits=3)


# ----------------------------------------------------------------------------- 2. cifar10


def cifar_trainer(betons: dict[str, str], sizes: Sizes, device: str) -> Any:
    """The cifar10 recipe (the paper's hyperparameters but for ``sizes.cifar_options``)."""
    from dmdb.trainers.recipes import make_recipe_trainer

    options = {**betons, **sizes.cifar_options, "epochs": "1", "peak_epoch": str(5 / 24)}
    return make_recipe_trainer("cifar10", sizes.cifar_train, sizes.cifar_targets,
                               torch.device(device), options)


def set_epochs(trainer: Any, epochs: int) -> None:
    """Give ``trainer`` ``epochs`` epochs, peaking at the recipe's 5/24 of them.

    Changing the public ``hparams`` keeps the trainer's FFCV Loaders, whose
    pipelines compiled at their first batch (about 20 s on a CPU): a second
    trainer would compile them again.
    """
    hp = dataclasses.replace(trainer.hparams, epochs=epochs, peak_epoch=5 / 24 * epochs)
    hp.validate()
    trainer.hparams = hp


def timed_run(trainer: Any, mask: np.ndarray) -> float:
    """Seconds for one model (training + target margins; margins come back to the host).

    Raises
    ------
    CheckFailed
        If the training Loader did not run ``hparams.epochs`` epochs (FFCV's
        epoch counter, which the recipe resets for every run).
    """
    t0 = time.perf_counter()
    trainer.train(mask[None], np.array([0], dtype=np.int64))
    seconds = time.perf_counter() - t0
    epochs = trainer.hparams.epochs
    ran = getattr(trainer.train_loader, "next_epoch", epochs)
    if ran != epochs:
        raise CheckFailed(f"cifar10: the recipe ran {ran} epoch(s), not hparams.epochs={epochs}")
    return seconds


def write_betons(sizes: Sizes, tmp: Path, tiny: bool) -> dict[str, str]:
    """Synthetic CIFAR-shaped training and targets betons (FFCV's progress bars hidden)."""
    from dmdb.trainers.betons import synthetic_images, write_beton

    workers = 1 if tiny else None
    with contextlib.redirect_stderr(io.StringIO()):
        train = write_beton(synthetic_images(sizes.cifar_train), tmp / "train.beton",
                            num_workers=workers)
        targets = write_beton(synthetic_images(sizes.cifar_targets, seed=1),
                              tmp / "targets.beton", num_workers=workers)
    return {"train_beton": str(train), "targets_beton": str(targets)}


def check_cifar10(sizes: Sizes, device: str, tmp: Path, tiny: bool) -> None:
    """Time the cifar10 recipe's first and second epoch on synthetic betons."""
    from dmdb.errors import UsageError
    from dmdb.trainers.betons import require_ffcv

    try:
        require_ffcv()
    except UsageError:
        print("cifar10: skipped (FFCV is not installed; the recipe needs it)", flush=True)
        return
    t0 = time.perf_counter()
    betons = write_betons(sizes, tmp, tiny)
    figure("cifar10 betons", time.perf_counter() - t0, "s",
           f"{sizes.cifar_train:,} train + {sizes.cifar_targets:,} target synthetic 32x32 images")
    trainer = cifar_trainer(betons, sizes, device)
    hp = trainer.hparams
    mask = np.random.default_rng(0).random(sizes.cifar_train) < ALPHA
    # A small subset (two batches) compiles the FFCV pipelines (Numba, at their first
    # batch) and lets cuDNN pick its kernels, outside the timings.
    small = np.zeros(sizes.cifar_train, dtype=bool)
    small[: min(2 * hp.batch_size, sizes.cifar_train)] = True
    tuning = ", cuDNN autotuning" if device == "cuda" else ""
    figure("cifar10 warm-up", timed_run(trainer, small), "s",
           f"epochs=1 on {int(small.sum()):,} images: FFCV compile{tuning}, "
           f"{sizes.cifar_targets:,} target margins")
    t1 = timed_run(trainer, mask)
    set_epochs(trainer, 2)
    t2 = timed_run(trainer, mask)
    figure("cifar10 epoch 1", t1, "s",
           f"a whole epochs=1 run: the epoch on {int(mask.sum()):,} images (Bernoulli(0.5) "
           f"of {sizes.cifar_train:,}), width {hp.width}, batch {hp.batch_size}, plus model "
           f"set-up and {sizes.cifar_targets:,} target margins")
    figure("cifar10 epoch 2", t2 - t1, "s",
           f"the epochs=2 run's {t2:.2f} s minus the epochs=1 run's; the recipe has no "
           "per-epoch hook")


# ----------------------------------------------------------------------------- 3. the MLP


TRAINED = re.compile(r"trained (\d+) model\(s\) in ([\d.]+)s \(([\d.]+) models/s\); "
                     r"mean target accuracy ([\d.]+|nan)")


def check_mlp(sizes: Sizes, device: str, tmp: Path) -> None:
    """Train MLPs on digits with ``dmdb train`` and print models/s."""
    from dmdb.datasets import experiment_kwargs

    path = str(tmp / "digits.duckdb")
    dmdb.init(path, **experiment_kwargs("digits"))  # what `dmdb init DB --dataset digits` does
    runs, chunk = sizes.mlp_runs, sizes.mlp_batch_models
    args = ["train", path, "--runs", str(runs), "--alpha", str(ALPHA), "--trainer", "mlp",
            "--device", device, "--batch-models", str(chunk), "-q"]
    out, t_cmd = dmdb_cli(args, "train", sizes.timeout_s)
    found = TRAINED.search(out)
    if found is None:
        raise CheckFailed(f"`dmdb train` printed no 'trained ... models/s' line: {out.strip()!r}")
    trained, seconds, acc = int(found[1]), float(found[2]), found[4]
    figure("mlp", trained / max(seconds, 1e-9), "models/s",
           f"`dmdb train --trainer mlp --device {device} --batch-models {chunk}`: {trained:,} "
           f"digits runs in {seconds:.2f} s, start-up excluded; target accuracy {acc}")
    figure("mlp command", t_cmd, "s", f"the whole `dmdb train`, {trained / t_cmd:,.1f} models/s")


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes: a smoke run of the same code (seconds on a CPU)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: --device cuda, but torch {torch.__version__} sees no CUDA GPU; "
              "run on a GPU machine, or use --device cpu --tiny", file=sys.stderr)
        return 1
    print(device_name(args.device), flush=True)
    sizes = TINY if args.tiny else FULL
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="dmdb-gpu-check-") as tmp:
            root = Path(tmp)
            check_fit(sizes, args.device, root)
            check_cifar10(sizes, args.device, root, args.tiny)
            check_mlp(sizes, args.device, root)
    except CheckFailed as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 1
    figure("total", time.perf_counter() - start, "s", "all three checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
