"""The scale ladder: what ingest, fit and the views cost as N, n and M grow, and where that leads.

Usage::

    python benchmarks/scale.py [--rungs 2000,5000,10000,20000] [--targets 100]
                               [--all-targets 500] [--threads 2] [--reduced]
                               [--plot docs/img/scale.png] [--json FILE]

Each rung is a real experiment on this machine: planted datamodel-like runs
(Bernoulli(0.5) masks; per target 1-5% non-zero Student-t weights; Gaussian
noise), written as Arrow shards of 1,024 runs, then the commands users run, each
in its own process:

* ``dmdb ingest DB SHARDS``;
* ``dmdb fit DB --target-range 0:M`` (statistics, solve and write, as the fit
  records them), with its peak RSS beside the memory the fit estimated for
  itself (:mod:`dmdb.fit_memory`);
* the ``lds`` view, ``predict_subset(1, range(N/2))`` and the ``brittleness``
  view, each a query of its own process;
* the database's bytes on disk.

Rungs: N = 2,000 / 5,000 / 10,000 / 20,000 with n = 3N runs and M = 100 fitted
targets (of 500 in the experiment); a long rung (N = 5,000, n = 6N) and a wide
rung (N = 5,000, M = 5,000 of 5,000), so that time can be fitted against n, N
and M separately: ``t = c · n^a · N^b · M^m`` by least squares in logs, per
stage. The fitted laws are then extrapolated to the paper's CIFAR-10 size
(n = 300,000, N = 50,000, M = 10,000) on this CPU, and on one H200 and 8 GPUs
from published rates (see :data:`H200`). Every line says whether it is measured
or extrapolated. ``--reduced`` runs tiny rungs (a smoke test, used by the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The paper's CIFAR-10 datamodels (Ilyas et al. 2022): runs, training set, targets.
PAPER = {"n": 300_000, "N": 50_000, "M": 10_000}

#: One H200 SXM, as published by NVIDIA (dense, no sparsity): int8 tensor cores
#: 1,979 TOPS for the Gram's 0/1 counts (exact in int32); 67 TFLOPS in plain float32
#: for the solve's products (TF32 tensor cores would be 7x faster but round to 10
#: bits); 4.8 TB/s of HBM3e; 141 GB of memory. Achieved rates are taken at half of these.
H200 = {"int8_ops": 1979e12, "fp32_flops": 67e12, "bandwidth": 4.8e12, "memory": 141e9,
        "efficiency": 0.5}

STAGES = ("ingest", "stats", "solve", "write", "lds", "predict_subset", "brittleness")

QUERIES = {
    "lds": "SELECT count(*), avg(spearman) FROM lds WHERE fit_id = 1",
    "predict_subset": "SELECT count(*), avg(predicted) FROM predict_subset(1, range({half}))",
    "brittleness": "SELECT count(*), avg(support_size) FROM brittleness WHERE fit_id = 1",
}


@dataclass
class Rung:
    """One measured experiment."""

    name: str
    n: int  # runs in the database (fit, val and test)
    N: int
    M: int  # fitted targets
    M_all: int  # targets in the experiment
    seconds: dict[str, float] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)  # peak resident bytes per process
    estimate: int = 0  # the fit's own memory estimate (fits.parameters.memory_plan.peak)
    disk: int = 0
    command_seconds: dict[str, float] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------------- child processes


def child_main(argv: list[str]) -> None:
    """Run a CLI command or a query in this process; write time and peak RSS as JSON."""
    report, kind, *rest = argv
    t0 = time.perf_counter()
    code = 0
    if kind == "cli":
        from dmdb.cli import cli

        try:
            cli.main(rest, prog_name="dmdb")
        except SystemExit as e:  # the parent reports a failure
            code = int(e.code or 0)
    else:
        import dmdb

        db_path, sql = rest
        dmdb.connect(db_path, read_only=True).sql(sql)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(report).write_text(json.dumps({"seconds": seconds, "rss": rss, "code": code}))
    sys.exit(code)


def in_child(kind: str, *args: str, threads: int) -> tuple[dict, float, str]:
    """Run one command in a fresh process; return (its report, wall seconds, its output)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        report = f.name
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", report, kind, *args],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"scale: {kind} {' '.join(args[:3])} failed:\n{done.stdout}{done.stderr}")
    out = json.loads(Path(report).read_text())
    os.unlink(report)
    return out, wall, done.stdout + done.stderr


# ---------------------------------------------------------------------- planted runs


def write_shards(folder: Path, n: int, n_feat: int, m_all: int, seed: int = 0) -> float:
    """Planted runs as Arrow shards of 1,024 runs; returns the seconds it took."""
    import scipy.sparse as sp

    from dmdb.writer import ShardWriter

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    rows, cols, vals = [], [], []
    for j in range(m_all):
        k = max(1, int(rng.uniform(0.01, 0.05) * n_feat))
        rows.append(rng.choice(n_feat, k, replace=False))
        cols.append(np.full(k, j))
        vals.append(rng.standard_t(3, k))
    w = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n_feat, m_all), dtype=np.float32)
    noise = np.sqrt(0.25 * np.asarray(w.power(2).sum(axis=0)).ravel()) * rng.uniform(
        0.6, 1.2, m_all).astype(np.float32)
    wt = w.T.tocsr()  # sparse (M, N) @ dense (N, k): the margins without a dense W
    with ShardWriter(folder, "planted", n_feat, m_all, flush_runs=1024) as shards:
        for lo in range(0, n, 1024):
            k = min(1024, n - lo)
            x = rng.random((k, n_feat), dtype=np.float32) < 0.5
            y = np.asarray(wt @ x.T.astype(np.float32)).T + 2.0 + noise * \
                rng.standard_normal((k, m_all), dtype=np.float32)
            shards.add_batch(x, y.astype(np.float32), alpha=0.5)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------- one rung


def measure(rung: Rung, work: Path, threads: int) -> Rung:
    """Build the rung's database and time every stage in its own process."""
    import dmdb

    print(f"\n== {rung.name}: n={rung.n:,} runs, N={rung.N:,}, M={rung.M:,} fitted of "
          f"{rung.M_all:,} ==", flush=True)
    folder = work / rung.name
    shards = folder / "shards"
    db = folder / "scale.duckdb"
    gen = write_shards(shards, rung.n, rung.N, rung.M_all)
    print(f"  planted shards written in {gen:.1f} s (not a product stage)", flush=True)
    in_child("cli", "init", str(db), "-N", str(rung.N), "-M", str(rung.M_all), "--seed", "0",
             threads=threads)
    out, wall, _ = in_child("cli", "ingest", str(db), str(shards), "-q", threads=threads)
    rung.seconds["ingest"], rung.rss["ingest"] = out["seconds"], out["rss"]
    rung.command_seconds["ingest"] = wall
    shutil.rmtree(shards)
    out, wall, text = in_child("cli", "fit", str(db), "-q", "--target-range", f"0:{rung.M}",
                               "--threads", str(threads), threads=threads)
    rung.command_seconds["fit"] = wall
    rung.rss["fit"] = out["rss"]
    written = re.search(r"\(\+([0-9.]+)s to write\)", text)
    rung.seconds["write"] = float(written.group(1)) if written else float("nan")
    con = dmdb.connect(db, read_only=True)
    params = json.loads(con.sql("SELECT parameters FROM fits WHERE fit_id = 1").column(0)[0]
                        .as_py())
    rung.seconds["stats"] = params["timings"]["stats"] + params["timings"]["gram"]
    rung.seconds["solve"] = params["timings"]["solve"]
    rung.estimate = int(params["memory_plan"]["peak"])
    rung.notes["target_batch"] = params["memory_plan"]["target_batch"]
    rung.notes["kernel"] = (params.get("gram_kernel_choice") or {}).get("kernel")
    rung.notes["mean_lds"] = con.sql("SELECT avg(spearman) FROM lds WHERE fit_id = 1"
                                     ).column(0)[0].as_py()
    del con
    for name, sql in QUERIES.items():
        out, wall, _ = in_child("sql", str(db), sql.format(half=rung.N // 2), threads=threads)
        rung.seconds[name], rung.rss[name] = out["seconds"], out["rss"]
    rung.disk = db.stat().st_size
    print_rung(rung)
    shutil.rmtree(folder)
    return rung


def print_rung(r: Rung) -> None:
    gb = 1e9
    stages = ", ".join(f"{k} {r.seconds[k]:.2f} s" for k in STAGES if k in r.seconds)
    print(f"  measured: {stages}", flush=True)
    print(f"  measured: fit command {r.command_seconds['fit']:.1f} s, peak RSS "
          f"{r.rss['fit'] / gb:.2f} GB against the fit's own estimate {r.estimate / gb:.2f} GB "
          f"(estimate / measured {r.estimate / r.rss['fit']:.2f}); ingest peak RSS "
          f"{r.rss['ingest'] / gb:.2f} GB; {r.disk / gb:.3f} GB on disk "
          f"({r.disk / r.n:,.0f} bytes per run); target batch {r.notes['target_batch']}, "
          f"Gram kernel {r.notes['kernel']}, mean LDS {r.notes['mean_lds']:.3f}", flush=True)


# ---------------------------------------------------------------------- laws and extrapolation


def fit_laws(rungs: list[Rung]) -> dict[str, np.ndarray]:
    """Per stage, (log c, a, b, m) of t = c n^a N^b M^m, by least squares in logs.

    These are the exponents the issue asks for, fitted on every rung. On the ladder n
    and N move together (n = 3N) and only the long rung separates them, so a and b
    are poorly told apart, and small rungs (fixed costs) pull both down: the
    extrapolation uses :func:`fit_costs` instead.
    """
    logs = np.log([[r.n, r.N, r.M] for r in rungs], dtype=np.float64)
    laws = {}
    for stage in STAGES:
        t = np.log([max(r.seconds.get(stage, np.nan), 1e-4) for r in rungs])
        ok = np.isfinite(t)
        a = np.column_stack([np.ones(ok.sum()), logs[ok]])
        if np.linalg.matrix_rank(a) == 4:
            laws[stage] = np.linalg.lstsq(a, t[ok], rcond=None)[0]
        else:  # too few shapes (--reduced): fix a = 1 and m from the cost model
            m_exp = 1.0 if stage in ("stats", "solve", "write") else 0.0
            rest = t[ok] - logs[ok, 0] - m_exp * logs[ok, 2]
            b, c = np.polyfit(logs[ok, 1], rest, 1)
            laws[stage] = np.array([c, 1.0, b, m_exp])
    return laws


#: The work each stage does, as terms in n, N and M (each fitted with a seconds-per-unit
#: coefficient >= 0): ingest writes n N mask bits and n M margins; the statistics
#: decode n N mask bits, count the n N² co-occurrences and form Xᵀy, n N M; every
#: FISTA step multiplies the batch by the Gram, M N² per step, and the validation
#: products are n N M; the views and the write touch the N M weights.
COST_TERMS: dict[str, tuple[str, ...]] = {
    "ingest": ("1", "nN", "nM"),
    "stats": ("1", "nN", "nN2", "nNM"),
    "solve": ("1", "MN2", "nNM"),
    "write": ("1", "NM"),
    "lds": ("1", "NM"),
    "predict_subset": ("1", "NM"),
    "brittleness": ("1", "NM"),
}


def _term(term: str, n: float, n_feat: float, m: float) -> float:
    return {"1": 1.0, "nN": n * n_feat, "nM": n * m, "nN2": n * n_feat**2,
            "nNM": n * n_feat * m, "MN2": m * n_feat**2, "NM": n_feat * m}[term]


def fit_costs(rungs: list[Rung]) -> dict[str, dict[str, float]]:
    """Per stage, seconds per unit of each of its :data:`COST_TERMS`, by non-negative
    least squares on the rungs' times, each rung weighted by 1 / its time (so that
    relative errors count alike)."""
    from scipy.optimize import nnls

    costs = {}
    for stage, terms in COST_TERMS.items():
        t = np.array([r.seconds.get(stage, np.nan) for r in rungs])
        ok = np.isfinite(t) & (t > 0)
        a = np.array([[_term(k, r.n, r.N, r.M) for k in terms] for r in rungs])[ok]
        scale = a.max(axis=0)
        scale[scale == 0] = 1.0
        wts = 1.0 / t[ok]
        coef, _ = nnls(a / scale * wts[:, None], t[ok] * wts)
        costs[stage] = dict(zip(terms, coef / scale, strict=True))
    return costs


def predict_cost(cost: dict[str, float], n: float, n_feat: float, m: float) -> float:
    return sum(c * _term(k, n, n_feat, m) for k, c in cost.items())


def describe_cost(cost: dict[str, float]) -> str:
    """``0.8 s + 2.1 ns · nN + ...``: the fitted seconds per unit of each term."""
    parts = []
    for k, c in cost.items():
        if c <= 0:
            continue
        if k == "1":
            parts.append(f"{c:.2f} s")
        else:
            parts.append(f"{c * 1e9:.3g} ns·{k}")
    return " + ".join(parts) or "0"


def matmul_rate(threads: int) -> float:
    """This CPU's float32 matmul rate (FLOP/s), measured here: the solve's kind of work."""
    import torch

    torch.set_num_threads(threads)
    a = torch.rand(2048, 2048)
    b = torch.rand(2048, 256)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048 * 2048 * 256 / best


def _timed(f: object) -> float:
    t0 = time.perf_counter()
    f()  # type: ignore[operator]
    return time.perf_counter() - t0


def extrapolate(costs: dict[str, dict[str, float]],
                cpu_rate: float) -> dict[str, dict[str, float]]:
    """Seconds per stage at the paper's size: this CPU (fitted costs), one H200, 8 GPUs.

    On a GPU, the statistics still decode the masks on the host (the fitted ``nN``
    term); the n N² co-occurrence counts run as int8 products and Xᵀy as float32,
    each at :data:`H200`'s published rate times its efficiency. The solve's matmul
    terms are scaled by the ratio of float32 matmul rates (it is matmul-bound), its
    fixed cost is not. With 8 GPUs each fits M/8 targets, and each recounts the
    statistics unless they are computed once and shared (``--stats``).
    """
    n, n_feat, m = PAPER["n"], PAPER["N"], PAPER["M"]
    cpu = {s: predict_cost(costs[s], n, n_feat, m) for s in STAGES}
    eff = H200["efficiency"]
    st = costs["stats"]
    stats_gpu = (st.get("1", 0.0) + st.get("nN", 0.0) * n * n_feat
                 + 2 * n * n_feat**2 / (H200["int8_ops"] * eff)
                 + 2 * n * n_feat * m / (H200["fp32_flops"] * eff))
    fixed = costs["solve"].get("1", 0.0)
    matmuls = (cpu["solve"] - fixed) * cpu_rate / (H200["fp32_flops"] * eff)
    gpu = dict(cpu) | {"stats": stats_gpu, "solve": fixed + matmuls}
    eight = dict(gpu) | {"solve": fixed + matmuls / 8}
    return {"this CPU": cpu, "one H200": gpu, "8 GPUs (target blocks)": eight}


def plot(rungs: list[Rung], costs: dict[str, dict[str, float]], path: Path) -> None:
    """Log-log time and peak memory against N: measured (filled), extrapolated (open)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dmdb import fit_memory

    ladder = sorted((r for r in rungs if r.name.startswith("N=")), key=lambda r: r.N)
    if not ladder:
        return
    m, ratio, m_all = ladder[0].M, ladder[0].n / ladder[0].N, ladder[0].M_all
    xs = np.array([r.N for r in ladder], dtype=float)
    grid = np.geomspace(xs.max(), PAPER["N"], 6)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.3))
    for stage, colour in (("ingest", "C0"), ("stats", "C1"), ("solve", "C2"),
                          ("brittleness", "C3")):
        ys = [r.seconds[stage] for r in ladder]
        ax_t.loglog(xs, ys, "o-", color=colour, label=f"{stage} (measured)")
        ax_t.loglog(grid, [predict_cost(costs[stage], ratio * g, g, m) for g in grid], "o--",
                    mfc="none", color=colour, alpha=0.7)
    ax_t.plot([], [], "o--", mfc="none", color="grey", label="extrapolated (fitted costs)")
    ax_t.set(xlabel=f"N (training examples); n = {ratio:g}N runs, {m} targets fitted",
             ylabel="seconds", title="time per stage")
    ax_t.legend(fontsize=8)
    meas = [r.rss["fit"] / 1e9 for r in ladder]
    est = [r.estimate / 1e9 for r in ladder]
    ax_m.loglog(xs, meas, "o-", color="C4", label="fit peak RSS (measured)")
    ax_m.loglog(xs, est, "s:", color="C5", label="fit memory formula at the rungs")
    formula = [fit_memory.estimate(fit_memory.FitShape(
        n_train=int(g), n_targets=m, n_val=int(ratio * g * 0.1), chunk=4096,
        all_targets=m_all), gram=True, target_batch=m).peak / 1e9 for g in grid]
    ax_m.loglog(grid, formula, "s--", mfc="none", color="C5", label="formula (extrapolated)")
    ax_m.axhline(24, color="k", lw=0.8, ls=":")
    ax_m.text(xs[0], 26, "this machine: 24 GB", fontsize=8)
    ax_m.set(xlabel="N (training examples)", ylabel="GB", title="fit peak memory")
    ax_m.legend(fontsize=8)
    from matplotlib.ticker import NullFormatter

    for ax in (ax_t, ax_m):
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "CPU: lscpu not available"
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(info.get("Flags", "").split())
    marks = ", ".join(f"{k} {'yes' if any(f.startswith(k) for f in flags) else 'no'}"
                      for k in ("avx512f", "avx512_vnni", "amx"))
    return f"CPU: {info.get('Model name', '?').strip()}; {os.cpu_count()} cores; {marks}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rungs", default="2000,5000,10000,20000")
    p.add_argument("--targets", type=int, default=100)
    p.add_argument("--all-targets", type=int, default=500)
    p.add_argument("--wide-targets", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reduced", action="store_true", help="tiny rungs: a smoke test")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "scale.png")
    p.add_argument("--json", type=Path, help="also write the measurements here")
    p.add_argument("--work", type=Path, help="folder for the rungs' databases (default: temp)")
    p.add_argument("--from-json", type=Path,
                   help="re-analyse rungs saved with --json instead of measuring them")
    args = p.parse_args()
    print(cpu_name())
    sizes = [int(s) for s in args.rungs.split(",")]
    if args.reduced:
        sizes, args.targets, args.all_targets, args.wide_targets = [60, 120, 240], 8, 16, 32
    rungs = [Rung(f"N={s:,}", 3 * s, s, args.targets, args.all_targets) for s in sizes]
    mid = sizes[1] if len(sizes) > 1 else sizes[0]
    rungs.append(Rung(f"long N={mid:,}", 6 * mid, mid, args.targets, args.all_targets))
    rungs.append(Rung(f"wide N={mid:,}", 3 * mid, mid, args.wide_targets, args.wide_targets))
    if args.from_json:
        done = [Rung(**d) for d in json.loads(args.from_json.read_text())]
        print(f"(re-analysing {len(done)} rungs measured earlier: {args.from_json})")
        for r in done:
            print(f"\n== {r.name}: n={r.n:,}, N={r.N:,}, M={r.M:,} fitted of {r.M_all:,} ==")
            print_rung(r)
    else:
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            done = [measure(r, Path(tmp), args.threads) for r in rungs]
    laws = fit_laws(done)
    print("\n== fitted exponents, t = c · n^a · N^b · M^m over all rungs (see fit_laws) ==")
    for stage, (_c, a, b, m) in laws.items():
        print(f"  {stage:15s} a(n) {a:5.2f}  b(N) {b:5.2f}  m(M) {m:5.2f}")
    ladder = sorted((r for r in done if r.name.startswith("N=")), key=lambda r: r.N)
    if len(ladder) >= 2:
        lo, hi = ladder[-2], ladder[-1]
        local = ", ".join(
            f"{s} {np.log(hi.seconds[s] / lo.seconds[s]) / np.log(hi.N / lo.N):.2f}"
            for s in ("ingest", "stats", "solve"))
        print(f"  along the ladder's top two rungs (N {lo.N:,} -> {hi.N:,}, n = 3N): "
              f"exponent of N: {local}")
    costs = fit_costs(done)
    print("\n== fitted costs (seconds per unit of work; used to extrapolate) ==")
    for stage, cost in costs.items():
        pred = [predict_cost(cost, r.n, r.N, r.M) / r.seconds[stage] for r in done]
        print(f"  {stage:15s} {describe_cost(cost)}   (fit / measured on the rungs "
              f"{min(pred):.2f}-{max(pred):.2f})")
    worst = max(abs(r.estimate / r.rss["fit"] - 1) for r in done)
    print(f"\nmemory formula against measured fit peak RSS: worst {100 * worst:.0f}% off over "
          f"{len(done)} rungs (target: within 25%)")
    rate = matmul_rate(args.threads)
    print(f"\n== extrapolated to the paper's size (n={PAPER['n']:,}, N={PAPER['N']:,}, "
          f"M={PAPER['M']:,}); this CPU's float32 matmul {rate / 1e9:.0f} GFLOP/s (measured) ==")
    for where, stages in extrapolate(costs, rate).items():
        total = sum(stages[s] for s in ("stats", "solve", "write"))
        parts = ", ".join(f"{s} {_human(stages[s])}" for s in STAGES)
        print(f"  {where}: fit {_human(total)} ({parts}) [extrapolated]")
    from dmdb import fit_memory

    paper = fit_memory.estimate(fit_memory.FitShape(
        n_train=PAPER["N"], n_targets=PAPER["M"], n_val=PAPER["n"] // 10, chunk=4096),
        gram=True, target_batch=PAPER["M"])
    block = fit_memory.estimate(fit_memory.FitShape(
        n_train=PAPER["N"], n_targets=PAPER["M"] // 8, n_val=PAPER["n"] // 10, chunk=4096,
        all_targets=PAPER["M"]), gram=True, target_batch=PAPER["M"] // 8)
    print(f"  memory (formula): one fit of all targets {paper.peak / 1e9:.1f} GB; a block of "
          f"M/8 {block.peak / 1e9:.1f} GB [extrapolated]")
    if args.json and not args.from_json:
        args.json.write_text(json.dumps([asdict(r) for r in done], indent=1))
    plot(done, costs, args.plot)


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


if __name__ == "__main__":
    main()
