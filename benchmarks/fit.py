"""Benchmark the datamodel Lasso fit against scikit-learn (and celer/skglm if installed).

Usage::

    python benchmarks/fit.py [--size small|large|both] [--device cpu|cuda] [--threads T]
                             [--mode estimator|command|all] [--gram-kernel auto|int8|...]

``--mode command`` times the whole ``dmdb fit`` command on a database (created
with ``dmdb.init``, the planted runs ingested, the CLI run in a subprocess) beside
the estimator alone on the same arrays, and prints which Gram kernel each chose
and why, with the CPU's model and its avx512 / avx512_vnni / amx flags.
``--mode estimator`` is the estimator against scikit-learn (and celer/skglm);
``all`` (the default) does both.

Data are datamodel-like: Bernoulli(0.5) masks, 1-5% non-zero heavy-tailed
(Student-t, 3 dof) true weights, Gaussian noise that leaves a held-out
correlation of about 0.5-0.8. 10% of the runs are validation runs, and 2,000
extra test runs measure held-out quality. Every method gets the same
standardisation, the same λ grid (40 values, λ_max to λ_max/100) and the same
per-target choice of λ by validation MSE. All timings are in this process.
"""

from __future__ import annotations

import dmdb  # noqa: F401, I001  (first: it sets OMP_WAIT_POLICY before torch loads)

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dmdb.lasso import DatamodelLasso  # noqa: E402

SIZES = {
    "small": (10_000, 2_000, 200),
    "large": (20_000, 5_000, 100),
    "cuda": (100_000, 10_000, 1_000),
}
N_TEST = 2_000
SK_TOL = 1e-4  # scikit-learn and dmdb alike stop at gap <= tol * ||y_c||²/n


def generate(n: int, n_feat: int, n_tgt: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Datamodel-like runs: fit/val/test masks (bool) and margins (float32)."""
    rng = np.random.default_rng(seed)
    total = n + N_TEST
    x = rng.random((total, n_feat), dtype=np.float32) < 0.5
    w = np.zeros((n_feat, n_tgt), np.float32)
    for j in range(n_tgt):
        k = max(1, int(rng.uniform(0.01, 0.05) * n_feat))
        w[rng.choice(n_feat, k, replace=False), j] = rng.standard_t(3, k)
    noise_sd = np.sqrt(0.25 * (w**2).sum(0)) * rng.uniform(0.6, 1.2, n_tgt)
    y = np.empty((total, n_tgt), np.float32)
    for lo in range(0, total, 4096):
        xb = x[lo : lo + 4096].astype(np.float32)
        y[lo : lo + 4096] = xb @ w + 2.0 + noise_sd * rng.standard_normal(
            (len(xb), n_tgt), dtype=np.float32
        )
    n_val = n // 10
    return {
        "X": x[n_val:n], "Y": y[n_val:n], "Xv": x[:n_val], "Yv": y[:n_val],
        "Xt": x[n:], "Yt": y[n:],
    }


def cpu_summary() -> str:
    """lscpu's model name, and which of the flags that decide the Gram kernel are present."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "CPU: lscpu not available"
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = info.get("Model name", "?").strip()
    flags = set(info.get("Flags", "").split())
    present = {name: any(f.startswith(prefix) for f in flags) for name, prefix in
               (("avx512", "avx512f"), ("avx512_vnni", "avx512_vnni"), ("amx", "amx"))}
    marks = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in present.items())
    return f"CPU: {model}; {marks}; torch capability {torch.backends.cpu.get_cpu_capability()}"


def kernel_line(choice: dict | None) -> str:
    """One line: the Gram kernel, the reason, and the probe's seconds per kernel."""
    if choice is None:
        return "no Gram (gram-free)"
    times = ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in choice["seconds"].items())
    screened = ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in choice["screened_out"].items())
    probe = "x".join(map(str, choice["probe"])) if choice["probe"] else ""
    return (f"{choice['kernel']} ({choice['reason']}"
            + (f"; probe {probe}: {times}" if times else "")
            + (f"; screened out on the small probe, where float32 took "
               f"{1e3 * choice.get('screen', {}).get('float32', float('nan')):.1f} ms: {screened}"
               if screened else "") + ")")


def bench_command(d: dict[str, np.ndarray], n_feat: int, n_tgt: int, device: str,
                  threads: int, kernel: str) -> None:
    """Time ``dmdb fit`` as a whole command on a database, beside the estimator alone."""
    from dmdb.writer import RunWriter

    masks = np.concatenate([d["Xv"], d["X"], d["Xt"]])
    margins = np.concatenate([d["Yv"], d["Y"], d["Yt"]])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.duckdb"
        t0 = time.perf_counter()
        db = dmdb.init(path, n_train=n_feat, n_targets=n_tgt, seed=0)
        with RunWriter(db, flush_runs=4096) as writer:
            for lo in range(0, len(masks), 4096):
                writer.add_batch(masks[lo : lo + 4096], margins[lo : lo + 4096], alpha=0.5)
        print(f"database: {len(masks):,} planted runs ingested in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        cmd = [sys.executable, "-c", "from dmdb.cli import main; main()", "fit", str(path),
               "-q", "--device", device, "--threads", str(threads), "--gram-kernel", kernel]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        t_cmd = time.perf_counter() - t0
        if done.returncode != 0:
            sys.exit(f"dmdb fit failed: {done.stderr.strip()}")
        row = dmdb.connect(path, read_only=True).sql(
            "SELECT parameters, n_fit FROM fits ORDER BY fit_id DESC LIMIT 1").to_pylist()[0]
    params = json.loads(row["parameters"])
    tm = params["timings"]
    print(f"dmdb fit (whole command, subprocess): {t_cmd:.2f} s on {row['n_fit']:,} fit runs "
          f"(statistics {tm['stats']:.2f} s, Gram {tm['gram']:.2f} s, solve {tm['solve']:.2f} s;"
          f" the rest is start-up, reads, evaluation and writes)")
    print(f"  Gram kernel: {kernel_line(params.get('gram_kernel_choice'))}")
    t0 = time.perf_counter()
    est = DatamodelLasso(device=device, n_threads=threads, gram_kernel=kernel).fit(
        d["X"], d["Y"], d["Xv"], d["Yv"])
    t_est = time.perf_counter() - t0
    tm = est.timings_
    print(f"estimator alone (in-memory arrays): {t_est:.2f} s (statistics {tm['stats']:.2f} s, "
          f"Gram {tm['gram']:.2f} s, solve {tm['solve']:.2f} s); command / estimator "
          f"{t_cmd / t_est:.2f}x")
    choice = est.gram_kernel_
    print(f"  Gram kernel: {kernel_line(None if choice is None else choice.as_dict())}",
          flush=True)


def heldout_corr(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-target Pearson correlation between predictions and margins, (M,)."""
    pc, yc = pred - pred.mean(0), y - y.mean(0)
    den = np.sqrt((pc**2).sum(0) * (yc**2).sum(0))
    return np.where(den > 0, (pc * yc).sum(0) / np.maximum(den, 1e-300), 0.0)


def matmul_peak(n_feat: int, n_tgt: int, device: torch.device) -> float:
    """Float32 GFLOP/s of the solver's core product (N x N @ N x M) on this device."""
    a = torch.randn(n_feat, n_feat, device=device)
    b = torch.randn(n_feat, n_tgt, device=device)
    best = np.inf
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / 5)
    return 2.0 * n_feat * n_feat * n_tgt / best / 1e9


class Standardised:
    """The fit runs standardised as dmdb does, for the scikit-learn baselines."""

    def __init__(self, d: dict[str, np.ndarray]) -> None:
        x = d["X"].astype(np.float64)
        self.mu = x.mean(0)
        self.sd = x.std(0)
        self.sd[self.sd == 0] = 1.0
        self.xs = (x - self.mu) / self.sd
        self.y_mean = d["Y"].astype(np.float64).mean(0)
        self.yc = d["Y"] - self.y_mean
        n = len(x)
        self.lam_max = np.abs(self.xs.T @ self.yc).max(0) / n
        self.xv = (d["Xv"] - self.mu) / self.sd
        self.yv = d["Yv"] - self.y_mean
        self.xt = (d["Xt"] - self.mu) / self.sd

    def choose(self, coefs: np.ndarray, j: int) -> np.ndarray:
        """The path's weights (N, K) with the lowest validation MSE for target j."""
        mse = ((self.yv[:, j : j + 1] - self.xv @ coefs) ** 2).mean(0)
        return coefs[:, int(np.argmin(mse))]


def run_sklearn(
    std: Standardised, grids: np.ndarray, targets: np.ndarray, mode: str
) -> tuple[float, np.ndarray]:
    """Per-target scikit-learn paths, choosing λ like dmdb.

    Returns the seconds for all M targets (the shared Gram once, plus the
    per-target loop scaled from ``targets`` to M) and the chosen weights
    (N, len(targets)).
    """
    from sklearn.linear_model import lasso_path

    t_setup = time.perf_counter()
    gram = xy = None
    if mode == "gram":
        gram = std.xs.T @ std.xs
        xy = std.xs.T @ std.yc[:, targets]
    t0 = time.perf_counter()
    t_setup = t0 - t_setup
    out = np.zeros((std.xs.shape[1], len(targets)))
    for i, j in enumerate(targets):
        y = np.ascontiguousarray(std.yc[:, j], dtype=np.float64)
        if mode == "gram":
            _, coefs, _ = lasso_path(std.xs, y, alphas=grids[j], precompute=gram,
                                     Xy=xy[:, i], tol=SK_TOL)
        else:
            _, coefs, _ = lasso_path(std.xs, y, alphas=grids[j], tol=SK_TOL)
        out[:, i] = std.choose(coefs, j)
    loop = (time.perf_counter() - t0) * len(grids) / len(targets)
    return t_setup + loop, out


def run_celer_like(
    std: Standardised, grids: np.ndarray, targets: np.ndarray, lib: str
) -> tuple[float, np.ndarray] | None:
    """Warm-started per-λ fits with celer or skglm; None if the library is missing."""
    try:
        if lib == "celer":
            from celer import Lasso as LibLasso
        else:
            from skglm import Lasso as LibLasso
    except ImportError:
        return None
    t0 = time.perf_counter()
    out = np.zeros((std.xs.shape[1], len(targets)))
    for i, j in enumerate(targets):
        y = std.yc[:, j].astype(np.float64)
        est = LibLasso(alpha=grids[j, 0], fit_intercept=False, tol=SK_TOL, warm_start=True)
        coefs = []
        for lam in grids[j]:
            est.alpha = lam
            est.fit(std.xs, y)
            coefs.append(est.coef_.copy())
        out[:, i] = std.choose(np.array(coefs).T, j)
    return time.perf_counter() - t0, out


def bench(
    size: str, device: str, threads: int, sample_gram: int, sample_plain: int, sample_lib: int,
    mode: str = "estimator", kernel: str = "auto",
) -> None:
    n, n_feat, n_tgt = SIZES[size]
    print(f"\n== {size}: n={n:,} runs (10% validation), N={n_feat:,}, M={n_tgt:,}, "
          f"device={device}, threads={threads} ==", flush=True)
    d = generate(n, n_feat, n_tgt)
    dev = torch.device(device)
    torch.set_num_threads(threads)
    if mode in ("command", "all"):
        bench_command(d, n_feat, n_tgt, device, threads, kernel)
        if mode == "command":
            return
    peak = matmul_peak(n_feat, n_tgt, dev)
    print(f"matmul peak (float32, N x N @ N x M): {peak:.0f} GFLOP/s")

    t0 = time.perf_counter()
    est = DatamodelLasso(device=device, n_threads=threads, gram_kernel=kernel).fit(
        d["X"], d["Y"], d["Xv"], d["Yv"])
    t_dmdb = time.perf_counter() - t0
    pred = est.predict(d["Xt"])
    r_dmdb = heldout_corr(pred, d["Yt"])
    tm = est.timings_
    t_gram = tm["stats"] + tm["gram"]
    flops = est.n_iter_.sum() * 2.0 * n_feat**2
    print(f"dmdb fast: {t_dmdb:.2f} s (statistics+Gram {t_gram:.2f} s = "
          f"{100 * t_gram / t_dmdb:.0f}%, solve {tm['solve']:.2f} s, solve:Gram "
          f"{tm['solve'] / max(t_gram, 1e-9):.1f}); held-out r = {r_dmdb.mean():.4f}; "
          f"{flops / tm['solve'] / 1e9:.0f} dense-equivalent GFLOP/s in the solve = "
          f"{100 * flops / tm['solve'] / 1e9 / peak:.0f}% of peak (sparse steps do "
          "fewer flops); "
          f"mean steps/target {est.n_iter_.mean():.0f}, max gap {est.gap_.max():.1e}",
          flush=True)
    choice = est.gram_kernel_
    print(f"  Gram kernel: {kernel_line(None if choice is None else choice.as_dict())}")
    if device == "cuda":
        print("(cuda mode: scikit-learn baselines skipped)")
        return

    std = Standardised(d)
    grids = np.asarray(est.lambdas_)
    all_t = np.arange(n_tgt)
    rng = np.random.default_rng(1)
    rows = []
    gram_t = all_t if sample_gram <= 0 else np.sort(
        rng.choice(n_tgt, min(sample_gram, n_tgt), replace=False))
    t_sk, w_sk = run_sklearn(std, grids, gram_t, "gram")
    r_sk = heldout_corr(std.xt @ w_sk + std.y_mean[gram_t], d["Yt"][:, gram_t])
    rows.append(("sklearn lasso_path + shared Gram", t_sk, len(gram_t), r_sk.mean(),
                 r_dmdb[gram_t].mean()))
    plain_t = np.sort(rng.choice(n_tgt, min(sample_plain, n_tgt), replace=False))
    t_pl, w_pl = run_sklearn(std, grids, plain_t, "plain")
    r_pl = heldout_corr(std.xt @ w_pl + std.y_mean[plain_t], d["Yt"][:, plain_t])
    rows.append(("sklearn lasso_path per target", t_pl, len(plain_t),
                 r_pl.mean(), r_dmdb[plain_t].mean()))
    lib_t = np.sort(rng.choice(n_tgt, min(sample_lib, n_tgt), replace=False))
    for lib in ("celer", "skglm"):
        res = run_celer_like(std, grids, lib_t, lib)
        if res is None:
            print(f"{lib}: not installed, skipped")
            continue
        r_lib = heldout_corr(std.xt @ res[1] + std.y_mean[lib_t], d["Yt"][:, lib_t])
        rows.append((lib, res[0] * n_tgt / len(lib_t), len(lib_t), r_lib.mean(),
                     r_dmdb[lib_t].mean()))
    print(f"{'method':34s} {'time (s)':>9s} {'targets':>8s} {'dmdb speed-up':>14s} "
          f"{'r method':>9s} {'r dmdb':>7s}")
    for name, t, k, r, rd in rows:
        scaled = " (scaled)" if k < n_tgt else ""
        print(f"{name:34s} {t:9.1f} {k:8d} {t / t_dmdb:13.1f}x {r:9.4f} {rd:7.4f}{scaled}")
    print(f"(scikit-learn / celer / skglm tol = {SK_TOL}; dmdb tol = 1e-4, the same gap rule)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["small", "large", "both"], default="small")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sample-gram", type=int, default=0,
                        help="targets for sklearn + shared Gram (0: all; time scaled)")
    parser.add_argument("--sample-plain", type=int, default=6,
                        help="targets for the plain per-target lasso_path (time scaled)")
    parser.add_argument("--sample-lib", type=int, default=3,
                        help="targets for celer / skglm (time scaled)")
    parser.add_argument("--mode", choices=["estimator", "command", "all"], default="all",
                        help="the estimator against scikit-learn, the whole dmdb fit command "
                        "on a database beside the estimator alone, or both")
    parser.add_argument("--gram-kernel", default="auto",
                        choices=["auto", "float32", "int8", "bfloat16", "float16"])
    parser.add_argument("--size-override", metavar="n,N,M",
                        help="run this size instead (a smoke run, e.g. 2000,200,10)")
    args = parser.parse_args()
    print(cpu_summary())
    if args.size_override:
        SIZES["custom"] = tuple(int(v) for v in args.size_override.split(","))
        args.size = "custom"
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no CUDA GPU here")
        bench("cuda", "cuda", args.threads, 0, 0, 0,
              "command" if args.mode == "command" else "estimator", args.gram_kernel)
        return
    sizes = ["small", "large"] if args.size == "both" else [args.size]
    for size in sizes:
        bench(size, args.device, args.threads, args.sample_gram, args.sample_plain,
              args.sample_lib, args.mode, args.gram_kernel)


if __name__ == "__main__":
    main()
