"""Training across machines: a spec workers use without the database, shard workers for
job arrays, and a Ray backend whose driver is the database's only writer.

The spec (``dmdb spec``) holds everything a worker needs: the experiment (N, M,
seed, dataset, split fractions and its fingerprint), the trainer with its options
(data paths included), alpha, repeats and the model-seed base. Masks and model
seeds are functions of (experiment seed, alpha, draw, repeat), so any machine that
trains draw d produces the run a single-machine ``dmdb train`` would, with the same
run_id (see :func:`dmdb.runs.drawn_run_ids`); a retried task lands once.

Job arrays split the draws by index: worker i of W trains the draws d with
``d % W == i``. Ray tasks each train a block of draws and return Arrow data to the
driver, which ingests it as results arrive.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from dmdb.db import Database
from dmdb.errors import InputError, UsageError
from dmdb.ray_setup import check_address as check_address  # the old import path
from dmdb.ray_setup import start_ray
from dmdb.runs import check_alpha
from dmdb.sources import batch_to_arrow
from dmdb.trainers import Trainer, TrainerOptions, make_trainer
from dmdb.training import (
    Identity,
    check_draw_args,
    draw_infos,
    drawn_runs,
    missing_draws,
    train_into,
)
from dmdb.version import __version__
from dmdb.writer import RunBuffer, ShardWriter

SPEC_VERSION = 1
SHARD_RUNS = 256
Echo = Callable[[str], None]


@dataclass
class Spec:
    """What a worker needs to train an experiment's runs; see the module docstring."""

    experiment: dict[str, Any]
    trainer: str | None
    options: dict[str, Any]
    config: str | None
    alpha: float
    repeats: int = 1
    seed: int | None = None
    device: str = "cpu"
    batch_models: int | None = None
    spec_version: int = SPEC_VERSION
    dmdb_version: str = __version__
    spec_hash: str = field(default="")

    def __post_init__(self) -> None:
        if not self.spec_hash:
            self.spec_hash = self._hash()

    def _hash(self) -> str:
        body = {k: v for k, v in asdict(self).items() if k not in ("spec_hash", "dmdb_version")}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    @property
    def fingerprint(self) -> str:
        return str(self.experiment["fingerprint"])

    def build_trainer(self) -> Trainer:
        """The experiment's trainer, built from the spec alone (no database)."""
        exp = self.experiment
        return make_trainer(self.trainer, dataset_name=exp["dataset"], n_train=exp["n_train"],
                            n_targets=exp["n_targets"], device=self.device,
                            options=self.options, config=self.config,
                            batch_models=self.batch_models)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the spec as JSON (tmp + rename)."""
        out = Path(path)
        tmp = out.with_name(out.name + ".tmp")
        try:
            tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
            os.replace(tmp, out)
        except OSError as e:
            raise UsageError(f"{out}: cannot write the spec: {e.strerror}") from None
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Spec:
        """Read and check a spec file; one clear line for a missing, corrupt or newer one."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise UsageError(f"{p}: no such spec file; write one with `dmdb spec DB --out`") \
                from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise InputError(f"{p}: not a dmdb spec file ({e})") from None
        if not isinstance(data, dict) or "spec_version" not in data:
            raise InputError(f"{p}: not a dmdb spec file (no spec_version)")
        if not isinstance(data["spec_version"], int) or data["spec_version"] > SPEC_VERSION:
            raise InputError(
                f"{p}: spec version {data['spec_version']} was made by a newer dmdb "
                f"({data.get('dmdb_version')}); this dmdb reads version {SPEC_VERSION}: upgrade it"
            )
        try:
            spec = cls(**data)
        except TypeError as e:
            raise InputError(f"{p}: not a dmdb spec file ({e})") from None
        if spec.spec_hash != spec._hash():
            raise InputError(f"{p}: the spec was edited after it was written (hash mismatch); "
                             "write a new one with `dmdb spec`")
        return spec


def make_spec(
    db: Database, *, alpha: float, trainer: str | None = None,
    options: dict[str, Any] | None = None, config: str | None = None, device: str = "cpu",
    repeats: int = 1, seed: int | None = None, batch_models: int | None = None,
) -> Spec:
    """The spec of an experiment's runs at ``alpha``; the trainer is built once to check it."""
    alpha = check_alpha(alpha)
    check_draw_args(repeats, seed)
    exp = db.experiment
    opts = TrainerOptions.of(options, config=config, batch_models=batch_models)
    config_path = str(Path(opts.config).resolve()) if opts.config else None
    spec = Spec(
        experiment={
            "name": exp.name, "dataset": exp.dataset, "n_train": exp.n_train,
            "n_targets": exp.n_targets, "seed": exp.seed, "val_fraction": exp.val_fraction,
            "test_fraction": exp.test_fraction, "fingerprint": db.fingerprint,
        },
        trainer=trainer, options=dict(opts.settings), config=config_path, alpha=alpha,
        repeats=repeats, seed=seed, device=device, batch_models=opts.batch_models,
    )
    spec.trainer = spec.build_trainer().name  # resolved: the default becomes its name
    spec.spec_hash = spec._hash()
    return spec


def _pairs_of(spec: Spec, draws: np.ndarray, reps: np.ndarray) -> tuple[
        np.ndarray, np.ndarray, list[dict[str, Any]]]:
    exp = spec.experiment
    masks, seeds = drawn_runs(exp["seed"], spec.seed, spec.alpha, draws, reps, exp["n_train"])
    recorded = TrainerOptions.of(spec.options, config=spec.config).recorded()
    return masks, seeds, draw_infos(draws, reps, spec.device, recorded, spec=spec.spec_hash)


def train_block(spec: Spec, model: Trainer, draws: np.ndarray, reps: np.ndarray,
                sink: RunBuffer) -> None:
    """Train the (draw, repeat) pairs of one block into ``sink``."""
    masks, seeds, infos = _pairs_of(spec, draws, reps)
    train_into(sink, model, masks, seeds, alpha=spec.alpha, infos=infos,
               identity=Identity(spec.fingerprint, draws, reps))


# -- job arrays --------------------------------------------------------------------------


@dataclass
class WorkerReport:
    """What one shard worker did."""

    worker_index: int
    num_workers: int
    share: int        # (draw, repeat) pairs of draws 0..K-1 that are this worker's
    already: int      # of those, found in complete shards
    trained: int
    shards: list[Path]
    seconds: float


def check_worker_args(runs: int, worker_index: int, num_workers: int) -> None:
    if runs < 1:
        raise UsageError(f"--runs must be positive, got {runs}")
    if num_workers < 1:
        raise UsageError(f"--num-workers must be at least 1, got {num_workers}")
    if not 0 <= worker_index < num_workers:
        raise UsageError(
            f"--worker-index must be in 0..{num_workers - 1} (there are {num_workers} "
            f"workers), got {worker_index}"
        )


def shard_draws(folder: Path, spec: Spec) -> set[tuple[int, int]]:
    """The (draw, repeat) pairs in the folder's complete shards of this experiment and alpha.

    Only finished files count: a worker writes ``NAME.tmp`` and renames it.
    """
    done: set[tuple[int, int]] = set()
    if not folder.is_dir():
        return done
    for path in sorted(folder.glob("*.arrow")):
        try:
            table = ipc.open_file(pa.memory_map(str(path))).read_all()
        except (pa.ArrowException, OSError):
            continue  # not ours, or unreadable: ingest reports it
        meta = table.schema.metadata or {}
        if meta.get(b"dmdb.fingerprint", b"").decode() != spec.fingerprint:
            continue
        if "draw" not in table.column_names:
            continue
        alpha = table.column("alpha").to_numpy()
        draw = table.column("draw").to_numpy()
        rep = table.column("repeat").to_numpy() if "repeat" in table.column_names else \
            np.zeros(len(draw), np.int64)
        ok = np.abs(alpha - spec.alpha) < 1e-9
        done |= {(int(d), int(r)) for d, r in zip(draw[ok], rep[ok], strict=True)}
    return done


def train_worker(
    spec: Spec, *, runs: int, shard_dir: str | os.PathLike[str], worker_index: int = 0,
    num_workers: int = 1, shard_runs: int = SHARD_RUNS, progress: bool = True,
    echo: Echo = print,
) -> WorkerReport:
    """Train worker ``worker_index``'s share of draws 0..runs-1 into shard files.

    The share is the draws d with ``d % num_workers == worker_index`` (each with the
    spec's repeats). Draws already in complete shards of ``shard_dir`` are skipped, so
    a killed worker, run again, trains only what it had not written.
    """
    from tqdm.auto import tqdm

    check_worker_args(runs, worker_index, num_workers)
    if shard_runs < 1:
        raise UsageError(f"--shard-runs must be positive, got {shard_runs}")
    folder = Path(shard_dir)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--shard-dir {folder} is a file, not a folder")
    model = spec.build_trainer()
    done = shard_draws(folder, spec)
    draws, reps = missing_draws(set(), runs, spec.repeats)
    mine = draws % num_workers == worker_index
    share = int(mine.sum())
    todo = mine & ~np.array([(int(d), int(r)) in done for d, r in zip(draws, reps, strict=True)],
                            dtype=bool).reshape(-1)
    draws, reps = draws[todo], reps[todo]
    echo(f"worker {worker_index}/{num_workers}: {len(draws)} of its {share} run(s) to train "
         f"at alpha={spec.alpha} into {folder}")
    start = time.perf_counter()
    prefix = f"runs-{spec.fingerprint[:12]}-a{spec.alpha:g}-w{worker_index}of{num_workers}"
    bar = tqdm(total=len(draws), unit="model", desc=f"worker {worker_index}",
               disable=not progress)
    writer = ShardWriter(folder, prefix, spec.experiment["n_train"],
                         spec.experiment["n_targets"], flush_runs=shard_runs, trainer=model.name)
    try:
        for lo in range(0, len(draws), shard_runs):
            sl = slice(lo, lo + shard_runs)
            train_block(spec, model, draws[sl], reps[sl], writer)
            writer.flush()  # one complete shard per block: a kill loses at most one block
            bar.update(len(draws[sl]))
    finally:
        bar.close()
    return WorkerReport(worker_index, num_workers, share, share - len(draws), len(draws),
                        writer.paths, time.perf_counter() - start)


# -- Ray ---------------------------------------------------------------------------------


@dataclass
class RayReport:
    """What one `dmdb train --backend ray` did."""

    wanted: int
    existing: int
    landed: int
    tasks: int
    seconds: float
    startup_seconds: float
    interrupted: bool = False


def _ray_block(spec_json: str, draws: np.ndarray, reps: np.ndarray) -> pa.Table:
    """A Ray task: train one block of draws and return its runs in the run schema."""
    spec = Spec(**json.loads(spec_json))
    model = spec.build_trainer()
    exp = spec.experiment
    buffer = RunBuffer(exp["n_train"], exp["n_targets"], flush_runs=1 << 62, trainer=model.name)
    train_block(spec, model, draws, reps, buffer)
    batch = buffer.take()
    if batch is None:
        raise RuntimeError("a Ray task trained no runs")
    return batch_to_arrow(batch)


def train_ray(
    db: Database, spec: Spec, *, runs: int, address: str | None = None,
    runs_per_task: int = 64, gpus_per_task: float = 0, cpus_per_task: float = 1,
    max_retries: int = 3, progress: bool = True, echo: Echo = print,
) -> RayReport:
    """Train the missing draws 0..runs-1 as Ray tasks; the driver ingests as they land.

    Tasks return Arrow data through Ray's object store (no shared file system is
    needed), and this process, the only one that opens the database, ingests it.
    A task that fails is retried by Ray; its runs have the same ids, so each lands
    once. Ctrl-C keeps what has landed; running again trains only what is missing.
    """
    from tqdm.auto import tqdm

    from dmdb.ingest import ingest
    from dmdb.training import done_draws

    if runs < 1:
        raise UsageError(f"--runs must be positive, got {runs}")
    if runs_per_task < 1:
        raise UsageError(f"--runs-per-task must be positive, got {runs_per_task}")
    if gpus_per_task < 0 or cpus_per_task <= 0:
        raise UsageError("--gpus-per-task must be >= 0 and --cpus-per-task > 0")
    if spec.fingerprint != db.fingerprint:
        raise InputError("the spec belongs to another experiment (fingerprint mismatch)")
    draws, reps = missing_draws(done_draws(db, spec.alpha), runs, spec.repeats)
    existing = runs - len(np.unique(draws))
    if len(draws) == 0:
        echo(f"draws 0..{runs - 1} are all at alpha={spec.alpha}; nothing to do")
        return RayReport(runs, existing, 0, 0, 0.0, 0.0)
    ray, started, startup = start_ray(address)
    echo(f"Ray: {'started a local cluster' if started else 'connected'} in {startup:.1f}s; "
         f"{len(draws)} run(s) in {-(-len(draws) // runs_per_task)} task(s)")
    task = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task,
                      max_retries=max_retries, retry_exceptions=True)(_ray_block)
    spec_json = json.dumps(asdict(spec))
    t0 = time.perf_counter()
    pending = [task.remote(spec_json, draws[i:i + runs_per_task], reps[i:i + runs_per_task])
               for i in range(0, len(draws), runs_per_task)]
    n_tasks = len(pending)
    landed, interrupted = 0, False
    bar = tqdm(total=len(draws), unit="run", desc="landed", disable=not progress)
    buffered: list[pa.Table] = []
    try:
        for tables in _as_completed(ray, pending):
            buffered += tables
            if sum(t.num_rows for t in buffered) >= 1024 or not pending:
                landed += _land(db, buffered, ingest)
                bar.update(sum(t.num_rows for t in buffered))
                buffered = []
    except KeyboardInterrupt:
        interrupted = True
        for ref in pending:
            ray.cancel(ref, force=True)
    finally:
        if buffered:
            landed += _land(db, buffered, ingest)
        bar.close()
        if started:
            ray.shutdown()
    return RayReport(runs, existing, landed, n_tasks, time.perf_counter() - t0, startup,
                     interrupted)


def _as_completed(ray: Any, pending: list[Any]) -> Iterator[list[pa.Table]]:
    """Yield finished tasks' tables as they arrive (``pending`` shrinks in place)."""
    while pending:
        ready, rest = ray.wait(pending, num_returns=1, timeout=None)
        pending[:] = rest
        yield [ray.get(ref) for ref in ready]


def _land(db: Database, tables: list[pa.Table], ingest: Any) -> int:
    table = pa.concat_tables(tables, promote_options="default")
    return int(ingest(db, table).n_new)

