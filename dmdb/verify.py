"""`dmdb verify`: check a fit's predictions by retraining, and measure the noise ceiling.

Every check trains real models with the experiment's own trainer under the removal
protocol of DESIGN.md: a model is trained on a fresh Bernoulli(alpha) subset of the
training set with the removed examples R excluded, and the datamodel predicts its
margin on target x as ``bias_x + alpha * sum(weight_xi for i not in R)``.

Counterfactuals
    For sampled targets: no removal ('none', k = 0), removal of the target's k most
    positive weights ('top') and of k random examples ('random', the control).
Brittleness
    For sampled targets whose estimated support set is finite: removal of the
    support set ('support') and of as many random examples ('random').
Noise ceiling
    Several seeds on each of many fresh masks: how much of a margin the mask
    determines at all, hence the best LDS any datamodel could reach.

Runs are stored with split 'verify' (fits and LDS never use them); what each was for
is recorded in ``runs.info`` and copied into ``verify_runs`` by SQL once trained, so an
interrupted check keeps its runs and the same call later continues where it stopped.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from dmdb.catalog import resolve_fit
from dmdb.collect import train_runs
from dmdb.db import Database
from dmdb.errors import TrainerError, UsageError
from dmdb.metrics import correlations
from dmdb.trainers import Trainer, make_trainer

Echo = Callable[[str], None]

# Random streams, kept apart from `dmdb train`'s mask draws.
_STREAM_COUNTERFACTUAL = 0x5645_5249_4659
_STREAM_CEILING = 0x4345_494C
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


# --------------------------------------------------------------------------- #
# The fit under test


@dataclass
class FitUnderTest:
    """What a check needs to know about a fit."""

    fit_id: int
    alpha: float
    bias: np.ndarray                 # float64 (M,), NaN outside the fit's target range
    weights: sp.csr_matrix           # float32 (M, N), mask space
    trainer: str | None              # runs.trainer of the fit's runs
    options: dict[str, Any]          # trainer options recorded in runs.info

    @property
    def fitted(self) -> np.ndarray:
        """int array: the targets this fit has a datamodel for."""
        return np.flatnonzero(np.isfinite(self.bias))

    def margin_before(self) -> np.ndarray:
        """float64 (M,): the expected margin with nothing removed."""
        return self.bias + self.alpha * np.asarray(self.weights.sum(axis=1)).ravel()

    def ranked(self, target: int) -> tuple[np.ndarray, np.ndarray]:
        """The target's non-zero weights, largest first (ties: lower train_idx first)."""
        row = self.weights.getrow(target)
        idx, w = row.indices.astype(np.int64), row.data.astype(np.float64)
        order = np.lexsort((idx, -w))
        return idx[order], w[order]

    def predict_removal(self, target: int, removed: np.ndarray) -> float:
        """bias + alpha * sum of the target's weights outside ``removed``."""
        row = self.weights.getrow(target)
        kept = ~np.isin(row.indices, removed)
        return float(self.bias[target] + self.alpha * row.data[kept].astype(np.float64).sum())


def fit_alpha(db: Database, fit_id: int) -> float:
    """fits.alpha, or the mean alpha of the fit's 'fit' runs when NULL (view fit_alpha)."""
    rows = db.sql("SELECT alpha FROM fit_alpha WHERE fit_id = ?", [fit_id]).column(0)
    value = rows[0].as_py() if len(rows) else None
    if value is None:
        raise UsageError(f"fit {fit_id} records no runs, so its alpha is unknown")
    return float(value)


def load_fit_under_test(db: Database, fit_id: int | None) -> FitUnderTest:
    """Resolve and load a fit, with its alpha and the trainer its runs were made with."""
    fid = resolve_fit(db, fit_id)
    bias, weights = db.load_fit(fid)
    row = db.sql(
        "SELECT r.trainer, CAST(r.info->'$.options' AS VARCHAR) AS options, count(*) AS n "
        "FROM fit_runs fr JOIN runs r USING (run_id) WHERE fr.fit_id = ? "
        "GROUP BY ALL ORDER BY n DESC LIMIT 1", [fid],
    ).to_pylist()
    trainer = row[0]["trainer"] if row else None
    options = json.loads(row[0]["options"]) if row and row[0]["options"] else {}
    return FitUnderTest(fid, fit_alpha(db, fid), bias, weights, trainer,
                        options if isinstance(options, dict) else {})


def build_trainer(
    db: Database, fit: FitUnderTest, trainer: str | None, device: str,
    options: Mapping[str, Any] | None,
) -> tuple[Trainer, dict[str, Any]]:
    """The trainer the fit's runs were made with (or ``trainer``), and its options."""
    exp = db.experiment
    spec = trainer or fit.trainer
    recorded = dict(fit.options) if trainer is None else {}
    if spec == "mlp-reference":  # the name ReferenceMLPTrainer records
        spec, recorded = "mlp", recorded | {"impl": "loop"}
    merged = recorded | dict(options or {})
    try:
        model = make_trainer(spec, dataset_name=exp.dataset, n_train=exp.n_train,
                             n_targets=exp.n_targets, device=device, options=merged)
    except TrainerError as e:
        if trainer is not None:
            raise
        raise TrainerError(
            f"the fit's runs were made by trainer {spec!r}, which dmdb cannot retrain ({e}); "
            "name one with --trainer"
        ) from e
    return model, merged


# --------------------------------------------------------------------------- #
# Brittleness estimates (the `brittleness` view, or the same in numpy)


def support_sizes(fit: FitUnderTest) -> tuple[np.ndarray, np.ndarray]:
    """Each target's expected margin and the size of its estimated support set.

    The support set is the smallest set of training examples whose removal makes
    the predicted margin ``margin_before - alpha * sum(weights of removed)`` <= 0:
    the largest positive weights, taken in order.

    Returns
    -------
    margin_before : float64 array of shape (M,), NaN for targets outside the fit
    support_size : float64 array of shape (M,); NaN where the target is predicted
        wrong already (margin_before <= 0), cannot be flipped, or was not fitted
    """
    before = fit.margin_before()
    size = np.full(len(before), np.nan)
    for t in fit.fitted:
        if not before[t] > 0:
            continue
        _, w = fit.ranked(int(t))
        w = w[w > 0]
        after = before[t] - fit.alpha * np.cumsum(w)
        hit = np.flatnonzero(after <= 0)
        if len(hit):
            size[t] = hit[0] + 1
    return before, size


def brittleness_estimates(db: Database, fit: FitUnderTest) -> tuple[np.ndarray, np.ndarray]:
    """(margin_before, support_size) as in :func:`support_sizes`, from the view when present."""
    before, size = support_sizes(fit)
    if not db.has_view("brittleness"):
        return before, size
    rows = db.sql("SELECT target_idx, support_size FROM brittleness WHERE fit_id = ?",
                  [fit.fit_id])
    size = np.full(len(before), np.nan)
    values = rows.column("support_size").to_numpy(zero_copy_only=False)
    size[rows.column("target_idx").to_numpy()] = np.asarray(values, dtype=np.float64)
    size[~(before > 0)] = np.nan
    return before, size


# --------------------------------------------------------------------------- #
# Planning runs


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


def _rng(*key: int) -> np.random.Generator:
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
        rng = _rng(exp_seed, _STREAM_COUNTERFACTUAL, seed, fit.fit_id, _KINDS[kind], target,
                   _CONDITIONS[condition], k, j)
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
    db: Database, trainer: Trainer, plan: Plan, *, alpha: float, batch_models: int | None,
    progress: bool, echo: Echo,
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
                   alpha=alpha, batch_models=batch_models, split="verify", infos=plan.infos,
                   progress=progress, echo=echo, desc="verify")
    except KeyboardInterrupt:
        interrupted = True
        echo("interrupted: the runs trained so far are saved; run the same command again "
             "to continue")
    finally:
        fill_verify_runs(db)
    return interrupted


# --------------------------------------------------------------------------- #
# Results


@dataclass
class ConditionSummary:
    """Means over targets of one (condition, k) of the counterfactual check."""

    condition: str
    k: int
    n_targets: int
    predicted_change: float
    actual_change: float
    actual_se: float      # standard error of the mean over targets
    accuracy: float       # per-model accuracy on the targets


@dataclass
class BrittlenessResult:
    """Per verified target: the retrained models' margins after removal."""

    target_idx: int
    support_size: int
    margin_before: float          # the datamodel's expected margin with nothing removed
    support_margin: float         # mean actual margin with the support set removed
    support_misclassified: float  # fraction of those models that got the target wrong
    random_margin: float
    random_misclassified: float

    @property
    def flipped(self) -> bool:
        return bool(self.support_margin <= 0)

    @property
    def flipped_random(self) -> bool:
        return bool(self.random_margin <= 0)


@dataclass
class VerifyReport:
    """What one `dmdb verify` measured. NaN where a check did not run."""

    fit_id: int
    alpha: float
    trainer: str
    trained: int
    reused: int
    seconds: float
    interrupted: bool
    targets: list[int]
    models: int
    conditions: list[ConditionSummary]
    n_conditions: int       # (target, condition, k) with a baseline, 'none' excluded
    pearson: float          # predicted vs actual change over those conditions
    spearman: float
    slope: float            # least-squares slope of actual on predicted change
    k_max: int
    frac_top_drop: float    # targets whose margin fell when removing their top k_max
    mean_abs_random: float  # mean |actual change| over random removals
    brittleness: list[BrittlenessResult]

    @property
    def flip_fraction(self) -> float:
        return _mean([b.flipped for b in self.brittleness])

    @property
    def flip_fraction_random(self) -> float:
        return _mean([b.flipped_random for b in self.brittleness])

    @property
    def misclassified(self) -> float:
        return _mean([b.support_misclassified for b in self.brittleness])

    @property
    def misclassified_random(self) -> float:
        return _mean([b.random_misclassified for b in self.brittleness])

    def summary(self) -> str:
        """The lines `dmdb verify` prints."""
        lines = [f"verify fit {self.fit_id} (alpha={self.alpha:g}, trainer {self.trainer}): "
                 f"trained {self.trained} model(s) in {self.seconds:.1f}s, "
                 f"reused {self.reused}" + (" [interrupted]" if self.interrupted else "")]
        if self.targets:
            lines += self._counterfactual_lines()
        if self.brittleness:
            lines += self._brittleness_lines()
        return "\n".join(lines)

    def _counterfactual_lines(self) -> list[str]:
        lines = [f"counterfactuals: {len(self.targets)} target(s), {self.models} model(s) per "
                 "condition; changes are relative to each target's 'none' baseline",
                 "  condition    k  predicted change  actual change (SE)  target accuracy"]
        for c in self.conditions:
            pred = "" if c.condition == "none" else f"{c.predicted_change:+.2f}"
            act = "" if c.condition == "none" else f"{c.actual_change:+.2f} ({c.actual_se:.2f})"
            lines.append(f"  {c.condition:<9} {c.k:>4}  {pred:>16}  {act:>18}  "
                         f"{c.accuracy:>15.2f}")
        lines.append(f"  predicted vs actual change over {self.n_conditions} conditions: "
                     f"Pearson {self.pearson:.2f}, Spearman {self.spearman:.2f}")
        if np.isfinite(self.slope):
            verdict = ("the datamodel underestimates the size of removals" if self.slope > 1.1
                       else "the datamodel overestimates the size of removals"
                       if self.slope < 0.9 else "the datamodel gets their size about right")
            lines.append(f"  slope of actual on predicted change: {self.slope:.2f} "
                         f"(1 = exact; {verdict})")
        lines.append(f"  margin fell when removing the top {self.k_max}: "
                     f"{_pct(self.frac_top_drop)} of targets; mean |change| for random "
                     f"removals: {self.mean_abs_random:.2f}")
        return lines

    def _brittleness_lines(self) -> list[str]:
        sizes = [b.support_size for b in self.brittleness]
        n = len(self.brittleness)
        return [
            f"brittleness: {n} target(s), estimated support sets of {min(sizes)}-{max(sizes)} "
            f"examples (median {int(np.median(sizes))}), {self.models} model(s) each",
            f"  removing the support set flipped {sum(b.flipped for b in self.brittleness)}/{n} "
            f"targets ({_pct(self.flip_fraction)}; per-model misclassification "
            f"{self.misclassified:.2f})",
            f"  removing as many random examples flipped "
            f"{sum(b.flipped_random for b in self.brittleness)}/{n} "
            f"({_pct(self.flip_fraction_random)}; per-model {self.misclassified_random:.2f})",
        ]


def _mean(values: Sequence[float] | np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.0f}%"


def counterfactual_rows(db: Database, fit_id: int, targets: Sequence[int] | None = None
                        ) -> pa.Table:
    """Rows of view ``counterfactuals`` for a fit (optionally some targets), ordered."""
    where = "fit_id = ?"
    params: list[Any] = [fit_id]
    if targets is not None:
        where += " AND list_contains(?, target_idx)"
        params.append([int(t) for t in targets])
    return db.sql(f"SELECT * FROM counterfactuals WHERE {where} "
                  "ORDER BY target_idx, condition, k", params)


def summarise_counterfactuals(rows: pa.Table) -> dict[str, Any]:
    """Correlation, slope and per-condition means of the predicted and actual changes."""
    d = {c: np.asarray(rows.column(c).to_numpy(zero_copy_only=False)) for c in rows.column_names}
    cond = d["condition"].astype(str) if len(rows) else np.zeros(0, str)
    pc = np.asarray(d.get("predicted_change", []), dtype=np.float64)
    ac = np.asarray(d.get("actual_change", []), dtype=np.float64)
    use = (cond != "none") & np.isfinite(pc) & np.isfinite(ac)
    out: dict[str, Any] = {"n_conditions": int(use.sum()), "pearson": np.nan,
                           "spearman": np.nan, "slope": np.nan}
    if use.sum() >= 3:
        r, rho = correlations(pc[use, None], ac[use, None])
        out |= {"pearson": float(r[0]), "spearman": float(rho[0]),
                "slope": float(np.polyfit(pc[use], ac[use], 1)[0])}
    conditions = []
    for name in ("none", "top", "random"):
        for k in sorted(set(d["k"][cond == name].tolist())) if len(rows) else []:
            sel = (cond == name) & (d["k"] == k)
            a = ac[sel & np.isfinite(ac)]
            conditions.append(ConditionSummary(
                name, int(k), int(sel.sum()), _mean(pc[sel & np.isfinite(pc)]), _mean(a),
                float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan"),
                _mean(np.asarray(d["accuracy"][sel], dtype=np.float64))))
    out["conditions"] = conditions
    top = cond == "top"
    k_max = int(d["k"][top].max()) if top.any() else 0
    last = top & (d["k"] == k_max) & np.isfinite(ac)
    out |= {"k_max": k_max, "frac_top_drop": _mean(ac[last] < 0),
            "mean_abs_random": _mean(np.abs(ac[(cond == "random") & np.isfinite(ac)]))}
    return out


def brittleness_results(
    db: Database, fit_id: int, targets: Sequence[int] | None = None
) -> list[BrittlenessResult]:
    """The brittleness check's retraining results for a fit (every verified target)."""
    fit = load_fit_under_test(db, fit_id)
    before = fit.margin_before()
    rows = db.sql(
        "SELECT v.target_idx, v.condition, max(v.k) AS k, "
        "avg(m.margins[v.target_idx + 1]) AS margin, "
        "avg(CASE WHEN m.margins[v.target_idx + 1] > 0 THEN 0.0 ELSE 1.0 END) AS wrong "
        "FROM verify_runs v JOIN margins m USING (run_id) "
        "WHERE v.kind = 'brittleness' AND v.fit_id = ? GROUP BY ALL ORDER BY ALL", [fit_id],
    ).to_pylist()
    by_target: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_target.setdefault(r["target_idx"], {})[r["condition"]] = r
    wanted = None if targets is None else set(targets)
    out = []
    for t, conds in sorted(by_target.items()):
        if "support" not in conds or "random" not in conds or (wanted and t not in wanted):
            continue
        s, r = conds["support"], conds["random"]
        out.append(BrittlenessResult(t, int(s["k"]), float(before[t]), float(s["margin"]),
                                     float(s["wrong"]), float(r["margin"]), float(r["wrong"])))
    return out


# --------------------------------------------------------------------------- #
# verify


def _check_verify_args(
    ks: Sequence[int], targets: int, models: int, brittleness_targets: int, seed: int,
    n_train: int, n_fitted: int,
) -> tuple[int, ...]:
    if not ks or any(int(k) != k or not 1 <= k < n_train for k in ks):
        raise UsageError(f"--k values must be integers in 1..{n_train - 1} (N - 1), got "
                         f"{list(ks)}")
    for value, flag in ((targets, "--targets"), (brittleness_targets, "--brittleness-targets")):
        if not 0 <= value <= n_fitted:
            raise UsageError(f"{flag} must be in 0..{n_fitted} (the fit's targets), got {value}")
    if targets == 0 and brittleness_targets == 0:
        raise UsageError("--targets and --brittleness-targets are both 0: nothing to verify")
    if models < 1:
        raise UsageError(f"--models must be positive, got {models}")
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be a non-negative integer, got {seed}")
    return tuple(sorted({int(k) for k in ks}))


def verify(
    db: Database,
    *,
    fit_id: int | None = None,
    targets: int = 20,
    ks: Sequence[int] = (10, 20, 40),
    models: int = 20,
    brittleness_targets: int = 20,
    seed: int = 0,
    trainer: str | None = None,
    device: str = "cpu",
    options: Mapping[str, Any] | None = None,
    batch_models: int | None = None,
    progress: bool = True,
    echo: Echo = print,
) -> VerifyReport:
    """Retrain under removals and compare with the fit's predictions.

    Parameters
    ----------
    fit_id : int, optional
        The fit to check; default the latest (learning-curve refits excluded).
    targets : int
        Targets of the counterfactual check (0 skips it). Drawn reproducibly from
        ``seed``, preferring targets the datamodel predicts correct that have at
        least max(ks) positive weights.
    ks : sequence of int
        Removal sizes; each gets a 'top' and a 'random' condition.
    models : int
        Models trained per condition (each on its own mask and seed).
    brittleness_targets : int
        Targets of the brittleness check (0 skips it), drawn from those with a
        finite estimated support set.
    trainer, options : optional
        Default: the trainer and options recorded on the fit's runs; ``options``
        are applied on top of the recorded ones.
    batch_models : int, optional
        Models per trainer call.

    Returns
    -------
    VerifyReport
        ``report.summary()`` is what the CLI prints. Calling again with the same
        arguments reuses the runs already trained (it continues after Ctrl-C).
    """
    started = time.perf_counter()
    exp = db.experiment
    fit = load_fit_under_test(db, fit_id)
    ks = _check_verify_args(ks, targets, models, brittleness_targets, seed, exp.n_train,
                            len(fit.fitted))
    model, opts = build_trainer(db, fit, trainer, device, options)
    plan = Plan()
    cf_targets = _plan_counterfactuals(plan, fit, exp.seed, seed, targets, ks, models,
                                       exp.n_train, device, opts)
    br_targets = _plan_brittleness(plan, db, fit, exp.seed, seed, brittleness_targets, models,
                                   exp.n_train, device, opts, echo)
    todo = plan.without(done_keys(db, ""))
    reused = len(plan) - len(todo)
    echo(f"verify fit {fit.fit_id}: {len(cf_targets)} counterfactual and {len(br_targets)} "
         f"brittleness target(s); training {len(todo)} model(s) with {model.name} "
         f"({reused} already there)")
    interrupted = run_plan(db, model, todo, alpha=fit.alpha, batch_models=batch_models,
                           progress=progress, echo=echo)
    trained = len(todo) - len(todo.without(done_keys(db, "")))
    stats = summarise_counterfactuals(counterfactual_rows(db, fit.fit_id, cf_targets))
    return VerifyReport(
        fit_id=fit.fit_id, alpha=fit.alpha, trainer=model.name, trained=trained, reused=reused,
        seconds=time.perf_counter() - started, interrupted=interrupted, targets=cf_targets,
        models=models, brittleness=brittleness_results(db, fit.fit_id, br_targets), **stats,
    )


def _plan_counterfactuals(
    plan: Plan, fit: FitUnderTest, exp_seed: int, seed: int, n_targets: int,
    ks: tuple[int, ...], models: int, n_train: int, device: str, opts: dict[str, Any],
) -> list[int]:
    if n_targets == 0:
        return []
    before = fit.margin_before()
    n_pos = np.diff((fit.weights > 0).tocsr().indptr)
    good = fit.fitted[(before[fit.fitted] > 0) & (n_pos[fit.fitted] >= max(ks))]
    chosen = choose_targets(_rng(exp_seed, _STREAM_COUNTERFACTUAL, seed, fit.fit_id, 0),
                            good, fit.fitted, n_targets)
    common = dict(exp_seed=exp_seed, seed=seed, fit=fit, kind="counterfactual",
                  models=models, n_train=n_train, device=device, options=opts)
    for t in chosen:
        idx, _ = fit.ranked(t)
        # Fewer non-zero weights than k: the rest of the top k are the lowest-index zeros.
        order = np.concatenate([idx, np.setdiff1d(np.arange(n_train), idx)])
        plan_removals(plan, target=t, condition="none", removed=np.zeros(0, np.int64), k=0,
                      **common)  # type: ignore[arg-type]
        for k in ks:
            plan_removals(plan, target=t, condition="top", removed=np.sort(order[:k]), k=k,
                          **common)  # type: ignore[arg-type]
            plan_removals(plan, target=t, condition="random", removed=None, k=k,
                          **common)  # type: ignore[arg-type]
    return chosen


def _plan_brittleness(
    plan: Plan, db: Database, fit: FitUnderTest, exp_seed: int, seed: int, n_targets: int,
    models: int, n_train: int, device: str, opts: dict[str, Any], echo: Echo,
) -> list[int]:
    if n_targets == 0:
        return []
    _, size = brittleness_estimates(db, fit)
    finite = np.flatnonzero(np.isfinite(size))
    chosen = choose_targets(_rng(exp_seed, _STREAM_COUNTERFACTUAL, seed, fit.fit_id, 1),
                            finite, np.zeros(0, np.int64), n_targets)
    if len(chosen) < n_targets:
        echo(f"brittleness: only {len(chosen)} of the fit's targets have a finite estimated "
             f"support set (asked for {n_targets})")
    common = dict(exp_seed=exp_seed, seed=seed, fit=fit, kind="brittleness",
                  models=models, n_train=n_train, device=device, options=opts)
    for t in chosen:
        k = int(size[t])
        idx, w = fit.ranked(t)
        support = np.sort(idx[w > 0][:k])
        plan_removals(plan, target=t, condition="support", removed=support, k=k,
                      **common)  # type: ignore[arg-type]
        plan_removals(plan, target=t, condition="random", removed=None, k=k,
                      **common)  # type: ignore[arg-type]
    return chosen


# --------------------------------------------------------------------------- #
# The noise ceiling


@dataclass
class CeilingReport:
    """Means over targets of the noise ceiling (`dmdb verify --ceiling`)."""

    fit_id: int
    alpha: float
    n_masks: int
    n_seeds: int
    trained: int
    reused: int
    seconds: float
    interrupted: bool
    seed_spearman: float
    mask_r2: float
    attainable_lds: float
    lds_1: float
    lds_2: float
    lds_5: float
    lds_all: float     # against margins averaged over all n_seeds seeds
    fit_lds: float     # the fit's own LDS on its test runs (datamodels.test_spearman)

    def summary(self) -> str:
        """The lines `dmdb verify --ceiling` prints."""
        head = (f"noise ceiling for fit {self.fit_id} (alpha={self.alpha:g}): {self.n_masks} "
                f"masks x {self.n_seeds} seeds; trained {self.trained} model(s) in "
                f"{self.seconds:.1f}s, reused {self.reused}")
        if self.interrupted:
            return head + "\ninterrupted: noise_ceiling not written; run again to continue"
        frac = self.lds_1 / self.attainable_lds if self.attainable_lds > 0 else float("nan")
        return "\n".join([
            head,
            f"  seed-to-seed Spearman (same mask, two seeds): {self.seed_spearman:.3f}",
            f"  variance explained by the mask (mask_r2):     {self.mask_r2:.3f}",
            f"  attainable single-seed LDS, sqrt(mask_r2):    {self.attainable_lds:.3f}",
            f"  the fit's LDS on these masks: {self.lds_1:.3f} single seed, {self.lds_2:.3f} "
            f"vs 2-seed means, {_fmt(self.lds_5)} vs 5-seed means"
            + (f", {self.lds_all:.3f} vs {self.n_seeds}-seed means"
               if self.n_seeds not in (1, 2, 5) else "")
            + f" (its test LDS: {self.fit_lds:.3f})",
            f"  the datamodel reaches {_pct(frac)} of the attainable single-seed LDS",
        ])


def _fmt(x: float) -> str:
    return f"{x:.3f}" if np.isfinite(x) else "n/a"


def ceiling_metrics(margins: np.ndarray, predictions: np.ndarray) -> dict[str, np.ndarray]:
    """Per-target noise-ceiling metrics.

    Parameters
    ----------
    margins : float array of shape (J, S, M)
        Margins of S seeds on each of J masks.
    predictions : float array of shape (J, M)
        The datamodel's prediction for each mask.

    Returns
    -------
    dict of float64 arrays of shape (M,)
        seed_spearman: Spearman across masks between two seeds, averaged over seed pairs;
        mask_r2: the between-mask variance component over the total (one-way ANOVA,
        unbiased: var(mask means) - within / S); attainable_lds: sqrt(mask_r2) (NaN
        below 0); lds_1, lds_2, lds_5: Spearman between predictions and margins averaged
        over disjoint groups of 1, 2, 5 seeds, averaged over groups (NaN if S < 5 for
        lds_5); lds_all: against the mean over all S seeds.
    """
    y = np.asarray(margins, dtype=np.float64)
    n_masks, n_seeds, _ = y.shape
    pairs = [(a, b) for a in range(n_seeds) for b in range(a + 1, n_seeds)]
    seed_rho = _nanmean(np.array([correlations(y[:, a], y[:, b])[1] for a, b in pairs]), axis=0)
    means = y.mean(axis=1)
    within = ((y - means[:, None, :]) ** 2).sum(axis=(0, 1)) / (n_masks * (n_seeds - 1))
    between = means.var(axis=0, ddof=1) - within / n_seeds
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = between / (between + within)
    out = {"seed_spearman": seed_rho, "mask_r2": r2,
           "attainable_lds": np.sqrt(np.where(r2 >= 0, r2, np.nan))}
    for size, name in ((1, "lds_1"), (2, "lds_2"), (5, "lds_5"), (n_seeds, "lds_all")):
        groups = n_seeds // size
        if groups == 0:
            out[name] = np.full(y.shape[2], np.nan)
            continue
        rhos = [correlations(predictions, y[:, g * size:(g + 1) * size].mean(axis=1))[1]
                for g in range(groups)]
        out[name] = _nanmean(np.array(rhos), axis=0)
    return out


def _nanmean(values: np.ndarray, axis: int | None = None) -> Any:
    """np.nanmean without the warning for all-NaN slices (they stay NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _plan_ceiling(plan: Plan, exp_seed: int, seed: int, alpha: float, masks: int, seeds: int,
                  n_train: int, device: str, opts: dict[str, Any]) -> None:
    alpha_key = int(round(alpha * 1_000_000))
    for j in range(masks):
        mask = _rng(exp_seed, _STREAM_CEILING, seed, alpha_key, j).random(n_train) < alpha
        for s in range(seeds):
            model_seed = int(_rng(exp_seed, _STREAM_CEILING, seed, alpha_key, j, s + 1)
                             .integers(0, 2**31))
            plan.add(mask, model_seed, {
                "verify": {"key": f"ceiling/{seed}/{alpha_key}/{j}/{s}", "kind": "ceiling",
                           "fit_id": None, "target_idx": None, "condition": None, "k": None,
                           "removed": []},
                "ceiling_mask": j, "ceiling_seed": s, "device": device,
            } | ({"options": dict(opts)} if opts else {}))


def _ceiling_runs(db: Database, keys: list[str]) -> np.ndarray:
    """The run ids of trained ceiling runs, aligned with ``keys``."""
    rows = db.sql("SELECT run_id, info->>'$.verify.key' AS key FROM runs "
                  "WHERE split = 'verify' AND list_contains(?, info->>'$.verify.key')", [keys])
    where = dict(zip(rows.column("key").to_pylist(), rows.column("run_id").to_pylist(),
                     strict=True))
    return np.array([where[k] for k in keys], dtype=np.int64)


def ceiling(
    db: Database,
    *,
    fit_id: int | None = None,
    masks: int = 100,
    seeds: int = 10,
    seed: int = 0,
    trainer: str | None = None,
    device: str = "cpu",
    options: Mapping[str, Any] | None = None,
    batch_models: int | None = None,
    progress: bool = True,
    echo: Echo = print,
) -> CeilingReport:
    """Measure the noise ceiling of a fit and write its ``noise_ceiling`` rows.

    Trains ``seeds`` models on each of ``masks`` fresh Bernoulli(alpha) masks (split
    'verify', kind 'ceiling'; runs of an earlier call with the same seed and alpha are
    reused), then computes :func:`ceiling_metrics` for every fitted target and replaces
    the fit's rows of ``noise_ceiling`` in one transaction.
    """
    started = time.perf_counter()
    exp = db.experiment
    fit = load_fit_under_test(db, fit_id)
    if masks < 3:
        raise UsageError(f"--masks must be at least 3 (Spearman across masks), got {masks}")
    if seeds < 2:
        raise UsageError(f"--seeds must be at least 2 (seed-to-seed agreement), got {seeds}")
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be a non-negative integer, got {seed}")
    model, opts = build_trainer(db, fit, trainer, device, options)
    plan = Plan()
    _plan_ceiling(plan, exp.seed, seed, fit.alpha, masks, seeds, exp.n_train, device, opts)
    done = done_keys(db, f"ceiling/{seed}/{int(round(fit.alpha * 1_000_000))}/")
    todo = plan.without(done)
    echo(f"noise ceiling for fit {fit.fit_id}: {masks} masks x {seeds} seeds at "
         f"alpha={fit.alpha:g}; training {len(todo)} model(s) with {model.name} "
         f"({len(plan) - len(todo)} already there)")
    interrupted = run_plan(db, model, todo, alpha=fit.alpha, batch_models=batch_models,
                           progress=progress, echo=echo)
    trained = len(todo) - len(todo.without(done_keys(db, "ceiling/")))
    report = CeilingReport(fit.fit_id, fit.alpha, masks, seeds, trained, len(plan) - len(todo),
                           0.0, interrupted, *([float("nan")] * 8))
    if not interrupted:
        metrics = _measure_ceiling(db, fit, plan.keys(), masks, seeds)
        _write_ceiling(db, fit, metrics, masks, seeds)
        fitted = fit.fitted
        for name in ("seed_spearman", "mask_r2", "attainable_lds", "lds_1", "lds_2", "lds_5",
                     "lds_all"):
            vals = metrics[name][fitted]
            setattr(report, name, float(_nanmean(vals)))
        report.fit_lds = float(db.sql("SELECT avg(test_spearman) FROM datamodels "
                                      "WHERE fit_id = ?", [fit.fit_id]).column(0)[0].as_py()
                               or float("nan"))
    report.seconds = time.perf_counter() - started
    return report


def _measure_ceiling(db: Database, fit: FitUnderTest, keys: list[str], masks: int,
                     seeds: int) -> dict[str, np.ndarray]:
    run_ids = _ceiling_runs(db, keys)
    ids, x, y = db.load_runs(split="verify", run_ids=run_ids)
    pos = {int(r): i for i, r in enumerate(ids)}
    order = np.array([pos[int(r)] for r in run_ids])
    x, y = x[order], y[order]
    mask_x = x[::seeds]  # run j * seeds + s is seed s on mask j
    pred = fit.bias[None, :] + np.asarray((fit.weights @ mask_x.T.astype(np.float32)).T)
    return ceiling_metrics(y.reshape(masks, seeds, -1), pred)


def _write_ceiling(db: Database, fit: FitUnderTest, metrics: dict[str, np.ndarray],
                   masks: int, seeds: int) -> None:
    t = fit.fitted
    cols = {"target_idx": pa.array(t.astype(np.int32))}
    for name in ("seed_spearman", "mask_r2", "attainable_lds", "lds_1", "lds_2", "lds_5"):
        v = metrics[name][t]
        cols[name] = pa.array(v, mask=~np.isfinite(v))
    rows = pa.table(cols)  # noqa: F841 (read by the SQL below)
    with db.transaction() as con:
        con.execute("DELETE FROM noise_ceiling WHERE fit_id = ?", [fit.fit_id])
        con.execute(
            "INSERT INTO noise_ceiling SELECT ?, target_idx, ?, ?, seed_spearman, mask_r2, "
            "attainable_lds, lds_1, lds_2, lds_5 FROM rows", [fit.fit_id, masks, seeds])
