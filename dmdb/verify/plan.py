"""The retraining plan: which runs a check trains, with what trainer, and how they are stored.

Every run a check plans gets its own mask, seed and key (``runs.info->'$.verify'``), drawn
from random streams of its own; runs already trained are found by key and skipped, so an
interrupted check continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dmdb.db import Database
from dmdb.errors import TrainerError
from dmdb.trainers import Trainer, make_trainer
from dmdb.training import train_runs
from dmdb.verify.fit import FitUnderTest

Echo = Callable[[str], None]

# Random streams, kept apart from `dmdb train`'s mask draws.
STREAM_COUNTERFACTUAL = 0x5645_5249_4659
STREAM_CEILING = 0x4345_494C
_CONDITIONS = {"none": 0, "top": 1, "random": 2, "support": 3}
_KINDS = {"counterfactual": 1, "brittleness": 2, "ceiling": 3}

# Copies what each verify run was for from runs.info into verify_runs. Idempotent: runs
# already recorded are skipped, so it also repairs a check interrupted before this ran.
_FILL_VERIFY_RUNS = """
INSERT OR IGNORE INTO verify_runs
SELECT
    run_id,
    CAST(info->>'$.verify.fit_id' AS INTEGER),
    info->>'$.verify.kind',
    CAST(info->>'$.verify.target_idx' AS INTEGER),
    info->>'$.verify.condition',
    CAST(info->>'$.verify.k' AS INTEGER),
    CAST(info->'$.verify.removed' AS INTEGER[])
FROM runs
WHERE split = 'verify' AND info->>'$.verify.kind' IS NOT NULL
  AND run_id NOT IN (SELECT run_id FROM verify_runs)
"""


def build_trainer(
    db: Database, fit: FitUnderTest, trainer: str | None, device: str,
    options: Mapping[str, Any] | None, *, batch_models: int | None = None,
) -> tuple[Trainer, dict[str, Any]]:
    """The trainer the fit's runs were made with (or ``trainer``), and its options.

    Built through the same door as `dmdb train` (:func:`dmdb.trainers.make_trainer`), so
    ``batch_models`` means what ``--batch-models`` means there.
    """
    exp = db.experiment
    spec = trainer or fit.trainer
    recorded = dict(fit.options) if trainer is None else {}
    if spec == "mlp-reference":  # the name ReferenceMLPTrainer records
        spec, recorded = "mlp", recorded | {"impl": "loop"}
    merged = recorded | dict(options or {})
    try:
        model = make_trainer(spec, dataset_name=exp.dataset, n_train=exp.n_train,
                             n_targets=exp.n_targets, device=device, options=merged,
                             batch_models=batch_models)
    except TrainerError as e:
        if trainer is not None:
            raise
        raise TrainerError(
            f"the fit's runs were made by trainer {spec!r}, which dmdb cannot retrain ({e}); "
            "name one with --trainer"
        ) from e
    return model, merged


@dataclass
class Plan:
    """Runs to train: one mask, seed and provenance each."""

    masks: list[np.ndarray] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    infos: list[dict[str, Any]] = field(default_factory=list)

    def add(self, mask: np.ndarray, seed: int, info: dict[str, Any]) -> None:
        self.masks.append(mask)
        self.seeds.append(seed)
        self.infos.append(info)

    def keys(self) -> list[str]:
        return [i["verify"]["key"] for i in self.infos]

    def without(self, done: set[str]) -> Plan:
        keep = [j for j, key in enumerate(self.keys()) if key not in done]
        return Plan([self.masks[j] for j in keep], [self.seeds[j] for j in keep],
                    [self.infos[j] for j in keep])

    def __len__(self) -> int:
        return len(self.seeds)


def stream_rng(*key: int) -> np.random.Generator:
    """The generator of one random stream, keyed by integers (see STREAM_*)."""
    return np.random.default_rng([int(k) for k in key])


def plan_removals(
    plan: Plan, *, exp_seed: int, seed: int, fit: FitUnderTest, kind: str, target: int,
    condition: str, removed: np.ndarray | None, k: int, models: int, n_train: int,
    device: str, options: Mapping[str, Any],
) -> None:
    """Add ``models`` runs of one condition: fresh masks with R zeroed, own seeds.

    ``removed`` None means k random examples, drawn anew for every run.
    """
    for j in range(models):
        rng = stream_rng(exp_seed, STREAM_COUNTERFACTUAL, seed, fit.fit_id, _KINDS[kind],
                         target, _CONDITIONS[condition], k, j)
        model_seed = int(rng.integers(0, 2**31))
        mask = rng.random(n_train) < fit.alpha
        gone = np.sort(rng.choice(n_train, k, replace=False)) if removed is None else removed
        mask[gone] = False
        key = f"{kind}/{seed}/{fit.fit_id}/{target}/{condition}/{k}/{j}"
        plan.add(mask, model_seed, {
            "verify": {"key": key, "kind": kind, "fit_id": fit.fit_id, "target_idx": target,
                       "condition": condition, "k": k, "removed": [int(i) for i in gone]},
            "device": device,
        } | ({"options": dict(options)} if options else {}))


def choose_targets(
    rng: np.random.Generator, candidates: np.ndarray, fallback: np.ndarray, n: int
) -> list[int]:
    """``n`` targets drawn from ``candidates`` first, then from ``fallback``; sorted."""
    first = rng.permutation(candidates)[:n]
    rest = rng.permutation(np.setdiff1d(fallback, first))[: n - len(first)]
    return sorted(int(t) for t in np.concatenate([first, rest]))


def done_keys(db: Database, prefix: str) -> set[str]:
    """Keys of the verify runs already trained whose key starts with ``prefix``."""
    rows = db.sql(
        "SELECT info->>'$.verify.key' AS key FROM runs WHERE split = 'verify' "
        "AND starts_with(info->>'$.verify.key', ?)", [prefix],
    )
    return set(rows.column("key").to_pylist())


def fill_verify_runs(db: Database) -> int:
    """Record every trained verify run in verify_runs; return how many rows were added."""
    with db.connection(write=True) as con:
        before = con.execute("SELECT count(*) FROM verify_runs").fetchall()[0][0]
        con.execute(_FILL_VERIFY_RUNS)
        after = con.execute("SELECT count(*) FROM verify_runs").fetchall()[0][0]
    return int(after - before)


def run_plan(
    db: Database, trainer: Trainer, plan: Plan, *, alpha: float, progress: bool, echo: Echo,
) -> bool:
    """Train the plan in one batched call; return True if interrupted (Ctrl-C).

    Runs trained before an interruption or a trainer failure are saved and recorded
    in verify_runs either way.
    """
    if not len(plan):
        return False
    interrupted = False
    try:
        train_runs(db, trainer, np.stack(plan.masks), np.asarray(plan.seeds, dtype=np.int64),
                   alpha=alpha, split="verify", infos=plan.infos, progress=progress,
                   desc="verify")
    except KeyboardInterrupt:
        interrupted = True
        echo("interrupted: the runs trained so far are saved; run the same command again "
             "to continue")
    finally:
        fill_verify_runs(db)
    return interrupted
