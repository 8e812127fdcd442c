"""The solve against an earlier version of dmdb, run alternately in one script.

Usage::

    python benchmarks/solve.py --base REV [--rounds 2] [--threads 2] [--cases small,...]

Cases, each fitted by both versions on the same arrays (``DatamodelLasso.fit``):

* ``small``: planted, n = 10,000 runs (10% validation), N = 2,000, M = 200;
* ``large``: planted, n = 20,000, N = 5,000, M = 100;
* ``digits640`` / ``digits1600``: real digits runs (an MLP per run, trained here
  once with this checkout), 640 or 1,600 fit runs of N = 1,297: n < N, where the
  path takes active-set Newton steps.

``REV`` is extracted with ``git archive`` into a temporary folder, and every fit
runs in a fresh process with that folder (or this checkout) first on
``PYTHONPATH``, versions alternating A B A B, so that a noisy machine weighs on
both alike. Printed per case: statistics + Gram seconds, solve seconds, solve ÷
Gram, and the ratio of this checkout's times to the base's (below 1 is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import numpy as np
from dmdb.lasso import DatamodelLasso
d = np.load(sys.argv[1])
est = DatamodelLasso(n_threads=int(sys.argv[2]))
t0 = time.perf_counter()
est.fit(d["X"], d["Y"], d["Xv"], d["Yv"])
wall = time.perf_counter() - t0
t = est.timings_
print(json.dumps({"stats": t["stats"] + t["gram"], "solve": t["solve"], "wall": wall,
                  "steps": float(est.n_iter_.mean()), "nnz": float(est.nnz_.mean()),
                  "gap": float(est.gap_.max())}))
"""


def planted(path: Path, n: int, n_feat: int, n_tgt: int) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fit import generate  # benchmarks/fit.py: the same planted problem

    d = generate(n, n_feat, n_tgt)
    np.savez(path, X=d["X"], Y=d["Y"], Xv=d["Xv"], Yv=d["Yv"])


def digits(folder: Path, sizes: list[int], threads: int) -> dict[str, Path]:
    """Train digits runs once (this checkout), then save n-run fit subsets with the val runs."""
    sys.path.insert(0, str(ROOT))
    import dmdb
    from dmdb.datasets import experiment_kwargs
    from dmdb.training import train

    db = dmdb.init(folder / "digits.duckdb", **experiment_kwargs("digits"))
    need = int(max(sizes) / 0.8) + 50
    train(db, runs=need, alpha=0.5, progress=False, echo=lambda s: None)
    _, xf, yf = db.load_runs(run_ids=db.run_ids(split="fit"))
    _, xv, yv = db.load_runs(run_ids=db.run_ids(split="val"))
    out = {}
    for k in sizes:
        out[f"digits{k}"] = folder / f"digits{k}.npz"
        np.savez(out[f"digits{k}"], X=xf[:k], Y=yf[:k], Xv=xv, Yv=yv)
    return out


def run_fit(root: Path, data: Path, threads: int) -> dict[str, float]:
    env = os.environ | {"PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(data), str(threads)],
                          capture_output=True, text=True, env=env, cwd=root)
    if done.returncode != 0:
        raise SystemExit(f"solve: the fit at {root} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="git revision to compare against")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", default="small,large,digits640,digits1600")
    args = p.parse_args()
    cases = args.cases.split(",")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        base = tmp / "base"
        base.mkdir()
        archive = subprocess.run(["git", "archive", args.base], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        data: dict[str, Path] = {}
        if "small" in cases:
            data["small"] = tmp / "small.npz"
            planted(data["small"], 10_000, 2_000, 200)
        if "large" in cases:
            data["large"] = tmp / "large.npz"
            planted(data["large"], 20_000, 5_000, 100)
        sizes = [int(c.removeprefix("digits")) for c in cases if c.startswith("digits")]
        if sizes:
            data |= digits(tmp, sizes, args.threads)
        versions = {"base": base, "head": ROOT}
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()
        print(f"base {args.base}, head {rev} (+ uncommitted changes); {args.threads} threads, "
              f"{args.rounds} rounds alternating")
        for case in cases:
            got: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
            for _ in range(args.rounds):
                for name, root in versions.items():
                    got[name].append(run_fit(root, data[case], args.threads))
            best = {name: {k: min(r[k] for r in rs) for k in rs[0]} for name, rs in got.items()}
            b, h = best["base"], best["head"]
            print(f"{case}: base stats+Gram {b['stats']:.2f} s, solve {b['solve']:.2f} s "
                  f"(solve/Gram {b['solve'] / b['stats']:.1f}, {b['steps']:.0f} steps/target); "
                  f"head stats+Gram {h['stats']:.2f} s, solve {h['solve']:.2f} s (solve/Gram "
                  f"{h['solve'] / h['stats']:.1f}, {h['steps']:.0f} steps/target); head/base: "
                  f"stats {h['stats'] / b['stats']:.2f}, solve {h['solve'] / b['solve']:.2f}, "
                  f"fit {h['wall'] / b['wall']:.2f}; mean nnz {b['nnz']:.1f} / {h['nnz']:.1f}, "
                  f"max gap {b['gap']:.1e} / {h['gap']:.1e}", flush=True)


if __name__ == "__main__":
    main()
