"""Scale-out collection: Ray and job arrays against a single-process `dmdb train`.

Run: python benchmarks/scale_out.py [--runs 2000] [--ingest-runs 20000] [--shards 80]

Each figure is a ratio against a reference measured in the same run:
- Ray backend models/s over the local `dmdb train`'s (the whole commands, 2 CPUs), and
  Ray's start-up time;
- 2 job-array workers in parallel: combined models/s over one worker's (W = 1);
- shard write time over np.save of the same arrays (paper-size runs);
- `dmdb ingest DIR` of --ingest-runs runs in --shards shards over the same runs from
  one npy pair (paper-size runs: N = 50,000, M = 10,000).
Then the driver's ceiling: how many ResNet-9 workers one writer keeps up with.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import dmdb
from dmdb.runs import RunBatch
from dmdb.sources import batch_to_arrow
from dmdb.writer import write_shard

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["--set", "epochs=20"]  # the quickstart's MLP


def cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.*)", out)
    flags = set(re.search(r"Flags:\s*(.*)", out).group(1).split()) if "Flags:" in out else set()
    have = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f in flags]
    return f"{model.group(1).strip() if model else '?'} ({', '.join(have) or 'no AVX2'})"


def dmdb_cmd(*args: str) -> tuple[float, str]:
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "dmdb.cli", *args], capture_output=True,
                         text=True, cwd=ROOT, env=env)
    if out.returncode:
        raise SystemExit(f"dmdb {' '.join(args)} failed: {out.stderr[-2000:]}")
    return time.perf_counter() - t, out.stdout


def collection(tmp: Path, runs: int) -> None:
    template = tmp / "template.duckdb"
    dmdb_cmd("init", str(template), "--dataset", "digits")
    paths = {k: tmp / f"{k}.duckdb" for k in ("local", "ray", "shards")}
    for p in paths.values():
        shutil.copy(template, p)
    t_local, _ = dmdb_cmd("train", str(paths["local"]), "--runs", str(runs), "--alpha", "0.5",
                          *TRAIN, "-q")
    t_ray, out = dmdb_cmd("train", str(paths["ray"]), "--runs", str(runs), "--alpha", "0.5",
                          *TRAIN, "--backend", "ray", "--runs-per-task", "100", "-q")
    startup = float(re.search(r"Ray start-up ([\d.]+)s", out).group(1))
    local_rate, ray_rate = runs / t_local, runs / t_ray
    print(f"local dmdb train: {runs} digits MLP runs in {t_local:.1f}s ({local_rate:.1f} models/s)")
    print(f"Ray backend (local 2-CPU cluster): {t_ray:.1f}s, start-up {startup:.1f}s: "
          f"models/s ratio {ray_rate / local_rate:.2f} (whole command), "
          f"{(runs / (t_ray - startup)) / local_rate:.2f} after start-up (target >= 0.8)")
    spec = tmp / "spec.json"
    dmdb_cmd("spec", str(paths["shards"]), "--alpha", "0.5", *TRAIN, "--out", str(spec))

    def workers(n: int, folder: Path) -> float:
        t = time.perf_counter()
        procs = [subprocess.Popen(
            [sys.executable, "-m", "dmdb.cli", "train", "--spec", str(spec), "--runs", str(runs),
             "--shard-dir", str(folder), "--worker-index", str(i), "--num-workers", str(n),
             "-q"], cwd=ROOT, stdout=subprocess.DEVNULL,
            env=os.environ | ({"OMP_NUM_THREADS": "1"} if n > 1 else {}))
            for i in range(n)]
        for p in procs:
            if p.wait():
                raise SystemExit("a worker failed")
        return time.perf_counter() - t

    t1 = workers(1, tmp / "one")
    t2 = workers(2, tmp / "two")
    print(f"job arrays: 1 worker {t1:.1f}s, 2 workers in parallel {t2:.1f}s: combined models/s "
          f"over one worker's {t1 / t2:.2f}")


def shards_and_ingest(tmp: Path, n_runs: int, n_shards: int, n_train: int,
                      n_targets: int) -> float:
    rng = np.random.default_rng(0)
    per = n_runs // n_shards
    packed = np.packbits(rng.random((per, n_train)) < 0.5, axis=1)
    margins = rng.standard_normal((per, n_targets)).astype(np.float32)
    t = time.perf_counter()
    np.save(tmp / "m.npy", packed)
    np.save(tmp / "y.npy", margins)
    t_save = time.perf_counter() - t
    folder = tmp / "ingest-shards"
    folder.mkdir()
    t_write = 0.0
    all_masks = np.lib.format.open_memmap(tmp / "masks.npy", "w+", np.bool_, (n_runs, n_train))
    all_margins = np.lib.format.open_memmap(tmp / "margins.npy", "w+", np.float32,
                                            (n_runs, n_targets))
    for s in range(n_shards):
        block = np.packbits(rng.random((per, n_train)) < 0.5, axis=1)
        y = (margins + s).astype(np.float32)
        all_masks[s * per:(s + 1) * per] = np.unpackbits(block, axis=1, count=n_train)
        all_margins[s * per:(s + 1) * per] = y
        batch = RunBatch(masks=block, margins=y, alpha=np.full(per, 0.5),
                         run_id=np.arange(s * per, (s + 1) * per, dtype=np.int64))
        t = time.perf_counter()
        write_shard(batch_to_arrow(batch), folder / f"s{s:04d}.arrow")
        t_write += time.perf_counter() - t
    all_masks.flush()
    all_margins.flush()
    del all_masks, all_margins
    print(f"shard write ({per} runs, N={n_train}, M={n_targets}): "
          f"{t_write / n_shards:.3f}s per shard, {t_write / n_shards / t_save:.1f}x np.save")
    a, b = tmp / "a.duckdb", tmp / "b.duckdb"
    dmdb.init(str(a), n_train=n_train, n_targets=n_targets)
    dmdb.init(str(b), n_train=n_train, n_targets=n_targets)
    t_shards, _ = dmdb_cmd("ingest", str(a), str(folder), "-q")
    t_npy, _ = dmdb_cmd("ingest", str(b), "--masks", str(tmp / "masks.npy"), "--margins",
                        str(tmp / "margins.npy"), "--alpha", "0.5", "-q")
    print(f"ingest of {n_runs} runs: {n_shards} shards {t_shards:.1f}s ({n_runs / t_shards:.0f} "
          f"runs/s), one npy pair {t_npy:.1f}s ({n_runs / t_npy:.0f} runs/s): "
          f"runs/s ratio {t_npy / t_shards:.2f}")
    return n_runs / t_shards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--ingest-runs", type=int, default=20000)
    ap.add_argument("--shards", type=int, default=80)
    ap.add_argument("--n-train", type=int, default=50000)
    ap.add_argument("--targets", type=int, default=10000)
    args = ap.parse_args()
    print(f"CPU: {cpu()}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        collection(tmp, args.runs)
        rate = shards_and_ingest(tmp, args.ingest_runs, args.shards, args.n_train, args.targets)
    # The driver's ceiling, on paper: one writer ingests `rate` runs/s of this size; a
    # worker makes one run every t seconds, so the writer keeps up with rate * t workers.
    for t in (3.0, 36.0):
        print(f"driver ceiling at N={args.n_train}, M={args.targets}, {t:.0f} s per ResNet-9 "
              f"model: one writer keeps up with about {rate * t:,.0f} workers")


if __name__ == "__main__":
    main()
