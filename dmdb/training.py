"""`dmdb train`: train one model per random subset and stream the runs into the database.

Masks are Bernoulli(alpha) per training example, drawn reproducibly from
(experiment seed, alpha, draw index): the same database and command always draw
the same masks. Run k's model seed is a hash of (seed, draw, repeat). Each run
records its draw index, so that running the command again continues where it
stopped and never duplicates.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dmdb.db import Database
from dmdb.errors import TrainerError, UsageError
from dmdb.runs import check_alpha, splitmix64
from dmdb.trainers import PartialTrainError, Trainer, TrainerOptions, make_trainer
from dmdb.writer import RunBuffer, RunWriter

Echo = Callable[[str], None]


def draw_masks(seed: int, alpha: float, draws: np.ndarray, n_train: int) -> np.ndarray:
    """Bernoulli(alpha) masks for the given draw indices: bool (len(draws), n_train)."""
    alpha_key = int(round(alpha * 1_000_000))
    out = np.empty((len(draws), n_train), dtype=bool)
    for row, draw in enumerate(draws):
        rng = np.random.default_rng([seed, alpha_key, int(draw)])
        out[row] = rng.random(n_train) < alpha
    return out


def run_seeds(seed: int, draws: np.ndarray, repeats: np.ndarray) -> np.ndarray:
    """A model seed per (draw, repeat), in [0, 2**31) so that any library accepts it."""
    key = splitmix64(np.uint64(seed) ^ np.uint64(0x5EED5EED5EED5EED))
    with np.errstate(over="ignore"):
        mixed = splitmix64(key + draws.astype(np.uint64) * np.uint64(1_000_003)
                            + repeats.astype(np.uint64))
    return (mixed >> np.uint64(33)).astype(np.int64)


@dataclass
class TrainReport:
    """What one `dmdb train` did."""

    wanted: int            # masks wanted at this alpha (--runs)
    existing: int          # masks already there before
    trained: int           # models trained now (masks x repeats)
    seconds: float
    mean_target_acc: float
    interrupted: bool = False


@dataclass
class Identity:
    """The identity of runs that dmdb draws, aligned with their masks (see dmdb.runs)."""

    fingerprint: str
    draws: np.ndarray    # int64 (R,)
    repeats: np.ndarray  # int64 (R,)


def train_runs(
    db: Database,
    trainer: Trainer,
    masks: np.ndarray,
    seeds: np.ndarray,
    *,
    alpha: float,
    split: str | None = None,
    infos: list[dict[str, Any]] | None = None,
    identity: Identity | None = None,
    progress: bool = True,
    desc: str = "train",
) -> np.ndarray:
    """Train one model per (mask, seed) and stream the runs into ``db``.

    The trainer gets ``trainer.preferred_batch`` runs per call (``--batch-models``
    reaches it through :func:`dmdb.trainers.make_trainer`).

    Parameters
    ----------
    masks : bool array of shape (R, N)
    seeds : int64 array of shape (R,)
    split : 'verify' or None (derived from the mask)
    infos : one JSON-able dict per run (provenance), optional
    identity : the runs' draws, for runs drawn by dmdb (their run ids), optional

    Returns
    -------
    float32 array of shape (R, M): the margins, in the order of the runs.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(masks), unit="model", desc=desc, disable=not progress, smoothing=0.1)
    with RunWriter(db, trainer=trainer.name, flush_seconds=30.0, on_message=bar.write) as writer:
        try:
            return train_into(writer, trainer, masks, seeds, alpha=alpha, split=split,
                              infos=infos, identity=identity, on_batch=bar.update)
        finally:
            bar.close()


def train_into(
    sink: RunBuffer,
    trainer: Trainer,
    masks: np.ndarray,
    seeds: np.ndarray,
    *,
    alpha: float,
    split: str | None = None,
    infos: list[dict[str, Any]] | None = None,
    identity: Identity | None = None,
    on_batch: Callable[[int], Any] = lambda n: None,
) -> np.ndarray:
    """Train one model per (mask, seed) into any run buffer (a database, shards, a task's
    result); see :func:`train_runs` for the arguments. Runs trained before a failing
    one are added to ``sink`` before the error is raised."""
    batch = int(trainer.preferred_batch)
    if batch < 1:
        raise TrainerError(f"trainer {trainer.name!r} asks for {batch} runs per call")
    n = len(masks)
    out = np.zeros((n, trainer.n_targets), dtype=np.float32)
    for start in range(0, n, batch):
        sl = slice(start, min(start + batch, n))
        try:
            result = trainer.train(masks[sl], seeds[sl])
        except PartialTrainError as e:
            _add(sink, masks[sl], seeds[sl], e.result, alpha, split, infos, identity, sl)
            saved = start + e.failed_index
            raise TrainerError(
                f"run {saved} of this command (seed {int(seeds[saved])}): {e.reason}; "
                f"the {saved} run(s) trained before it are saved"
            ) from e
        _add(sink, masks[sl], seeds[sl], result, alpha, split, infos, identity, sl)
        out[sl] = result.margins
        on_batch(len(result))
    return out


def _add(
    sink: RunBuffer, masks: np.ndarray, seeds: np.ndarray, result: Any, alpha: float,
    split: str | None, infos: list[dict[str, Any]] | None, identity: Identity | None,
    sl: slice,
) -> None:
    k = len(result)
    if k == 0:
        return
    drawn: dict[str, Any] = {}
    if identity is not None:
        drawn = {"draw": identity.draws[sl][:k], "repeat": identity.repeats[sl][:k],
                 "fingerprint": identity.fingerprint}
    sink.add_batch(
        masks[:k], result.margins, alpha=alpha, seeds=seeds[:k], train_acc=result.train_acc,
        split=None if split is None else np.full(k, split, dtype=object),
        info=None if infos is None else np.array(
            [json.dumps(i) for i in infos[sl][:k]], dtype=object),
        **drawn,
    )


def missing_draws(
    done: set[tuple[int, int]], runs: int, repeats: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (draw, repeat) pairs of draws 0..runs-1 x repeats 0..repeats-1 not in ``done``.

    Returns
    -------
    draws, repeats : int64 arrays of shape (R,), ordered by draw then repeat
    """
    pairs = [(d, r) for d in range(runs) for r in range(repeats) if (d, r) not in done]
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0].copy(), arr[:, 1].copy()


def done_draws(db: Database, alpha: float) -> set[tuple[int, int]]:
    """The (draw, repeat) pairs already in the database at this alpha (outside 'verify')."""
    rows = db.sql(
        "SELECT DISTINCT draw, \"repeat\" FROM runs "
        "WHERE split <> 'verify' AND draw IS NOT NULL AND abs(alpha - ?) < 1e-9",
        [alpha],
    ).to_pylist()
    return {(int(r["draw"]), int(r["repeat"] or 0)) for r in rows}


def check_draw_args(repeats: int, seed: int | None) -> None:
    """The --repeats and --seed checks shared by `dmdb train` and `dmdb spec`."""
    if repeats < 1:
        raise UsageError(f"--repeats must be positive, got {repeats}")
    if seed is not None and not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be a non-negative 64-bit integer, got {seed}")


def draw_infos(draws: np.ndarray, repeats: np.ndarray, device: str,
               recorded: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
    """The provenance (runs.info) of drawn runs: draw, repeat, device, options, extras."""
    options = {"options": recorded} if recorded else {}
    return [{"draw": int(d), "repeat": int(r), "device": device} | extra | options
            for d, r in zip(draws, repeats, strict=True)]


def drawn_runs(
    exp_seed: int, seed: int | None, alpha: float, draws: np.ndarray, repeats: np.ndarray,
    n_train: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The masks (R, N) and model seeds (R,) of the given (draw, repeat) pairs."""
    unique, inverse = np.unique(draws, return_inverse=True)
    masks = draw_masks(exp_seed, alpha, unique, n_train)[inverse]
    return masks, run_seeds(exp_seed if seed is None else seed, draws, repeats)


def existing_draws(db: Database, alpha: float) -> tuple[int, int]:
    """(distinct masks at this alpha outside 'verify', next free draw index)."""
    row = db.sql(
        "SELECT count(DISTINCT mask_id), coalesce(max(CAST(info->>'draw' AS BIGINT)) + 1, 0) "
        "FROM runs WHERE split <> 'verify' AND abs(alpha - ?) < 1e-9",
        [alpha],
    ).to_pylist()[0]
    values = list(row.values())
    return int(values[0]), int(values[1])


def train(
    db: Database,
    *,
    runs: int,
    alpha: float,
    trainer: str | None = None,
    device: str = "cpu",
    batch_models: int | None = None,
    seed: int | None = None,
    repeats: int = 1,
    options: Mapping[str, Any] | None = None,
    config: str | None = None,
    progress: bool = True,
    echo: Echo = print,
) -> TrainReport:
    """Train until ``runs`` masks exist at ``alpha`` (each with ``repeats`` seeds).

    Running it again continues where it stopped; once ``runs`` masks exist it does
    nothing. Ctrl-C saves what was trained.

    Parameters
    ----------
    trainer : str, optional
        A registered trainer name or ``'package.module:function'``; default the
        dataset's trainer (see :func:`dmdb.trainers.make_trainer`).
    batch_models : int, optional
        Runs per trainer call; the trainer says what else it means (the MLP's chunk).
    options : mapping, optional
        Trainer settings (``--set key=value``), recorded on every run.
    config : str, optional
        A JSON or TOML file of trainer options (``--config``); ``options`` win.
        Its path is recorded with the options.
    """
    alpha = check_alpha(alpha)
    if runs < 1:
        raise UsageError(f"--runs must be positive, got {runs}")
    check_draw_args(repeats, seed)
    exp = db.experiment
    opts = TrainerOptions.of(options, config=config, batch_models=batch_models)
    model = make_trainer(trainer, dataset_name=exp.dataset, n_train=exp.n_train,
                         n_targets=exp.n_targets, device=device, options=opts.settings,
                         config=opts.config, batch_models=opts.batch_models)
    recorded = opts.recorded()
    draws, reps = missing_draws(done_draws(db, alpha), runs, repeats)
    have = runs - len(np.unique(draws))
    if len(draws) == 0:
        echo(f"draws 0..{runs - 1} are all at alpha={alpha} (wanted {runs}); nothing to do")
        return TrainReport(runs, have, 0, 0.0, float("nan"))
    db.check_can_write()  # before the plan is announced and anything is trained
    masks, seeds = drawn_runs(exp.seed, seed, alpha, draws, reps, exp.n_train)
    infos = draw_infos(draws, reps, device, recorded)
    echo(f"training {runs - have} mask(s) x {repeats} seed(s) at alpha={alpha} with "
         f"{model.name} ({have} mask(s) already there; draws 0..{runs - 1} wanted)")
    start = time.perf_counter()
    interrupted = False
    margins = np.zeros((0, exp.n_targets), np.float32)
    before = len(done_draws(db, alpha))
    try:
        margins = train_runs(db, model, masks, seeds, alpha=alpha, infos=infos,
                             identity=Identity(db.fingerprint, draws, reps), progress=progress)
    except KeyboardInterrupt:
        interrupted = True
    seconds = time.perf_counter() - start
    trained = len(done_draws(db, alpha)) - before
    acc = float((margins > 0).mean()) if len(margins) else float("nan")
    return TrainReport(runs, have, trained, seconds, acc, interrupted)
