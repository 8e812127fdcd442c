"""`dmdb report`: PNG figures of a fit and an index.html that shows them.

Every figure reads what the database already holds (the fit, its test runs,
`dmdb verify` results, embeddings, the noise ceiling). A figure whose data is
absent is skipped, with a note in index.html that says what would produce it.
The learning curve is the exception: it refits on 10%, 25% and 50% of the fit's
fit runs (reusing earlier refits), and marks those fits with
``parameters.learning_curve_of`` so that "the latest fit" never means one of them.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dmdb.catalog import fit_label, sibling_fits
from dmdb.db import Database
from dmdb.errors import DmdbError, FitError
from dmdb.export import check_output_folder, output_folder
from dmdb.fitting import MIN_RUNS
from dmdb.metrics import correlations
from dmdb.verify import (
    FitUnderTest,
    brittleness_results,
    counterfactual_rows,
    load_fit_under_test,
    summarise_counterfactuals,
    support_sizes,
)

Echo = Callable[[str], None]
LEARNING_CURVE_FRACTIONS = (0.1, 0.25, 0.5)
DPI = 110


@dataclass
class Section:
    """One figure of the report, or the note that replaces it."""

    title: str
    png: str | None = None
    caption: str = ""
    numbers: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class _Context:
    db: Database
    fit: FitUnderTest
    out: Path
    learning_curve: bool
    progress: bool
    echo: Echo


def _figure(width: float, height: float) -> Any:
    # Figure objects, not pyplot: no global state, no GUI backend (savefig uses Agg).
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(ctx: _Context, fig: Any, name: str) -> str:
    fig.savefig(ctx.out / name)
    return name


def report(
    db: Database,
    out_dir: str | Path,
    *,
    fit_id: int | None = None,
    learning_curve: bool = True,
    progress: bool = True,
    echo: Echo = print,
) -> Path:
    """Write PNG figures and an index.html about a fit into ``out_dir``.

    Parameters
    ----------
    fit_id : int, optional
        Default: the latest fit (learning-curve refits excluded).
    learning_curve : bool
        Refit on 10/25/50% of the fit runs for the LDS-vs-runs figure (this writes
        new fits, reused by later reports).

    Returns
    -------
    Path of index.html.
    """
    check_output_folder(out_dir, "the report")
    fit = load_fit_under_test(db, fit_id)
    # Before any figure: the learning curve writes fits, which a failed save would orphan.
    out = output_folder(out_dir, "the report")
    ctx = _Context(db, fit, out, learning_curve, progress, echo)
    sections = []
    for make in (_predictions, _lds_histogram, _influencers, _counterfactual_scatter,
                 _second_order, _interactions, _brittleness, _embedding, _learning_curve,
                 _comparison):
        try:
            sections.append(make(ctx))
        except DmdbError as e:
            sections.append(Section(make.__name__.strip("_").replace("_", " "),
                                    note=f"skipped: {e}"))
    index = out / "index.html"
    index.write_text(_html(db, fit, sections))
    made = sum(s.png is not None for s in sections)
    echo(f"wrote {made} figure(s) and {index}")
    return index


# --------------------------------------------------------------------------- #
# Figures


def _predictions(ctx: _Context) -> Section:
    title = "Predicted vs actual margins on test runs"
    ids = ctx.db.sql("SELECT run_id FROM fit_runs WHERE fit_id = ? AND split = 'test' "
                     "ORDER BY run_id", [ctx.fit.fit_id]).column(0).to_numpy()
    if len(ids) == 0:
        return Section(title, note="skipped: the fit records no test runs")
    _, x, y = ctx.db.load_runs(run_ids=ids)
    targets = _sample(ctx.fit.fitted, 6, seed=0)
    pred = ctx.fit.predict(x)[:, targets]  # a second-order fit's pairs included
    actual = y[:, targets].astype(np.float64)
    r = correlations(pred, actual)[0]
    fig = _figure(6.2, 5.2)
    ax = fig.add_subplot()
    colours = _colours(len(targets))
    for j, t in enumerate(targets):
        ax.scatter(pred[:, j], actual[:, j], s=10, alpha=0.6, color=colours[j],
                   label=f"target {t} (r={r[j]:.2f})")
    _diagonal(ax, np.r_[pred.ravel(), actual.ravel()])
    ax.set(xlabel="predicted margin (datamodel)", ylabel="actual margin (trained model)",
           title=f"Fit {ctx.fit.fit_id}: {len(ids)} test runs, {len(targets)} targets")
    ax.legend(fontsize=8, loc="upper left")
    pooled = correlations(pred.reshape(-1, 1), actual.reshape(-1, 1))[0][0]
    return Section(
        title, _save(ctx, fig, "predictions.png"),
        "Each point is one test run (a model trained on a subset the fit never saw); each "
        "colour one target. Points on the dashed line are predicted exactly.",
        [f"pooled Pearson r = {pooled:.3f}", f"per-target r: {np.nanmean(r):.3f} on average"])


def _lds_histogram(ctx: _Context) -> Section:
    title = "LDS over targets"
    lds = ctx.db.sql("SELECT test_spearman FROM datamodels WHERE fit_id = ? "
                     "AND test_spearman IS NOT NULL", [ctx.fit.fit_id]).column(0).to_numpy()
    if len(lds) == 0:
        return Section(title, note="skipped: no target has an LDS (too few test runs?)")
    ceiling = ctx.db.sql("SELECT avg(attainable_lds), avg(lds_1), any_value(n_masks), "
                         "any_value(n_seeds) FROM noise_ceiling WHERE fit_id = ?",
                         [ctx.fit.fit_id]).to_pylist()[0]
    attainable, lds_1 = list(ceiling.values())[:2]
    fig = _figure(6.2, 4.0)
    ax = fig.add_subplot()
    ax.hist(lds, bins=30, color="#4c72b0", alpha=0.85)
    ax.axvline(lds.mean(), color="k", lw=2, label=f"mean LDS {lds.mean():.3f}")
    numbers = [f"mean LDS {lds.mean():.3f} over {len(lds)} targets",
               f"median {np.median(lds):.3f}"]
    if attainable is not None:
        ax.axvline(attainable, color="#c44e52", lw=2, ls="--",
                   label=f"noise ceiling (attainable) {attainable:.3f}")
        numbers.append(f"noise ceiling: attainable single-seed LDS {attainable:.3f}; the fit "
                       f"reaches {lds.mean() / attainable:.0%} of it")
    ax.set(xlabel="LDS (Spearman of predicted vs actual margin over test runs)",
           ylabel="targets", title=f"Fit {ctx.fit.fit_id}: linear datamodeling score")
    ax.legend(fontsize=9, loc="upper left")
    caption = ("LDS of each target on the fit's test runs. Single-seed margins carry training "
               "noise, so even a perfect datamodel stays below 1.")
    if attainable is None:
        caption += " Run `dmdb verify --ceiling` to draw the noise ceiling."
    return Section(title, _save(ctx, fig, "lds_histogram.png"), caption, numbers)


def _influencers(ctx: _Context) -> Section:
    title = "Most influential training examples"
    shape = ctx.db.experiment.config.get("image_shape")
    if not shape:
        return Section(title, note="skipped: the experiment has no image_shape (not images)")
    targets = _sample(ctx.fit.fitted[np.diff(ctx.fit.weights.indptr)[ctx.fit.fitted] > 0], 4,
                      seed=1)
    if not len(targets):
        return Section(title, note="skipped: no target has a non-zero weight")
    rows = []
    for t in targets:
        idx, w = ctx.fit.ranked(int(t))
        rows.append((int(t), idx[w > 0][:5], w[w > 0][:5], idx[w < 0][::-1][:5],
                     w[w < 0][::-1][:5]))
    wanted = sorted({int(i) for r in rows for part in (r[1], r[3]) for i in part})
    train = _pixels(ctx.db, "train_examples", "train_idx", wanted)
    tgt = _pixels(ctx.db, "targets", "target_idx", [int(t) for t in targets])
    if any(v[1] is None for v in train.values()) or any(v[1] is None for v in tgt.values()):
        return Section(title, note="skipped: the database holds no pixels for these examples")
    fig = _figure(11.5, 1.45 * len(rows) + 0.4)
    grid = fig.add_gridspec(len(rows), 11)
    for r, (t, pos, wpos, neg, wneg) in enumerate(rows):
        label, pixels = tgt[t]
        _image(fig.add_subplot(grid[r, 0]), pixels, shape, f"target {t}\nlabel {label}", "k")
        for c, (i, wi) in enumerate(zip(pos, wpos, strict=True)):
            lab, pix = train[int(i)]
            _image(fig.add_subplot(grid[r, 1 + c]), pix, shape, f"+{wi:.3f}\nlabel {lab}",
                   "#2a7f2a" if lab == label else "#555555")
        for c, (i, wi) in enumerate(zip(neg, wneg, strict=True)):
            lab, pix = train[int(i)]
            _image(fig.add_subplot(grid[r, 6 + c]), pix, shape, f"{wi:.3f}\nlabel {lab}",
                   "#b03030")
    fig.suptitle("target | 5 largest positive weights (green: same label) | "
                 "5 most negative weights (red)", fontsize=10)
    same = np.mean([train[int(i)][0] == tgt[t][0] for t, pos, *_ in rows for i in pos])
    return Section(
        title, _save(ctx, fig, "influencers.png"),
        "Each row: a target, then the training images with its largest positive weights "
        "(training on them raises the target's margin) and its most negative weights.",
        [f"{same:.0%} of the positive influencers shown share the target's label"])


def _counterfactual_scatter(ctx: _Context) -> Section:
    title = "Counterfactuals: predicted vs actual change after removal"
    rows = counterfactual_rows(ctx.db, ctx.fit.fit_id)
    stats = summarise_counterfactuals(rows)
    if stats["n_conditions"] < 3:
        return Section(title, note="skipped: run `dmdb verify` to retrain under removals")
    d = rows.to_pydict()
    cond = np.array(d["condition"])
    k = np.array(d["k"])
    pc = np.array(d["predicted_change"], dtype=np.float64)
    ac = np.array(d["actual_change"], dtype=np.float64)
    fig = _figure(6.2, 5.2)
    ax = fig.add_subplot()
    ks = sorted(set(k[cond == "top"].tolist()))
    colours = _colours(len(ks))
    for j, kk in enumerate(ks):
        sel = (cond == "top") & (k == kk)
        ax.scatter(pc[sel], ac[sel], s=28, color=colours[j], label=f"top {kk} removed")
    sel = cond == "random"
    ax.scatter(pc[sel], ac[sel], s=22, marker="x", color="#888888",
               label="random removed (control)")
    use = (cond != "none") & np.isfinite(pc) & np.isfinite(ac)
    _diagonal(ax, np.r_[pc[use], ac[use]])
    intercept = np.polyfit(pc[use], ac[use], 1)[1]
    xs = np.array([pc[use].min(), pc[use].max()])
    ax.plot(xs, intercept + stats["slope"] * xs, color="#c44e52", lw=1.5,
            label=f"least squares, slope {stats['slope']:.2f}")
    ax.set(xlabel="predicted change in margin", ylabel="actual change in margin (retrained)",
           title=f"r = {stats['pearson']:.2f}, Spearman {stats['spearman']:.2f}, "
                 f"slope {stats['slope']:.2f}")
    ax.legend(fontsize=8, loc="upper left")
    return Section(
        title, _save(ctx, fig, "counterfactuals.png"),
        "Each point is one target and removal, averaged over the retrained models and "
        "measured against the same target's no-removal baseline. A slope above 1 means the "
        "datamodel ranks removals right but underestimates their size.",
        [f"Pearson {stats['pearson']:.3f}, Spearman {stats['spearman']:.3f} over "
         f"{stats['n_conditions']} conditions", f"slope {stats['slope']:.2f}",
         f"margin fell for {stats['frac_top_drop']:.0%} of targets at top {stats['k_max']}",
         f"mean |change| for random removals {stats['mean_abs_random']:.2f}"])


def _second_order(ctx: _Context) -> Section:
    title = "Linear and second-order datamodels"
    linear, second = _linear_and_second_order(ctx)
    if linear is None or second is None:
        return Section(title, note="skipped: " + _no_counterpart(ctx, linear, second))
    db, me = ctx.db, ctx.fit.fit_id
    lds = db.sql(
        "SELECT a.test_spearman AS linear, b.test_spearman AS second FROM datamodels a "
        "JOIN datamodels b USING (target_idx) WHERE a.fit_id = ? AND b.fit_id = ? "
        "AND a.test_spearman IS NOT NULL AND b.test_spearman IS NOT NULL "
        "ORDER BY target_idx", [linear, second]).to_pydict()
    x = np.array(lds["linear"], dtype=np.float64)
    y = np.array(lds["second"], dtype=np.float64)
    if len(x) == 0:
        return Section(title, note=f"skipped: no target has an LDS under both fit {linear} "
                                   f"and fit {second}")
    names = {f: f"fit {f}, {fit_label(db, f)}" for f in (linear, second)}
    # The retrained runs of whichever of the two was verified, the report's own fit first.
    other = second if me == linear else linear
    verified = next((f for f in (me, other) if _has_counterfactuals(db, f)), None)
    changes = {} if verified is None else _predicted_and_actual(db, verified, (linear, second))
    fig = _figure(11.0 if changes else 5.6, 4.8)
    ax = fig.add_subplot(1, 2 if changes else 1, 1)
    improved = float(np.mean(y > x))
    ax.scatter(x, y, s=14, color="#4c72b0", alpha=0.7)
    _diagonal(ax, np.r_[x, y])
    ax.set(xlabel=f"LDS, {names[linear]}", ylabel=f"LDS, {names[second]}",
           title=f"mean LDS {x.mean():.3f} (linear) vs {y.mean():.3f} (second-order); "
                 f"{improved:.0%} of targets improved")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="lower right")  # improved targets sit top left
    numbers = [f"mean LDS over the {len(x)} targets both fits model: linear (fit {linear}) "
               f"{x.mean():.3f}, second-order (fit {second}) {y.mean():.3f}",
               f"the second-order fit has the higher LDS on {improved:.0%} of them"]
    caption = ("Left: each point is one target, its LDS on the test runs the two fits share "
               "under the linear fit (x) and under its second-order refit (y); points above "
               "y = x are targets the pairs model better.")
    if changes:
        ax = fig.add_subplot(1, 2, 2)
        every = []
        for (m, (pc, ac, stats)), colour in zip(changes.items(), _colours(2), strict=True):
            ax.scatter(pc, ac, s=22, color=colour, alpha=0.7)
            intercept = np.polyfit(pc, ac, 1)[1]
            xs = np.array([pc.min(), pc.max()])
            ax.plot(xs, intercept + stats["slope"] * xs, color=colour, lw=1.5,
                    label=f"{names[m]}: slope {stats['slope']:.2f}")
            every += [pc, ac]
            numbers.append(f"{names[m]}: Pearson {stats['pearson']:.3f}, Spearman "
                           f"{stats['spearman']:.3f}, slope {stats['slope']:.2f} over the "
                           f"{stats['n_conditions']} retrained conditions of fit {verified}")
        _diagonal(ax, np.concatenate(every))
        ax.set(xlabel="predicted change in margin", ylabel="actual change in margin (retrained)",
               title=f"counterfactuals of fit {verified}, predicted by each model")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8, loc="upper left")
        caption += (" Right: the removals `dmdb verify` retrained for fit "
                    f"{verified}, predicted by each model (one colour each, with its "
                    "least-squares line); a slope nearer 1 means the predicted changes have "
                    "the real size.")
    else:
        numbers.append(f"no counterfactuals of fit {linear} or {second} yet: run `dmdb "
                       f"verify --fit {me}` to compare the two models on retrained runs")
        caption += " Run `dmdb verify` to add the counterfactual panel."
    return Section(title, _save(ctx, fig, "pairs.png"), caption, numbers)


def _interactions(ctx: _Context) -> Section:
    title = "Strongest interactions"
    shape = ctx.db.experiment.config.get("image_shape")
    if not shape:
        return Section(title, note="skipped: the experiment has no image_shape (not images)")
    linear, second = _linear_and_second_order(ctx)
    if second is None:
        return Section(title, note="skipped: " + _no_counterpart(ctx, linear, second))
    with_pairs = ctx.db.sql("SELECT DISTINCT target_idx FROM interactions WHERE fit_id = ? "
                            "ORDER BY target_idx", [second]).column(0).to_numpy()
    if not len(with_pairs):
        return Section(title, note=f"skipped: fit {second} stores no non-zero interaction")
    targets = [int(t) for t in _sample(with_pairs, 4, seed=2)]
    top = ctx.db.sql("SELECT target_idx, train_a, train_b, weight FROM top_interactions_k(?, 4) "
                     "WHERE list_contains(?, target_idx) ORDER BY target_idx, rank",
                     [second, targets]).to_pydict()
    rows: dict[int, list[tuple[int, int, float]]] = {t: [] for t in targets}
    for t, a, b, w in zip(top["target_idx"], top["train_a"], top["train_b"], top["weight"],
                          strict=True):
        rows[int(t)].append((int(a), int(b), float(w)))
    train = _pixels(ctx.db, "train_examples", "train_idx",
                    sorted({i for pairs in rows.values() for a, b, _ in pairs for i in (a, b)}))
    tgt = _pixels(ctx.db, "targets", "target_idx", targets)
    if any(v[1] is None for v in train.values()) or any(v[1] is None for v in tgt.values()):
        return Section(title, note="skipped: the database holds no pixels for these examples")
    width = max(len(p) for p in rows.values())
    fig = _figure(1.2 + 2.3 * width, 1.6 * len(rows) + 0.4)
    # A subfigure per pair, so that the pair's weight titles both of its images.
    cells = fig.subfigures(len(rows), 1 + width, width_ratios=[1] + [2] * width, squeeze=False)
    for r, (t, pairs) in enumerate(rows.items()):
        label, pixels = tgt[t]
        _image(cells[r, 0].subplots(), pixels, shape, f"target {t}\nlabel {label}", "k")
        for c, (a, b, w) in enumerate(pairs):
            cell = cells[r, 1 + c]
            cell.suptitle(f"weight {w:+.3f}", fontsize=8,
                          color="#2a6fb0" if w > 0 else "#b03030")
            for ax, i in zip(cell.subplots(1, 2), (a, b), strict=True):
                lab, pix = train[i]
                _image(ax, pix, shape, f"train {i}\nlabel {lab}",
                       "#2a7f2a" if lab == label else "#555555")
    fig.suptitle(f"fit {second}: each target's {width} strongest pairs by |interaction weight| "
                 "(blue: positive, red: negative; green label: same as the target's)",
                 fontsize=10)
    members = [train[i][0] == tgt[t][0] for t, pairs in rows.items() for a, b, _ in pairs
               for i in (a, b)]
    weights = np.array([w for pairs in rows.values() for *_, w in pairs])
    total = ctx.db.sql("SELECT count(*) FROM interactions WHERE fit_id = ?",
                       [second]).column(0)[0].as_py()
    return Section(
        title, _save(ctx, fig, "interactions.png"),
        "Each row: a target, then the pairs of training images with the largest |interaction "
        "weight| in its second-order datamodel. A positive weight means training on both "
        "raises the target's margin more than their own weights say; a negative one, less "
        "(often two images that stand in for each other).",
        [f"fit {second}: {total} non-zero interactions over {len(with_pairs)} targets",
         f"{np.mean(weights > 0):.0%} of the pairs shown have a positive weight",
         f"{np.mean(members):.0%} of the pair members shown share the target's label"])


def _linear_and_second_order(ctx: _Context) -> tuple[int | None, int | None]:
    """(linear fit, second-order fit): the report's fit and the newest sibling of the other kind.

    Either is None where there is none; both where the report's fit is imported.
    """
    me = ctx.fit.fit_id
    rows = ctx.db.sql(
        "SELECT fit_id, coalesce(TRY_CAST(parameters->>'pairs' AS INTEGER), 0) > 0 AS second "
        "FROM fits WHERE solver <> 'imported' AND list_contains(?, fit_id) ORDER BY fit_id",
        [[me, *sibling_fits(ctx.db, me)]]).to_pylist()
    second = {int(r["fit_id"]): bool(r["second"]) for r in rows}
    if me not in second:
        return None, None
    others = [f for f, s in second.items() if s != second[me]]
    other = max(others) if others else None
    return (other, me) if second[me] else (me, other)


def _no_counterpart(ctx: _Context, linear: int | None, second: int | None) -> str:
    """Why a section comparing a linear fit with its second-order refit has no pair of them."""
    me = ctx.fit.fit_id
    if linear is None and second is None:
        return f"fit {me} is imported, not a linear or second-order fit of this database's runs"
    if second is None:
        return (f"fit {me} has no second-order refit of the same runs: run "
                "`dmdb fit DB --pairs 60` (with the same --alpha and --target-range), "
                "then `dmdb verify`")
    return (f"fit {me} has no linear fit of the same runs: run `dmdb fit DB` (with the "
            "same --alpha and --target-range), then `dmdb verify`")


def _has_counterfactuals(db: Database, fit_id: int) -> bool:
    return bool(db.sql("SELECT count(*) FROM verify_runs WHERE fit_id = ? "
                       "AND kind = 'counterfactual'", [fit_id]).column(0)[0].as_py())


def _predicted_and_actual(
    db: Database, verified: int, models: tuple[int, ...]
) -> dict[int, tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """Per model: predicted and actual changes of the verified fit's removals, and their summary.

    Empty unless every model has at least 3 conditions (as the counterfactual figure needs).
    """
    out = {}
    for m in models:
        rows = counterfactual_rows(db, verified, model=m)
        stats = summarise_counterfactuals(rows)
        if stats["n_conditions"] < 3:
            return {}
        d = rows.to_pydict()
        pc = np.array(d["predicted_change"], dtype=np.float64)
        ac = np.array(d["actual_change"], dtype=np.float64)
        use = (np.array(d["condition"]) != "none") & np.isfinite(pc) & np.isfinite(ac)
        out[m] = (pc[use], ac[use], stats)
    return out


def _brittleness(ctx: _Context) -> Section:
    title = "Brittleness: predictions flippable by removing k examples"
    if ctx.db.has_view("brittleness_curve"):
        curve = ctx.db.sql("SELECT k, fraction_flippable FROM brittleness_curve "
                           "WHERE fit_id = ? ORDER BY k", [ctx.fit.fit_id]).to_pydict()
        ks = np.array(curve["k"], dtype=np.float64)
        frac = np.array(curve["fraction_flippable"], dtype=np.float64)
    else:
        _, size = support_sizes(ctx.fit)
        size[np.isnan(size) & ~(ctx.fit.margin_before() > 0)] = 0
        ks = np.unique(np.r_[0, np.round(np.logspace(0, np.log10(ctx.fit.weights.shape[1]),
                                                       60))])
        fitted_size = size[ctx.fit.fitted]
        frac = np.array([(fitted_size <= k).mean() for k in ks])
    if len(ks) == 0:
        return Section(title, note="skipped: the fit has no targets")
    wrong = float(frac[ks == 0][0]) if (ks == 0).any() else float("nan")
    fig = _figure(6.2, 4.2)
    ax = fig.add_subplot()
    # k = 0 (targets already predicted wrong) has no place on a log axis; it is in the numbers.
    ax.step(ks[ks > 0], frac[ks > 0], where="post", color="#4c72b0", lw=2,
            label="estimated by the datamodel")
    checked = brittleness_results(ctx.db, ctx.fit.fit_id)
    numbers = [f"{np.interp(k, ks, frac):.0%} of targets flippable with at most {k} removals"
               for k in (10, 50, 200) if k <= ks.max()]
    numbers.insert(0, f"{wrong:.0%} of targets are predicted wrong with nothing removed (k = 0)")
    if checked:
        sizes = np.array([b.support_size for b in checked])
        flipped = np.array([b.flipped for b in checked])
        marks = np.unique(np.quantile(sizes, [0.25, 0.5, 0.75, 1.0], method="lower"))
        ver = [np.interp(m, ks, frac) * flipped[sizes <= m].mean() for m in marks]
        ax.plot(marks, ver, "o", color="#c44e52", ms=7,
                label=f"verified: estimate x share of {len(checked)} retrained targets "
                      "that flipped")
        numbers.append(f"retraining without the support set flipped {flipped.mean():.0%} of "
                       f"{len(checked)} checked targets (random removals of the same size: "
                       f"{np.mean([b.flipped_random for b in checked]):.0%})")
    ax.set_xscale("log")
    ax.set(xlabel="k, training examples removed (log scale)",
           ylabel="fraction of targets flipped", ylim=(0, 1.02),
           title=f"Fit {ctx.fit.fit_id}: brittleness")
    ax.legend(fontsize=8, loc="upper left")
    caption = ("The share of targets whose predicted margin the datamodel expects to fall to 0 "
               "or below when their k most supportive training examples are removed.")
    if not checked:
        caption += " Run `dmdb verify` to check support sets by retraining."
    return Section(title, _save(ctx, fig, "brittleness.png"), caption, numbers)


def _embedding(ctx: _Context) -> Section:
    title = "Datamodel embeddings"
    rows = ctx.db.sql(
        "SELECT e.target_idx, e.embedding[1] AS pc1, e.embedding[2] AS pc2, e.cluster, t.label "
        "FROM embeddings e JOIN targets t USING (target_idx) WHERE e.fit_id = ? "
        "AND len(e.embedding) >= 2", [ctx.fit.fit_id]).to_pydict()
    if not rows["target_idx"]:
        return Section(title, note="skipped: run `dmdb embed` to compute embeddings")
    pc1 = np.array(rows["pc1"], dtype=np.float64)
    pc2 = np.array(rows["pc2"], dtype=np.float64)
    fig = _figure(11.0, 4.6)
    numbers = []
    for j, (name, values) in enumerate((("label", rows["label"]), ("cluster", rows["cluster"]))):
        ax = fig.add_subplot(1, 2, j + 1)
        known = [v for v in values if v is not None]
        groups = sorted(set(known))
        colours = _colours(len(groups))
        for g, c in zip(groups, colours, strict=True):
            sel = np.array([v == g for v in values])
            ax.scatter(pc1[sel], pc2[sel], s=12, color=c, label=str(g))
        ax.set(xlabel="PC 1", ylabel="PC 2", title=f"coloured by {name}")
        if groups and len(groups) <= 20:
            ax.legend(fontsize=7, title=name, loc="best", markerscale=1.5, ncols=2)
        numbers.append(f"{len(groups)} distinct {name}s")
    return Section(title, _save(ctx, fig, "embedding.png"),
                   "The first two principal components of each target's weight vector. "
                   "Targets that rely on the same training examples lie close together.",
                   numbers)


def _learning_curve(ctx: _Context) -> Section:
    title = "LDS against the number of fit runs"
    if not ctx.learning_curve:
        return Section(title, note="skipped: learning curve not requested")
    if ctx.db.sql("SELECT solver FROM fits WHERE fit_id = ?",
                  [ctx.fit.fit_id]).column(0)[0].as_py() == "imported":
        # Refits on a share of its fit runs need fit runs; an imported fit has none here.
        return Section(title, note="skipped: the fit was imported (`dmdb import-fit`), not "
                                   "fitted on this database's runs")
    points, notes = _learning_curve_points(ctx)
    if len(points) < 2:
        return Section(title, note="skipped: " + ("; ".join(notes) or "too few fit runs"))
    n = np.array([p[0] for p in points], dtype=np.float64)
    lds = np.array([p[1] for p in points])
    fig = _figure(6.2, 4.0)
    ax = fig.add_subplot()
    ax.plot(n, lds, "o-", color="#4c72b0", lw=2)
    for x, y_, fid in points:
        ax.annotate(f"fit {fid}", (x, y_), textcoords="offset points", xytext=(4, -12),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_xticks(n, [str(int(v)) for v in n])
    ax.minorticks_off()
    ax.margins(0.12)
    ax.set(xlabel="fit runs (log scale)", ylabel="mean LDS on test runs",
           title=f"Fit {ctx.fit.fit_id}: more runs, better datamodels")
    return Section(title, _save(ctx, fig, "learning_curve.png"),
                   "The fit refitted on the first 10%, 25% and 50% of its fit runs (same alpha, "
                   "solver settings, validation and test runs).",
                   [f"{int(a)} runs: LDS {b:.3f}" for a, b, _ in points] + notes)


def _comparison(ctx: _Context) -> Section:
    from dmdb.compare import compare

    title = "Other fits and methods against this fit"
    others = [int(f) for f in ctx.db.sql(
        "SELECT fit_id FROM fits WHERE parameters->>'learning_curve_of' IS NULL AND fit_id <> ? "
        "ORDER BY fit_id", [ctx.fit.fit_id]).column(0).to_pylist()]
    if not others:
        return Section(title, note="skipped: the database holds one fit; `dmdb import-fit` adds "
                                   "published datamodels or another method's scores")
    result = compare(ctx.db, [ctx.fit.fit_id, *others])
    numbers = [f"fit {r['fit_id']} {r['name']}: mean LDS {r['mean_lds']}, median "
               f"{r['median_lds']}, beats fit {ctx.fit.fit_id} on {r['beats_first']:.0%} of "
               f"targets, top-10 overlap {r['top10_overlap']}"
               for r in result.table.to_pylist()[1:] if r["beats_first"] is not None]
    return Section(
        title, _save(ctx, result.figure(), "compare.png"),
        "Each point is one target: its LDS under this fit (x) and under another fit or an "
        "imported method (y), all on this fit's test runs. Points above y = x are targets "
        "the other fit models better.", numbers + result.notes)


def _learning_curve_points(ctx: _Context) -> tuple[list[tuple[int, float, int]], list[str]]:
    from dmdb.fitting import fit as refit
    from dmdb.fitting import recorded_options

    db, fid = ctx.db, ctx.fit.fit_id
    row = db.sql("SELECT alpha, n_fit, target_lo, target_hi, parameters FROM fits "
                 "WHERE fit_id = ?", [fid]).to_pylist()[0]
    sizes = sorted({max(MIN_RUNS["fit"], round(f * row["n_fit"]))
                    for f in LEARNING_CURVE_FRACTIONS} - {row["n_fit"]})
    params = json.loads(row["parameters"] or "{}")
    kwargs = recorded_options(params)
    row["pairs"] = params.get("pairs")  # a second-order fit's curve is of second-order refits
    points, notes = [], []
    for n in sizes:
        found = _existing_fit(db, row, n)
        if found is None:
            try:
                result = refit(db, alpha=row["alpha"], max_fit_runs=n,
                               target_range=(row["target_lo"], row["target_hi"]),
                               learning_curve_of=fid, pairs=row["pairs"],
                               progress=ctx.progress, echo=ctx.echo, **kwargs)
            except FitError as e:
                notes.append(f"{n} runs: {e}")
                continue
            assert result.fit_id is not None  # fitted into the database, not to a block file
            found = result.fit_id
        points.append((n, _mean_lds(db, found), found))
    points.append((row["n_fit"], _mean_lds(db, fid), fid))
    return points, notes


def _existing_fit(db: Database, row: dict[str, Any], n: int) -> int | None:
    found = db.sql(
        "SELECT max(fit_id) FROM fits WHERE n_fit = ? AND target_lo = ? AND target_hi = ? "
        "AND alpha IS NOT DISTINCT FROM ? "
        "AND TRY_CAST(parameters->>'pairs' AS INTEGER) IS NOT DISTINCT FROM ?",
        [n, row["target_lo"], row["target_hi"], row["alpha"], row["pairs"]]).column(0)[0].as_py()
    return None if found is None else int(found)


def _mean_lds(db: Database, fit_id: int) -> float:
    value = db.sql("SELECT avg(test_spearman) FROM datamodels WHERE fit_id = ?",
                   [fit_id]).column(0)[0].as_py()
    return float("nan") if value is None else float(value)


# --------------------------------------------------------------------------- #
# Helpers


def _sample(values: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(np.asarray(values))[:n]).astype(np.int64)


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _diagonal(ax: Any, values: np.ndarray) -> None:
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")


def _pixels(db: Database, table: str, key: str, ids: list[int]) -> dict[int, tuple[Any, Any]]:
    # table and key are fixed names from this module, never user input.
    rows = db.sql(f"SELECT {key} AS i, label, pixels FROM {table} WHERE list_contains(?, {key})",
                  [ids]).to_pydict()
    return {i: (lab, None if pix is None else np.asarray(pix, dtype=np.float32))
            for i, lab, pix in zip(rows["i"], rows["label"], rows["pixels"], strict=True)}


def _image(ax: Any, pixels: np.ndarray, shape: list[int], title: str, colour: str) -> None:
    ax.imshow(pixels.reshape(shape), cmap="gray_r", interpolation="nearest")
    ax.set_title(title, fontsize=8, color=colour)
    ax.set_xticks([])
    ax.set_yticks([])


def _html(db: Database, fit: FitUnderTest, sections: list[Section]) -> str:
    exp = db.experiment
    info = db.sql("SELECT n_fit, n_val, n_test, solver, created_at FROM fits WHERE fit_id = ?",
                  [fit.fit_id]).to_pylist()[0]
    esc = html.escape
    created = f"{info['created_at']:%Y-%m-%d %H:%M}"
    head = (f"<h1>dmdb report: {esc(exp.name)}, fit {fit.fit_id}</h1>\n<p>N = {exp.n_train} "
            f"training examples, M = {exp.n_targets} targets, alpha = {fit.alpha:g}; fit "
            f"{fit.fit_id} ({esc(str(info['solver']))} solver, {created}) used "
            f"{info['n_fit']} fit, {info['n_val']} validation and "
            f"{info['n_test']} test runs; {len(fit.fitted)} targets fitted.</p>")
    body = []
    for s in sections:
        parts = [f"<section><h2>{esc(s.title)}</h2>"]
        if s.png:
            parts.append(f'<img src="{esc(s.png)}" alt="{esc(s.title)}">')
            parts.append(f"<p>{esc(s.caption)}</p>")
            if s.numbers:
                parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in s.numbers)
                             + "</ul>")
        else:
            parts.append(f'<p class="note">{esc(s.note)}</p>')
        parts.append("</section>")
        body.append("\n".join(parts))
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}"
             "img{max-width:100%;border:1px solid #ddd}.note{color:#777;font-style:italic}"
             "section{margin-bottom:2.5em}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>dmdb report, fit "
            f"{fit.fit_id}</title><style>{style}</style></head><body>\n{head}\n"
            + "\n".join(body) + "\n</body></html>\n")
