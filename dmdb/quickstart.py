"""`dmdb quickstart DIR`: the README's main job, end to end on scikit-learn's digits.

init → train → fit → embed → verify (counterfactuals, brittleness, noise ceiling)
→ report, with progress throughout, then a short summary and SQL to try next.
Every step is the same library call the matching `dmdb` command makes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dmdb
from dmdb.errors import UsageError

Echo = Callable[[str], None]

NEXT_QUERIES = [
    ("the 5 targets the datamodels predict best",
     "SELECT target_idx, spearman FROM lds WHERE fit_id = {fit} ORDER BY spearman DESC LIMIT 5"),
    ("which training images most help target 0",
     "SELECT train_idx, weight FROM top_influencers WHERE fit_id = {fit} AND target_idx = 0 "
     "AND sign = '+' ORDER BY rank"),
    ("the predicted margin of every target if examples 0-99 were removed",
     "SELECT target_idx, predicted FROM predict_removal({fit}, range(100)) ORDER BY predicted "
     "LIMIT 5"),
]


@dataclass
class QuickstartSizes:
    """How big each step is; the defaults are the full-size run (about 10 minutes)."""

    runs: int = 20000
    alpha: float = 0.5
    verify_targets: int = 20
    verify_models: int = 20
    ks: tuple[int, ...] = (10, 20, 40)
    brittleness_targets: int = 20
    ceiling_masks: int = 100
    ceiling_seeds: int = 10
    pairs: int = 60          # the second-order fit's K (0: linear only)

    @classmethod
    def for_runs(cls, runs: int) -> QuickstartSizes:
        """Scale the checks with --runs, so a small quickstart is quick throughout."""
        if runs < 1:
            raise UsageError(f"--runs must be positive, got {runs}")
        if runs >= 3000:  # full-size checks
            return cls(runs=runs)
        return cls(runs=runs, verify_targets=6, verify_models=6, ks=(10, 40),
                   brittleness_targets=6, ceiling_masks=24, ceiling_seeds=5)


def run_quickstart(
    folder: str | Path,
    *,
    sizes: QuickstartSizes | None = None,
    device: str = "cpu",
    echo: Echo = print,
    progress: bool = True,
) -> dict[str, object]:
    """Run everything in ``folder`` and return the summary figures."""
    from dmdb.applications import embed
    from dmdb.datasets import experiment_kwargs
    from dmdb.fitting import fit
    from dmdb.report import report
    from dmdb.training import train
    from dmdb.verify import ceiling, verify

    sizes = sizes or QuickstartSizes()
    started = time.perf_counter()
    from dmdb.export import output_folder

    folder = output_folder(folder, "the quickstart")
    path = folder / "digits.duckdb"

    def step(title: str) -> None:
        echo(f"\n== {title} ({time.perf_counter() - started:.0f}s)")

    step("1/6 init")
    db = dmdb.init(path, force=True, **experiment_kwargs("digits"))
    echo(f"created {path}: digits, N={db.experiment.n_train} training images, "
         f"M={db.experiment.n_targets} targets")
    step(f"2/6 train {sizes.runs} models on random {sizes.alpha:.0%} subsets")
    trained = train(db, runs=sizes.runs, alpha=sizes.alpha, device=device, progress=progress,
                    echo=echo)
    echo(f"{trained.trained} models, mean target accuracy {trained.mean_target_acc:.3f}")
    step("3/6 fit a sparse linear datamodel per target, then a second-order one")
    fitted = fit(db, device=device, progress=progress, echo=echo)
    echo(f"fit {fitted.fit_id}: mean LDS {fitted.mean_lds:.3f} on {fitted.n_test} test runs")
    second = None
    if sizes.pairs:
        second = fit(db, device=device, pairs=sizes.pairs, progress=progress, echo=echo)
        echo(f"fit {second.fit_id} (pairs among each target's top {sizes.pairs}): mean LDS "
             f"{second.mean_lds:.3f} on the same test runs")
    step("4/6 embed the datamodels")
    embed(db, fit_id=fitted.fit_id)
    step("5/6 verify by retraining")
    checked = verify(db, fit_id=fitted.fit_id, targets=sizes.verify_targets, ks=sizes.ks,
                     models=sizes.verify_models, brittleness_targets=sizes.brittleness_targets,
                     device=device, progress=progress, echo=echo)
    echo(checked.summary())
    noise = ceiling(db, fit_id=fitted.fit_id, masks=sizes.ceiling_masks,
                    seeds=sizes.ceiling_seeds, device=device, progress=progress, echo=echo)
    echo(noise.summary())
    step("6/6 report")
    index = report(db, folder / "report", fit_id=fitted.fit_id, progress=progress, echo=echo)
    seconds = time.perf_counter() - started
    summary: dict[str, object] = {
        "database": str(path), "report": str(index), "runs": sizes.runs,
        "fit_id": fitted.fit_id, "mean_lds": fitted.mean_lds,
        "counterfactual_pearson": checked.pearson, "slope": checked.slope,
        "flip_fraction": checked.flip_fraction,
        "flip_fraction_random": checked.flip_fraction_random,
        "attainable_lds": noise.attainable_lds, "seconds": seconds,
    }
    models = [("linear", fitted.mean_lds, checked.pearson, checked.slope)]
    if second is not None:
        # verify scored the second-order fit on the linear fit's retrained runs
        assert second.fit_id is not None  # fitted into the database, not to a block file
        score = {m.fit_id: m for m in checked.models_compared}[second.fit_id]
        summary |= {"pair_fit_id": second.fit_id, "pair_mean_lds": second.mean_lds,
                    "pair_counterfactual_pearson": score.pearson, "pair_slope": score.slope}
        models.append(("second-order", second.mean_lds, score.pearson, score.slope))
    echo(f"\n== done in {seconds:.0f}s")
    echo(f"runs: {sizes.runs} at alpha={sizes.alpha}; attainable LDS about "
         f"{noise.attainable_lds:.3f} (the noise ceiling)")
    for name, lds, pearson, slope in models:
        echo(f"{name + ':':<14}mean LDS {lds:.3f} ({lds / noise.attainable_lds:.0%} of the "
             f"ceiling); counterfactuals: predicted vs actual change r = {pearson:.2f}, "
             f"actual/predicted slope {slope:.2f}")
    echo(f"support sets flip {checked.flip_fraction:.0%} of targets vs "
         f"{checked.flip_fraction_random:.0%} for random removals")
    echo(f"database: {path}")
    echo(f"report:   {index}")
    echo("\nTry next (DuckDB shell: duckdb -readonly " + str(path) + "):")
    for what, query in NEXT_QUERIES:
        echo(f"  -- {what}")
        echo(f"  dmdb sql {path} \"{query.format(fit=fitted.fit_id)}\"")
    return summary

