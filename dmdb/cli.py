"""The `dmdb` command line: thin wrappers over the library.

Each command parses its arguments, calls one library function, and turns a
:class:`~dmdb.errors.DmdbError` into one line on stderr and exit status 1.
"""

from __future__ import annotations

import csv
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import pyarrow as pa

from dmdb.errors import DmdbError, UsageError
from dmdb.lasso_params import DTYPES, GRAM_KERNELS, SOLVERS, LassoParams
from dmdb.version import __version__

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(fn: F) -> F:
    """Turn library errors into a one-line message and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DmdbError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dmdb")
@click.option("--wait", type=click.FloatRange(min=0), default=10.0, show_default=True,
              metavar="SECONDS", help="How long to retry while another process writes to DB.")
def cli(wait: float) -> None:
    """dmdb: an embedded DuckDB database for datamodels.

    Train many models on random subsets of a training set, store their masks and
    margins, fit a sparse linear datamodel per target, and ask questions in SQL.
    """
    from dmdb import db

    db.DEFAULT_BUSY_TIMEOUT = wait


db_argument = click.argument("db", type=click.Path(dir_okay=False))

# Options that several commands take, declared once (as sqlite-utils' output_options).
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
fit_option = click.option("--fit", "fit_id", type=int, help="The fit (default: the latest).")
device_option = click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
format_option = click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]),
                             default="table", show_default=True)


@cli.command()
@db_argument
@click.option("--train-size", "-N", type=int, help="N: number of training examples (mask length).")
@click.option("--targets", "-M", type=int, help="M: number of target examples (margins per run).")
@click.option("--dataset", help="A built-in dataset (digits) that sets N, M, labels and pixels.")
@click.option("--name", help="Experiment name (default: the file name).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Experiment seed: draws masks and assigns splits.")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@reports_errors
def init(db: str, train_size: int | None, targets: int | None, dataset: str | None,
         name: str | None, seed: int, force: bool) -> None:
    """Create database DB for one experiment (N training examples, M targets)."""
    from dmdb.db import init as init_db

    kwargs: dict[str, Any] = {}
    if dataset is not None:
        from dmdb.datasets import experiment_kwargs

        kwargs = experiment_kwargs(dataset)
        for given, key, flag in ((train_size, "n_train", "--train-size"),
                                 (targets, "n_targets", "--targets")):
            if given is not None and given != kwargs[key]:
                raise UsageError(f"{flag} {given} contradicts dataset {dataset} ({kwargs[key]})")
        train_size, targets = kwargs.pop("n_train"), kwargs.pop("n_targets")
    if train_size is None or targets is None:
        raise UsageError("give --train-size N and --targets M, or --dataset digits")
    database = init_db(db, n_train=train_size, n_targets=targets, name=name, seed=seed,
                       force=force, **kwargs)
    exp = database.experiment
    click.echo(f"created {db}: experiment {exp.name!r}, N={exp.n_train} training examples, "
               f"M={exp.n_targets} targets, seed {exp.seed}")


@cli.command()
@db_argument
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option("--masks", "masks_path", type=click.Path(path_type=Path),
              help="A runs x N bool .npy matrix (the authors' release format).")
@click.option("--margins", "margins_path", type=click.Path(path_type=Path),
              help="A runs x M float16/float32 .npy matrix, row-aligned with --masks.")
@click.option("--alpha", type=float, help="Subset fraction of the npy/store runs (required there).")
@click.option("--masks-key", default="masks", show_default=True, help="Store key of the masks.")
@click.option("--margins-key", default="margins", show_default=True,
              help="Store key of the margins.")
@click.option("--follow", type=float, metavar="SECONDS",
              help="Keep ingesting new shards of the folder every SECONDS (workers still "
              "writing) until Ctrl-C, or until --runs draws are in.")
@click.option("--runs", type=int, help="With --follow and --alpha: stop once draws 0..RUNS-1 "
              "are in.")
@quiet_option
@reports_errors
def ingest(db: str, sources: tuple[Path, ...], masks_path: Path | None, margins_path: Path | None,
           alpha: float | None, masks_key: str, margins_key: str, follow: float | None,
           runs: int | None, quiet: bool) -> None:
    """Add runs to DB from shard files, npy matrices or an authors' store.

    SOURCES are Parquet / Arrow IPC shard files in the run schema, folders of
    them, or store folders (a folder holding _completed.npy with one <key>.npy
    memmap per key). Alternatively give --masks and --margins .npy files.
    Ingesting the same runs again adds nothing, and shards already ingested are
    skipped, so it can run while workers are still writing.
    """
    from dmdb.ingest import follow as follow_folder
    from dmdb.ingest import ingest_paths

    if follow is not None:
        if len(sources) != 1 or masks_path is not None:
            raise UsageError("--follow takes one shard folder")
        total = follow_folder(connect_db(db), sources[0], every=follow, runs=runs, alpha=alpha,
                              progress=not quiet, echo=click.echo)
        click.echo(f"ingested {total.n_new} new run(s) in all")
        return
    result = ingest_paths(
        db, list(sources), masks=masks_path, margins=margins_path, alpha=alpha,
        masks_key=masks_key, margins_key=margins_key, progress=not quiet,
    )
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    skipped = f", {result.files_skipped} file(s) already ingested" if result.files_skipped else ""
    click.echo(f"ingested {result.n_new} new run(s); {result.n_skipped} already present{skipped}")


@cli.command()
@db_argument
@reports_errors
def status(db: str) -> None:
    """Show the experiment, run counts by alpha and split, fits and file size."""
    from dmdb.db import connect

    info = connect(db, read_only=True).status()
    exp = info["experiment"]
    dataset = f" (dataset {exp.dataset})" if exp.dataset else ""
    click.echo(f"{db}: experiment {exp.name!r}{dataset}")
    click.echo(f"  N={exp.n_train} training examples, M={exp.n_targets} targets, seed {exp.seed}, "
               f"created {exp.created_at:%Y-%m-%d %H:%M}")
    click.echo(f"  file size: {info['file_bytes'] / 2**20:.1f} MiB")
    if not info["runs"]:
        click.echo("  no runs yet")
    else:
        click.echo(f"  {'alpha':>6} {'split':<7} {'runs':>8} {'masks':>8} {'target acc':>11}")
        for alpha, split, n_runs, n_masks, acc, _ in info["runs"]:
            acc_s = f"{acc:.3f}" if acc is not None else "-"
            click.echo(f"  {alpha:>6.3g} {split:<7} {n_runs:>8} {n_masks:>8} {acc_s:>11}")
    if info["fits"]:
        click.echo(f"  {'fit':>4} {'solver':<10} {'alpha':>6} {'fit/val/test':>16} {'mean LDS':>9}")
        for fit_id, _, solver, alpha, n_fit, n_val, n_test, lds, _n, curve_of in info["fits"]:
            a = "all" if alpha is None else f"{alpha:.3g}"
            lds_s = f"{lds:.3f}" if lds is not None else "-"
            note = f"  (learning curve of fit {curve_of})" if curve_of is not None else ""
            click.echo(f"  {fit_id:>4} {solver:<10} {a:>6} {f'{n_fit}/{n_val}/{n_test}':>16} "
                       f"{lds_s:>9}{note}")
    else:
        click.echo("  no fits yet")


@cli.command()
@db_argument
@reports_errors
def migrate(db: str) -> None:
    """Bring DB up to this dmdb's schema (read commands never migrate a file)."""
    from dmdb.db import connect

    version = connect(db).migrate()
    click.echo(f"{db}: schema version {version}")


@cli.command()
@db_argument
@click.argument("query")
@format_option
@reports_errors
def sql(db: str, query: str, fmt: str) -> None:
    """Run QUERY read-only against DB and print the result.

    QUERY is one SELECT, WITH, DESCRIBE, SHOW, EXPLAIN or SUMMARIZE statement.
    Anything that could write (to the database or to any other file) is refused.
    """
    from dmdb.db import connect

    table = connect(db, read_only=True).read_query(query)
    click.echo(format_table(table, fmt), nl=False)


def parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    """Trainer settings from repeated --set key=value (a later key wins)."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set takes key=value, got {pair!r}")
        options[key.strip()] = value.strip()
    return options


def connect_db(db: str, read_only: bool = False) -> Any:
    """Open DB (the library's dmdb.connect), imported only when a command runs."""
    from dmdb.db import connect

    return connect(db, read_only=read_only)


def trainer_options(fn: F) -> F:
    """The options that say how runs are trained (train, spec)."""
    for option in reversed([
        click.option("--trainer", help="mlp, cifar10, fmow, or a plug-in package.module:function "
                     "(default: the dataset's trainer)."),
        device_option,
        click.option("--batch-models", type=int,
                     help="Runs per trainer call (mlp: models trained as one computation)."),
        click.option("--seed", type=int,
                     help="Base of the model seeds (default: the experiment seed)."),
        click.option("--repeats", type=int, default=1, show_default=True,
                     help="Models per mask, with different seeds (they share a mask_id)."),
        click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
                     help="A trainer option (repeatable), e.g. --set epochs=20."),
        click.option("--config", type=click.Path(dir_okay=False),
                     help="Trainer options from a JSON or TOML file (--set wins)."),
    ]):
        fn = option(fn)
    return fn


@cli.command()
@click.argument("db", type=click.Path(dir_okay=False), required=False)
@click.option("--runs", type=int, required=True, help="Draws 0..RUNS-1 wanted at this alpha.")
@click.option("--alpha", type=float, help="Subset fraction, in (0, 1] (from --spec if given).")
@trainer_options
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False),
              help="A spec from `dmdb spec`: train without opening any database.")
@click.option("--shard-dir", type=click.Path(file_okay=False),
              help="With --spec: write Arrow shards here (for `dmdb ingest DB DIR`).")
@click.option("--worker-index", type=int, default=0, show_default=True,
              help="This worker's index i: it trains the draws d with d % W == i.")
@click.option("--num-workers", type=int, default=1, show_default=True,
              help="W, the number of workers sharing the draws.")
@click.option("--shard-runs", type=int, default=256, show_default=True,
              help="Runs per shard file.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="Train here, or as Ray tasks (the driver writes DB).")
@click.option("--address", help="--backend ray: auto or HOST:PORT of a running cluster "
              "(default: start a local one on 127.0.0.1).")
@click.option("--runs-per-task", type=int, default=64, show_default=True,
              help="--backend ray: draws per task.")
@click.option("--gpus-per-task", type=float, default=0, show_default=True)
@click.option("--cpus-per-task", type=float, default=1, show_default=True)
@quiet_option
@reports_errors
def train(db: str | None, runs: int, alpha: float | None, trainer: str | None, device: str,
          batch_models: int | None, seed: int | None, repeats: int, settings: tuple[str, ...],
          config: str | None, spec_path: str | None, shard_dir: str | None, worker_index: int,
          num_workers: int, shard_runs: int, backend: str, address: str | None,
          runs_per_task: int, gpus_per_task: float, cpus_per_task: float, quiet: bool) -> None:
    """Train models on random alpha-subsets until DB holds draws 0..RUNS-1 at ALPHA.

    Masks are Bernoulli(alpha), drawn reproducibly from the experiment seed and the
    draw index. Runs stream into DB as they finish; running the command again
    trains only the missing draws. Ctrl-C saves what has been trained.

    On a cluster: `dmdb spec DB --out spec.json`, then each job-array task runs
    `dmdb train --spec spec.json --runs K --shard-dir DIR --worker-index i
    --num-workers W` (no database), and `dmdb ingest DB DIR` loads the shards.
    Or `dmdb train DB --runs K --alpha A --backend ray`.
    """
    if spec_path is not None and db is None:
        return _train_worker(spec_path, runs, shard_dir, worker_index, num_workers,
                             shard_runs, device, quiet)
    if db is None:
        raise UsageError("give DB, or --spec SPEC with --shard-dir DIR for a worker")
    if shard_dir is not None:
        raise UsageError("--shard-dir is for workers: give --spec without DB")
    from dmdb.db import connect

    database = connect(db)
    if backend == "ray":
        return _train_ray(database, spec_path, runs, alpha, trainer, device, batch_models, seed,
                          repeats, settings, config, address, runs_per_task, gpus_per_task,
                          cpus_per_task, quiet)
    if alpha is None:
        raise UsageError("--alpha is required")
    from dmdb.training import train as train_models

    report = train_models(database, runs=runs, alpha=alpha, trainer=trainer, device=device,
                          batch_models=batch_models, seed=seed, repeats=repeats,
                          options=parse_options(settings), config=config, progress=not quiet,
                          echo=click.echo)
    if report.trained:
        rate = report.trained / max(report.seconds, 1e-9)
        click.echo(f"trained {report.trained} model(s) in {report.seconds:.1f}s "
                   f"({rate:.1f} models/s); mean target accuracy {report.mean_target_acc:.3f}")
    if report.interrupted:
        click.echo("interrupted: the runs trained so far are saved; run again to continue",
                   err=True)
        sys.exit(130)


def _train_worker(spec_path: str, runs: int, shard_dir: str | None, worker_index: int,
                  num_workers: int, shard_runs: int, device: str, quiet: bool) -> None:
    import dataclasses

    from dmdb.cluster import Spec, check_worker_args, train_worker

    if shard_dir is None:
        raise UsageError("a worker (--spec without DB) needs --shard-dir DIR")
    check_worker_args(runs, worker_index, num_workers)
    spec = Spec.load(spec_path)
    if device != "cpu":  # the spec is often written on a CPU login node
        spec = dataclasses.replace(spec, device=device, spec_hash="")
    report = train_worker(spec, runs=runs, shard_dir=shard_dir,
                          worker_index=worker_index, num_workers=num_workers,
                          shard_runs=shard_runs, progress=not quiet, echo=click.echo)
    rate = report.trained / max(report.seconds, 1e-9)
    click.echo(f"worker {report.worker_index}/{report.num_workers}: trained {report.trained} "
               f"run(s) ({rate:.1f} models/s) into {len(report.shards)} shard(s); "
               f"{report.already} were already in complete shards")


def _train_ray(database: Any, spec_path: str | None, runs: int, alpha: float | None,
               trainer: str | None, device: str, batch_models: int | None, seed: int | None,
               repeats: int, settings: tuple[str, ...], config: str | None,
               address: str | None, runs_per_task: int, gpus_per_task: float,
               cpus_per_task: float, quiet: bool) -> None:
    from dmdb.cluster import Spec, make_spec, train_ray

    if spec_path is not None:
        spec = Spec.load(spec_path)
    else:
        if alpha is None:
            raise UsageError("--alpha is required")
        spec = make_spec(database, alpha=alpha, trainer=trainer, options=parse_options(settings),
                         config=config, device=device, repeats=repeats, seed=seed,
                         batch_models=batch_models)
    report = train_ray(database, spec, runs=runs, address=address, runs_per_task=runs_per_task,
                       gpus_per_task=gpus_per_task, cpus_per_task=cpus_per_task,
                       progress=not quiet, echo=click.echo)
    rate = report.landed / max(report.seconds, 1e-9)
    click.echo(f"landed {report.landed} run(s) from {report.tasks} Ray task(s) in "
               f"{report.seconds:.1f}s ({rate:.1f} models/s; Ray start-up "
               f"{report.startup_seconds:.1f}s)")
    if report.interrupted:
        click.echo("interrupted: the runs landed so far are saved; run again to continue",
                   err=True)
        sys.exit(130)


@cli.command()
@db_argument
@click.option("--alpha", type=float, required=True, help="Subset fraction, in (0, 1].")
@trainer_options
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="Where to write the spec (JSON).")
@reports_errors
def spec(db: str, alpha: float, trainer: str | None, device: str, batch_models: int | None,
         seed: int | None, repeats: int, settings: tuple[str, ...], config: str | None,
         out: str) -> None:
    """Write what a worker needs to train DB's runs at ALPHA, so it never opens DB.

    The spec holds the experiment (N, M, seed, dataset, splits, fingerprint), the
    trainer and its resolved options (data paths on shared storage), alpha and a
    hash of all of that. Shards that workers make from it carry the fingerprint.
    """
    from dmdb.cluster import make_spec
    from dmdb.db import connect

    made = make_spec(connect(db, read_only=True), alpha=alpha, trainer=trainer,
                     options=parse_options(settings), config=config, device=device,
                     repeats=repeats, seed=seed, batch_models=batch_models)
    path = made.save(out)
    click.echo(f"wrote {path}: trainer {made.trainer}, alpha {made.alpha}, experiment "
               f"fingerprint {made.fingerprint[:16]}")


@cli.command()
@db_argument
@click.option("--alpha", type=float, help="Use only runs drawn at this subset fraction.")
@click.option("--max-fit-runs", type=int, help="Use only the first K fit runs (learning curves).")
@click.option("--target-range", metavar="LO:HI", help="Fit only targets LO..HI-1.")
@click.option("--solver", type=click.Choice(SOLVERS), default=LassoParams.solver,
              show_default=True, help="Batched torch FISTA, or the per-target reference.")
@click.option("--n-lambdas", type=int, default=LassoParams.n_lambdas, show_default=True,
              help="Values on each target's λ path.")
@click.option("--lambda-ratio", type=float, default=LassoParams.lambda_ratio, show_default=True,
              help="Smallest λ as a fraction of λ_max.")
@click.option("--tol", type=float, default=LassoParams.tol, show_default=True,
              help="Duality gap at which a λ counts as solved, over the centred "
              "margins' mean square (scikit-learn's rule; both solvers).")
@click.option("--max-iter", type=int, default=LassoParams.max_iter, show_default=True,
              help="Most iterations per λ (FISTA steps, or sweeps of the reference solver).")
@click.option("--device", default=LassoParams.device, show_default=True, help="cpu or cuda.")
@click.option("--dtype", type=click.Choice(DTYPES), default=LassoParams.dtype,
              show_default=True)
@click.option("--threads", "n_threads", type=int,
              help="torch CPU threads (1 can beat 2 under contention).")
@click.option("--no-early-stopping", "early_stopping", flag_value=False,
              default=LassoParams.early_stopping,
              help="Solve every λ even after validation error has risen.")
@click.option("--gram-free", "gram", flag_value=False, default=LassoParams.gram,
              help="Do not hold the N x N Gram (for very large N; 10-20x slower).")
@click.option("--gram-kernel", type=click.Choice(GRAM_KERNELS), default=LassoParams.gram_kernel,
              show_default=True,
              help="Matmul that counts XᵀX: auto times each on this device and takes the "
              "fastest (all give the same exact counts).")
@click.option("--memory", type=float, metavar="GB",
              help="Memory budget for the fit's arrays (default: 85% of the free RAM, or of "
              "the GPU's); targets are solved in batches that fit, and a fit that cannot "
              "is refused before it starts.")
@click.option("--out", metavar="BLOCK.parquet",
              help="Write the fit of --target-range to this block file, reading DB "
              "read-only (many processes at once); merge the blocks with --merge.")
@click.option("--merge", "merge_blocks", is_flag=True,
              help="Record the block files given after DB as one fit: dmdb fit DB --merge "
              "block-*.parquet.")
@click.option("--save-stats", metavar="FILE",
              help="Only read the fit runs into statistics for every target and save them "
              "here, for blocks to load with --stats.")
@click.option("--stats", "stats_file", metavar="FILE",
              help="Load the fit runs' statistics from FILE (see --save-stats) instead of "
              "reading the runs.")
@click.option("--pairs", type=int, metavar="K",
              help="Second-order datamodels: add sparse pairwise interactions among each "
              "target's top K examples (stored in table interactions).")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="Fit here, or as --blocks Ray tasks merged into one fit.")
@click.option("--blocks", "n_blocks", type=int, default=1, show_default=True,
              help="--backend ray: target blocks, one Ray task each.")
@click.option("--address", help="--backend ray: auto or HOST:PORT of a running cluster "
              "(default: start a local one on 127.0.0.1).")
@click.option("--gpus-per-task", type=float, default=0, show_default=True)
@click.option("--cpus-per-task", type=float, default=1, show_default=True)
@click.argument("block_files", nargs=-1)
@quiet_option
@reports_errors
def fit(db: str, alpha: float | None, max_fit_runs: int | None, target_range: str | None,
        out: str | None, merge_blocks: bool, save_stats: str | None, stats_file: str | None,
        pairs: int | None, backend: str, n_blocks: int, address: str | None, gpus_per_task: float,
        cpus_per_task: float, block_files: tuple[str, ...], quiet: bool,
        **options: Any) -> None:
    """Fit a sparse linear datamodel for every target of DB and store it as a new fit.

    Each target's L1 penalty is chosen on the validation runs from a path of
    --n-lambdas values; quality (LDS = Spearman of predicted vs actual margins)
    is measured on the test runs.

    Split by targets: `dmdb fit DB --target-range LO:HI --out block-K.parquet` in
    each process (or GPU, or machine), then `dmdb fit DB --merge block-*.parquet`;
    or `dmdb fit DB --backend ray --blocks B` does both.
    """
    from dmdb import fitting
    from dmdb.db import connect

    modes = [name for name, on in (("--out", out), ("--merge", merge_blocks),
                                   ("--save-stats", save_stats), ("--backend ray",
                                                                  backend == "ray")) if on]
    if pairs is not None and (merge_blocks or save_stats):
        raise UsageError(
            "--pairs cannot be combined with --merge (the blocks say whether they hold pairs)"
            if merge_blocks else
            "--pairs cannot be combined with --save-stats (the statistics are the linear "
            "fit's, shared by linear and second-order blocks)")
    if len(modes) > 1:
        raise UsageError(f"{' and '.join(modes)} cannot be combined")
    if block_files and not merge_blocks:
        raise UsageError(f"unexpected argument {block_files[0]!r} (block files need --merge)")
    if merge_blocks:
        fit_id = fitting.merge(connect(db), block_files)
        click.echo(f"fit {fit_id}: merged {len(block_files)} block(s)")
        return
    # The options above carry the estimator's parameter names (dmdb.lasso_params),
    # so they pass through as they are.
    common: dict[str, Any] = {"alpha": alpha, "max_fit_runs": max_fit_runs, "progress": not quiet,
              "echo": click.echo}
    if save_stats:
        path = fitting.save_stats(connect(db, read_only=True), save_stats, **common, **options)
        click.echo(f"wrote the statistics to {path}")
        return
    if backend == "ray":
        report = fitting.fit_ray(connect(db), n_blocks=n_blocks, target_range=target_range,
                                 address=address, gpus_per_task=gpus_per_task,
                                 cpus_per_task=cpus_per_task, stats=stats_file, pairs=pairs,
                                 **common, **options)
    else:
        report = fitting.fit(connect(db, read_only=out is not None), target_range=target_range,
                             out=out, stats=stats_file, pairs=pairs, **common, **options)
    what = f"fit {report.fit_id}" if report.out is None else f"block {report.out}"
    click.echo(f"{what}: {report.n_targets} targets, mean LDS (test Spearman) "
               f"{report.mean_lds:.3f}, mean non-zeros {report.mean_nnz:.1f}, "
               f"{report.seconds:.1f}s (+{report.write_seconds:.1f}s to write)")


@cli.command()
@db_argument
@click.option("--drop", "drop", type=int, metavar="FIT_ID", help="Delete this fit.")
@reports_errors
def fits(db: str, drop: int | None) -> None:
    """List the fits in DB (or delete one with --drop)."""
    from dmdb.catalog import drop_fit, list_fits
    from dmdb.db import connect

    database = connect(db, read_only=drop is None)
    if drop is not None:
        drop_fit(database, drop)
        click.echo(f"dropped fit {drop}")
        return
    click.echo(format_table(list_fits(database), "table"), nl=False)


@cli.command()
@db_argument
@click.option("--fit", "fit_id", type=int, required=True, help="The fit to export.")
@click.option("--format", "fmt", type=click.Choice(["npy", "parquet"]), default="npy",
              show_default=True)
@click.option("--out", type=click.Path(), help="Output folder (default: fit-ID).")
@reports_errors
def export(db: str, fit_id: int, fmt: str, out: str | None) -> None:
    """Write a fit's bias and weights for other tools (npy or parquet)."""
    from dmdb.codec import display_path
    from dmdb.db import connect
    from dmdb.export import export_fit

    paths = export_fit(connect(db, read_only=True), fit_id, out or f"fit-{fit_id}", fmt)
    for p in paths:
        click.echo(f"wrote {display_path(p)}")


@cli.command()
@db_argument
@fit_option
@click.option("--components", type=int, default=32, show_default=True,
              help="PCA components per target.")
@click.option("--clusters", type=int, default=10, show_default=True,
              help="Spectral clusters of the targets.")
@click.option("--neighbours", type=int, default=10, show_default=True,
              help="Most similar targets kept per target in target_similarity.")
@click.option("--seed", type=int, default=0, show_default=True)
@reports_errors
def embed(db: str, fit_id: int | None, components: int, clusters: int, neighbours: int,
          seed: int) -> None:
    """Embed the targets' datamodels: PCA, spectral clusters and nearest targets.

    Writes the embeddings and target_similarity tables for the fit.
    """
    from dmdb.applications import embed as embed_fit
    from dmdb.db import connect

    report = embed_fit(connect(db), fit_id=fit_id, components=components, clusters=clusters,
                       neighbours=neighbours, seed=seed)
    click.echo(f"fit {report.fit_id}: {report.n_targets} targets embedded in "
               f"{report.components} components "
               f"({report.explained_variance:.0%} of the weight variance), "
               f"{report.clusters} clusters, {report.n_similarities} similar pairs")
    for note in report.notes:
        click.echo(f"note: {note}")


@cli.command()
@db_argument
@fit_option
@click.option("--top", type=int, default=50, show_default=True, help="Pairs to show.")
@format_option
@reports_errors
def leakage(db: str, fit_id: int | None, top: int, fmt: str) -> None:
    """Train-test leakage candidates: training examples holding much of a target's weight.

    Adds the pixel distance and whether the labels agree, to tell near-duplicates
    from mere influence.
    """
    from dmdb.applications import leakage as leakage_pairs
    from dmdb.db import connect

    pairs = leakage_pairs(connect(db, read_only=True), fit_id=fit_id, top=top)
    click.echo(format_table(pairs, fmt), nl=False)


@cli.command()
@db_argument
@fit_option
@click.option("--ceiling", is_flag=True,
              help="Measure the noise ceiling instead: several seeds on fresh masks.")
@click.option("--targets", type=int, default=20, show_default=True,
              help="Targets whose top influencers are removed.")
@click.option("--k", "ks", type=int, multiple=True, help="Removal sizes (default 10 20 40).")
@click.option("--models", type=int, default=20, show_default=True,
              help="Models retrained per condition.")
@click.option("--brittleness-targets", type=int, default=20, show_default=True,
              help="Targets whose estimated support set is removed.")
@click.option("--masks", type=int, default=100, show_default=True,
              help="--ceiling: fresh masks.")
@click.option("--seeds", type=int, default=10, show_default=True,
              help="--ceiling: models (seeds) per mask.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--trainer", help="Override the trainer recorded on the fit's runs.")
@device_option
@click.option("--batch-models", type=int,
              help="Runs per trainer call (mlp: models trained as one computation).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="A trainer option (repeatable).")
@quiet_option
@reports_errors
def verify(db: str, fit_id: int | None, ceiling: bool, targets: int, ks: tuple[int, ...],
           models: int, brittleness_targets: int, masks: int, seeds: int, seed: int,
           trainer: str | None, device: str, batch_models: int | None,
           settings: tuple[str, ...], quiet: bool) -> None:
    """Check a fit by retraining: counterfactual removals, brittleness, noise ceiling.

    Retrains with the experiment's own trainer on Bernoulli(alpha) subsets with
    chosen examples removed, stores those runs with split 'verify' (see the
    counterfactuals view), and compares the datamodel's predictions with them.
    """
    from dmdb.db import connect
    from dmdb.verify import CeilingReport, VerifyReport
    from dmdb.verify import ceiling as measure_ceiling
    from dmdb.verify import verify as verify_fit

    database = connect(db)
    options = parse_options(settings) or None
    result: CeilingReport | VerifyReport
    if ceiling:
        result = measure_ceiling(database, fit_id=fit_id, masks=masks, seeds=seeds, seed=seed,
                                 trainer=trainer, device=device, options=options,
                                 batch_models=batch_models, progress=not quiet, echo=click.echo)
    else:
        result = verify_fit(database, fit_id=fit_id, targets=targets, ks=ks or (10, 20, 40),
                            models=models, brittleness_targets=brittleness_targets, seed=seed,
                            trainer=trainer, device=device, options=options,
                            batch_models=batch_models, progress=not quiet, echo=click.echo)
    click.echo(result.summary())


@cli.command()
@db_argument
@click.argument("out", type=click.Path(), default="report")
@fit_option
@click.option("--no-learning-curve", is_flag=True,
              help="Do not refit on 10/25/50% of the runs for the LDS-vs-runs plot.")
@quiet_option
@reports_errors
def report(db: str, out: str, fit_id: int | None, no_learning_curve: bool, quiet: bool) -> None:
    """Write PNG figures and an index.html about a fit into folder OUT."""
    from dmdb.db import connect
    from dmdb.report import report as write_report

    index = write_report(connect(db), out, fit_id=fit_id, learning_curve=not no_learning_curve,
                         progress=not quiet, echo=click.echo)
    click.echo(f"report: {index}")


@cli.command()
@click.argument("folder", type=click.Path(file_okay=False), default="dmdb-quickstart")
@click.option("--runs", type=int, default=20000, show_default=True,
              help="Models to train (smaller runs also shrink the checks).")
@device_option
@quiet_option
@reports_errors
def quickstart(folder: str, runs: int, device: str, quiet: bool) -> None:
    """Run the whole method on scikit-learn's digits in FOLDER (about 10 minutes).

    init, train, fit, embed, verify by retraining, noise ceiling and a report,
    then print a summary and SQL to try next.
    """
    from dmdb.quickstart import QuickstartSizes, run_quickstart

    run_quickstart(folder, sizes=QuickstartSizes.for_runs(runs), device=device,
                   echo=click.echo, progress=not quiet)


@cli.command("import-fit")
@db_argument
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--name", help="The method's name (default: the file's name); must be unique.")
@click.option("--alpha", type=float, help="The subset fraction it was fitted at. For a .pt "
              "also mu = A, sigma = sqrt(A(1-A)) instead of the runs' statistics.")
@click.option("--eval", "eval_set", type=click.Choice(["test", "all"]), default="test",
              show_default=True, help="Evaluate on the test split, or on every run except "
              "'verify' runs.")
@click.option("--transpose", is_flag=True, help="A score .npy is (M, N), not (N, M).")
@click.option("--bias", type=click.Path(path_type=Path), metavar="FILE.npy",
              help="The score matrix's bias (M,); without one it is uncalibrated.")
@click.option("--force", is_flag=True, help="Import a file that was imported before.")
@reports_errors
def import_fit(db: str, file: Path, name: str | None, alpha: float | None, eval_set: str,
               transpose: bool, bias: Path | None, force: bool) -> None:
    """Record FILE, an attribution matrix dmdb did not compute, as a new fit of DB.

    FILE is the authors' released datamodels (.pt: weight N x M in their standardised
    space, bias, lam), a score matrix of another method (.npy, N x M), or a folder
    from `dmdb export`. The views (lds, top_influencers, ...) then judge it on the
    same held-out runs as dmdb's own fits.
    """
    from dmdb.db import connect
    from dmdb.imported import import_fit as import_file

    report = import_file(connect(db), file, name=name, alpha=alpha, eval_set=eval_set,
                         transpose=transpose, bias=bias, force=force)
    click.echo(report.summary())


@cli.command()
@db_argument
@click.option("--fits", "fit_list", metavar="ID,ID,...",
              help="The fits to compare; the first is the reference (default: all but "
              "learning-curve refits).")
@click.option("--out", type=click.Path(dir_okay=False), default="compare.png",
              show_default=True, help="Where to write the figure.")
@format_option
@reports_errors
def compare(db: str, fit_list: str | None, out: str, fmt: str) -> None:
    """Compare fits (dmdb's or imported) on the first fit's test runs.

    One row per fit: mean and median LDS, the fraction of targets on which it beats
    the first fit, and the overlap of its top-10 influencers with the first fit's.
    Writes a figure of per-target LDS against the first fit.
    """
    from dmdb.compare import compare as compare_fits
    from dmdb.db import connect

    ids = None
    if fit_list is not None:
        try:
            ids = [int(part) for part in fit_list.split(",") if part.strip()]
        except ValueError:
            raise UsageError(f"--fits takes fit ids separated by commas, got {fit_list!r}"
                             ) from None
    from dmdb.export import output_folder

    output_folder(Path(out).parent, "the figure")  # before anything is printed
    result = compare_fits(connect(db, read_only=True), ids)
    click.echo(format_table(result.table, fmt), nl=False)
    path = result.save_figure(out)
    for note in result.notes:
        click.echo(f"note: {note}", err=fmt != "table")
    click.echo(f"figure: {path}", err=fmt != "table")


def format_table(table: pa.Table, fmt: str) -> str:
    """Render an Arrow table as an aligned text table, CSV or JSON lines."""
    rows = table.to_pylist()
    names = table.column_names
    if fmt == "json":
        return "".join(json.dumps(r, default=str) + "\n" for r in rows)
    if fmt == "csv":
        import io

        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(names)
        writer.writerows([[_cell(r[n]) for n in names] for r in rows])
        return out.getvalue()
    cells = [[_cell(r[n]) for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list) and len(value) > 8:
        return "[" + ", ".join(_cell(v) for v in value[:8]) + f", ... ({len(value)})]"
    if isinstance(value, bytes):
        return value[:16].hex() + ("..." if len(value) > 16 else "")
    return str(value)


def main() -> None:
    """Console-script entry point."""
    cli()


__all__ = ["cli", "main"]


if __name__ == "__main__":
    main()
