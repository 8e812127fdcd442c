"""`dmdb fit`: read runs from the database, fit every target, write the weights back.

One fit = one row of ``fits``, the runs it used in ``fit_runs`` (so its metrics
never drift as runs are added), one ``datamodels`` row per fitted target and
the non-zero ``weights``, all written in one transaction. 'verify' runs are never
used. The solver itself lives in :mod:`dmdb.lasso`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmdb import blocks, fit_memory
from dmdb import pairs as pair_stage
from dmdb.catalog import FIT_TABLES as FIT_TABLES  # the old import paths keep working
from dmdb.catalog import drop_fit as drop_fit
from dmdb.catalog import evaluate_fit, record_fit
from dmdb.catalog import latest_fit as latest_fit
from dmdb.catalog import list_fits as list_fits
from dmdb.catalog import load_fit as load_fit
from dmdb.catalog import resolve_fit as resolve_fit
from dmdb.db import Database
from dmdb.devices import torch_threads
from dmdb.errors import FitError, UsageError
from dmdb.lasso import DatamodelLasso, GramStats
from dmdb.lasso_params import LassoParams
from dmdb.metrics import correlations as correlations

# The fewest runs per split a fit accepts: enough to pick λ and to rank test runs.
MIN_RUNS = {"fit": 10, "val": 2, "test": 3}


@dataclass
class FitReport:
    """What one `dmdb fit` did (``fit_id`` is None for a block written to a file)."""

    fit_id: int | None
    n_fit: int
    n_val: int
    n_test: int
    n_targets: int
    mean_lds: float
    mean_nnz: float
    seconds: float
    timings: dict[str, float]
    out: Path | None = None
    write_seconds: float = 0.0  # recording the fit (or writing its block), after ``seconds``


def parse_target_range(text: str | None, n_targets: int) -> tuple[int, int]:
    """'lo:hi' (either side optional) into a checked half-open range."""
    if text is None:
        return 0, n_targets
    lo_s, sep, hi_s = text.partition(":")
    try:
        lo = int(lo_s) if lo_s.strip() else 0
        hi = int(hi_s) if sep and hi_s.strip() else (n_targets if sep else lo + 1)
    except ValueError:
        raise UsageError(f"--target-range takes LO:HI, got {text!r}") from None
    if not 0 <= lo < hi <= n_targets:
        raise UsageError(
            f"--target-range {text} is outside the experiment's targets 0:{n_targets}"
        )
    return lo, hi


def select_runs(
    db: Database, alpha: float | None, max_fit_runs: int | None
) -> dict[str, np.ndarray]:
    """The run ids of each split the fit will use (run_id order; 'verify' excluded)."""
    if max_fit_runs is not None and max_fit_runs < 1:
        raise UsageError(f"--max-fit-runs must be positive, got {max_fit_runs}")
    chosen = {s: db.run_ids(split=s, alpha=alpha) for s in ("fit", "val", "test")}
    if max_fit_runs is not None:
        chosen["fit"] = chosen["fit"][:max_fit_runs]
    total = sum(len(v) for v in chosen.values())
    where = f" at alpha={alpha}" if alpha is not None else ""
    if total == 0:
        raise FitError(f"no runs{where} to fit; train or ingest runs first")
    for split, least in MIN_RUNS.items():
        if len(chosen[split]) < least:
            raise FitError(
                f"only {len(chosen[split])} {split} run(s){where}; a fit needs at least {least} "
                f"(splits are about 80/10/10, so train more runs)"
            )
    return chosen


def fit(
    db: Database,
    estimator: LassoParams | None = None,
    *,
    alpha: float | None = None,
    max_fit_runs: int | None = None,
    target_range: str | tuple[int, int] | None = None,
    learning_curve_of: int | None = None,
    out: str | Path | None = None,
    stats: str | Path | None = None,
    pairs: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    **options: Any,
) -> FitReport:
    """Fit a datamodel for every target (or a range of them) and store it as a new fit.

    Parameters
    ----------
    db : Database
    estimator : DatamodelLasso or LassoParams, optional
        Whose parameters to fit with (it is not fitted itself, as with
        scikit-learn's ``clone``); default: the defaults of :class:`LassoParams`.
    alpha : float, optional
        Use only runs drawn at this subset fraction.
    max_fit_runs : int, optional
        Use only the first K fit runs (learning curves).
    target_range : "LO:HI" or (lo, hi), optional
        Fit only these targets.
    learning_curve_of : int, optional
        Marks a refit on fewer runs made for another fit's learning curve: it is
        recorded in the parameters, and :func:`latest_fit` skips it.
    out : path, optional
        Write the fit as a block file here (:mod:`dmdb.blocks`) instead of into
        ``db``, which is then only read: many processes can fit blocks at once.
    stats : path, optional
        Load the fit runs' statistics from this file (:func:`save_stats`) instead
        of reading the runs.
    pairs : int, optional
        Fit second-order datamodels (:mod:`dmdb.pairs`): the linear fit, then
        sparse interactions among each target's top ``pairs`` examples, written to
        ``interactions`` (or into the block file, with ``out``).
    progress : bool
        Show a progress bar over the path.
    echo : callable(str)
        Where the one-line summaries of what is fitted go.
    **options
        Any parameter of :class:`LassoParams` (``solver``, ``tol``, ``max_iter``,
        ``device``, ``memory``, ...), over the estimator's.

    Returns
    -------
    FitReport

    Nothing is written unless the whole fit succeeds. ``fits.parameters`` records
    the estimator's ``get_params()`` and what the fit itself adds (see :func:`fit_parameters`).
    """
    started = time.perf_counter()
    out_path = None if out is None else blocks.check_out_path(out)
    if out_path is None:
        # The fit ends by writing: find out now, not after the solve, whether another
        # process holds the file (a busy database is one line, before any work).
        with db.connection(write=True):
            pass
    exp = db.experiment
    lo, hi = (target_range if isinstance(target_range, tuple)
              else parse_target_range(target_range, exp.n_targets))
    if not 0 <= lo < hi <= exp.n_targets:
        raise UsageError(f"--target-range {lo}:{hi} is outside the targets 0:{exp.n_targets}")
    if pairs is not None:
        pairs = pair_stage.check_pairs(pairs, exp.n_train)
    params = (estimator.get_params() if estimator is not None else {}) | options
    # The statistics are this fit's own, so the Gram may overwrite their counts.
    est = DatamodelLasso(**(params | {"copy_gram": False, "progress": progress}))
    runs = select_runs(db, alpha, max_fit_runs)
    saved = (None if stats is None else
             blocks.load_stats(stats, fingerprint=db.fingerprint, fit_runs=runs["fit"]))

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for _, masks, margins in db.iter_runs(run_ids=runs["fit"], chunk_runs=est.chunk_size):
            yield masks, margins[:, lo:hi]

    # Checks the parameters, then plans the memory before anything is allocated:
    # a bad option or a budget too small prints its one error line only.
    plan = est.plan_memory(exp.n_train, hi - lo, len(runs["val"]), n_fit=len(runs["fit"]),
                           all_targets=exp.n_targets,
                           gram=None if saved is None else saved["gram_counts"] is not None)
    pair_batch = (None if pairs is None else
                  _pair_batch(est, plan, pairs, hi - lo, len(runs["val"]), exp.n_train))
    echo(f"fitting targets {lo}:{hi} on {len(runs['fit'])} fit / {len(runs['val'])} val"
         f" / {len(runs['test'])} test runs with the {est.solver} solver on {est.device}")
    echo(memory_line(plan, est.memory_budget_, wanted_gram=est.gram))
    if saved is None:
        stats_ = est.read_stats(chunks, len(runs["val"]))
    else:
        stats_ = GramStats.from_state(saved, targets=(lo, hi), device=est.device_)
        del saved
    constant = stats_.constant_targets()
    if len(constant):
        raise FitError(
            f"target {lo + int(constant[0])} has the same margin in all {stats_.n_runs} fit "
            "runs; a datamodel cannot be fitted to a constant (exclude it with --target-range)"
        )
    _, x_val, y_val = db.load_runs(run_ids=runs["val"])
    est.fit_stats(stats_, x_val, y_val[:, lo:hi], None if stats_.has_gram else chunks)
    del stats_
    test_mse, pearson, spearman = evaluate_fit(db, est.intercept_, est.coef_, runs["test"], lo)
    recorded = fit_parameters(est, max_fit_runs=max_fit_runs, learning_curve_of=learning_curve_of)
    if stats is not None:
        recorded["stats_file"] = str(stats)
    record = {
        "runs": runs, "target_range": (lo, hi), "bias": est.intercept_, "weights": est.coef_,
        "penalty": est.penalty_, "val_mse": est.val_mse_, "solver": est.solver,
        "device": est.device, "alpha": alpha, "parameters": recorded,
        "test_metrics": (test_mse, pearson, spearman),
    }
    if pairs is not None:
        assert pair_batch is not None
        record = _second_order(db, est, record, pairs, pair_batch, chunks, x_val,
                               y_val[:, lo:hi], progress=progress, echo=echo)
    del x_val, y_val
    record["wall_seconds"] = time.perf_counter() - started
    t_write = time.perf_counter()
    if out_path is None:
        fit_id: int | None = record_fit(db, **record)
    else:
        fit_id = None
        blocks.write_block(out_path, record, fingerprint=db.fingerprint, n_train=exp.n_train,
                           n_targets=exp.n_targets)
    write_seconds = time.perf_counter() - t_write
    spearman = record["test_metrics"][2]
    return FitReport(
        fit_id=fit_id, n_fit=len(runs["fit"]), n_val=len(runs["val"]), n_test=len(runs["test"]),
        n_targets=hi - lo, mean_lds=float(np.nanmean(spearman)) if np.isfinite(spearman).any()
        else float("nan"), mean_nnz=float(est.nnz_.mean()), seconds=record["wall_seconds"],
        timings=dict(est.timings_), out=out_path, write_seconds=write_seconds,
    )


def _pair_batch(est: DatamodelLasso, plan: fit_memory.MemoryEstimate, k: int,
                n_targets: int, n_val: int, n_train: int) -> int:
    """Targets per batch of the pair stage inside the budget; refuse, before any work, a
    pair stage that cannot run even one target at a time beside the linear fit's result.

    Counted on top of the linear fit's peak with one solver row: the pair stage runs
    after the linear solve, whose batch is gone by then, so it batches on its own.
    """
    fixed = pair_stage.pair_bytes(k, n_targets, n_val, est.chunk_size, 0, n_train=n_train)
    per_target = pair_stage.pair_bytes(k, n_targets, n_val, est.chunk_size, 1,
                                       n_train=n_train) - fixed
    base = plan.peak_at(1)
    room = est.memory_budget_ - base - fixed
    if room < per_target:
        gb = fit_memory.GB
        raise FitError(
            f"--pairs {k} needs at least {(fixed + per_target) / gb:.3f} GB for the pair "
            f"features of {n_targets} targets beside the linear fit's {base / gb:.3f} GB, over "
            f"the {est.memory_budget_ / gb:.3f} GB budget; lower --pairs, fit fewer targets "
            "(--target-range) or raise --memory")
    return int(min(n_targets, room // per_target))


def _second_order(
    db: Database, est: DatamodelLasso, record: dict[str, Any], k: int, target_batch: int,
    chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], x_val: np.ndarray,
    y_val: np.ndarray, *, progress: bool, echo: Callable[[str], None],
) -> dict[str, Any]:
    """The pair stage on top of the linear fit in ``record``: the record of the whole model."""
    lo, _ = record["target_range"]
    n_targets = len(est.intercept_)
    linear_seconds = sum(est.timings_.values())
    bar = _bar(progress, n_targets, desc="pairs", unit="target")
    with torch_threads(est.n_threads):
        fitted = pair_stage.fit_pairs(
            chunks, x_val, y_val, coef=est.coef_, intercept=est.intercept_, mean=est.mean_,
            k=k, tol=float(est.tol), max_iter=int(est.max_iter), patience=int(est.patience),
            device=est.device_, target_batch=target_batch,
            progress=None if bar is None else bar.update)
    if bar is not None:
        bar.close()
    interactions = (fitted.target, fitted.a, fitted.b, fitted.weight)
    linear_lds = float(np.nanmean(record["test_metrics"][2]))
    metrics = evaluate_fit(db, fitted.intercept, fitted.coef, record["runs"]["test"], lo,
                           interactions)
    pair_seconds = fitted.info["timings"]["total"]
    info = fitted.info | {
        "linear_seconds": linear_seconds, "cost_ratio": (linear_seconds + pair_seconds)
        / max(linear_seconds, 1e-9), "linear_mean_lds": linear_lds,
        "mean_pairs": len(fitted.weight) / max(n_targets, 1), "target_batch": target_batch}
    echo(f"pairs: {len(fitted.weight) / max(n_targets, 1):.1f} interactions per target of "
         f"{info['candidates']} candidates (top {k}); mean LDS {linear_lds:.3f} linear -> "
         f"{float(np.nanmean(metrics[2])):.3f} second-order; {info['cost_ratio']:.2f}x the "
         f"linear fit's time")
    record = record | {
        "bias": fitted.intercept, "weights": fitted.coef, "val_mse": fitted.val_mse,
        "test_metrics": metrics, "pairs": interactions,
        "parameters": record["parameters"] | {"pairs": k, "pair_fit": info},
    }
    return record


def save_stats(
    db: Database, path: str | Path, *, alpha: float | None = None,
    max_fit_runs: int | None = None, progress: bool = True,
    echo: Callable[[str], None] = print, **options: Any,
) -> Path:
    """Read the fit runs once into statistics for every target and save them to ``path``.

    Blocks that select the same runs (the same ``alpha`` and ``max_fit_runs``)
    then load them with ``stats=path`` instead of each reading the runs.
    """
    out_path = blocks.check_out_path(path, "--save-stats")
    exp = db.experiment
    est = DatamodelLasso(**(options | {"progress": progress}))
    runs = select_runs(db, alpha, max_fit_runs)
    est.plan_memory(exp.n_train, exp.n_targets, 0, n_fit=len(runs["fit"]),
                    all_targets=exp.n_targets)
    echo(f"computing the statistics of {len(runs['fit'])} fit runs for all {exp.n_targets} "
         f"targets on {est.device}")

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for _, masks, margins in db.iter_runs(run_ids=runs["fit"], chunk_runs=est.chunk_size):
            yield masks, margins

    stats_ = est.read_stats(chunks)
    return blocks.save_stats(out_path, stats_.state(), fingerprint=db.fingerprint,
                             fit_runs=runs["fit"],
                             selection={"alpha": alpha, "max_fit_runs": max_fit_runs})


def merge(db: Database, paths: Sequence[str | Path]) -> int:
    """Check block files and record them as one fit, in one transaction; return its id."""
    if not paths:
        raise UsageError("--merge needs block files: dmdb fit DB --merge block-*.parquet")
    found = [blocks.read_block(p) for p in paths]
    blocks.check_blocks(found, fingerprint=db.fingerprint, n_train=db.experiment.n_train)
    record = blocks.merge_records(found)
    wanted = np.concatenate(list(record["runs"].values()))
    present = np.isin(wanted, db.run_ids())
    if not present.all():
        raise FitError(f"the blocks were fitted on run {int(wanted[~present][0])}, which is not "
                       f"in {db.path}")
    return record_fit(db, **record)


def fit_parameters(
    est: DatamodelLasso, *, max_fit_runs: int | None, learning_curve_of: int | None
) -> dict[str, Any]:
    """What ``fits.parameters`` records: ``est.get_params()`` and what the fit adds.

    The added keys: ``stopping`` (what ``tol`` bounds; fits recorded without it
    stopped at gap / primal <= tol), ``max_fit_runs``, ``timings``,
    ``gram_kernel_choice`` (the kernel that counted ``XᵀX``, the reason, and the
    measured seconds per kernel), ``memory_plan`` (see :mod:`dmdb.fit_memory`) and,
    for a learning-curve refit, ``learning_curve_of``.
    Users' SQL reads these keys.
    """
    params = est.get_params() | {
        "stopping": "duality gap <= tol * mean(centred margin^2)",
        "max_fit_runs": max_fit_runs,
        "timings": dict(est.timings_),
        # Which kernel counted XᵀX and why: the probe's measured seconds per kernel.
        "gram_kernel_choice": None if est.gram_kernel_ is None else est.gram_kernel_.as_dict(),
        # The plan the fit ran by: the budget, Gram or not, the target batch, the
        # estimated bytes per phase (dmdb.fit_memory).
        "memory_plan": est.memory_.as_dict() | {"budget": int(est.memory_budget_)},
    }
    if learning_curve_of is not None:
        params["learning_curve_of"] = int(learning_curve_of)
    return params


def memory_line(plan: fit_memory.MemoryEstimate, budget: float, *, wanted_gram: bool) -> str:
    """One line on the memory plan: the estimate, the budget, the batch, Gram or not."""
    gb = fit_memory.GB
    line = (f"memory: {plan.peak / gb:.2f} GB estimated of a {budget / gb:.2f} GB budget, "
            f"{plan.target_batch} target(s) at a time")
    if wanted_gram and not plan.gram:
        line += (f"; the {plan.gram_bytes / gb:.2f} GB Gram does not fit, so the fit streams "
                 "the runs Gram-free (slower; raise --memory to keep it)")
    return line


def recorded_options(parameters: dict[str, Any]) -> dict[str, Any]:
    """The fit options in a fit's recorded ``parameters``, for a refit on other runs.

    Only :class:`LassoParams` names are kept, and not ``device``, ``progress`` or
    ``memory``: where, how visibly and in how much memory a refit runs is its
    caller's choice.
    """
    names = set(LassoParams.param_names()) - {"device", "progress", "memory"}
    return {k: v for k, v in parameters.items() if k in names}


def fit_ray(
    db: Database, *, n_blocks: int, target_range: str | tuple[int, int] | None = None,
    address: str | None = None, gpus_per_task: float = 0.0, cpus_per_task: float = 1.0,
    alpha: float | None = None, max_fit_runs: int | None = None,
    stats: str | Path | None = None, pairs: int | None = None, progress: bool = True,
    echo: Callable[[str], None] = print, **options: Any,
) -> FitReport:
    """Fit the targets in ``n_blocks`` Ray tasks, each a block, and merge them into one fit.

    Each task opens the database read-only (on a cluster it must be on a shared
    file system) and returns its block through Ray's object store; this process
    checks the blocks and records the fit in one transaction. Without
    ``address`` a local cluster starts on 127.0.0.1 and stops at the end. With
    ``stats`` the tasks load saved statistics instead of reading the runs. Without
    ``memory``, a CPU task's budget is the free memory shared among the tasks that
    run at once on this machine.
    """
    from dmdb.ray_setup import start_ray

    started = time.perf_counter()
    exp = db.experiment
    lo, hi = (target_range if isinstance(target_range, tuple)
              else parse_target_range(target_range, exp.n_targets))
    if not 1 <= n_blocks <= hi - lo:
        raise UsageError(f"--blocks must be between 1 and the {hi - lo} targets, got {n_blocks}")
    if db.in_memory or not Path(db.path).is_file():
        raise UsageError("--backend ray needs a database file that the tasks can open")
    runs = select_runs(db, alpha, max_fit_runs)  # refuse a fit without runs before Ray starts
    DatamodelLasso(**options)._validate_params()
    if pairs is not None:
        pairs = pair_stage.check_pairs(pairs, exp.n_train)
    if stats is not None:
        blocks.load_stats(stats, fingerprint=db.fingerprint, fit_runs=runs["fit"])
    edges = [lo + (hi - lo) * i // n_blocks for i in range(n_blocks + 1)]
    ray, own, ray_seconds = start_ray(address)
    try:
        options = dict(options)
        if options.get("n_threads") is None:
            options["n_threads"] = max(1, int(cpus_per_task))
        if options.get("memory") is None and not gpus_per_task:
            at_once = max(1, min(n_blocks, int(ray.cluster_resources().get("CPU", 1)
                                               // max(cpus_per_task, 1e-9))))
            options["memory"] = fit_memory.default_budget() / at_once / fit_memory.GB
        echo(f"fitting targets {lo}:{hi} in {n_blocks} Ray block(s) of about "
             f"{(hi - lo) // n_blocks} targets ({'started' if own else 'joined'} Ray in "
             f"{ray_seconds:.1f} s)")
        task = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task,
                          max_retries=2)(_ray_fit_block)
        pending = [task.remote(str(Path(db.path).resolve()), (a, b), alpha, max_fit_runs,
                               None if stats is None else str(Path(stats).resolve()), pairs,
                               options)
                   for a, b in zip(edges, edges[1:], strict=False)]
        found = []
        bar = _bar(progress, n_blocks, desc="fit blocks", unit="block")
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    data, name = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else e
                    raise FitError(f"a Ray fit block failed: {str(cause).splitlines()[0]}") \
                        from None
                found.append(blocks.read_block(data, name=name))
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
    finally:
        if own:
            ray.shutdown()
    blocks.check_blocks(found, fingerprint=db.fingerprint, n_train=exp.n_train)
    record = blocks.merge_records(found)
    record["wall_seconds"] = time.perf_counter() - started
    fit_id = record_fit(db, **record)
    spearman = record["test_metrics"][2]
    nnz = np.diff(record["weights"].indptr)
    return FitReport(
        fit_id=fit_id, n_fit=len(runs["fit"]), n_val=len(runs["val"]), n_test=len(runs["test"]),
        n_targets=hi - lo, mean_lds=float(np.nanmean(spearman)) if np.isfinite(spearman).any()
        else float("nan"), mean_nnz=float(nnz.mean()), seconds=record["wall_seconds"],
        timings=record["parameters"]["timings"],
    )


def _ray_fit_block(
    path: str, target_range: tuple[int, int], alpha: float | None, max_fit_runs: int | None,
    stats: str | None, pairs: int | None, options: dict[str, Any],
) -> tuple[bytes, str]:
    """A Ray task: fit one block of targets from the database, read-only; return its bytes."""
    import tempfile

    from dmdb.db import connect

    lo, hi = target_range
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "block.parquet"
        fit(connect(path, read_only=True), alpha=alpha, max_fit_runs=max_fit_runs,
            target_range=(lo, hi), out=out, stats=stats, pairs=pairs, progress=False,
            echo=lambda s: None, **options)
        return out.read_bytes(), f"block {lo}:{hi}"


def _bar(show: bool, total: int, *, desc: str, unit: str) -> Any:
    """A tqdm bar over ``total`` units, or None when not shown."""
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)
