"""Second-order datamodels against the linear fit of the same runs (issue 13).

Usage::

    python benchmarks/pairs.py DB [--pairs K] [--repeats R] [--figure PNG]

DB is a finished quickstart database (`dmdb quickstart DIR` writes
DIR/digits.duckdb): it holds the runs, a linear fit, that fit's verify runs and
its noise ceiling. The benchmark works on a copy. It runs the whole commands
``dmdb fit COPY`` and ``dmdb fit COPY --pairs K`` alternately, R times each, in
subprocesses, and prints:

- the time of each command, and their ratio (the issue's target: at most 5x);
- the mean test LDS of both models, and as a fraction of the attainable LDS
  (``noise_ceiling``);
- the counterfactual check of the linear fit's verify runs, predicted by each
  model (``counterfactuals_with``): the Pearson of predicted against actual
  change, and the slope of actual on predicted (targets: <= 1.2, Pearson >= 0.96);
- the CPU (lscpu model and flags).

With ``--figure`` it draws the per-target LDS of both models and the
counterfactual scatter of both.
"""

from __future__ import annotations

import dmdb  # noqa: F401, I001  (first: it sets OMP_WAIT_POLICY before torch loads)

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fit import cpu_summary  # noqa: E402
from dmdb.db import connect  # noqa: E402


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dmdb.cli", *args], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def changes(db: dmdb.Database, verified: int, model: int) -> tuple[np.ndarray, np.ndarray]:
    rows = db.sql("SELECT predicted_change, actual_change FROM counterfactuals_with(?) "
                  "WHERE fit_id = ? AND model_fit_id = ? AND condition <> 'none' "
                  "AND predicted_change IS NOT NULL", [model, verified, model])
    return (rows.column(0).to_numpy().astype(float), rows.column(1).to_numpy().astype(float))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db")
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--figure")
    args = ap.parse_args()
    print(cpu_summary())
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "copy.duckdb")
        shutil.copy(args.db, path)
        subprocess.run([sys.executable, "-m", "dmdb.cli", "migrate", path], check=True,
                       stdout=subprocess.DEVNULL)
        times: dict[str, list[float]] = {"linear": [], "pairs": []}
        for _ in range(args.repeats):  # alternately, so background load hits both alike
            times["linear"].append(timed(["fit", path, "-q"]))
            times["pairs"].append(timed(["fit", path, "-q", "--pairs", str(args.pairs)]))
        db = connect(path, read_only=True)
        fits = db.sql("SELECT fit_id, parameters->>'pairs' AS pairs FROM fits "
                      "ORDER BY fit_id").to_pylist()
        linear = max(f["fit_id"] for f in fits if f["pairs"] is None)
        second = max(f["fit_id"] for f in fits if f["pairs"] is not None)
        verified = int(db.sql("SELECT min(fit_id) FROM verify_runs").column(0)[0].as_py())
        lds = {name: db.sql("SELECT spearman FROM lds WHERE fit_id = ? ORDER BY target_idx",
                            [fid]).column(0).to_numpy().astype(float)
               for name, fid in (("linear", linear), ("pairs", second))}
        ceiling = db.sql("SELECT avg(attainable_lds) FROM noise_ceiling").column(0)[0].as_py()
        lin_t, pair_t = np.median(times["linear"]), np.median(times["pairs"])
        print(f"dmdb fit (whole command, median of {args.repeats}): linear {lin_t:.1f} s, "
              f"--pairs {args.pairs} {pair_t:.1f} s: {pair_t / lin_t:.2f}x the linear fit "
              f"(each run: {[round(t, 1) for t in times['linear']]} / "
              f"{[round(t, 1) for t in times['pairs']]})")
        for name in ("linear", "pairs"):
            frac = f", {lds[name].mean() / ceiling:.1%} of the attainable {ceiling:.3f}" \
                if ceiling else ""
            print(f"{name:7s} mean LDS {np.nanmean(lds[name]):.4f}{frac}")
        print(f"targets improved: {(lds['pairs'] > lds['linear']).mean():.0%} of "
              f"{len(lds['linear'])}; worst change {np.nanmin(lds['pairs'] - lds['linear']):+.4f}")
        scatter = {}
        for name, fid in (("linear", linear), ("pairs", second)):
            pc, ac = changes(db, verified, fid)
            scatter[name] = (pc, ac)
            if len(pc) >= 3:
                print(f"{name:7s} counterfactuals of fit {verified}'s verify runs: {len(pc)} "
                      f"conditions, Pearson {np.corrcoef(pc, ac)[0, 1]:.3f}, slope of actual on "
                      f"predicted {np.polyfit(pc, ac, 1)[0]:.2f}")
        if args.figure:
            draw(args.figure, lds, scatter)


def draw(path: str, lds: dict[str, np.ndarray], scatter: dict[str, tuple[np.ndarray, np.ndarray]]
         ) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.5))
    a.scatter(lds["linear"], lds["pairs"], s=6, alpha=0.6)
    lo = float(np.nanmin([lds["linear"].min(), lds["pairs"].min()]))
    a.plot([lo, 1], [lo, 1], "k--", lw=0.8)
    a.set(xlabel="linear LDS", ylabel="second-order LDS", title="LDS per target")
    for name, (pc, ac) in scatter.items():
        b.scatter(pc, ac, s=10, alpha=0.7, label=name)
    lim = [min(b.get_xlim()[0], b.get_ylim()[0]), 0.5]
    b.plot(lim, lim, "k--", lw=0.8)
    b.set(xlabel="predicted change", ylabel="actual change (retrained)",
          title="counterfactuals: both models on the same retrained runs")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
