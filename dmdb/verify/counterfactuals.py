"""`dmdb verify`: counterfactuals and brittleness, checked by retraining.

Counterfactuals
    For sampled targets: no removal ('none', k = 0), removal of the target's k most
    positive weights ('top') and of k random examples ('random', the control).
Brittleness
    For sampled targets whose estimated support set is finite: removal of the
    support set ('support') and of as many random examples ('random').
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from dmdb.catalog import fit_label, sibling_fits
from dmdb.db import Database
from dmdb.errors import UsageError
from dmdb.metrics import correlations
from dmdb.verify.fit import FitUnderTest, brittleness_estimates, load_fit_under_test
from dmdb.verify.plan import (
    STREAM_COUNTERFACTUAL,
    Echo,
    Plan,
    build_trainer,
    choose_targets,
    done_keys,
    plan_removals,
    run_plan,
    stream_rng,
)


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
class ModelScore:
    """One fit's predictions on the verified fit's retrained conditions (its own or a sibling)."""

    fit_id: int
    label: str               # 'linear', 'second-order (K = 60)', an import's name
    n_conditions: int
    pearson: float
    spearman: float
    slope: float
    top_predicted: dict[int, float]   # k -> mean predicted change of the 'top' removals


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
    # The verified fit first, then the fits of the same runs (its second-order refit,
    # or the linear fit it refines), each scored on the same retrained models.
    models_compared: list[ModelScore] = field(default_factory=list)

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
                     f"{pct(self.frac_top_drop)} of targets; mean |change| for random "
                     f"removals: {self.mean_abs_random:.2f}")
        return lines + self._side_by_side_lines()

    def _side_by_side_lines(self) -> list[str]:
        if len(self.models_compared) < 2:
            return []
        ks = sorted(c.k for c in self.conditions if c.condition == "top")
        tops = "/".join(map(str, ks))
        lines = ["  side by side: fits of the same runs, predicting the same retrained models",
                 f"    fit  {'model':<24} conditions  Pearson  Spearman  slope  "
                 f"predicted change, top {tops}"]
        for m in self.models_compared:
            changes = " / ".join(f"{m.top_predicted.get(k, float('nan')):+.2f}" for k in ks)
            lines.append(f"    {m.fit_id:>3}  {m.label:<24} {m.n_conditions:>10}  "
                         f"{m.pearson:>7.3f}  {m.spearman:>8.3f}  {m.slope:>5.2f}  {changes}")
        actual = {c.k: c.actual_change for c in self.conditions if c.condition == "top"}
        lines.append(f"         {'actual (retrained)':<24} {'':>10}  {'':>7}  {'':>8}  {'':>5}  "
                     + " / ".join(f"{actual[k]:+.2f}" for k in ks))
        return lines

    def _brittleness_lines(self) -> list[str]:
        sizes = [b.support_size for b in self.brittleness]
        n = len(self.brittleness)
        return [
            f"brittleness: {n} target(s), estimated support sets of {min(sizes)}-{max(sizes)} "
            f"examples (median {int(np.median(sizes))}), {self.models} model(s) each",
            f"  removing the support set flipped {sum(b.flipped for b in self.brittleness)}/{n} "
            f"targets ({pct(self.flip_fraction)}; per-model misclassification "
            f"{self.misclassified:.2f})",
            f"  removing as many random examples flipped "
            f"{sum(b.flipped_random for b in self.brittleness)}/{n} "
            f"({pct(self.flip_fraction_random)}; per-model {self.misclassified_random:.2f})",
        ]


def _mean(values: Sequence[float] | np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def pct(x: float) -> str:
    """A fraction as a whole percentage, 'n/a' when NaN (the summaries of both checks)."""
    return "n/a" if not np.isfinite(x) else f"{100 * x:.0f}%"


def counterfactual_rows(db: Database, fit_id: int, targets: Sequence[int] | None = None,
                        model: int | None = None) -> pa.Table:
    """Rows of view ``counterfactuals`` for a verified fit (optionally some targets), ordered.

    ``model``: predict with another fit's datamodels instead (``counterfactuals_with``).
    """
    where = "fit_id = ?"
    params: list[Any] = [fit_id]
    if targets is not None:
        where += " AND list_contains(?, target_idx)"
        params.append([int(t) for t in targets])
    source = "counterfactuals"
    if model is not None:
        source = "(SELECT * EXCLUDE (model_fit_id) FROM counterfactuals_with(?))"
        params.insert(0, int(model))
    return db.sql(f"SELECT * FROM {source} WHERE {where} ORDER BY target_idx, condition, k",
                  params)


def model_scores(db: Database, fit_id: int, targets: Sequence[int]) -> list[ModelScore]:
    """The verified fit and each of its siblings (:func:`sibling_fits`) on its retrained runs."""
    out = []
    for model in (fit_id, *sibling_fits(db, fit_id)):
        stats = summarise_counterfactuals(counterfactual_rows(db, fit_id, targets, model))
        out.append(ModelScore(
            model, fit_label(db, model), stats["n_conditions"], stats["pearson"],
            stats["spearman"], stats["slope"],
            {c.k: c.predicted_change for c in stats["conditions"] if c.condition == "top"}))
    return out


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
    db.check_can_write()  # it records what it trains
    model, opts = build_trainer(db, fit, trainer, device, options, batch_models=batch_models)
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
    interrupted = run_plan(db, model, todo, alpha=fit.alpha, progress=progress, echo=echo)
    trained = len(todo) - len(todo.without(done_keys(db, "")))
    stats = summarise_counterfactuals(counterfactual_rows(db, fit.fit_id, cf_targets))
    return VerifyReport(
        fit_id=fit.fit_id, alpha=fit.alpha, trainer=model.name, trained=trained, reused=reused,
        seconds=time.perf_counter() - started, interrupted=interrupted, targets=cf_targets,
        models=models, brittleness=brittleness_results(db, fit.fit_id, br_targets),
        models_compared=model_scores(db, fit.fit_id, cf_targets) if cf_targets else [],
        **stats,
    )


def _plan_counterfactuals(
    plan: Plan, fit: FitUnderTest, exp_seed: int, seed: int, n_targets: int,
    ks: tuple[int, ...], models: int, n_train: int, device: str, opts: dict[str, Any],
) -> list[int]:
    if n_targets == 0:
        return []
    before = fit.margin_before()
    n_pos = fit.n_positive()
    good = fit.fitted[(before[fit.fitted] > 0) & (n_pos[fit.fitted] >= max(ks))]
    chosen = choose_targets(stream_rng(exp_seed, STREAM_COUNTERFACTUAL, seed, fit.fit_id, 0),
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
    chosen = choose_targets(stream_rng(exp_seed, STREAM_COUNTERFACTUAL, seed, fit.fit_id, 1),
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
